"""Liveness, readiness, metrics, effective config and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from cvops.errors import Unavailable
from cvops.platform.bodies import Health, json_response
from cvops.platform.keys import METRICS, ROUTE_SPECS, SERVICES, SETTINGS
from cvops.platform.middleware import optional_principal
from cvops.platform.openapi import build_openapi
from cvops.platform.routes import ANYONE, STAFF, Route


async def health(request: web.Request) -> web.StreamResponse:
    return json_response(Health(status="ok", ready=request.app[SERVICES].ready))


async def ready(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.ready:
        details: dict[str, object] = {}
        message = "actors are starting"
        if services.boot_error:
            message = "actors failed to start"
            caller = optional_principal(request)
            # exception text (paths, addresses) is for staff; anonymous callers learn only the state
            if caller is not None and caller.role in STAFF:
                details["boot_error"] = services.boot_error
        return json_response(Unavailable(message, details).to_dict(), status=503)
    return json_response(Health(status="ready", ready=True))


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text.  Anonymous scrapes get aggregate series only (no deployment ids); a request
    with a valid token (any role) gets the per-deployment series too."""
    with_ids = optional_principal(request) is not None
    m = request.app[METRICS]
    services = request.app[SERVICES]
    m.ready.set(1 if services.ready else 0)
    pool = services.pool
    if pool is not None:
        for dep_id, dep in list(pool.live.items()):
            m.observe_router(dep_id, dep.router.stats())
    return web.Response(
        body=m.render(with_deployments=with_ids),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Version": "0.0.4"},
    )


async def config(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[SETTINGS].masked())


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(build_openapi(list(request.app[ROUTE_SPECS].values())))


ROUTES = [
    Route("GET", "/health", health, ANYONE, "Liveness", response=Health, prefix=""),
    Route(
        "GET", "/ready", ready, ANYONE, "Readiness: 503 until every actor is up", response=Health, prefix=""
    ),
    Route("GET", "/metrics", metrics, ANYONE, "Prometheus metrics (text)", response="text", prefix=""),
    Route("GET", "/config", config, STAFF, "Effective settings, secrets masked", response=dict),
    Route("GET", "/openapi.json", openapi, ANYONE, "This OpenAPI document", response=dict),
]
