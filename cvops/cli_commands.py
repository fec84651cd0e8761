"""The catalogue commands of ``cvops``: login, models, datasets, deploy, deployments, predict, package
and users.  Each is ``async (args, api) -> exit status`` (login makes its own client)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cvops.cli_config import (
    EXIT_FAILED,
    EXIT_OK,
    Credentials,
    UsageError,
    read_password,
    resolve_url,
    save_credentials,
)
from cvops.cli_tables import ERR, OUT, Column, emit, fields, fmt, listing, print_id, print_json, table
from cvops.client import AsyncClient

MODEL_COLUMNS = (
    "id",
    "name",
    "task",
    "status",
    ("source", "source_format"),
    ("preset/arch", lambda m: m.get("preset") or m.get("arch")),
)
MODEL_FIELDS = (
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
ONNX_FIELDS = ("sha256", "bytes", "opset", "parameter_count", "parity", "inputs", "outputs")
DATASET_COLUMNS = (
    "id",
    "name",
    "task",
    "format",
    "status",
    ("classes", lambda d: ",".join(d.get("classes") or [])),
    "bytes",
)
DATASET_FIELDS = (
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
)
DEPLOYMENT_COLUMNS = ("id", ("model", "model_id"), "engine", "workers", "status")
DEPLOYMENT_FIELDS = (
    "id",
    "model_id",
    "engine",
    "workers",
    "max_batch",
    "max_wait_ms",
    "status",
    "created_by",
    "router",
)
USER_COLUMNS = ("username", "role", "disabled")
MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4"}


Handler = Callable[[argparse.Namespace, AsyncClient], Awaitable[int]]


def list_command(
    fetch: Callable[[AsyncClient], Awaitable[list[dict[str, Any]]]], columns: Sequence[Column]
) -> Handler:
    """``X ls``: every record a row of ``columns`` (or the list as JSON)."""

    async def handler(args: argparse.Namespace, api: AsyncClient) -> int:
        records = await fetch(api)
        return emit(args.json, records, listing(None, columns, records))

    return handler


def show_command(
    fetch: Callable[[AsyncClient, str], Awaitable[dict[str, Any]]], noun: str, keys: Sequence[str]
) -> Handler:
    """``X show ID``: the record's ``keys`` as ``field | value`` rows (or the record as JSON)."""

    async def handler(args: argparse.Namespace, api: AsyncClient) -> int:
        record = await fetch(api, args.id)
        return emit(args.json, record, fields(f"{noun} {args.id}", record, keys))

    return handler


models_ls = list_command(lambda api: api.models(), MODEL_COLUMNS)
datasets_ls = list_command(lambda api: api.datasets(), DATASET_COLUMNS)
datasets_show = show_command(lambda api, i: api.dataset(i), "dataset", DATASET_FIELDS)
deployments_ls = list_command(lambda api: api.deployments(), DEPLOYMENT_COLUMNS)
deployments_show = show_command(lambda api, i: api.deployment(i), "deployment", DEPLOYMENT_FIELDS)
users_ls = list_command(lambda api: api.users(), USER_COLUMNS)


async def login(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------------------------- models, datasets


def _model_line(rec: Mapping[str, Any]) -> str:
    parity = (rec.get("onnx") or {}).get("parity") or rec.get("parity") or {}
    extra = (
        f", parity max abs diff {fmt(parity.get('max_abs_diff'))}"
        if isinstance(parity, dict) and parity
        else ""
    )
    return f"model {rec.get('name')} ({rec.get('id')}): {rec.get('status')}{extra}"


def _dataset_line(rec: Mapping[str, Any]) -> str:
    counts = rec.get("counts") or {}
    sizes = ", ".join(f"{split}: {sum(v.values())}" for split, v in counts.items() if isinstance(v, dict))
    return (
        f"dataset {rec.get('name')} ({rec.get('id')}): {rec.get('status')}; classes "
        f"{', '.join(rec.get('classes') or [])}; images {sizes}"
    )


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip().startswith("["):
        return [str(v) for v in json.loads(text)]
    return [t.strip() for t in text.split(",") if t.strip()]


def _upload_path(name: str) -> Path:
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"no such file: {name}")
    return path


async def _created(
    args: argparse.Namespace,
    doing: str,
    call: Awaitable[dict[str, Any]],
    line: Callable[[Mapping[str, Any]], str],
) -> int:
    """A create command: ``doing`` on stderr while ``call`` runs, then the new id (or the record with
    ``--json``) on stdout and its one-line summary on stderr; exit 1 if the new record failed."""
    with ERR.status(doing):
        rec = await call
    if args.json:
        print_json(rec)
    else:
        print_id(str(rec["id"]))
    ERR.print(line(rec))
    return EXIT_OK if rec.get("status") != "failed" else EXIT_FAILED


async def models_show(args: argparse.Namespace, api: AsyncClient) -> int:
    rec = await api.model(args.id)
    onnx = rec.get("onnx") or {}
    onnx_table = [fields("onnx", onnx, ONNX_FIELDS)] if onnx else []
    return emit(args.json, rec, fields(f"model {args.id}", rec, MODEL_FIELDS), *onnx_table)


