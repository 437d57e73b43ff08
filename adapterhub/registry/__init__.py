"""Adapter registry: immutable numbered versions, content hashes, aliases, lineage."""

from adapterhub.registry.manifest import BaseModelRef, Manifest
from adapterhub.registry.registry import Registry
from adapterhub.registry.store import AliasEvent, RegistryStore, VersionRecord

__all__ = ["AliasEvent", "BaseModelRef", "Manifest", "Registry", "RegistryStore", "VersionRecord"]
