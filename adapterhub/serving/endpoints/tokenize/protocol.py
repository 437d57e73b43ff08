"""vLLM's ``/tokenize``, ``/detokenize`` and ``/version`` bodies."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, model_validator

from adapterhub.serving.protocol.requests import BaseRequest, ChatMessage, StrictInt, Tool


class TokenizeRequest(BaseRequest):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = Field(None, description="Rendered into the prompt by the chat template (messages).")
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True
    return_token_strs: StrictBool = False

    @model_validator(mode="after")
    def _one(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseRequest):
    model: str
    tokens: list[StrictInt]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str
