"""The client commands of ``cvops``: login, models, datasets, train|benchmark|evolve, jobs, report,
deploy, deployments, predict, package, users — over :mod:`cvops.client`, with ``rich`` tables and
live progress bars.

Exit status: 0 success; 1 a job failed or was cancelled (``--watch``, ``jobs watch``), or the server
refused the request; 2 a usage error; 3 the server is unreachable or the login is missing, expired or
refused (one line on stderr saying what to do).

Create commands print the new id alone on stdout (``M=$(cvops models preset tiny_cnn)``) and their
human summary, live progress included, on stderr; read commands print tables, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import tempfile
import webbrowser
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cvops import errors as E
from cvops.client import TERMINAL, AsyncClient

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3
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


class Credentials(msgspec.Struct, frozen=True):
    """What ``cvops login`` caches: the server and a bearer token (never the password)."""

    url: str
    token: str
    username: str = ""
    role: str = ""


class NotLoggedIn(Exception):
    """No token: neither CVOPS_TOKEN nor a cached login."""


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


# ---------------------------------------------------------------------------------------- config


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``CVOPS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cvops``, else ``~/.config/cvops``."""
    env = os.environ if env is None else env
    if env.get("CVOPS_CONFIG_DIR"):
        return Path(env["CVOPS_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cvops"


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials.json"


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials | None:
    path = credentials_path(env)
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_credentials(creds: Credentials, env: Mapping[str, str] | None = None) -> Path:
    """Write the credentials file with mode 0600 (its folder 0700), atomically."""
    path = credentials_path(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, msgspec.json.encode(creds) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def resolve_url(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    creds = load_credentials(env)
    return (flag or env.get("CVOPS_URL") or (creds.url if creds else "") or DEFAULT_URL).rstrip("/")


def resolve_token(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("CVOPS_TOKEN"):
        return env["CVOPS_TOKEN"]
    creds = load_credentials(env)
    if creds is None or not creds.token:
        raise NotLoggedIn("not logged in: run `cvops login --url URL --username NAME`")
    return creds.token


def read_password(password_file: str | None, env: Mapping[str, str] | None = None) -> str:
    """The password, never from argv: the first line of ``password_file``, else ``CVOPS_PASSWORD``,
    else a getpass prompt."""
    env = os.environ if env is None else env
    if password_file:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the password file {password_file}: {exc}") from exc
        password = text.split("\n", 1)[0].rstrip("\r")
        if not password:
            raise UsageError(f"the password file {password_file} is empty")
        return password
    if env.get("CVOPS_PASSWORD"):
        return env["CVOPS_PASSWORD"]
    try:
        return getpass.getpass("Password: ")
    except EOFError as exc:
        raise UsageError(
            "no password: give --password-file FILE or CVOPS_PASSWORD, or run in a terminal"
        ) from exc


# ---------------------------------------------------------------------------------------- output


def _consoles() -> tuple[Console, Console]:
    wide = None if sys.stdout.isatty() else 200
    return Console(soft_wrap=True, width=wide), Console(stderr=True, soft_wrap=True)


OUT, ERR = _consoles()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _print_id(value: str) -> None:
    sys.stdout.write(value + "\n")
    sys.stdout.flush()


def _table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if v is None:
        return "-"
    return str(v)


def _kv_table(title: str, record: Mapping[str, Any], keys: Sequence[str]) -> Table:
    rows = []
    for key in keys:
        if key in record and record[key] not in (None, "", [], {}):
            value = record[key]
            rows.append((key, json.dumps(value, default=str) if isinstance(value, dict | list) else value))
    return _table(title, ("field", "value"), rows)


# ---------------------------------------------------------------------------------------- watch


class _Bars:
    """rich progress bars fed by job progress dicts: an epoch and a batch bar for train, one bar
    per engine for benchmark, a trial bar for evolve."""

    def __init__(self, progress: Progress, job: Mapping[str, Any]) -> None:
        self.progress = progress
        self.job = job
        self.tasks: dict[str, TaskID] = {}
        self.status = progress.add_task(f"job {job['id']}: {job.get('status')}", total=None)

    def _task(self, key: str, description: str, total: float | None) -> TaskID:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total)
        return self.tasks[key]

    def set_status(self, status: str) -> None:
        self.progress.update(self.status, description=f"job {self.job['id']}: {status}")

    def update(self, p: Mapping[str, Any]) -> None:
        phase = str(p.get("phase") or "")
        kind = self.job.get("kind")
        spec = self.job.get("spec") or {}
        if kind == "train" or phase in ("epoch", "batch"):
            epochs = p.get("epochs") or (spec.get("hyperparameters") or {}).get("epochs") or 10
            bar = self._task("epochs", "epochs", float(epochs))
            if phase == "epoch":
                acc = p.get("val_accuracy")
                self.progress.update(
                    bar,
                    completed=float(p.get("epoch") or 0),
                    description=f"epoch {p.get('epoch')}/{epochs} loss {_fmt(p.get('loss'))} "
                    f"val_acc {_fmt(acc)}",
                )
            elif phase == "batch":
                batches = float(p.get("batches") or 1)
                bb = self._task("batches", "batches", batches)
                self.progress.update(
                    bb,
                    total=batches,
                    completed=float(p.get("batch") or 0),
                    description=f"epoch {p.get('epoch')} batch loss {_fmt(p.get('loss'))}",
                )
        elif kind == "benchmark" or phase == "benchmark":
            engine = p.get("engine")
            if engine:
                total = float(p.get("iterations_total") or 1)
                bar = self._task(f"engine:{engine}", str(engine), total)
                self.progress.update(
                    bar,
                    total=total,
                    completed=float(p.get("iterations_done") or 0),
                    description=f"{engine} batch {p.get('batch_size')} ({p.get('phase')})",
                )
        elif kind == "evolve":
            population = int(spec.get("population") or 8)
            generations = int(spec.get("generations") or 3)
            bar = self._task("trials", "trials", float(population * generations))
            if phase == "trial":
                done = int(p.get("generation") or 0) * population + population - int(p.get("remaining") or 0)
                self.progress.update(
                    bar,
                    completed=float(done),
                    description=f"generation {p.get('generation')} trial fitness {_fmt(p.get('fitness'))}",
                )
            elif phase == "generation":
                self.progress.update(
                    bar,
                    completed=float((int(p.get("generation") or 0) + 1) * population),
                    description=f"generation {p.get('generation')} best {_fmt(p.get('best_fitness'))}",
                )

    def finish(self) -> None:
        for key, task in self.tasks.items():
            if key == "epochs" or key.startswith("engine:") or key == "trials":
                t = self.progress.tasks[task]
                if t.total is not None and self.job.get("status") == "succeeded":
                    self.progress.update(task, completed=t.total)
                if key.startswith("engine:"):
                    self.progress.update(task, description=f"{key.split(':', 1)[1]} {self.job.get('status')}")


async def watch_job(api: AsyncClient, job_id: str, console: Console, poll_s: float = 1.0) -> dict[str, Any]:
    """Follow a job to its end with live bars: progress events from ``WS /events/ws`` filtered to the
    job's stream, the status from ``GET /jobs/{id}`` (also the only source where the socket is
    refused).  Returns the final job record."""
    job = await api.job(job_id)
    if job.get("status") in TERMINAL:
        return job
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bars = _Bars(progress, job)

    async def follow_events() -> None:
        try:
            async for event in api.subscribe(0, stream=f"job-{job_id}"):
                if event.get("type") == "JobProgressed":
                    bars.update((event.get("data") or {}).get("progress") or {})
        except (E.Unauthorized, E.Forbidden, E.NotFound, E.TooManyRequests) as exc:
            console.print(f"[dim]events websocket refused ({exc.message}); polling the job instead[/]")

    with progress:
        follower = asyncio.create_task(follow_events())
        try:
            while True:
                job = await api.job(job_id)
                bars.job = job
                bars.set_status(str(job.get("status")))
                if job.get("progress") and follower.done():
                    bars.update(job["progress"])
                if job.get("status") in TERMINAL:
                    break
                await asyncio.sleep(poll_s)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        if job.get("progress"):
            bars.update(job["progress"])
        bars.finish()
    return job


def summary(job: Mapping[str, Any]) -> list[Table | str]:
    """The end of a watch: status, then what the job produced (or why it failed)."""
    out: list[Table | str] = []
    status = job.get("status")
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(str(status), "white")
    out.append(f"job {job.get('id')} ({job.get('kind')}): [{colour}]{status}[/]")
    result = job.get("result") or {}
    if status == "failed":
        out.append(f"error: {job.get('error')}")
    if status == "cancelled" and job.get("cancelled_by"):
        out.append(f"cancelled by {job.get('cancelled_by')}")
    if job.get("kind") == "benchmark" and result:
        out.append(f"selected: {result.get('selected')} (batch {result.get('selected_batch')})")
        rows = []
        for engine, lat in sorted((result.get("engines") or {}).items()):
            if isinstance(lat, dict) and "p50_ms" in lat:
                rows.append((engine, "yes", _fmt(lat.get("p50_ms")), _fmt(lat.get("p95_ms")), ""))
            else:
                lat = lat if isinstance(lat, dict) else {}
                rows.append(
                    (engine, "no" if not lat.get("available", True) else "", "", "", lat.get("reason", ""))
                )
        out.append(_table("engines", ("engine", "available", "p50 ms", "p95 ms", "note"), rows))
        rejected = result.get("rejected") or {}
        if rejected:
            out.append(_table("rejected", ("engine", "constraint"), sorted(rejected.items())))
    elif job.get("kind") == "train" and result:
        keys = ("model_id", "best_val_accuracy", "best_epoch", "epochs_done", "final_loss", "seconds")
        metrics = {**(result.get("metrics") or {}), **result}
        out.append(
            _table("result", ("field", "value"), [(k, _fmt(metrics.get(k))) for k in keys if k in metrics])
        )
    elif job.get("kind") == "evolve" and result:
        ga_rows = [
            (k, _fmt(result.get(k))) for k in ("best_fitness", "best_trial_job_id", "trials", "seconds")
        ]
        ga_rows.append(("best_hyperparameters", json.dumps(result.get("best_hyperparameters"))))
        out.append(_table("result", ("field", "value"), ga_rows))
    return out


def _job_exit(job: Mapping[str, Any]) -> int:
    return EXIT_OK if job.get("status") == "succeeded" else EXIT_FAILED


# ---------------------------------------------------------------------------------------- commands

Handler = Callable[[argparse.Namespace, AsyncClient], Awaitable[int]]


async def _login(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    password = read_password(args.password_file)
    async with AsyncClient(url, timeout=60) as api:
        answer = await api.login(args.username, password)
    creds = Credentials(
        url=url, token=str(answer["access_token"]), username=args.username, role=str(answer.get("role") or "")
    )
    path = save_credentials(creds)
    ERR.print(
        f"logged in to {url} as {args.username} ({creds.role}); token cached in {path} "
        f"(valid {int(answer.get('expires_in') or 0)} s)"
    )
    return EXIT_OK


MODEL_COLUMNS = ("id", "name", "task", "status", "source_format", "created_ts")


async def _models_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    models = await api.models()
    if args.json:
        _print_json(models)
    else:
        OUT.print(
            _table(
                None,
                ("id", "name", "task", "status", "source", "preset/arch"),
                [
                    (
                        m.get("id"),
                        m.get("name"),
                        m.get("task"),
                        m.get("status"),
                        m.get("source_format"),
                        m.get("preset") or m.get("arch"),
                    )
                    for m in models
                ],
            )
        )
    return EXIT_OK


def _model_line(rec: Mapping[str, Any]) -> str:
    parity = (rec.get("onnx") or {}).get("parity") or rec.get("parity") or {}
    extra = (
        f", parity max abs diff {_fmt(parity.get('max_abs_diff'))}"
        if isinstance(parity, dict) and parity
        else ""
    )
    return f"model {rec.get('name')} ({rec.get('id')}): {rec.get('status')}{extra}"


async def _models_show(args: argparse.Namespace, api: AsyncClient) -> int:
    rec = await api.model(args.id)
    if args.json:
        _print_json(rec)
        return EXIT_OK
    keys = (
        "id",
        "name",
        "task",
        "status",
        "source_format",
        "preset",
        "arch",
        "num_classes",
        "image_size",
        "labels",
        "input_shape",
        "parent_model_id",
        "dataset_id",
        "error",
        "created_ts",
    )
    OUT.print(_kv_table(f"model {args.id}", rec, keys))
    onnx = rec.get("onnx") or {}
    if onnx:
        OUT.print(
            _kv_table(
                "onnx", onnx, ("sha256", "bytes", "opset", "parameter_count", "parity", "inputs", "outputs")
            )
        )
    return EXIT_OK


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip().startswith("["):
        return [str(v) for v in json.loads(text)]
    return [t.strip() for t in text.split(",") if t.strip()]


async def _models_preset(args: argparse.Namespace, api: AsyncClient) -> int:
    kw: dict[str, Any] = {
        "name": args.name,
        "num_classes": args.num_classes,
        "image_size": args.image_size,
        "labels": _labels(args.labels),
    }
    if args.pretrained:
        kw["pretrained"] = True
    with ERR.status(f"building preset {args.preset} (ONNX conversion and parity check)"):
        rec = await api.create_preset(args.preset, wait=not args.no_wait, **kw)
    return _created_model(args, rec)


def _created_model(args: argparse.Namespace, rec: dict[str, Any]) -> int:
    if args.json:
        _print_json(rec)
    else:
        _print_id(str(rec["id"]))
    ERR.print(_model_line(rec))
    return EXIT_OK if rec.get("status") != "failed" else EXIT_FAILED


async def _models_upload(args: argparse.Namespace, api: AsyncClient) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    with ERR.status(f"uploading {path.name} ({path.stat().st_size} bytes) and converting it"):
        rec = await api.upload_model(
            path,
            task=args.task,
            name=args.name,
            arch=args.arch,
            labels=args.labels,
            input_shape=args.input_shape,
            wait=not args.no_wait,
        )
    return _created_model(args, rec)


async def _models_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_model(args.id)
    _print_id(args.id)
    ERR.print(f"model {args.id} deleted")
    return EXIT_OK


async def _datasets_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    items = await api.datasets()
    if args.json:
        _print_json(items)
    else:
        OUT.print(
            _table(
                None,
                ("id", "name", "task", "format", "status", "classes", "bytes"),
                [
                    (
                        d.get("id"),
                        d.get("name"),
                        d.get("task"),
                        d.get("format"),
                        d.get("status"),
                        ",".join(d.get("classes") or []),
                        d.get("bytes"),
                    )
                    for d in items
                ],
            )
        )
    return EXIT_OK


async def _datasets_show(args: argparse.Namespace, api: AsyncClient) -> int:
    rec = await api.dataset(args.id)
    if args.json:
        _print_json(rec)
    else:
        OUT.print(
            _kv_table(
                f"dataset {args.id}",
                rec,
                (
                    "id",
                    "name",
                    "task",
                    "format",
                    "status",
                    "classes",
                    "counts",
                    "bytes",
                    "sha256",
                    "errors",
                    "error",
                ),
            )
        )
    return EXIT_OK


async def _datasets_upload(args: argparse.Namespace, api: AsyncClient) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    with ERR.status(f"uploading {path.name} ({path.stat().st_size} bytes) and validating it"):
        rec = await api.upload_dataset(
            path, task=args.task, name=args.name, fmt=args.format, wait=not args.no_wait
        )
    if args.json:
        _print_json(rec)
    else:
        _print_id(str(rec["id"]))
    counts = rec.get("counts") or {}
    sizes = ", ".join(f"{split}: {sum(v.values())}" for split, v in counts.items() if isinstance(v, dict))
    ERR.print(
        f"dataset {rec.get('name')} ({rec.get('id')}): {rec.get('status')}; classes "
        f"{', '.join(rec.get('classes') or [])}; images {sizes}"
    )
    return EXIT_OK if rec.get("status") != "failed" else EXIT_FAILED


async def _submit(args: argparse.Namespace, api: AsyncClient, spec: dict[str, Any]) -> int:
    job = await api.submit_job(spec)
    _print_id(str(job["id"]))
    ERR.print(
        f"{spec['kind']} job {job['id']} {job.get('status')}"
        + ("" if args.watch else f"; follow it with: cvops jobs watch {job['id']}")
    )
    if not args.watch:
        return EXIT_OK
    final = await watch_job(api, str(job["id"]), ERR)
    for item in summary(final):
        ERR.print(item)
    return _job_exit(final)


HP_FLAGS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "schedule",
    "seed",
    "image_size",
    "patience",
    "label_smoothing",
)


async def _train(args: argparse.Namespace, api: AsyncClient) -> int:
    hp = {k: getattr(args, k) for k in HP_FLAGS if getattr(args, k) is not None}
    for item in args.hp or []:
        key, _, value = item.partition("=")
        if not key or not _:
            raise UsageError(f"--hp takes KEY=VALUE, not {item!r}")
        try:
            hp[key] = json.loads(value)
        except ValueError:
            hp[key] = value
    spec = {"kind": "train", "model_id": args.model, "dataset_id": args.dataset, "hyperparameters": hp}
    return await _submit(args, api, spec)


async def _benchmark(args: argparse.Namespace, api: AsyncClient) -> int:
    constraints = {
        k: getattr(args, k)
        for k in ("max_p50_ms", "max_p95_ms", "max_p99_ms", "min_throughput", "max_memory_mb")
        if getattr(args, k) is not None
    }
    spec: dict[str, Any] = {
        "kind": "benchmark",
        "model_id": args.model,
        "batch_sizes": args.batch_sizes,
        "objective": args.objective,
        "constraints": constraints,
    }
    if args.engines:
        spec["engines"] = args.engines
    if args.iterations is not None:
        spec["iterations"] = args.iterations
    if args.warmup is not None:
        spec["warmup"] = args.warmup
    return await _submit(args, api, spec)


async def _evolve(args: argparse.Namespace, api: AsyncClient) -> int:
    spec = {
        "kind": "evolve",
        "model_id": args.model,
        "dataset_id": args.dataset,
        "population": args.population,
        "generations": args.generations,
        "seed": args.seed,
    }
    return await _submit(args, api, spec)


def _progress_text(p: Mapping[str, Any] | None) -> str:
    if not p:
        return ""
    phase = p.get("phase")
    if phase in ("epoch", "batch"):
        return f"{phase} {p.get('epoch')}" + (f"/{p['epochs']}" if p.get("epochs") else "")
    if phase == "benchmark":
        return f"{p.get('engine')} b{p.get('batch_size')}"
    if phase in ("trial", "generation"):
        return f"gen {p.get('generation')}"
    return str(phase or "")


async def _jobs_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    jobs = await api.jobs(args.kind, args.status)
    if args.json:
        _print_json(jobs)
    else:
        OUT.print(
            _table(
                None,
                ("id", "kind", "status", "progress", "model", "submitted_by", "parent"),
                [
                    (
                        j.get("id"),
                        j.get("kind"),
                        j.get("status"),
                        _progress_text(j.get("progress")),
                        (j.get("spec") or {}).get("model_id"),
                        j.get("submitted_by"),
                        j.get("parent_job_id"),
                    )
                    for j in jobs
                ],
            )
        )
    return EXIT_OK


async def _jobs_show(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await api.job(args.id)
    if args.json:
        _print_json(job)
        return EXIT_OK
    OUT.print(
        _kv_table(
            f"job {args.id}",
            job,
            (
                "id",
                "kind",
                "status",
                "submitted_by",
                "parent_job_id",
                "device",
                "attempt",
                "spec",
                "progress",
                "error",
                "cancelled_by",
                "submitted_ts",
                "started_ts",
                "ended_ts",
            ),
        )
    )
    for item in summary(job)[1:]:
        OUT.print(item)
    if job.get("result") and job.get("kind") not in ("benchmark", "train", "evolve"):
        OUT.print_json(json.dumps(job["result"], default=str))
    return EXIT_OK


async def _jobs_watch(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await watch_job(api, args.id, ERR)
    if args.json:
        _print_json(job)
    else:
        for item in summary(job):
            OUT.print(item)
    return _job_exit(job)


async def _jobs_cancel(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await api.cancel_job(args.id)
    if args.wait:
        job = await api.wait_job(args.id, poll_s=0.5)
    if args.json:
        _print_json(job)
    else:
        status = job.get("status")
        OUT.print(f"job {args.id}: {status}" + ("" if status in TERMINAL else " (cancel requested)"))
    return EXIT_OK


async def _report(args: argparse.Namespace, api: AsyncClient) -> int:
    body = await api.report(args.job, args.view, args.format)
    target: Path | None = Path(args.output) if args.output else None
    if args.open and target is None:
        fd, name = tempfile.mkstemp(prefix=f"cvops-report-{args.job}-", suffix=f".{args.format}")
        os.close(fd)
        target = Path(name)
    if target is None:
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
        sys.stdout.flush()
        return EXIT_OK
    target.write_bytes(body)
    _print_id(str(target))
    if args.open:
        webbrowser.open(target.resolve().as_uri())
    return EXIT_OK


async def _deploy(args: argparse.Namespace, api: AsyncClient) -> int:
    with ERR.status(f"deploying {args.model} on {args.engine} (every worker loads the engine)"):
        dep = await api.create_deployment(args.model, args.engine, args.workers, max_batch=args.max_batch)
    _print_id(str(dep["id"]))
    ERR.print(
        f"deployment {dep['id']}: model {dep.get('model_id')} on {dep.get('engine')}, "
        f"{dep.get('workers')} workers; predict with: cvops predict {dep['id']} IMAGE"
    )
    return EXIT_OK


async def _deployments_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    deps = await api.deployments()
    if args.json:
        _print_json(deps)
    else:
        OUT.print(
            _table(
                None,
                ("id", "model", "engine", "workers", "status"),
                [
                    (d.get("id"), d.get("model_id"), d.get("engine"), d.get("workers"), d.get("status"))
                    for d in deps
                ],
            )
        )
    return EXIT_OK


async def _deployments_show(args: argparse.Namespace, api: AsyncClient) -> int:
    dep = await api.deployment(args.id)
    if args.json:
        _print_json(dep)
    else:
        OUT.print(
            _kv_table(
                f"deployment {args.id}",
                dep,
                (
                    "id",
                    "model_id",
                    "engine",
                    "workers",
                    "max_batch",
                    "max_wait_ms",
                    "status",
                    "created_by",
                    "router",
                ),
            )
        )
    return EXIT_OK


async def _deployments_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_deployment(args.id)
    OUT.print(f"deployment {args.id} deleted")
    return EXIT_OK


MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4"}


def media_type(path: Path, head: bytes) -> str:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return MEDIA.get(path.suffix.lower(), "application/octet-stream")


async def _predict(args: argparse.Namespace, api: AsyncClient) -> int:
    answers: dict[str, Any] = {}
    for name in args.images:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"no such file: {name}")
    for name in args.images:
        data = Path(name).read_bytes()
        answers[name] = await api.predict(
            args.deployment, data, media_type(Path(name), data[:16]), args.top_k
        )
    if args.json:
        _print_json(answers)
        return EXIT_OK
    rows: list[tuple[Any, ...]] = []
    for name, ans in answers.items():
        for p in ans.get("predictions") or []:
            rows.append((name, p.get("label"), p.get("class_id"), _fmt(p.get("score")), ""))
        for d in ans.get("detections") or []:
            rows.append(
                (
                    name,
                    d.get("label"),
                    d.get("class_id"),
                    _fmt(d.get("score")),
                    ",".join(f"{v:.0f}" for v in d.get("box") or []),
                )
            )
        for frame in ans.get("frames") or []:
            for d in (frame.get("detections") or frame.get("predictions") or [])[: args.top_k]:
                rows.append(
                    (
                        f"{name}#{frame.get('index')}",
                        d.get("label"),
                        d.get("class_id"),
                        _fmt(d.get("score")),
                        ",".join(f"{v:.0f}" for v in d.get("box") or []),
                    )
                )
    OUT.print(_table(None, ("image", "label", "class", "score", "box"), rows))
    return EXIT_OK


async def _package(args: argparse.Namespace, api: AsyncClient) -> int:
    with ERR.status(f"building a package of {args.model} for {args.engine}"):
        pkg = await api.create_package(args.model, args.engine)
    dest = Path(args.output or f"cvops-{pkg['id']}.tar.gz")
    size = await api.download_package(str(pkg["id"]), dest)
    if args.save_key:
        key = await api.public_key()
        Path(args.save_key).write_text(json.dumps(key, indent=2) + "\n")
    _print_id(str(dest))
    ERR.print(
        f"package {pkg['id']} ({size} bytes, sha256 {pkg.get('sha256')}) written to {dest}; "
        f"check it with: cvops package verify {dest}" + (f" --key {args.save_key}" if args.save_key else "")
    )
    return EXIT_OK


async def _users_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    users = await api.users()
    if args.json:
        _print_json(users)
    else:
        OUT.print(
            _table(
                None,
                ("username", "role", "disabled"),
                [(u.get("username"), u.get("role"), u.get("disabled")) for u in users],
            )
        )
    return EXIT_OK


async def _users_add(args: argparse.Namespace, api: AsyncClient) -> int:
    password = read_password(args.password_file)
    user = await api.create_user(args.username, password, args.role)
    OUT.print(f"user {user.get('username')} created ({user.get('role')})")
    return EXIT_OK


async def _users_set(args: argparse.Namespace, api: AsyncClient) -> int:
    changes: dict[str, Any] = {"role": args.role}
    if args.disable or args.enable:
        changes["disabled"] = bool(args.disable)
    if args.password_file:
        changes["password"] = read_password(args.password_file)
    user = await api.update_user(args.username, **changes)
    OUT.print(
        f"user {user.get('username')}: {user.get('role')}" + (" (disabled)" if user.get("disabled") else "")
    )
    return EXIT_OK


async def _users_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_user(args.username)
    OUT.print(f"user {args.username} deleted")
    return EXIT_OK


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
        if handler is _login:
            return asyncio.run(_login(args))
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
    _cmd(p, _login)

    models = _group(sub, "models", "models: list, show, upload, build a preset")
    _cmd(models.add_parser("ls", help="list models"), _models_ls, json_flag=True)
    p = models.add_parser("show", help="one model's record")
    p.add_argument("id")
    _cmd(p, _models_show, json_flag=True)
    p = models.add_parser("upload", help="upload a model file (ONNX, .pt2, state_dict, yolov8n.pt)")
    p.add_argument("file")
    p.add_argument("--task", required=True, choices=("classification", "detection"))
    p.add_argument("--name", default=None)
    p.add_argument("--arch", default=None, help="a preset name, for state_dict uploads")
    p.add_argument("--labels", default=None, help="comma-separated or a JSON list")
    p.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224")
    p.add_argument("--no-wait", action="store_true", help="return before the conversion ends")
    _cmd(p, _models_upload, json_flag=True)
    p = models.add_parser("preset", help="build a preset model (random or published weights)")
    p.add_argument("preset")
    p.add_argument("--name", default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--labels", default=None, help="comma-separated or a JSON list")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--pretrained", action="store_true", help="published weights from the weights cache")
    p.add_argument("--no-wait", action="store_true", help="return before the conversion ends")
    _cmd(p, _models_preset, json_flag=True)
    p = models.add_parser("rm", help="delete a model (admin)")
    p.add_argument("id")
    _cmd(p, _models_rm)

    datasets = _group(sub, "datasets", "datasets: list, show, upload")
    _cmd(datasets.add_parser("ls", help="list datasets"), _datasets_ls, json_flag=True)
    p = datasets.add_parser("show", help="one dataset's record")
    p.add_argument("id")
    _cmd(p, _datasets_show, json_flag=True)
    p = datasets.add_parser(
        "upload", help="upload a zip (ImageFolder for classification, YOLO for detection)"
    )
    p.add_argument("file")
    p.add_argument("--task", default="classification", choices=("classification", "detection"))
    p.add_argument("--name", default=None)
    p.add_argument("--format", default=None, choices=("imagefolder", "yolo"))
    p.add_argument("--no-wait", action="store_true", help="return before the validation ends")
    _cmd(p, _datasets_upload, json_flag=True)

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
    _cmd(p, _train)

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
    _cmd(p, _benchmark)

    p = sub.add_parser("evolve", help="search hyperparameters with a seeded GA (admin); prints the job id")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--watch", action="store_true", help="follow the job to its end")
    _cmd(p, _evolve)

    jobs = _group(sub, "jobs", "jobs: list, show, watch, cancel")
    p = jobs.add_parser("ls", help="list jobs")
    p.add_argument("--kind", choices=("train", "benchmark", "evolve"), default=None)
    p.add_argument("--status", default=None)
    _cmd(p, _jobs_ls, json_flag=True)
    p = jobs.add_parser("show", help="one job's record")
    p.add_argument("id")
    _cmd(p, _jobs_show, json_flag=True)
    p = jobs.add_parser("watch", help="follow a job with live progress bars; exit 1 if it fails")
    p.add_argument("id")
    _cmd(p, _jobs_watch, json_flag=True)
    p = jobs.add_parser("cancel", help="cancel a job")
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="until it has ended")
    _cmd(p, _jobs_cancel, json_flag=True)

    p = sub.add_parser("report", help="a job's report (stdout, or --output / --open)")
    p.add_argument("job")
    p.add_argument("--view", choices=("simple", "technical"), default="simple")
    p.add_argument("--format", choices=("md", "json", "html"), default="md")
    p.add_argument("--output", "-o", default=None, help="write to FILE")
    p.add_argument("--open", action="store_true", help="write to a file and open it")
    _cmd(p, _report)

    p = sub.add_parser("deploy", help="serve a model (admin); prints the deployment id")
    p.add_argument("model")
    p.add_argument("--engine", default="auto", help="auto: the engine the latest benchmark selected")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=None)
    _cmd(p, _deploy)

    deps = _group(sub, "deployments", "deployments: list, show, rm")
    _cmd(deps.add_parser("ls", help="list deployments"), _deployments_ls, json_flag=True)
    p = deps.add_parser("show", help="one deployment")
    p.add_argument("id")
    _cmd(p, _deployments_show, json_flag=True)
    p = deps.add_parser("rm", help="stop a deployment (admin)")
    p.add_argument("id")
    _cmd(p, _deployments_rm)

    p = sub.add_parser("predict", help="predict on images (jpeg, png) or mp4 videos")
    p.add_argument("deployment")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    _cmd(p, _predict, json_flag=True)

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
    _cmd(p, _package)
    # listed under `package` (route_argv sends `cvops package MODEL` here), not as a command of its own
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != PACKAGE_BUILD]
    sub.metavar = sub.metavar or "COMMAND"

    users = _group(sub, "users", "users (admin): list, add, set, rm")
    _cmd(users.add_parser("ls", help="list users"), _users_ls, json_flag=True)
    p = users.add_parser("add", help="create a user (password: --password-file, CVOPS_PASSWORD or prompt)")
    p.add_argument("username")
    p.add_argument("--role", choices=("admin", "engineer", "viewer"), default="viewer")
    _password_flags(p)
    _cmd(p, _users_add)
    p = users.add_parser("set", help="change a user's role, password or state")
    p.add_argument("username")
    p.add_argument("--role", choices=("admin", "engineer", "viewer"), default=None)
    p.add_argument("--disable", action="store_true")
    p.add_argument("--enable", action="store_true")
    _password_flags(p)
    _cmd(p, _users_set)
    p = users.add_parser("rm", help="delete a user")
    p.add_argument("username")
    _cmd(p, _users_rm)


def route_argv(argv: list[str]) -> list[str]:
    """``cvops package MODEL ...`` builds a package; ``cvops package verify PKG`` stays the verifier."""
    if len(argv) >= 2 and argv[0] == "package" and argv[1] not in ("verify", "-h", "--help"):
        return [PACKAGE_BUILD, *argv[1:]]
    return argv
