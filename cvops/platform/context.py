"""Per-request helpers for handlers."""

from __future__ import annotations

from aiohttp import web

from cvops.errors import BadRequest, Unauthorized
from cvops.platform.auth import Principal

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("cvops.principal", Principal)


def principal(request: web.Request) -> Principal:
    p = request.get(PRINCIPAL)
    if not isinstance(p, Principal):
        raise Unauthorized("authentication required")
    return p


def query_int(request: web.Request, name: str, default: int, lo: int = 0, hi: int = 2**62) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"query parameter {name!r} must be an integer", {"parameter": name}) from exc
    if value < lo or value > hi:
        raise BadRequest(f"query parameter {name!r} must be between {lo} and {hi}", {"parameter": name})
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no", ""):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false", {"parameter": name})
