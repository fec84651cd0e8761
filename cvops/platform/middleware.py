"""Small middleware factories: metrics → errors → auth (outermost first)."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cvops.errors import (
    CvopsError,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    code_for_status,
)
from cvops.platform.auth import Principal
from cvops.platform.bodies import json_response
from cvops.platform.context import PRINCIPAL
from cvops.platform.keys import METRICS, ROUTE_SPECS, SERVICES
from cvops.platform.report_links import principal_from_link
from cvops.platform.routes import Handler

log = logging.getLogger(__name__)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def metrics_middleware() -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            m = request.app[METRICS]
            route = _route_name(request)
            m.requests.labels(request.method, route, str(status)).inc()
            m.latency.labels(request.method, route).observe(time.perf_counter() - start)

    return mw


#: the Open Inference Protocol's routes (cvops.platform.api_oip): errors there are ``{"error": "..."}``
OIP_PREFIX = "/v2"


def is_oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def error_response(err: CvopsError, oip: bool = False) -> web.Response:
    headers = None
    if isinstance(err, TooManyRequests):
        headers = {"Retry-After": str(max(1, int(round(err.retry_after))))}
    if isinstance(err, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    body = {"error": err.message} if oip else err.to_dict()
    return json_response(body, status=err.status, headers=headers)


def errors_middleware() -> web.middleware:  # type: ignore[valid-type]
    """The one place where exceptions become the JSON error shape; never a stack trace."""

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CvopsError as err:
            if err.status >= 500:
                log.warning(
                    "request failed", extra={"path": request.path, "code": err.code, "error": err.message}
                )
            return error_response(err, is_oip(request.path))
        except web.HTTPException as exc:
            if exc.status < 400 or exc.status == 101:
                raise
            code = code_for_status(exc.status)
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return json_response(
                {"error": exc.reason}
                if is_oip(request.path)
                else {"error": {"code": code, "message": exc.reason, "details": {}}},
                status=exc.status,
                headers=headers,
            )
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path, "method": request.method})
            return error_response(CvopsError("internal error"), is_oip(request.path))

    return mw


# the one route that takes ``?token=``: browsers cannot set headers on a websocket.  Everywhere else a
# token in the URL would land in proxy logs and browser history, so only the header counts.
QUERY_TOKEN_ROUTES = frozenset({"/api/v1/events/ws"})
TOKEN: web.RequestKey[str] = web.RequestKey("cvops.token", str)
# the routes that also open with ``?sig=`` of a short-lived signed link (cvops.platform.report_links);
# kept here, not imported from api_reports, so the middleware does not depend on a handler module
SIGNED_LINK_ROUTES = frozenset({"/api/v1/jobs/{id}/report", "/api/v1/models/{id}/card"})


def bearer_token(request: web.Request, allow_query: bool = False) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        return value.strip()
    if allow_query and request.headers.get("Upgrade", "").lower() == "websocket":
        return request.query.get("token") or None
    return None


def optional_principal(request: web.Request) -> Principal | None:
    """On a public route: the caller if a valid Authorization header came, else None (a public route
    never answers 401: a missing, bad or expired token just gets the anonymous answer)."""
    auth = request.app[SERVICES].auth
    if auth is None:  # still booting: nobody can be authenticated yet
        return None
    try:
        token = bearer_token(request)
        return auth.authenticate(token) if token is not None else None
    except Unauthorized:
        return None


def auth_middleware() -> web.middleware:  # type: ignore[valid-type]
    """Checks every matched route against its rule in the route table."""

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        specs = request.app[ROUTE_SPECS]
        spec = specs.get(request.match_info.route)
        if spec is None:
            # unmatched (404/405) or aiohttp's automatic HEAD; let aiohttp answer
            if request.match_info.http_exception is not None:
                raise request.match_info.http_exception
            raise NotFound("no such route")
        if spec.public:
            return await handler(request)
        if (
            spec.full_path in SIGNED_LINK_ROUTES
            and "sig" in request.query
            and not request.headers.get("Authorization")
        ):
            # a short-lived signed link (POST .../report-link): opens this one path, in its maker's name
            principal = principal_from_link(
                request.app[SERVICES].need_auth(), request.query["sig"], request.path
            )
        else:
            token = bearer_token(request, allow_query=spec.full_path in QUERY_TOKEN_ROUTES)
            if token is None:
                raise Unauthorized("missing bearer token")
            principal = request.app[SERVICES].need_auth().authenticate(token)
            request[TOKEN] = token
        if principal.role not in spec.roles:
            raise Forbidden(
                f"role {principal.role!r} may not call {spec.method} {spec.full_path}",
                {"required": sorted(spec.roles)},
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return mw
