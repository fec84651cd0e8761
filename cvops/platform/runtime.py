"""Start-up checks, boot and shutdown of Ray and the actors (a cleanup_ctx of the gateway app).

Before anything starts, :func:`check_secrets`, :func:`secure_data_dir`, :func:`listen_socket` and
:func:`pick_dashboard_port` turn every foreseeable start-up problem into a :class:`StartupFailed` with a
one-line message naming the setting to change.  The gateway listens first; Ray and the actors start in
the background, and ``/ready`` answers 503 until they are up.  On shutdown the actors are asked to
stop, then Ray is shut down.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from cvops.actors.eventlog import EventStore
from cvops.config import Settings
from cvops.errors import CvopsError, StartupFailed
from cvops.events.sqlite_reader import ReadThroughStore
from cvops.platform.auth import Authenticator, load_or_create_secret
from cvops.platform.keys import REINSTALL_SIGNALS, SERVICES, SETTINGS
from cvops.platform.services import Services

log = logging.getLogger(__name__)

MIN_JWT_SECRET_BYTES = 32
MIN_ADMIN_PASSWORD_CHARS = 12
# the obvious choices that pass the length and character-class rules (compared case-insensitively)
COMMON_PASSWORDS = frozenset(
    {
        "password1234",
        "password123!",
        "password-123",
        "passw0rd1234",
        "p@ssw0rd1234",
        "p@ssword1234",
        "qwerty123456",
        "qwertyuiop12",
        "qwertyuiop123",
        "1q2w3e4r5t6y",
        "1qaz2wsx3edc",
        "abc123456789",
        "abcd12345678",
        "admin1234567",
        "admin123456789",
        "administrator1",
        "changeme1234",
        "change-me-now",
        "letmein12345",
        "welcome12345",
        "iloveyou1234",
        "trustno11234",
        "cvops-admin1",
        "cvopsadmin123",
    }
)
DASHBOARD_PORT_TRIES = 100


def password_weakness(password: str) -> str | None:
    """Why ``password`` is too weak for the admin account, or None."""
    if len(password) < MIN_ADMIN_PASSWORD_CHARS:
        return f"it has {len(password)} characters, fewer than {MIN_ADMIN_PASSWORD_CHARS}"
    classes = {
        "lower" if c.islower() else "upper" if c.isupper() else "digit" if c.isdigit() else "other"
        for c in password
    }
    if len(classes) < 2:
        return "it uses one kind of character only (mix letters with digits or symbols)"
    if password.lower() in COMMON_PASSWORDS or len(set(password)) < 4:
        return "it is a common or repetitive password"
    return None


def check_secrets(settings: Settings) -> None:
    """Refuse a short CVOPS_JWT_SECRET and a weak CVOPS_ADMIN_PASSWORD (both optional)."""
    if settings.jwt_secret is not None:
        size = len(settings.jwt_secret.encode())
        if size < MIN_JWT_SECRET_BYTES:
            raise StartupFailed(
                f"CVOPS_JWT_SECRET is {size} bytes, fewer than {MIN_JWT_SECRET_BYTES} (set a longer one, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`, or unset it to use a "
                "generated one)",
                {"env": "CVOPS_JWT_SECRET"},
            )
    if settings.admin_password is not None:
        why = password_weakness(settings.admin_password)
        if why is not None:
            raise StartupFailed(
                f"CVOPS_ADMIN_PASSWORD is too weak: {why} (set one of {MIN_ADMIN_PASSWORD_CHARS}+ characters "
                "mixing letters with digits or symbols, or unset it to get a generated one)",
                {"env": "CVOPS_ADMIN_PASSWORD"},
            )


_PRIVATE_FILES = ("events.db", "events.db-wal", "events.db-shm", "jwt_secret")
_PRIVATE_DIRS = ("blobs", "datasets")


def secure_data_dir(path: Path) -> None:
    """umask 077 for this process (and so for Ray and every actor it starts), the data dir created or
    narrowed to 0700, and what an older version left readable (events.db, jwt_secret, blobs/) narrowed.
    A data dir that cannot be created is a start-up failure; one that cannot be narrowed (another
    user's directory) is logged, not fatal."""
    os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
    except OSError as exc:
        raise StartupFailed(
            f"cannot use the data dir {path}: {exc.strerror or exc} (set CVOPS_DATA_DIR or --data-dir)",
            {"env": "CVOPS_DATA_DIR"},
        ) from exc
    for p in (path, *(path / name for name in _PRIVATE_FILES + _PRIVATE_DIRS)):
        try:
            mode = p.stat().st_mode
            if mode & 0o077:
                p.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning(
                "cannot make %s private", p, extra={"path": str(p), "error": exc.strerror or str(exc)}
            )


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a fresh restart after TIME_WAIT
        sock.bind(addr)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address in use"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return str(exc.strerror or exc).lower()


def listen_socket(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before anything else starts."""
    try:
        return _bind(host, port)
    except OSError as exc:
        hint = "set CVOPS_HOST or --host" if isinstance(exc, socket.gaierror) else "set CVOPS_PORT or --port"
        if exc.errno in (errno.EADDRNOTAVAIL,):
            hint = "set CVOPS_HOST or --host"
        raise StartupFailed(
            f"cannot listen on {host}:{port}: {_os_reason(exc)} ({hint})", {"host": host, "port": port}
        ) from exc


def _port_free(host: str, port: int) -> bool:
    try:
        _bind(host, port).close()
    except OSError:
        return False
    return True


def pick_dashboard_port(settings: Settings, env: Mapping[str, str] | None = None) -> int:
    """The embedded Ray dashboard's port: CVOPS_DASHBOARD_PORT if set (it must be free), else the first
    free one from 8265 on, so that a second ``cvops serve`` on the machine starts too."""
    env = os.environ if env is None else env
    host, port = settings.dashboard_host, settings.dashboard_port
    if env.get("CVOPS_DASHBOARD_PORT"):
        if not _port_free(host, port):
            raise StartupFailed(
                f"cannot start the Ray dashboard on {host}:{port}: address in use (set CVOPS_DASHBOARD_PORT "
                "to a free port, or unset it to take the next free one)",
                {"env": "CVOPS_DASHBOARD_PORT"},
            )
        return port
    for candidate in range(port, min(port + DASHBOARD_PORT_TRIES, 65536)):
        if _port_free(host, candidate):
            return candidate
    raise StartupFailed(
        f"cannot start the Ray dashboard: ports {port}-{port + DASHBOARD_PORT_TRIES - 1} on {host} are all in use "
        "(set CVOPS_DASHBOARD_PORT)",
        {"env": "CVOPS_DASHBOARD_PORT"},
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_auth_on() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # pragma: no cover - a Ray without token auth
        return False
    return bool(is_token_auth_enabled())


TOKEN_HINT = (
    "Ray token auth is on: send the token (`ray get-auth-token`, kept in ~/.ray/auth_token) as "
    "'Authorization: Bearer <token>', or paste it into the dashboard's sign-in"
)


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
    # Ray's driver-side warnings go through cvops' own handler (text or JSON), not Ray's format
    ray_log = logging.getLogger("ray")
    ray_log.handlers.clear()
    ray_log.propagate = True
    ray_log.setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {
        "namespace": "cvops",
        "log_to_driver": False,
        "configure_logging": False,
    }
    if settings.ray_address:
        kwargs["address"] = settings.ray_address
    else:
        # Ray 2.60 turns token auth on for a new local cluster (GCS, raylets, dashboard), and then its
        # dashboard answers 401 to a browser without the token.  Auth stays on: Ray's dashboard listens
        # on a private loopback port and cvops' proxy on the printed port adds the token
        # (cvops.platform.dashboard_proxy).
        from cvops.platform.dashboard_proxy import free_loopback_port

        internal = free_loopback_port()
        kwargs.update(
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=internal,
            num_cpus=settings.ray_num_cpus or max(4, os.cpu_count() or 1),
            object_store_memory=512 * 1024 * 1024,
        )
    info = ray.init(**kwargs)
    url = getattr(info, "dashboard_url", "") or ""
    if url and not url.startswith("http"):
        url = f"http://{url}"
    target = ""
    if url and not settings.ray_address:
        target = url  # Ray's own, private; the user gets the proxy's
        host = settings.dashboard_host
        url = f"http://{f'[{host}]' if ':' in host else host}:{settings.dashboard_port}"
    session_dir = ""
    try:
        session_dir = info.address_info.get("session_dir", "")  # type: ignore[attr-defined]
    except AttributeError:
        session_dir = ""
    return {
        "dashboard_url": url,
        "dashboard_target": target,
        # the proxy adds the token only on loopback; elsewhere the dashboard asks for it
        "dashboard_hint": TOKEN_HINT
        if url and _token_auth_on() and not _loopback(settings.dashboard_host)
        else "",
        "session_dir": session_dir,
        "node_id": ray.get_runtime_context().get_node_id(),
    }


async def start_services(settings: Settings, services: Services) -> str | None:
    """Start the actors; returns a generated admin password to print once, if one was made."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    writer = EventStore.start(str(settings.db_path))
    await writer.ping()  # the actor has opened (created) the file: the read side can open it now
    # the gateway reads the file through aiosqlite; the actor stays the only writer
    # (CVOPS_EVENT_READS=actor reads through the actor as before: for scripts/bench_event_reads.py)
    store: EventStore | ReadThroughStore = writer
    if settings.event_reads == "sqlite":
        store = await ReadThroughStore.open(settings.db_path, writer)
    services.store = store
    services.closers.append(store.close)
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
    services.ready = True
    return generated


async def stop_services(services: Services) -> None:
    """Ask the actors to stop (pool, scheduler, registry: 10 s each), then close the event log (5 s)."""
    facades = (("pool", services.pool), ("scheduler", services.scheduler), ("registry", services.registry))
    for name, facade in facades:
        if facade is not None:
            try:
                await asyncio.wait_for(facade.stop(), 10)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown goes on regardless
                log.warning("stopping %s failed: %r", name, exc)
    for close in services.closers:
        try:
            await asyncio.wait_for(close(), 5)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001
            log.warning("closing the event log failed: %r", exc)


def stop_descendants(timeout: float = 5.0) -> None:
    """Stop every process this one started (a half-started Ray after a failed boot leaves its GCS and
    raylet behind, and no reaper was started for them): SIGTERM, then SIGKILL after ``timeout``."""
    import psutil

    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue


def exit_soon(status: int, grace_s: float = 10.0) -> None:
    """Make sure the process ends with ``status`` even if a thread that Ray left behind would keep the
    interpreter from exiting: a daemon timer forces the exit after ``grace_s``."""
    import threading

    def force() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    timer = threading.Timer(grace_s, force)
    timer.daemon = True
    timer.start()


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

        proxies: list[web.AppRunner] = []

        async def boot() -> None:
            try:
                info = await loop.run_in_executor(None, init_ray, settings) if manage_ray else {}
                if info.get("dashboard_target"):
                    from cvops.platform.dashboard_proxy import make_proxy_app, ray_auth_headers

                    headers = ray_auth_headers() if _loopback(settings.dashboard_host) else {}
                    runner = web.AppRunner(make_proxy_app(info["dashboard_target"], headers), access_log=None)
                    await runner.setup()
                    proxies.append(runner)
                    try:
                        await web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port).start()
                    except OSError as exc:
                        raise StartupFailed(
                            f"cannot start the Ray dashboard on {settings.dashboard_host}:"
                            f"{settings.dashboard_port}: {exc.strerror or exc} (set CVOPS_DASHBOARD_PORT)",
                            {"env": "CVOPS_DASHBOARD_PORT"},
                        ) from exc
                if manage_ray:
                    if not settings.ray_address:  # never reap a cluster we only joined
                        start_reaper(info.get("session_dir", ""))
                    # Ray's driver installs its own SIGTERM handler; ours must win
                    reinstall = app.get(REINSTALL_SIGNALS)
                    if reinstall is not None:
                        reinstall()
                generated = await start_services(settings, services)
                secure_data_dir(settings.data_path)  # files an actor elsewhere (RAY_ADDRESS) created
                if announce is not None:
                    announce(info.get("dashboard_url", ""), generated, hint=info.get("dashboard_hint", ""))
            except Exception as exc:
                # the one line goes out through announce; the traceback only with --log-level debug
                log.debug("boot failed", exc_info=True)
                message = exc.message if isinstance(exc, CvopsError) else str(exc)
                first = (message.strip().splitlines() or [""])[0]
                services.boot_error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
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
        for runner in proxies:
            await runner.cleanup()
        await stop_services(services)
        if manage_ray:
            import ray

            await loop.run_in_executor(None, ray.shutdown)

    return ctx


def default_signals() -> tuple[int, ...]:
    return (signal.SIGTERM, signal.SIGINT)
