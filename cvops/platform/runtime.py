"""Boot and shutdown of Ray and the actors, as a cleanup_ctx of the gateway app.

The gateway listens first; Ray and the actors start in the background, and ``/ready`` answers 503
until they are up.  On shutdown the actors are asked to stop, then Ray is shut down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cvops.actors.eventlog import EventStore
from cvops.config import Settings
from cvops.platform.auth import Authenticator, load_or_create_secret
from cvops.platform.keys import SERVICES, SETTINGS

log = logging.getLogger(__name__)

BOOT_HOOKS: list[Any] = []  # async callables (settings, services) -> None, appended by actor modules


def init_ray(settings: Settings) -> dict[str, str]:
    """Start an embedded local Ray (dashboard on 127.0.0.1) or join RAY_ADDRESS."""
    import ray

    # Ray workers inherit this environment: ultralytics must never try the network or pip
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((settings.data_path / "ultralytics").resolve()))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return {"dashboard_url": "", "session_dir": "", "node_id": ctx.get_node_id()}
    kwargs: dict[str, Any] = {
        "namespace": "cvops",
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": True,
    }
    if settings.ray_address:
        kwargs["address"] = settings.ray_address
    else:
        kwargs.update(
            include_dashboard=True,
            dashboard_host=settings.dashboard_host,
            dashboard_port=settings.dashboard_port,
            num_cpus=settings.ray_num_cpus or max(4, os.cpu_count() or 1),
            object_store_memory=512 * 1024 * 1024,
        )
    info = ray.init(**kwargs)
    url = getattr(info, "dashboard_url", "") or ""
    if url and not url.startswith("http"):
        url = f"http://{url}"
    session_dir = ""
    try:
        session_dir = info.address_info.get("session_dir", "")  # type: ignore[attr-defined]
    except AttributeError:
        session_dir = ""
    return {
        "dashboard_url": url,
        "session_dir": session_dir,
        "node_id": ray.get_runtime_context().get_node_id(),
    }


async def start_services(settings: Settings, services: Any) -> str | None:
    """Start the actors; returns a generated admin password to print once, if one was made."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    store = EventStore.start(str(settings.db_path))
    await store.ping()
    services.store = store
    auth = Authenticator(store, settings, load_or_create_secret(settings))
    generated = await auth.bootstrap_admin()
    services.auth = auth
    from cvops.actors.registry import Registry
    from cvops.actors.scheduler import Scheduler

    services.registry = await Registry.start(settings)
    services.scheduler = await Scheduler.start(settings)
    from cvops.actors.inference import InferencePool

    pool = InferencePool(settings, store, services.registry)
    await pool.start()
    services.pool = pool
    for hook in BOOT_HOOKS:
        await hook(settings, services)
    services.ready = True
    return generated


async def stop_services(services: Any) -> None:
    for name in ("pool", "scheduler", "registry"):
        facade = getattr(services, name, None)
        stop = getattr(facade, "stop", None)
        if stop is not None:
            try:
                await asyncio.wait_for(stop(), 10)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown goes on regardless
                log.warning("stopping %s failed: %r", name, exc)
    if services.store is not None:
        try:
            await asyncio.wait_for(services.store.close(), 5)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001
            log.warning("closing the event log failed: %r", exc)


def start_reaper(session_dir: str) -> None:
    """A tiny process that outlives a ``kill -9`` of this server and then stops the Ray processes of
    this session, so the next start finds the database free."""
    subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "cvops.platform.reaper", str(os.getpid()), session_dir or ""],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def boot_ctx(announce: Any = None, manage_ray: bool = True) -> Any:
    """cleanup_ctx factory: boots Ray and the actors in the background, stops them at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        services = app[SERVICES]
        loop = asyncio.get_running_loop()

        async def boot() -> None:
            try:
                info = await loop.run_in_executor(None, init_ray, settings) if manage_ray else {}
                if manage_ray:
                    if not settings.ray_address:  # never reap a cluster we only joined
                        start_reaper(info.get("session_dir", ""))
                    # Ray's driver installs its own SIGTERM handler; ours must win
                    reinstall = app.get("cvops.reinstall_signals")
                    if callable(reinstall):
                        reinstall()
                generated = await start_services(settings, services)
                if announce is not None:
                    announce(info.get("dashboard_url", ""), generated)
            except Exception as exc:
                log.exception("boot failed")
                services.boot_error = f"{type(exc).__name__}: {exc}"
                if announce is not None:
                    announce(None, None, error=services.boot_error)

        task = asyncio.create_task(boot())
        yield
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        services.ready = False
        await stop_services(services)
        if manage_ray:
            import ray

            await loop.run_in_executor(None, ray.shutdown)

    return ctx


def default_signals() -> tuple[int, ...]:
    return (signal.SIGTERM, signal.SIGINT)
