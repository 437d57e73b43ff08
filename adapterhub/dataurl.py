"""``data:`` URLs with a base64 payload (RFC 2397), the form OpenAI image parts carry inline images in.

One decoder for the server (request images) and training (``image_url`` parts of ``messages`` records).
"""

from __future__ import annotations

import base64
import binascii

from adapterhub.errors import UserInputError


def decode_data_url(url: str, *, max_bytes: int | None = None, param: str | None = None) -> bytes:
    """The bytes of ``data:<type>;base64,<payload>``; a ``UserInputError`` saying why otherwise."""
    header, sep, payload = url.partition(",")
    if not header.startswith("data:") or not sep or not header.endswith(";base64"):
        raise UserInputError("a data: URL image must be base64 (data:image/png;base64,...)", param=param)
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise UserInputError(f"the image is larger than {max_bytes} bytes", param=param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError("the data: URL is not valid base64", param=param) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise UserInputError(f"the image is larger than {max_bytes} bytes", param=param)
    return data
