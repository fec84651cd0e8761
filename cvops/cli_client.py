"""The client commands of ``cvops``: login, models, datasets, train|benchmark|evolve, jobs, report,
deploy, deployments, predict, package, users — over :mod:`cvops.client`, with ``rich`` tables and
live progress bars.

Exit status: 0 success; 1 a job failed or was cancelled (``--watch``, ``jobs watch``), or the server
refused the request; 2 a usage error; 3 the server is unreachable or the login is missing, expired or
refused (one line on stderr saying what to do).

Create commands print the new id alone on stdout (``M=$(cvops models preset tiny_cnn)``) and their
human summary, live progress included, on stderr; read commands print tables, or JSON with ``--json``.

This module is the parser and the runner; the rest lives next to it: :mod:`cvops.cli_config` (the cached
login, URL, token, password, exit statuses), :mod:`cvops.cli_tables` (output), :mod:`cvops.cli_watch`
(live progress and job summaries), :mod:`cvops.cli_commands` and :mod:`cvops.cli_jobs` (the commands).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from cvops import cli_commands as C
from cvops import cli_jobs as J
from cvops import errors as E
from cvops.cli_commands import Handler
from cvops.cli_config import (
    DEFAULT_URL,
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_USAGE,
    NotLoggedIn,
    UsageError,
    resolve_token,
    resolve_url,
)
from cvops.client import AsyncClient

CLIENT_COMMANDS = (
    "login",
    "models",
    "datasets",
    "train",
    "benchmark",
    "evolve",
    "jobs",
    "report",
    "deploy",
    "deployments",
    "predict",
    "users",
)
PACKAGE_BUILD = "package-build"  # the parser `cvops package MODEL` is routed to (see route_argv)

# ---------------------------------------------------------------------------------------- running


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"cvops: {message}\n")
    sys.stderr.flush()
    return code


async def _with_client(handler: Handler, args: argparse.Namespace) -> int:
    url = resolve_url(getattr(args, "url", None))
    token = resolve_token()
    async with AsyncClient(url, token) as api:
        return await handler(args, api)


def run(args: argparse.Namespace) -> int:
    """Run a parsed client command and map failures to exit codes (one line on stderr)."""
    handler = args.client_handler
    url = resolve_url(getattr(args, "url", None))
    try:
        if handler is C.login:
            return asyncio.run(C.login(args))
        assert handler is not None
        return asyncio.run(_with_client(handler, args))
    except NotLoggedIn as exc:
        return _fail(str(exc), EXIT_AUTH)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except E.Unauthorized as exc:
        return _fail(f"authentication failed at {url}: {exc.message}; run `cvops login`", EXIT_AUTH)
    except E.Forbidden as exc:
        return _fail(
            f"permission denied at {url}: {exc.message}; run `cvops login` as a user with the right role",
            EXIT_AUTH,
        )
    except E.CvopsError as exc:
        return _fail(f"{exc.message} ({exc.code})", EXIT_FAILED)
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(
            f"cannot reach the cvops server at {url} ({reason}); start it with `cvops serve`, "
            "or point CVOPS_URL (or `cvops login --url`) at it",
            EXIT_AUTH,
        )
    except KeyboardInterrupt:
        return _fail("interrupted (the job, if any, keeps running on the server)", 130)


class _RefusePassword(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            "--password is not accepted (the command line is visible to other users); "
            "use --password-file FILE, the CVOPS_PASSWORD environment variable, or the prompt"
        )


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd(
    parser: argparse.ArgumentParser, handler: Callable[..., Awaitable[int]], *, json_flag: bool = False
) -> None:
    parser.set_defaults(func=run, client_handler=handler)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _ls_show(group: Any, ls: tuple[str, Handler], show: tuple[str, Handler]) -> None:
    """A group's ``ls`` and ``show ID`` (both with ``--json``), each a (help, handler)."""
    _cmd(group.add_parser("ls", help=ls[0]), ls[1], json_flag=True)
    p = group.add_parser("show", help=show[0])
    p.add_argument("id")
    _cmd(p, show[1], json_flag=True)


