"""Images of OpenAI ``image_url`` content parts, fetched and checked before a request reaches the engine.

* ``data:image/...;base64,...`` URLs are always accepted;
* ``http(s)`` URLs only for hosts in ``--allowed-media-domains`` (a domain allows its subdomains), never
  to a loopback, private, link-local or otherwise non-public address (every address the host resolves
  to is checked), without redirects, within ``--media-timeout-s`` and ``--max-image-bytes``;
* the bytes must decode as an image (PIL) of at most ``MAX_PIXELS`` pixels; at most ``--max-images``
  images per request.

Every failure is a :class:`UserInputError` (HTTP 400) saying why.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from adapterhub.dataurl import decode_data_url
from adapterhub.errors import UserInputError

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class MediaPolicy:
    allowed_domains: tuple[str, ...] = ()
    max_bytes: int = 10 * 2**20
    max_images: int = 8
    timeout_s: float = 5.0


def load_image(url: str, policy: MediaPolicy, param: str) -> Any:
    """The image at ``url`` as an RGB PIL image."""
    if url.startswith("data:"):
        media_type = url[5:].split(";", 1)[0].split(",", 1)[0].strip().lower()
        if not media_type.startswith("image/"):
            raise UserInputError(f"the data: URL's media type must be an image (data:image/png;base64,...), got "
                                 f"{media_type[:40] or 'none'!r}", param=param)
        data = decode_data_url(url, max_bytes=policy.max_bytes, param=param)
    elif url.startswith(("http://", "https://")):
        data = _fetch(url, policy, param)
    else:
        raise UserInputError("image_url must be a data: URL or an http(s) URL", param=param)
    return _decode(data, param)


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (a.lower().lstrip(".") for a in allowed))


def _check_addresses(host: str, port: int, param: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UserInputError(f"cannot resolve the image host {host}", param=param) from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global:
            raise UserInputError(f"the image host {host} resolves to a non-public address ({ip}): refused",
                                 param=param)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch(url: str, policy: MediaPolicy, param: str) -> bytes:
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as e:  # e.g. a port that is not a number
        raise UserInputError(f"image_url is not a valid URL: {e}", param=param) from None
    if not policy.allowed_domains:
        raise UserInputError("image URLs are not allowed on this server (start it with --allowed-media-domains); "
                             "send the image as a data: URL", param=param)
    if not _host_allowed(host, policy.allowed_domains):
        raise UserInputError(f"image host {host} is not in --allowed-media-domains", param=param)
    _check_addresses(host, port or (443 if parts.scheme == "https" else 80), param)
    opener = urllib.request.build_opener(_NoRedirect)
    deadline = time.monotonic() + policy.timeout_s  # for the whole fetch, not only each socket wait
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "adapterhub"}),
                         timeout=policy.timeout_s) as resp:
            data = b""
            while len(data) <= policy.max_bytes:
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                data += chunk
                if time.monotonic() > deadline:
                    raise UserInputError(f"fetching the image took longer than {policy.timeout_s} s", param=param)
    except urllib.error.HTTPError as e:
        raise UserInputError(f"fetching the image failed: HTTP {e.code}", param=param) from None
    except (urllib.error.URLError, OSError) as e:
        raise UserInputError(f"fetching the image failed: {getattr(e, 'reason', e)}", param=param) from None
    if len(data) > policy.max_bytes:
        raise UserInputError(f"the image is larger than {policy.max_bytes} bytes", param=param)
    return data


def _decode(data: bytes, param: str) -> Any:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise UserInputError(f"the image has {img.width}x{img.height} pixels, more than {MAX_PIXELS}", param=param)
        return img.convert("RGB")
    except UserInputError:
        raise
    except Exception:  # noqa: BLE001 - PIL raises several types for bytes that are not an image
        raise UserInputError("the image_url does not hold an image PIL can read (png, jpeg, webp, gif…)",
                             param=param) from None
