"""``/v1/responses``: the Responses API's request (strict: what cannot be honoured is refused by name) and
its response, output items and streamed events, serialized to the shapes of OpenAI's published types."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

from adapterhub.serving.protocol.requests import (
    BaseRequest,
    FiniteFloat,
    FunctionDef,
    StrictInt,
    StrictModel,
)
from adapterhub.serving.protocol.responses import ResponseModel

BUILT_IN_TOOLS = ("web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use",
                  "computer_use_preview", "mcp", "image_generation", "local_shell", "shell", "apply_patch", "custom")


# ------------------------------------------------------------------ request: input items
class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class OutputTextIn(StrictModel):
    """An earlier answer's text, sent back as part of the conversation."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list, max_length=0)
    logprobs: list[Any] | None = None


class InputImage(StrictModel):
    type: Literal["input_image"]
    image_url: str | None = Field(None, description="data:image/...;base64,... or an http(s) URL of an allowed "
                                  "domain.")
    file_id: None = Field(None, description="Not supported (no Files API): send image_url.")
    detail: Literal["auto", "low", "high"] = Field(
        "auto", description="A hint; the model's own processor always sets the resolution (same answer).")

    @model_validator(mode="after")
    def _url(self) -> InputImage:
        if self.image_url is None:
            raise ValueError("input_image needs image_url")
        return self


ContentPart = Annotated[InputText | OutputTextIn | InputImage, Field(discriminator="type")]


class MessageItem(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(StrictModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(StrictModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")]


def _typed(item: Any) -> Any:
    """An "easy" message (``{"role", "content"}`` without ``type``) is a message item."""
    if isinstance(item, dict) and "type" not in item and "role" in item:
        return {"type": "message", **item}
    return item


# ------------------------------------------------------------------ request: tools and formats
class FunctionTool(FunctionDef):
    """A function tool as the Responses API writes it: chat's function definition, flat, with ``type``."""

    type: Literal["function"]


class FunctionChoice(StrictModel):
    type: Literal["function"]
    name: str


class TextFormat(StrictModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _schema(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format of type json_schema needs 'schema'")
        return self


class TextConfig(StrictModel):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = Field(None, description="Only 'medium' (the model's own length).")


REFUSED = {
    "reasoning": "'reasoning' is not supported: these models have no separate reasoning step",
    "background": "'background' is not supported: responses are generated while the request waits",
    "conversation": "'conversation' is not supported: continue with previous_response_id",
    "include": "'include' is not supported: no extra output (logprobs, encrypted reasoning) is available",
    "prompt": "'prompt' (stored prompt templates) is not supported: send instructions and input",
    "max_tool_calls": "'max_tool_calls' is not supported",
    "top_logprobs": "'top_logprobs' is not supported on /v1/responses: use /v1/chat/completions",
    "truncation": "only truncation 'disabled' is supported: a conversation longer than the context is a 400",
}


class ResponsesRequest(BaseRequest):
    """Every string in the body is checked for valid Unicode once, by BaseRequest, before these fields."""

    model: str = Field(description="Base name, 'base', an adapter 'name', 'name@3', 'name@alias' or 'name@sha256:…'.")
    input: str | list[Annotated[InputItem, Field()]] = Field(description="Text, or a list of input items.")
    instructions: str | None = Field(None, description="A system message before the input (not carried over to "
                                     "responses that continue this one).")
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    temperature: FiniteFloat | None = Field(None, ge=0.0, le=2.0)
    top_p: FiniteFloat | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128, description="Function tools.")
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool = True
    text: TextConfig | None = None
    store: StrictBool = Field(True, description="Keep the response for GET and previous_response_id.")
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    stream: StrictBool = False
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Refused when given (see REFUSED); null is the same as absent.
    reasoning: Any = None
    background: StrictBool | None = None
    conversation: Any = None
    include: list[str] | None = None
    prompt: Any = None
    max_tool_calls: StrictInt | None = None
    top_logprobs: StrictInt | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _easy_messages(cls, v: Any) -> Any:
        return [_typed(x) for x in v] if isinstance(v, list) else v

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input is empty")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, t in enumerate(v or []):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind != "function":
                what = f"built-in tool '{kind}'" if kind in BUILT_IN_TOOLS else f"tool type {kind!r}"
                raise ValueError(f"tools[{i}]: {what} is not supported: only function tools (type 'function')")
            FunctionTool.model_validate(t)
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, v: Any, info: ValidationInfo) -> Any:
        names = [t["name"] for t in info.data.get("tools") or []]
        if v not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(v, FunctionChoice) and v.name not in names:
            raise ValueError(f"tool_choice names function '{v.name}', which is not in tools ({', '.join(names)})")
        return v

    def forces_a_call(self) -> bool:
        return bool(self.tools) and self.tool_choice not in (None, "none", "auto")

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        for name, reason in REFUSED.items():
            value = getattr(self, name)
            if value in (None, False, [], "disabled"):
                continue
            out.append((name, reason))
        return sorted(out)

    def function_tools(self) -> list[FunctionTool]:
        return [FunctionTool.model_validate(t) for t in self.tools or []]

    def items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)


# ------------------------------------------------------------------ response
Status = Literal["in_progress", "completed", "incomplete", "failed"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(ResponseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOutput(ResponseModel):
    """A call the model made (an output item)."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Annotated[OutputMessage | FunctionCallOutput, Field(discriminator="type")]


class InputTokensDetails(ResponseModel):
    cached_tokens: int = 0


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int = 0


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseObject(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Status
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    temperature: float
    top_p: float
    tool_choice: Any
    tools: list[dict[str, Any]]
    text: dict[str, Any]
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool
    user: str | None = None
    background: bool = False
    reasoning: dict[str, Any] | None = None
    service_tier: str = "default"
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    max_tool_calls: int | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


class DeletedResponse(ResponseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


# ------------------------------------------------------------------ streamed events
class Event(ResponseModel):
    type: str
    sequence_number: int = 0


class ResponseEvent(Event):
    """response.created / .in_progress / .completed / .incomplete / .failed"""

    response: ResponseObject


class ItemEvent(Event):
    """response.output_item.added / .done"""

    output_index: int
    item: OutputItem


class PartEvent(Event):
    """response.content_part.added / .done"""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(Event):
    type: str = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(Event):
    type: str = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(Event):
    type: str = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(Event):
    type: str = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(Event):
    """A stream that fails after its first event (OpenAI's fields at the top, Open Responses' under error)."""

    type: str = "error"
    code: str | None = None
    message: str
    param: str | None = None
    error: dict[str, Any] | None = None
