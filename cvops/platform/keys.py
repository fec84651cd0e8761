"""Typed application state (``web.AppKey``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cvops.config import Settings

if TYPE_CHECKING:
    from cvops.platform.metrics import Metrics
    from cvops.platform.routes import Route
    from cvops.platform.services import Services

SETTINGS = web.AppKey("settings", Settings)
SERVICES: web.AppKey[Services] = web.AppKey("services")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
ROUTE_SPECS: web.AppKey[dict[Any, Route]] = web.AppKey("route_specs")
WEBSOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets", set)
# re-installs the gateway's SIGTERM/SIGINT handlers after Ray's driver installed its own (set by `serve`)
REINSTALL_SIGNALS: web.AppKey[Callable[[], object]] = web.AppKey("reinstall_signals")
