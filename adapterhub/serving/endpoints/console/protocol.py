"""Bodies of the console's rollout actions (the same moves as ``adapterhub promote / rollback / tag --split``)."""

from __future__ import annotations

from pydantic import Field, StrictBool

from adapterhub.serving.protocol.requests import BaseRequest


class PromoteRequest(BaseRequest):
    version: int = Field(ge=1, description="The version to point the alias at.")
    force: StrictBool = Field(False, description="Past the alias's gate (recorded in its history).")


class SplitRequest(BaseRequest):
    split: str = Field(max_length=400, description="VERSION=WEIGHT[,VERSION=WEIGHT…], as `tag --split`: 3=90,4=10.")
    force: StrictBool = False


class RollbackRequest(BaseRequest):
    pass
