"""``/v1/models``: the base and every servable adapter version, alias and name."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from adapterhub.serving.protocol.responses import now


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "adapterhub"
    parent: str | None = None
    root: str | None = None
    version: int | None = None
    aliases: list[str] = Field(default_factory=list)
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
