"""msgspec Structs for request and response bodies, and their decoding (400 malformed, 422 invalid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cvops.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

T = TypeVar("T")


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


class TokenResponse(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    role: str


class UserOut(msgspec.Struct):
    username: str
    role: str
    disabled: bool = False


class UserList(msgspec.Struct):
    users: list[UserOut]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str
    role: str = "viewer"


class UserPatch(msgspec.Struct, forbid_unknown_fields=True):
    role: str | None = None
    password: str | None = None
    disabled: bool | None = None


class EventOut(msgspec.Struct):
    seq: int
    stream: str
    version: int
    type: str
    ts: float
    data: dict[str, Any]
    user: str = ""
    correlation_id: str = ""
    causation_id: str = ""


class EventPage(msgspec.Struct):
    events: list[EventOut]
    last_seq: int
    next_after: int


class Health(msgspec.Struct):
    status: str
    ready: bool = False
    detail: str | None = None


_JSON_TYPES = ("application/json", "")


async def read_json(request: web.Request, type_: type[T], max_bytes: int) -> T:
    """Decode the request body into ``type_``: 415 on a non-JSON type, 413 over ``max_bytes``,
    400 when it is not JSON, 422 naming the field that failed validation."""
    ctype = request.content_type if request.headers.get("Content-Type") else ""
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")
    return decode_json(await read_body(request, max_bytes), type_)


def decode_json(body: bytes, type_: type[T]) -> T:
    if not body.strip():
        raise BadRequest("request body is empty; expected JSON")
    try:
        msgspec.json.decode(body)  # syntax first: broken JSON is 400 even when a field is also wrong
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        field = msg.rsplit("at `", 1)[-1].rstrip("`") if "at `" in msg else None
        raise ValidationFailed(msg, {"field": field} if field else {}) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json", headers=headers
    )


async def read_body(
    request: web.Request, max_bytes: int, on_progress: Callable[[int], None] | None = None
) -> bytes:
    """The whole body, refusing more than ``max_bytes`` (413) as soon as it is crossed;
    ``on_progress(bytes so far)`` runs after each chunk (an admission holding the bytes may refuse)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body over {max_bytes} bytes", {"limit": max_bytes})
    body = bytearray()
    async for chunk in request.content.iter_chunked(256 * 1024):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body over {max_bytes} bytes", {"limit": max_bytes})
        if on_progress is not None:
            on_progress(len(body))
    return bytes(body)