def _password_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        default=None,
        help="read the password from the first line of FILE (else CVOPS_PASSWORD, else a prompt)",
    )
    parser.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)


def register(sub: Any) -> None:
    """Add the client commands to ``cvops``'s subparsers."""
    p = sub.add_parser("login", help="log in to a cvops server and cache the token")
    p.add_argument(
        "--url", default=None, help=f"the server (default: CVOPS_URL, the cached one, {DEFAULT_URL})"
    )
    p.add_argument("--username", default="admin")
    _password_flags(p)
    _cmd(p, C.login)

    models = _group(sub, "models", "models: list, show, upload, build a preset")
    _ls_show(models, ("list models", C.models_ls), ("one model's record", C.models_show))
    p = models.add_parser("upload", help="upload a model file (ONNX, .pt2, state_dict, yolov8n.pt)")
    p.add_argument("file")
    p.add_argument("--task", required=True, choices=("classification", "detection"))
    p.add_argument("--name", default=None)
    p.add_argument("--arch", default=None, help="a preset name, for state_dict uploads")
    p.add_argument("--labels", default=None, help="comma-separated or a JSON list")
    p.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224")
    p.add_argument("--no-wait", action="store_true", help="return before the conversion ends")
    _cmd(p, C.models_upload, json_flag=True)
    p = models.add_parser("preset", help="build a preset model (random or published weights)")
    p.add_argument("preset")
    p.add_argument("--name", default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--labels", default=None, help="comma-separated or a JSON list")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--pretrained", action="store_true", help="published weights from the weights cache")
    p.add_argument("--no-wait", action="store_true", help="return before the conversion ends")
    _cmd(p, C.models_preset, json_flag=True)
    p = models.add_parser("rm", help="delete a model (admin)")
    p.add_argument("id")
    _cmd(p, C.models_rm)

    datasets = _group(sub, "datasets", "datasets: list, show, upload")
    _ls_show(datasets, ("list datasets", C.datasets_ls), ("one dataset's record", C.datasets_show))
    p = datasets.add_parser(
        "upload", help="upload a zip (ImageFolder for classification, YOLO for detection)"
    )
    p.add_argument("file")
    p.add_argument("--task", default="classification", choices=("classification", "detection"))
    p.add_argument("--name", default=None)
    p.add_argument("--format", default=None, choices=("imagefolder", "yolo"))
    p.add_argument("--no-wait", action="store_true", help="return before the validation ends")
    _cmd(p, C.datasets_upload, json_flag=True)

    p = sub.add_parser("train", help="fine-tune a model on a dataset; prints the job id")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--schedule", choices=("cosine", "step"), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="any other hyperparameter")
    p.add_argument("--watch", action="store_true", help="follow the job to its end")
    _cmd(p, J.train)

    p = sub.add_parser("benchmark", help="benchmark a model on every engine (admin); prints the job id")
    p.add_argument("model")
    p.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8], help="e.g. 1,8")
    p.add_argument("--engines", type=_csv, default=None, help="comma-separated (default: every engine)")
    p.add_argument("--objective", choices=("latency", "throughput"), default="latency")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    for flag in ("--max-p50-ms", "--max-p95-ms", "--max-p99-ms", "--min-throughput", "--max-memory-mb"):
        p.add_argument(flag, type=float, default=None)
    p.add_argument("--watch", action="store_true", help="follow the job to its end")
    _cmd(p, J.benchmark)

    p = sub.add_parser("evolve", help="search hyperparameters with a seeded GA (admin); prints the job id")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--watch", action="store_true", help="follow the job to its end")
    _cmd(p, J.evolve)

    jobs = _group(sub, "jobs", "jobs: list, show, watch, cancel")
    p = jobs.add_parser("ls", help="list jobs")
    p.add_argument("--kind", choices=("train", "benchmark", "evolve"), default=None)
    p.add_argument("--status", default=None)
    _cmd(p, J.jobs_ls, json_flag=True)
    p = jobs.add_parser("show", help="one job's record")
    p.add_argument("id")
    _cmd(p, J.jobs_show, json_flag=True)
    p = jobs.add_parser("watch", help="follow a job with live progress bars; exit 1 if it fails")
    p.add_argument("id")
    _cmd(p, J.jobs_watch, json_flag=True)
    p = jobs.add_parser("cancel", help="cancel a job")
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="until it has ended")
    _cmd(p, J.jobs_cancel, json_flag=True)

    p = sub.add_parser("report", help="a job's report (stdout, or --output / --open)")
    p.add_argument("job")
    p.add_argument("--view", choices=("simple", "technical"), default="simple")
    p.add_argument("--format", choices=("md", "json", "html"), default="md")
    p.add_argument("--output", "-o", default=None, help="write to FILE")
    p.add_argument("--open", action="store_true", help="write to a file and open it")
    _cmd(p, J.report)

    p = sub.add_parser("deploy", help="serve a model (admin); prints the deployment id")
    p.add_argument("model")
    p.add_argument("--engine", default="auto", help="auto: the engine the latest benchmark selected")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=None)
    _cmd(p, C.deploy)

    deps = _group(sub, "deployments", "deployments: list, show, rm")
    _ls_show(deps, ("list deployments", C.deployments_ls), ("one deployment", C.deployments_show))
    p = deps.add_parser("rm", help="stop a deployment (admin)")
    p.add_argument("id")
    _cmd(p, C.deployments_rm)

    p = sub.add_parser("predict", help="predict on images (jpeg, png) or mp4 videos")
    p.add_argument("deployment")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    _cmd(p, C.predict, json_flag=True)

    p = sub.add_parser(
        PACKAGE_BUILD,
        prog="cvops package",
        help=argparse.SUPPRESS,
        description="build a signed package of a model and download it (admin)",
    )
    p.add_argument("model")
    p.add_argument("--engine", default="onnxruntime-cpu")
    p.add_argument("--output", "-o", default=None, help="default: cvops-<package id>.tar.gz")
    p.add_argument(
        "--save-key",
        default=None,
        metavar="KEYFILE",
        help="also save the server's public key (for cvops package verify --key)",
    )
    _cmd(p, C.package)
    # listed under `package` (route_argv sends `cvops package MODEL` here), not as a command of its own
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != PACKAGE_BUILD]
    sub.metavar = sub.metavar or "COMMAND"

    users = _group(sub, "users", "users (admin): list, add, set, rm")
    _cmd(users.add_parser("ls", help="list users"), C.users_ls, json_flag=True)
    p = users.add_parser("add", help="create a user (password: --password-file, CVOPS_PASSWORD or prompt)")
    p.add_argument("username")
    p.add_argument("--role", choices=("admin", "engineer", "viewer"), default="viewer")
    _password_flags(p)
    _cmd(p, C.users_add)
    p = users.add_parser("set", help="change a user's role, password or state")
    p.add_argument("username")
    p.add_argument("--role", choices=("admin", "engineer", "viewer"), default=None)
    p.add_argument("--disable", action="store_true")
    p.add_argument("--enable", action="store_true")
    _password_flags(p)
    _cmd(p, C.users_set)
    p = users.add_parser("rm", help="delete a user")
    p.add_argument("username")
    _cmd(p, C.users_rm)


def route_argv(argv: list[str]) -> list[str]:
    """``cvops package MODEL ...`` builds a package; ``cvops package verify PKG`` stays the verifier."""
    if len(argv) >= 2 and argv[0] == "package" and argv[1] not in ("verify", "-h", "--help"):
        return [PACKAGE_BUILD, *argv[1:]]
    return argv
