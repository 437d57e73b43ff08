"""``/v1/models``: the base plus every adapter version, alias and name in the registry trained for it."""

from __future__ import annotations

from typing import Any

from adapterhub.errors import ModelNotFoundError
from adapterhub.loading.versions import same_base
from adapterhub.serving.endpoints.models.protocol import ModelCard, ModelList
from adapterhub.serving.stack import ServingStack
from adapterhub.serving.tenants import check_scope, visible


class ModelsService:
    def __init__(self, stack: ServingStack) -> None:
        self.stack = stack

    def catalog(self) -> list[ModelCard]:
        """The base plus every adapter version, alias and name in the registry trained for this base."""
        manager, registry, engine = self.stack.manager, self.stack.registry, self.stack.engine
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

    def list(self) -> ModelList:
        return ModelList(data=[c for c in self.catalog() if visible(c.root)])  # a tenant sees its own names

    def card(self, model_id: str) -> ModelCard:
        manager = self.stack.manager
        check_scope(model_id, manager.base_names, manager.base_name)
        cards = self.catalog()
        for m in cards:
            if m.id == model_id:
                return m
        if model_id in manager.base_names:  # "base" and other names of the base model
            return cards[0].model_copy(update={"id": model_id})
        manager.resolve(model_id)  # raises 404 with the reason
        raise ModelNotFoundError(f"The model '{model_id}' does not exist")
