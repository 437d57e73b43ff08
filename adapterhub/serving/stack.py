"""The objects one server process runs on, built together by :func:`adapterhub.serving.api.build_service`.

Each endpoint's service (``endpoints/<endpoint>/serving.py``) is made from the stack on first use
(:meth:`ServingStack.endpoint`), so adding an endpoint adds no field here and no argument to the
composition root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from adapterhub.registry import Registry
from adapterhub.serving.adapters import AdapterManager
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.base import Engine
from adapterhub.serving.media import MediaPolicy
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.tenants import KeyRing

T = TypeVar("T")


@dataclass
class ServingStack:
    config: ServeConfig
    engine: Engine
    registry: Registry | None
    manager: AdapterManager
    metrics: Metrics
    media: MediaPolicy = field(default_factory=MediaPolicy)
    tool_template: str | None = None  # --tool-template, loaded: for chats with tools on templates without them
    keys: KeyRing | None = None  # --auth keys: the registry's tenant keys, limits and usage
    _endpoints: dict[type, Any] = field(default_factory=dict, repr=False)

    @property
    def base_name(self) -> str:
        return self.manager.base_name

    def endpoint(self, cls: type[T]) -> T:
        """The stack's one instance of an endpoint's service class (``cls(stack)``, made on first use)."""
        if cls not in self._endpoints:
            self._endpoints[cls] = cls(self)  # type: ignore[call-arg]
        return self._endpoints[cls]  # type: ignore[no-any-return]
