"""``/v1/adapters/load`` and ``/unload`` bodies."""

from __future__ import annotations

from pydantic import Field, StrictBool

from adapterhub.serving.protocol.requests import BaseRequest


class AdapterLoadRequest(BaseRequest):
    model: str = Field(description="Adapter ref: name, name@3, name@production.")
    pin: StrictBool = False
