"""The route table: every route of the gateway, with the roles that may call it, in one place.

Each ``api_*`` module exposes ``ROUTES``; :func:`all_routes` gathers them.  The auth middleware and
the OpenAPI generator both read this table, and a test fails for any registered route without a rule.
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


def all_routes() -> list[Route]:
    from cvops.platform import api_docs, api_events, api_system, api_users

    routes: list[Route] = []
    for mod in (api_system, api_docs, api_users, api_events):
        routes.extend(mod.ROUTES)
    for name in ("api_models", "api_datasets", "api_jobs", "api_deployments", "api_packages"):
        try:
            mod = __import__(f"cvops.platform.{name}", fromlist=["ROUTES"])
        except ModuleNotFoundError as exc:
            if exc.name != f"cvops.platform.{name}":
                raise
            continue
        routes.extend(mod.ROUTES)
    return routes
