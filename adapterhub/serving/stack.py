"""The objects one server process runs on, built together by :func:`adapterhub.serving.api.build_service`, and the
model catalog (``/v1/models``) they answer with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapterhub.loading.versions import same_base
from adapterhub.registry import Registry
from adapterhub.serving.adapters import AdapterManager
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.base import Engine
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.protocol import ModelCard
from adapterhub.serving.service import CompletionService


@dataclass
class ServingStack:
    config: ServeConfig
    engine: Engine
    registry: Registry | None
    manager: AdapterManager
    service: CompletionService
    metrics: Metrics

    @property
    def base_name(self) -> str:
        return self.manager.base_name

    def catalog(self) -> list[ModelCard]:
        return catalog(self.manager, self.registry, self.engine)


def catalog(manager: AdapterManager, registry: Registry | None, engine: Engine) -> list[ModelCard]:
    """The base plus every adapter version, alias and name in the registry trained for this base."""
    ctx = engine.capabilities.context_length
    cards = [ModelCard(id=manager.base_name, root=manager.base_name, max_model_len=ctx)]
    if registry is None:
        return cards
    ident = engine.base_identity
    latest: dict[str, Any] = {}
    for rec in registry.list():
        if rec.kind != "adapter" or not same_base(rec, ident, registry):
            continue
        latest[rec.name] = rec
        cards.append(ModelCard(id=rec.ref, parent=manager.base_name, root=rec.name, version=rec.version,
                               aliases=list(rec.aliases), created=int(rec.created_at), max_model_len=ctx))
        for alias in rec.aliases:
            cards.append(ModelCard(id=f"{rec.name}@{alias}", parent=manager.base_name, root=rec.name,
                                   version=rec.version, created=int(rec.created_at), max_model_len=ctx))
    for name, rec in latest.items():
        cards.append(ModelCard(id=name, parent=manager.base_name, root=name, version=rec.version,
                               created=int(rec.created_at), max_model_len=ctx))
    return cards
