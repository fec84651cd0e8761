"""The route table: every route of the gateway, gathered from the ``ROUTES`` of each ``api_*`` module."""

from __future__ import annotations

from cvops.platform import (
    api_datasets,
    api_deployments,
    api_docs,
    api_events,
    api_jobs,
    api_models,
    api_oip,
    api_packages,
    api_reports,
    api_system,
    api_users,
)
from cvops.platform.routes import Route

MODULES = (
    api_system,
    api_docs,
    api_users,
    api_events,
    api_models,
    api_datasets,
    api_jobs,
    api_reports,
    api_deployments,
    api_packages,
    api_oip,
)


def all_routes() -> list[Route]:
    return [route for mod in MODULES for route in mod.ROUTES]
