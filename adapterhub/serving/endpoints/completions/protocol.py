"""``/v1/completions``: the request and the response (also each streamed frame), in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from adapterhub.serving.protocol.requests import SamplingRequest, StrictInt, valid_text
from adapterhub.serving.protocol.responses import FinishReason, ResponseModel, Usage


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(16, ge=0, description="OpenAI's default 16; 0 (with echo) scores the "
                                         "prompt without generating, as lm-evaluation-harness asks")
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    best_of: StrictInt | None = Field(None, ge=1, le=128)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        for p in [v] if isinstance(v, str) else v:
            if isinstance(p, str):
                valid_text(p, "prompt")
            elif isinstance(p, list) and not p:
                raise ValueError("a token-id prompt must not be empty")
        return v

    @model_validator(mode="after")
    def _score_only(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 generates nothing: use it with echo: true (and logprobs) to score "
                             "the prompt")
        return self

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None:
            if self.best_of < self.n:
                raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
            if self.stream and self.best_of > self.n:
                raise ValueError("best_of cannot be used with stream")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def token_budget(self) -> int | None:
        return self.max_tokens

    def n_logprobs(self) -> int | None:
        return self.logprobs


class CompletionLogprobs(ResponseModel):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(ResponseModel):
    """A text completion, also each streamed chunk (then ``usage`` only on the final one, if asked)."""

    _omit_if_none = ("usage",)

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
