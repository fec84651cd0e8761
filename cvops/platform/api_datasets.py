"""Datasets: zip uploads (ImageFolder or YOLO), validated in a task."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from cvops.blobs import BlobStore
from cvops.errors import ValidationFailed
from cvops.events.commands import RegisterDataset
from cvops.events.projections import DatasetRecord
from cvops.platform.bodies import json_response
from cvops.platform.keys import SERVICES
from cvops.platform.routes import STAFF, Route
from cvops.platform.uploads import (
    DATASET_FIELDS,
    Upload,
    UploadKind,
    check_name,
    default_name,
    handle_upload,
)

if TYPE_CHECKING:
    from cvops.actors.registry import Registry

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class DatasetList(msgspec.Struct):
    """``GET /datasets``: the records themselves (what OpenAPI declares is what is encoded)."""

    datasets: list[DatasetRecord]


async def _accept_dataset(registry: Registry, up: Upload, blobs: BlobStore, user: str) -> DatasetRecord:
    assert up.blob is not None
    task = up.fields.get("task", "classification")
    fmt = up.fields.get("format") or ("yolo" if task == "detection" else "imagefolder")
    name = up.fields.get("name") or default_name(up.filename, "dataset")
    check_name(name)
    with blobs.open(up.blob.sha256) as fh:
        head = fh.read(4)
    if head not in ZIP_MAGIC:
        raise ValidationFailed("dataset must be a zip archive", {"field": "file"})
    command = RegisterDataset(name=name, task=task, format=fmt, sha256=up.blob.sha256, bytes=up.blob.bytes)
    return await registry.register_dataset(command, user)


DATASET = UploadKind(
    kind="dataset",
    fields=DATASET_FIELDS,
    limit=lambda settings: settings.max_dataset_bytes,
    wait=lambda registry, dataset_id, timeout: registry.wait_dataset(dataset_id, timeout),
    pending_status=200,
)


async def upload_dataset(request: web.Request) -> web.StreamResponse:
    return await handle_upload(request, DATASET, _accept_dataset)


async def list_datasets(request: web.Request) -> web.StreamResponse:
    return json_response(DatasetList(datasets=await request.app[SERVICES].need_registry().list_datasets()))


async def get_dataset(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SERVICES].need_registry().get_dataset(request.match_info["id"]))


ROUTES = [
    Route(
        "POST",
        "/datasets",
        upload_dataset,
        STAFF,
        "Upload a dataset zip (multipart: file, task, format imagefolder|yolo, name); ?wait=true waits for validation",
        body="multipart-dataset",
        response=DatasetRecord,
        status=202,
        query={"wait": "boolean"},
        tag="datasets",
    ),
    Route("GET", "/datasets", list_datasets, STAFF, "List datasets", response=DatasetList, tag="datasets"),
    Route(
        "GET",
        "/datasets/{id}",
        get_dataset,
        STAFF,
        "One dataset record",
        response=DatasetRecord,
        tag="datasets",
    ),
]
