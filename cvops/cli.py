"""``cvops serve | replay | tui | package verify``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from cvops import __version__

if TYPE_CHECKING:
    from cvops.config import Settings

log = logging.getLogger("cvops")


# attributes every LogRecord has; anything else on a record came from ``extra=`` and is printed
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
LOG_FORMATS = ("text", "json")


def _log_extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER message key=value ...``: the ``extra=`` fields after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        extras = _log_extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_kv(v)}" for k, v in extras.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the ``extra=`` fields, exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _log_extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fail(message: str) -> int:
    """A start-up failure: one line on stderr (a JSON object with CVOPS_LOG_FORMAT=json), exit status 1."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        log.error("cvops: %s", message, extra={"event": "startup_failed"})
    else:
        sys.stderr.write(f"cvops: {message}\n")
        sys.stderr.flush()
    return 1


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from cvops.platform.app import make_app
    from cvops.platform.keys import REINSTALL_SIGNALS
    from cvops.platform.runtime import (
        boot_ctx,
        check_secrets,
        default_signals,
        listen_socket,
        pick_dashboard_port,
        secure_data_dir,
    )

    # every check that can fail runs before anything starts: the port is bound before Ray boots
    check_secrets(settings)
    secure_data_dir(settings.data_path)
    sock = listen_socket(settings.host, settings.port)
    if not settings.ray_address:
        settings = msgspec.structs.replace(settings, dashboard_port=pick_dashboard_port(settings))
    stop = asyncio.Event()
    failed: list[str] = []
    loop = asyncio.get_running_loop()

    def install() -> None:
        for sig in default_signals():
            loop.add_signal_handler(sig, stop.set)

    def announce(
        dashboard: str | None, generated: str | None, error: str | None = None, hint: str = ""
    ) -> None:
        if error:
            failed.append(error)
            _fail(f"cannot start: {error}")
            stop.set()
            return
        if dashboard:
            _out(f"Ray dashboard: {dashboard}")
            if hint:
                _out(f"  ({hint})")
        if generated:
            _out(f"Created user 'admin' with generated password: {generated}  (shown once)")
        _out("cvops ready")

    app = make_app(settings, background=[boot_ctx(announce)])
    app[REINSTALL_SIGNALS] = lambda: loop.call_soon_threadsafe(install)
    install()
    # no per-request access log: at 100 concurrent users it costs CPU; /metrics counts requests
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    log.info("gateway listening", extra={"host": host, "port": port, "data_dir": str(settings.data_path)})
    _out(f"cvops gateway: http://{shown}:{port}")
    await stop.wait()
    _out("cvops stopping")
    try:
        await asyncio.wait_for(runner.cleanup(), 25)
    except TimeoutError:
        log.warning("shutdown took longer than 25 s")
    _out("cvops stopped")
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from cvops.config import load_settings
    from cvops.errors import CvopsError

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    fmt = (args.log_format or os.environ.get("CVOPS_LOG_FORMAT") or "text").lower()
    if fmt not in LOG_FORMATS:
        return _fail(f"CVOPS_LOG_FORMAT={fmt!r} is not valid (set it, or --log-format, to text or json)")
    _setup_logging(args.log_level, fmt)
    try:
        settings = load_settings(**overrides)
        status = asyncio.run(_serve(args, settings))
    except CvopsError as exc:
        return _fail(exc.message)
    if status != 0:  # the boot failed part-way: nothing it started may outlive us, nor keep us alive
        from cvops.platform.runtime import exit_soon, stop_descendants

        stop_descendants()
        exit_soon(status)
    return status


class _RefusePassword(argparse.Action):
    """``cvops tui --password X`` is refused: argv is readable by every local user (``ps``)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            "--password is not accepted (the command line is visible to other users); "
            "use --password-file FILE, the CVOPS_PASSWORD environment variable, or the login prompt"
        )


def _cmd_tui(args: argparse.Namespace) -> int:
    from cvops.errors import CvopsError
    from cvops.tui import resolve_password, run_tui

    try:
        password = resolve_password(args.password_file)
    except CvopsError as exc:
        sys.stderr.write(f"cvops tui: {exc.message}\n")
        return 2
    return run_tui(args.url, args.username, password)


def _cmd_package_verify(args: argparse.Namespace) -> int:
    """Exit 0: verifies; 1: the package does not; 2: the key cannot be used."""
    from pathlib import Path

    from cvops.errors import CvopsError
    from cvops.packaging import key_id, load_public_key, verify_package

    key = None
    if args.key is not None:
        if "://" in args.key:  # a key fetched next to the package proves little: pin it in a file
            _out(
                "FAIL --key takes a file; save the server's key once "
                "(GET /api/v1/packages/public-key) and pass that file"
            )
            return 2
        try:
            key = load_public_key(Path(args.key).read_bytes())
        except OSError as exc:
            _out(f"FAIL cannot read key file {args.key}: {exc.strerror or exc}")
            return 2
        except CvopsError as exc:
            _out(f"FAIL {args.key}: {exc.message}")
            return 2
    problems = verify_package(args.path, key)
    if problems:
        for p in problems:
            _out(f"FAIL {p}")
        return 1
    if key is None:
        _out(
            f"ok: {args.path}: checksums verify; signature NOT checked "
            "(pass --key with the server's public key to check who built it)"
        )
    else:
        _out(f"ok: {args.path} verifies: checksums and Ed25519 signature by key {key_id(key)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvops", description="cvops: optimize and deploy CV models")
    parser.add_argument("--version", action="version", version=f"cvops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start Ray, the actors and the gateway")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None, help="0 picks a free port")
    serve.add_argument("--data-dir", default=None)
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None, help="default: CVOPS_LOG_FORMAT, else text"
    )
    serve.set_defaults(func=_cmd_serve)

    tui = sub.add_parser("tui", help="the terminal client")
    tui.add_argument("--url", default="http://127.0.0.1:8080")
    tui.add_argument("--username", default="admin")
    tui.add_argument(
        "--password-file",
        default=None,
        help="read the password from the first line of FILE (else CVOPS_PASSWORD, else a masked prompt)",
    )
    tui.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    tui.set_defaults(func=_cmd_tui)

    pkg = sub.add_parser("package", help="deployment packages")
    pkg_sub = pkg.add_subparsers(dest="package_command", required=True)
    verify = pkg_sub.add_parser(
        "verify", help="check a package's checksums and (with --key) its Ed25519 signature"
    )
    verify.add_argument("path")
    verify.add_argument(
        "--key",
        default=None,
        metavar="KEYFILE",
        help="the server's public key (the JSON of GET /api/v1/packages/public-key, or its PEM): the "
        "signature must be present and made by it; without --key only the checksums are checked",
    )
    verify.set_defaults(func=_cmd_package_verify)

    from cvops import package_server  # `cvops serve-package PKG`: a package served on its own

    package_server.register(sub)

    from cvops import cli_client  # login, models, datasets, train, jobs, report, deploy, predict, ...

    cli_client.register(sub)

    from cvops import gc  # offline, over the data dir

    gc.register(sub)

    from cvops import replay  # offline, over the data dir

    replay.register(sub)
    sub.choices["replay"].set_defaults(func=replay.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cvops.cli_client import route_argv  # `cvops package MODEL` next to `cvops package verify PKG`

    parser = build_parser()
    args = parser.parse_args(route_argv(sys.argv[1:] if argv is None else list(argv)))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
