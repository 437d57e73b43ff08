"""``/v1/chat/completions``: the request (strict, nothing silently ignored) and the response and chunk
bodies, serialized to OpenAI's shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, model_validator

from adapterhub.serving.protocol.requests import (
    ChatMessage,
    NamedToolChoice,
    SamplingRequest,
    StrictInt,
    Tool,
)
from adapterhub.serving.protocol.responses import FinishReason, ResponseModel, Usage


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Default: auto when tools are given, else none.")
    parallel_tool_calls: StrictBool = True
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names function '{self.tool_choice.function.name}', "
                                 f"which is not in tools ({', '.join(names)})")
        return self

    def tool_mode(self) -> str:
        """none | auto | required | the named function."""
        if not self.tools:
            return "none"
        c = self.tool_choice or "auto"
        return c if isinstance(c, str) else c.function.name

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        for i, m in enumerate(self.messages):
            out += [(f"messages[{i}].{k}", r) for k, r in m.unsupported()]
        return out

    def n_logprobs(self) -> int | None:
        """Top alternatives per token (0: only the chosen token), or None for no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


class FunctionCall(ResponseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(ResponseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(ResponseModel):
    _omit_if_none = ("tool_calls",)

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(ResponseModel):
    content: list[TokenLogprob] | None = None


class ChatChoice(ResponseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: FinishReason | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(ResponseModel):
    _omit_if_none = ("role", "content", "tool_calls")

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(ResponseModel):
    _omit_if_none = ("usage",)

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
