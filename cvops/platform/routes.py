"""One route of the gateway and the roles that may call it (a leaf: it imports no handler module).

Each ``api_*`` module exposes ``ROUTES``; :func:`cvops.platform.table.all_routes` gathers them.  The
auth middleware and the OpenAPI generator both read that table, and a test fails for any registered
route without a rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ANYONE: frozenset[str] = frozenset()  # public: no token needed
EVERY_ROLE = frozenset({"admin", "engineer", "viewer"})
STAFF = frozenset({"admin", "engineer"})
ADMIN = frozenset({"admin"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # relative to the prefix
    handler: Handler
    roles: frozenset[str]  # ANYONE = public
    summary: str
    body: Any = None  # msgspec type of a JSON body, or a marker string for multipart/binary bodies
    response: Any = None
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)  # name -> "integer" | "string" | "boolean"
    prefix: str = "/api/v1"
    tag: str = "system"

    @property
    def public(self) -> bool:
        return not self.roles

    @property
    def full_path(self) -> str:
        return f"{self.prefix}{self.path}"
