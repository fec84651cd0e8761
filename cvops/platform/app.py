"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web

from cvops.config import Settings
from cvops.platform.api_jobs import SUBMIT_LOCKS
from cvops.platform.api_packages import PACKAGES, Packages
from cvops.platform.keys import METRICS, ROUTE_SPECS, SERVICES, SETTINGS, WEBSOCKETS
from cvops.platform.metrics import Metrics
from cvops.platform.middleware import auth_middleware, errors_middleware, metrics_middleware
from cvops.platform.services import BootedStore, Services
from cvops.platform.table import all_routes
from cvops.platform.uploads import UPLOAD_QUOTA, UploadQuota

log = logging.getLogger(__name__)

Boot = Callable[[web.Application], Awaitable[None]]


def make_app(
    settings: Settings,
    services: Services | None = None,
    *,
    background: list[Callable[[web.Application], AsyncIterator[None]]] | None = None,
) -> web.Application:
    """Build the gateway. ``background`` are cleanup_ctx generators (boot of Ray and the actors,
    periodic stats) run with the app's life."""
    app = web.Application(
        middlewares=[metrics_middleware(), errors_middleware(), auth_middleware()],
        client_max_size=max(settings.max_model_bytes, settings.max_dataset_bytes, settings.max_predict_bytes)
        + 1024**2,
    )
    app[SETTINGS] = settings
    services = services if services is not None else Services()
    app[SERVICES] = services
    store = BootedStore(services)  # the gateway's own projections reach the store once boot is done
    app[UPLOAD_QUOTA] = UploadQuota(store, settings.max_stored_bytes_per_user, settings.blob_root)
    app[PACKAGES] = Packages(store, settings.data_path)
    app[SUBMIT_LOCKS] = {}
    app[METRICS] = Metrics()
    app[WEBSOCKETS] = set()  # type: ignore[index]
    specs: dict[Any, Any] = {}
    for spec in all_routes():
        route = app.router.add_route(spec.method, spec.full_path, spec.handler)
        specs[route] = spec
    app[ROUTE_SPECS] = specs
    app.on_shutdown.append(_close_websockets)
    for ctx in background or []:
        app.cleanup_ctx.append(ctx)
    return app


async def _close_websockets(app: web.Application) -> None:
    sockets = list(app[WEBSOCKETS])  # type: ignore[index]
    if sockets:
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
            return_exceptions=True,
        )