async def models_preset(args: argparse.Namespace, api: AsyncClient) -> int:
    kw: dict[str, Any] = {
        "name": args.name,
        "num_classes": args.num_classes,
        "image_size": args.image_size,
        "labels": _labels(args.labels),
    }
    if args.pretrained:
        kw["pretrained"] = True
    doing = f"building preset {args.preset} (ONNX conversion and parity check)"
    return await _created(
        args, doing, api.create_preset(args.preset, wait=not args.no_wait, **kw), _model_line
    )


async def models_upload(args: argparse.Namespace, api: AsyncClient) -> int:
    path = _upload_path(args.file)
    call = api.upload_model(
        path,
        task=args.task,
        name=args.name,
        arch=args.arch,
        labels=args.labels,
        input_shape=args.input_shape,
        wait=not args.no_wait,
    )
    doing = f"uploading {path.name} ({path.stat().st_size} bytes) and converting it"
    return await _created(args, doing, call, _model_line)


async def models_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_model(args.id)
    print_id(args.id)
    ERR.print(f"model {args.id} deleted")
    return EXIT_OK


async def datasets_upload(args: argparse.Namespace, api: AsyncClient) -> int:
    path = _upload_path(args.file)
    call = api.upload_dataset(path, task=args.task, name=args.name, fmt=args.format, wait=not args.no_wait)
    doing = f"uploading {path.name} ({path.stat().st_size} bytes) and validating it"
    return await _created(args, doing, call, _dataset_line)


# ---------------------------------------------------------------------------------------- serving


async def deploy(args: argparse.Namespace, api: AsyncClient) -> int:
    with ERR.status(f"deploying {args.model} on {args.engine} (every worker loads the engine)"):
        dep = await api.create_deployment(args.model, args.engine, args.workers, max_batch=args.max_batch)
    print_id(str(dep["id"]))
    ERR.print(
        f"deployment {dep['id']}: model {dep.get('model_id')} on {dep.get('engine')}, "
        f"{dep.get('workers')} workers; predict with: cvops predict {dep['id']} IMAGE"
    )
    return EXIT_OK


async def deployments_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_deployment(args.id)
    OUT.print(f"deployment {args.id} deleted")
    return EXIT_OK


def media_type(path: Path, head: bytes) -> str:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return MEDIA.get(path.suffix.lower(), "application/octet-stream")


def prediction_rows(answers: Mapping[str, Mapping[str, Any]], top_k: int) -> list[tuple[Any, ...]]:
    """``image | label | class | score | box`` rows: classes, detections, and each video frame's."""

    def row(name: str, p: Mapping[str, Any]) -> tuple[Any, ...]:
        box = ",".join(f"{v:.0f}" for v in p.get("box") or [])
        return (name, p.get("label"), p.get("class_id"), fmt(p.get("score")), box)

    rows: list[tuple[Any, ...]] = []
    for name, ans in answers.items():
        rows.extend(row(name, p) for p in ans.get("predictions") or [])
        rows.extend(row(name, d) for d in ans.get("detections") or [])
        for frame in ans.get("frames") or []:
            found = (frame.get("detections") or frame.get("predictions") or [])[:top_k]
            rows.extend(row(f"{name}#{frame.get('index')}", d) for d in found)
    return rows


async def predict(args: argparse.Namespace, api: AsyncClient) -> int:
    paths = [_upload_path(name) for name in args.images]
    answers: dict[str, Any] = {}
    for name, path in zip(args.images, paths, strict=True):
        data = path.read_bytes()
        answers[name] = await api.predict(args.deployment, data, media_type(path, data[:16]), args.top_k)
    rows = prediction_rows(answers, args.top_k)
    return emit(args.json, answers, table(None, ("image", "label", "class", "score", "box"), rows))


async def package(args: argparse.Namespace, api: AsyncClient) -> int:
    with ERR.status(f"building a package of {args.model} for {args.engine}"):
        pkg = await api.create_package(args.model, args.engine)
    dest = Path(args.output or f"cvops-{pkg['id']}.tar.gz")
    size = await api.download_package(str(pkg["id"]), dest)
    if args.save_key:
        key = await api.public_key()
        Path(args.save_key).write_text(json.dumps(key, indent=2) + "\n")
    print_id(str(dest))
    ERR.print(
        f"package {pkg['id']} ({size} bytes, sha256 {pkg.get('sha256')}) written to {dest}; "
        f"check it with: cvops package verify {dest}" + (f" --key {args.save_key}" if args.save_key else "")
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------- users


async def users_add(args: argparse.Namespace, api: AsyncClient) -> int:
    password = read_password(args.password_file)
    user = await api.create_user(args.username, password, args.role)
    OUT.print(f"user {user.get('username')} created ({user.get('role')})")
    return EXIT_OK


async def users_set(args: argparse.Namespace, api: AsyncClient) -> int:
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


async def users_rm(args: argparse.Namespace, api: AsyncClient) -> int:
    await api.delete_user(args.username)
    OUT.print(f"user {args.username} deleted")
    return EXIT_OK
