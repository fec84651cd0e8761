"""Datasets: zip uploads (ImageFolder or YOLO), validated in a task."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from cvops.blobs import BlobStore
from cvops.errors import ValidationFailed
from cvops.platform.bodies import json_response
from cvops.platform.context import principal, query_bool
from cvops.platform.keys import SERVICES, SETTINGS
from cvops.platform.routes import STAFF, Route
from cvops.platform.uploads import (
    DATASET_FIELDS,
    check_name,
    default_name,
    read_multipart,
    record_rejection,
    release_upload,
)

WAIT_S = 600.0
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class DatasetOut(msgspec.Struct):
    id: str
    name: str
    task: str
    status: str


class DatasetList(msgspec.Struct):
    datasets: list[dict[str, Any]]


async def upload_dataset(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    registry = services.need("registry")
    settings = request.app[SETTINGS]
    who = principal(request)
    wait = query_bool(request, "wait")  # a bad ?wait= is refused before anything is stored
    blobs = BlobStore(settings.blob_root)
    try:
        up = await read_multipart(request, blobs, settings.max_dataset_bytes, allowed=DATASET_FIELDS)
    except Exception as exc:
        await record_rejection(services.need("store"), "dataset", exc, who.username)
        raise
    assert up.blob is not None
    try:
        task = up.fields.get("task", "classification")
        fmt = up.fields.get("format") or ("yolo" if task == "detection" else "imagefolder")
        name = up.fields.get("name") or default_name(up.filename, "dataset")
        check_name(name)
        with blobs.open(up.blob.sha256) as fh:
            head = fh.read(4)
        if head not in ZIP_MAGIC:
            raise ValidationFailed("dataset must be a zip archive", {"field": "file"})
        fields = {"name": name, "task": task, "format": fmt, "sha256": up.blob.sha256, "bytes": up.blob.bytes}
        record = await registry.register_dataset(fields, who.username)
    except Exception as exc:
        await registry.release_blob(up.blob.sha256)  # unless another record uses the same bytes
        await record_rejection(services.need("store"), "dataset", exc, who.username)
        raise
    finally:
        release_upload(request)  # the record (or the released file) now speaks for these bytes
    if wait:
        record = await registry.wait_dataset(record["id"], WAIT_S)
        if record["status"] == "failed":
            return json_response(
                {
                    "error": {
                        "code": "dataset_rejected",
                        "message": record.get("error") or "dataset rejected",
                        "details": {"dataset": record},
                    }
                },
                status=422,
            )
        return json_response(record, status=200)
    return json_response(record, status=202)


async def list_datasets(request: web.Request) -> web.StreamResponse:
    return json_response(DatasetList(datasets=await request.app[SERVICES].need("registry").list_datasets()))


async def get_dataset(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SERVICES].need("registry").get_dataset(request.match_info["id"]))


ROUTES = [
    Route(
        "POST",
        "/datasets",
        upload_dataset,
        STAFF,
        "Upload a dataset zip (multipart: file, task, format imagefolder|yolo, name); ?wait=true waits for validation",
        body="multipart-dataset",
        response=DatasetOut,
        status=202,
        query={"wait": "boolean"},
        tag="datasets",
    ),
    Route("GET", "/datasets", list_datasets, STAFF, "List datasets", response=DatasetList, tag="datasets"),
    Route(
        "GET", "/datasets/{id}", get_dataset, STAFF, "One dataset record", response=DatasetOut, tag="datasets"
    ),
]
