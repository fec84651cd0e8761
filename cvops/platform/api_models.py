"""Models: uploads (multipart), presets, records, ONNX download."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from cvops.blobs import BlobStore
from cvops.errors import NotFound, ValidationFailed
from cvops.events.commands import RegisterModel
from cvops.events.projections import ModelRecord
from cvops.ml.sniff import detect_format
from cvops.ml.spec import PRESET_NAMES, SPECS, TASKS, check_published
from cvops.platform.bodies import json_response, read_json
from cvops.platform.context import principal, query_bool
from cvops.platform.keys import SERVICES, SETTINGS
from cvops.platform.routes import ADMIN, STAFF, Route
from cvops.platform.uploads import (
    MODEL_FIELDS,
    Upload,
    UploadKind,
    check_name,
    default_name,
    handle_upload,
    reply_record,
)

if TYPE_CHECKING:
    from cvops.actors.registry import Registry


class PresetRequest(msgspec.Struct, forbid_unknown_fields=True):
    preset: str
    name: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    labels: list[str] | None = None
    pretrained: bool = False  # the publisher's weights, from the weights cache (CVOPS_WEIGHTS_CACHE)


class ModelList(msgspec.Struct):
    """``GET /models``: the records themselves (what OpenAPI declares is what is encoded)."""

    models: list[ModelRecord]


def _blobs(request: web.Request) -> BlobStore:
    return BlobStore(request.app[SETTINGS].blob_root)


def parse_input_shape(raw: str | None) -> list[int] | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        value = (
            msgspec.json.decode(raw.encode())
            if raw.strip().startswith("[")
            else [int(x) for x in raw.split(",")]
        )
    except (msgspec.DecodeError, ValueError) as exc:
        raise ValidationFailed("input_shape must be like [1,3,224,224]", {"field": "input_shape"}) from exc
    if not isinstance(value, list) or len(value) != 4 or not all(isinstance(v, int) for v in value):
        raise ValidationFailed("input_shape must be 4 integers [N,C,H,W]", {"field": "input_shape"})
    n, c, h, w = value
    if not (n == -1 or 1 <= n <= 1024) or c not in (1, 3, 4) or not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise ValidationFailed(
            "input_shape out of range: N -1 or 1..1024, C 1/3/4, H and W 8..4096", {"field": "input_shape"}
        )
    return value


def parse_labels(raw: str | None) -> list[str]:
    if not raw:
        return []
    if raw.strip().startswith("["):
        try:
            labels = msgspec.json.decode(raw.encode(), type=list[str])
        except msgspec.DecodeError as exc:
            raise ValidationFailed(
                "labels must be a JSON list of strings or comma-separated", {"field": "labels"}
            ) from exc
    else:
        labels = [x.strip() for x in raw.split(",")]
    if not all(labels) or len(labels) > 100_000:
        raise ValidationFailed("labels must be non-empty strings", {"field": "labels"})
    return labels


async def _accept_model(registry: Registry, up: Upload, blobs: BlobStore, user: str) -> ModelRecord:
    assert up.blob is not None
    name = up.fields.get("name") or default_name(up.filename, "model")
    task = up.fields.get("task", "")
    check_name(name)
    if task not in TASKS:
        raise ValidationFailed("task must be classification or detection", {"field": "task"})
    path = blobs.path(up.blob.sha256)
    fmt = await asyncio.get_running_loop().run_in_executor(None, detect_format, path, up.filename)
    labels = parse_labels(up.fields.get("labels"))
    command = RegisterModel(
        name=name,
        task=task,
        source_format=fmt,
        source_sha256=up.blob.sha256,
        source_bytes=up.blob.bytes,
        input_shape=parse_input_shape(up.fields.get("input_shape")),
        labels=labels,
        arch=up.fields.get("arch") or None,
        num_classes=len(labels) or None,
    )
    return await registry.register(command, user)


MODEL = UploadKind(
    kind="model",
    fields=MODEL_FIELDS,
    limit=lambda settings: settings.max_model_bytes,
    wait=lambda registry, model_id, timeout: registry.wait(model_id, timeout),
    pending_status=202,
)


async def upload_model(request: web.Request) -> web.StreamResponse:
    return await handle_upload(request, MODEL, _accept_model)


async def create_preset(request: web.Request) -> web.StreamResponse:
    query_bool(request, "wait")  # a bad ?wait= is refused before anything is recorded
    body = await read_json(request, PresetRequest, request.app[SETTINGS].max_json_bytes)
    spec = SPECS.get(body.preset)
    if spec is None:
        raise ValidationFailed(
            f"unknown preset {body.preset!r}; known: {', '.join(PRESET_NAMES)}",
            {"field": "preset", "known": list(PRESET_NAMES)},
        )
    if body.num_classes is not None and not 1 <= body.num_classes <= 100_000:
        raise ValidationFailed("num_classes must be 1..100000", {"field": "num_classes"})
    if body.image_size is not None and not (
        spec.min_image_size <= body.image_size <= 4096 and body.image_size % spec.multiple_of == 0
    ):
        raise ValidationFailed(
            f"image_size for {body.preset} must be {spec.min_image_size}..4096 and a multiple of {spec.multiple_of}",
            {"field": "image_size"},
        )
    if body.labels is not None and body.num_classes is not None and len(body.labels) != body.num_classes:
        raise ValidationFailed("labels must have num_classes entries", {"field": "labels"})
    name = body.name or body.preset
    check_name(name)
    command = RegisterModel(
        name=name,
        task=spec.task,
        source_format="preset",
        preset=body.preset,
        num_classes=body.num_classes or (len(body.labels) if body.labels else None),
        image_size=body.image_size,
        labels=body.labels or [],
        pretrained=body.pretrained,
    )
    if body.pretrained:
        check_published(body.preset)  # 422 now for a preset without published weights
    record = await request.app[SERVICES].need_registry().register(command, principal(request).username)
    return await reply_record(request, MODEL, record)


async def list_models(request: web.Request) -> web.StreamResponse:
    return json_response(ModelList(models=await request.app[SERVICES].need_registry().list_models()))


async def get_model(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SERVICES].need_registry().get(request.match_info["id"]))


async def get_onnx(request: web.Request) -> web.StreamResponse:
    rec = await request.app[SERVICES].need_registry().get(request.match_info["id"])
    if rec.status != "ready" or not rec.onnx:
        raise NotFound(f"model {rec.id} has no ONNX form yet (status {rec.status})", {"model_id": rec.id})
    path = _blobs(request).path(rec.onnx.sha256)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{rec.id}.onnx"',
        },
    )


async def delete_model(request: web.Request) -> web.StreamResponse:
    await request.app[SERVICES].need_registry().delete(request.match_info["id"], principal(request).username)
    return web.Response(status=204)


ROUTES = [
    Route(
        "POST",
        "/models",
        upload_model,
        STAFF,
        "Upload a model (multipart: file, name, task, optional input_shape, labels, arch); ?wait=true waits for conversion",
        body="multipart-model",
        response=ModelRecord,
        status=202,
        query={"wait": "boolean"},
        tag="models",
    ),
    Route(
        "POST",
        "/models/presets",
        create_preset,
        STAFF,
        "Build a preset (resnet50, efficientnet_b0, yolov8n, resnet18, mobilenet_v3_small, tiny_cnn)",
        body=PresetRequest,
        response=ModelRecord,
        status=202,
        query={"wait": "boolean"},
        tag="models",
    ),
    Route("GET", "/models", list_models, STAFF, "List models", response=ModelList, tag="models"),
    Route("GET", "/models/{id}", get_model, STAFF, "One model record", response=ModelRecord, tag="models"),
    Route(
        "GET", "/models/{id}/onnx", get_onnx, STAFF, "Download the ONNX form", response="binary", tag="models"
    ),
    Route("DELETE", "/models/{id}", delete_model, ADMIN, "Delete a model", status=204, tag="models"),
]
