"""What every endpoint's protocol shares: the strict request base and its sampling fields, message and
tool parts (``requests``), and usage, finish reasons, ids and the OpenAI error body (``responses``).
Each endpoint's own request and response models are in ``adapterhub.serving.endpoints.<endpoint>.protocol``."""

from adapterhub.serving.protocol.requests import BaseRequest, ChatMessage, SamplingRequest, StreamOptions
from adapterhub.serving.protocol.responses import (
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    ResponseModel,
    Usage,
    error_body,
    new_id,
    now,
)

__all__ = [
    "BaseRequest", "ChatMessage", "ErrorDetail", "ErrorResponse", "FinishReason", "ResponseModel", "SamplingRequest",
    "StreamOptions", "Usage", "error_body", "new_id", "now",
]
