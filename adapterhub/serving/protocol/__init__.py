"""The OpenAI API surface as pydantic models: ``requests`` (strict, nothing silently ignored) and
``responses`` (typed bodies, errors included)."""

from adapterhub.serving.protocol.requests import (
    AdapterLoadRequest,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    StreamOptions,
    TokenizeRequest,
)
from adapterhub.serving.protocol.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DetokenizeResponse,
    ErrorDetail,
    ErrorResponse,
    FunctionCall,
    ModelCard,
    ModelList,
    TokenizeResponse,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
    VersionResponse,
    error_body,
    new_id,
    now,
)

__all__ = [
    "AdapterLoadRequest", "ChatChoice", "ChatChunkChoice", "ChatCompletionChunk", "ChatCompletionRequest",
    "ChatCompletionResponse", "ChatDelta", "ChatLogprobs", "ChatMessage", "ChatResponseMessage", "CompletionChoice",
    "CompletionLogprobs", "CompletionRequest", "CompletionResponse", "DetokenizeRequest", "DetokenizeResponse",
    "ErrorDetail", "ErrorResponse", "FunctionCall", "ModelCard", "ModelList", "StreamOptions", "TokenLogprob", "TokenizeRequest",
    "TokenizeResponse", "ToolCall", "ToolCallDelta", "TopLogprob", "Usage", "VersionResponse", "error_body", "new_id", "now",
]
