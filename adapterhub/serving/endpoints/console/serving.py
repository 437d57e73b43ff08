"""What the console reads and does: the registry's names, versions, aliases and their history, one version's
manifest, lineage, training record and card, the server's live per-version numbers, and the rollout moves
(promote, rollback, split) through the registry's own gates. No FastAPI here; every registry call runs off
the event loop through the adapter manager (time-limited, as serving's own lookups).

A tenant key (``--auth keys``) sees only the names its globs allow: a name outside them is answered as one
that does not exist."""

from __future__ import annotations

import copy
import time
from typing import Any

from adapterhub.errors import AdapterNotFoundError
from adapterhub.hub.model_card import render_model_card
from adapterhub.loading.versions import same_base
from adapterhub.registry import Registry
from adapterhub.registry.rollout import parse_split
from adapterhub.registry.store import AliasEvent, VersionRecord
from adapterhub.serving.stack import ServingStack
from adapterhub.serving.tenants import current_caller, visible

MAX_ANCESTORS = 32  # a lineage drawn back this many parents at most


class ConsoleService:
    def __init__(self, stack: ServingStack) -> None:
        self.stack = stack

    # ---------------------------------------------------------------- who is looking
    def session(self, admin: bool) -> dict[str, Any]:
        """Who signed in and what they may do (``admin``: whether their key opens the admin routes)."""
        caller = current_caller.get()
        cfg = self.stack.config
        return {"auth": cfg.auth, "signed_in_as": caller.name if caller is not None else None,
                "admin": admin, "scope": list(caller.key.models) if caller is not None and caller.key else None,
                "base": self.stack.base_name, "engine": cfg.engine, "registry": self.stack.registry is not None}

    # ---------------------------------------------------------------- reading
    def _registry(self) -> Registry:
        if self.stack.registry is None:
            raise AdapterNotFoundError("this server runs without a registry")
        return self.stack.registry

    def _records(self, name: str) -> list[VersionRecord]:
        """The versions of ``name``, as for a name that does not exist when the caller may not see it."""
        records = self._registry().list(name) if visible(name) else []
        if not records:
            raise AdapterNotFoundError(f"no adapter named '{name}' in the registry")
        return records

    def adapters(self) -> dict[str, Any]:
        """Every visible name with its versions, aliases (splits and gates) and whether this server serves it."""
        if self.stack.registry is None:
            return {"base": self.stack.base_name, "adapters": []}
        registry, ident = self.stack.registry, self.stack.engine.base_identity
        by_name: dict[str, list[VersionRecord]] = {}
        for rec in registry.list():
            if visible(rec.name):
                by_name.setdefault(rec.name, []).append(rec)
        out = []
        for name, records in sorted(by_name.items()):
            out.append({"name": name, "versions": [self._version_row(r, registry, ident) for r in records],
                        "aliases": self._aliases(name, records), "latest": max(r.version for r in records)})
        return {"base": self.stack.base_name, "adapters": out}

    def _version_row(self, rec: VersionRecord, registry: Registry, ident: Any) -> dict[str, Any]:
        return {"ref": rec.ref, "version": rec.version, "kind": rec.kind, "content_hash": rec.content_hash,
                "base": rec.base_model, "rank": rec.rank, "size": rec.size, "created_at": rec.created_at,
                "aliases": list(rec.aliases), "metrics": rec.metrics,
                "served_here": rec.kind == "adapter" and same_base(rec, ident, registry)}

    def _aliases(self, name: str, records: list[VersionRecord]) -> list[dict[str, Any]]:
        registry = self._registry()
        names = sorted({a for r in records for a in r.aliases})
        out = []
        for alias in names:
            version = next(r.version for r in records if alias in r.aliases)
            out.append({"alias": alias, "version": version, "split": _weights(registry.alias_split(name, alias)),
                        "gate": registry.gate(name, alias)})
        return out

    def version(self, name: str, version: int) -> dict[str, Any]:
        """One version: manifest, lineage (nodes and edges for the graph), training record, card."""
        records = {r.version: r for r in self._records(name)}
        rec = records.get(version)
        if rec is None:
            raise AdapterNotFoundError(f"'{name}' has no version {version}")
        registry = self._registry()
        manifest = registry.manifest(rec)
        training = dict(manifest.training or {})
        return {
            "ref": rec.ref, "name": name, "version": version, "aliases": list(rec.aliases),
            "manifest": manifest.model_dump(mode="json"),
            "lineage": self._lineage(rec, manifest, records),
            "config": training.pop("config", None),
            "loss_curve": training.pop("loss_curve", None),
            "samples": training.pop("samples", None),
            "training": training,
            "metrics": manifest.metrics,
            "card": render_model_card(manifest, name),
            "served_here": self._version_row(rec, registry, self.stack.engine.base_identity)["served_here"],
        }

    def _lineage(self, rec: VersionRecord, manifest: Any, records: dict[int, VersionRecord]) -> dict[str, Any]:
        """base → … → parent → this version, plus what it was made from (a merge's adapter, a vision bundle,
        the hub repo it was pulled from): nodes and edges the page draws."""
        registry = self._registry()
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, str]] = []
        chain = [(rec, manifest)]
        seen = {rec.version}
        while len(chain) <= MAX_ANCESTORS:
            parent = chain[-1][1].parent
            if parent is None or parent in seen or parent not in records:
                break
            seen.add(parent)
            chain.append((records[parent], registry.manifest(records[parent])))
        chain.reverse()
        base = manifest.base_model.id if manifest.base_model else None
        first = chain[0][1]
        root = first.base_model.id if first.base_model else base
        if root:
            nodes.append({"id": f"base:{root}", "label": root, "kind": "base"})
        prev = f"base:{root}" if root else None
        for r, _ in chain:
            nodes.append({"id": r.ref, "label": r.ref, "kind": "this" if r.version == rec.version else r.kind,
                          "created_at": r.created_at})
            if prev:
                edges.append({"from": prev, "to": r.ref, "label": "trained on" if prev.startswith("base:") else
                              "parent"})
            prev = r.ref
        links = dict(manifest.lineage or {})
        vision = (manifest.training or {}).get("vision") or {}
        for key, label in (("parent", "trained from"), ("merged_from", "merged from"), ("bundle", "vision bundle"), ("pulled_from", "pulled from"),
                           ("source_version", "source version")):
            target = links.get(key) or (vision.get("bundle") if key == "bundle" else None)
            if target and not any(n["id"] == target for n in nodes):
                nodes.append({"id": f"{key}:{target}", "label": str(target), "kind": key})
                edges.append({"from": f"{key}:{target}", "to": rec.ref, "label": label})
        return {"nodes": nodes, "edges": edges}

    def history(self, name: str) -> dict[str, Any]:
        """Each alias's moves (oldest first), its gate, its configured split and what this server served."""
        records = self._records(name)
        registry = self._registry()
        events = registry.alias_history(name)
        served = {alias: counts for (n, alias), counts in self.stack.metrics.split_counts().items() if n == name}
        aliases = self._aliases(name, records)
        for a in aliases:
            a["served"] = served.get(a["alias"], {})
        return {"name": name, "versions": [r.version for r in records], "aliases": aliases,
                "events": [_event(e) for e in events]}

    def live(self, window_s: float, bucket_s: float) -> dict[str, Any]:
        """The last ``window_s`` seconds per version, plus what is loaded, in flight and waiting now."""
        manager = self.stack.manager
        summary = self.stack.metrics.recent.summary(window_s, bucket_s, visible)
        in_flight, waiting = manager.in_flight(), manager.waiting()
        loaded = [dict(row, in_flight=in_flight.get((row["name"], str(row["version"])), 0))
                  for row in manager.loaded() if visible(row["name"])]
        summary["loaded"] = loaded
        summary["waiting"] = [{"name": n, "version": v, "requests": c} for (n, v), c in sorted(waiting.items())
                              if visible(n)]
        summary["queue_depth"] = self.stack.engine.queue_depth()
        return summary

    # ---------------------------------------------------------------- rollout moves (admin)
    def _acting(self, who: str) -> Registry:
        """The registry, with moves recorded as made through the console by ``who``."""
        acting = copy.copy(self._registry())
        acting.actor = f"{acting.actor} (console{', key ' + who if who != '-' else ''})"
        return acting

    def promote(self, name: str, alias: str, version: int, force: bool, who: str) -> dict[str, Any]:
        self._records(name)
        record, prev, overridden = self._acting(who).promote(f"{name}@{version}", alias, force=force)
        return {"alias": alias, "version": record.version, "previous": prev, "forced_past": overridden}

    def rollback(self, name: str, alias: str, who: str) -> dict[str, Any]:
        self._records(name)
        ev = self._acting(who).rollback(name, alias)
        return {"alias": alias, "event": _event(ev)}

    def split(self, name: str, alias: str, text: str, force: bool, who: str) -> dict[str, Any]:
        self._records(name)
        weights, prev = self._acting(who).set_split(name, alias, parse_split(text), force=force)
        return {"alias": alias, "split": _weights(weights), "previous": prev}


def _weights(split: dict[int, int] | None) -> dict[str, int] | None:
    return {str(v): w for v, w in sorted(split.items())} if split else None


def _event(e: AliasEvent) -> dict[str, Any]:
    return {"alias": e.alias, "version": e.version, "at": e.at, "by": e.by, "split": _weights(e.split),
            "note": e.note, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at)) + " UTC"}
