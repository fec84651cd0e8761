"""Deployment packages: build (admin), list, download, and the public half of the key that signs them.
Building (hashing, gzip, signing) runs in an executor."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from cvops.blobs import BlobStore
from cvops.errors import NotFound, ValidationFailed
from cvops.events.projection import Projection
from cvops.events.projections import PackagesState, apply_packages
from cvops.events.schema import PackageBuilt
from cvops.events.store import Store
from cvops.packaging import (
    ServingConfig,
    build_package,
    load_or_create_signing_key,
    package_files,
    public_key_info,
    serving_texts,
)
from cvops.platform.bodies import json_response, read_json
from cvops.platform.context import principal
from cvops.platform.keys import SERVICES, SETTINGS
from cvops.platform.routes import ADMIN, STAFF, Route

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cvops.config import Settings
    from cvops.events.projections import ModelRecord


class PackageRequest(msgspec.Struct, forbid_unknown_fields=True):
    model_id: str
    engine: str = "onnxruntime-cpu"


class PackageOut(msgspec.Struct):
    id: str
    model_id: str
    engine: str
    sha256: str
    bytes: int
    manifest: dict[str, str] = {}


class PackageList(msgspec.Struct):
    packages: list[dict[str, Any]]


class PublicKeyOut(msgspec.Struct):
    """The key packages are signed with; save it and pass it to ``cvops package verify --key``."""

    algorithm: str  # "ed25519"
    key_id: str  # sha256 of the 32 raw key bytes, hex
    public_key: str  # base64 of the 32 raw key bytes
    pem: str  # the same key as a SubjectPublicKeyInfo PEM


class Packages(Projection[PackagesState]):
    """The packages projection (streams ``package-*``) and the server's signing key, made on first use
    in the data dir (mode 0600) and kept.  The gateway keeps one under :data:`PACKAGES`."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        super().__init__(store, apply_packages, PackagesState(), prefix="package-")
        self.data_dir = data_dir
        self._key: Ed25519PrivateKey | None = None

    async def signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            loop = asyncio.get_running_loop()
            key = await loop.run_in_executor(None, load_or_create_signing_key, self.data_dir)
            if self._key is None:
                self._key = key
        return self._key


PACKAGES = web.AppKey("cvops.packages", Packages)


def _build(
    blobs: BlobStore, model: ModelRecord, engine: str, key: Ed25519PrivateKey, serving: ServingConfig
) -> tuple[Any, dict[str, str]]:
    files = package_files(model, engine, blobs.path)
    tmp = blobs.temp_path(".tar.gz")
    try:
        meta: dict[str, Any] = {
            "engine": engine,
            "model": msgspec.to_builtins(
                {
                    k: getattr(model, k)
                    for k in (
                        "id",
                        "name",
                        "task",
                        "labels",
                        "onnx",
                        "parity",
                        "parent_model_id",
                        "dataset_id",
                        "hyperparameters",
                        "preset",
                        "arch",
                        "num_classes",
                    )
                }
            ),
        }
        meta["serving"] = msgspec.to_builtins(serving)
        manifest = build_package(tmp, files, meta, key, serving_texts(meta))
        return blobs.put_file(tmp), manifest
    finally:
        tmp.unlink(missing_ok=True)


def _serving(settings: Settings, engine: str) -> ServingConfig:
    """The serving config a package carries: this server's limits, the engine's default batch."""
    from cvops.ml.spec import default_max_batch

    return ServingConfig(
        engine=engine,
        max_batch=default_max_batch(engine, None, None),
        workers=1,
        queue_limit=settings.queue_limit,
        timeout_s=settings.inference_timeout_s,
        max_body_bytes=settings.max_predict_bytes,
    )


async def create_package(request: web.Request) -> web.StreamResponse:
    from cvops.ml.spec import ENGINE_NAMES

    body = await read_json(request, PackageRequest, request.app[SETTINGS].max_json_bytes)
    if body.engine not in ENGINE_NAMES:
        raise ValidationFailed(
            f"unknown engine {body.engine!r}", {"field": "engine", "known": list(ENGINE_NAMES)}
        )
    services = request.app[SERVICES]
    model = await services.need_registry().get(body.model_id)
    blobs = BlobStore(request.app[SETTINGS].blob_root)
    packages = request.app[PACKAGES]
    key = await packages.signing_key()
    ref, manifest = await asyncio.get_running_loop().run_in_executor(
        None, _build, blobs, model, body.engine, key, _serving(request.app[SETTINGS], body.engine)
    )
    pkg_id = uuid.uuid4().hex[:16]
    event = PackageBuilt(
        package_id=pkg_id,
        model_id=body.model_id,
        engine=body.engine,
        sha256=ref.sha256,
        bytes=ref.bytes,
        manifest=manifest,
    )
    envs = await services.need_store().append(
        f"package-{pkg_id}", [event], 0, user=principal(request).username
    )
    rec = (await packages.fold_appended(envs)).packages[pkg_id]
    return json_response(msgspec.to_builtins(rec), status=201)


async def public_key(request: web.Request) -> web.StreamResponse:
    return json_response(
        msgspec.convert(public_key_info(await request.app[PACKAGES].signing_key()), PublicKeyOut)
    )


async def list_packages(request: web.Request) -> web.StreamResponse:
    state = await request.app[PACKAGES].catch_up()
    return json_response(PackageList(packages=[msgspec.to_builtins(p) for p in state.packages.values()]))


async def _get(request: web.Request) -> Any:
    pkg = (await request.app[PACKAGES].catch_up()).packages.get(request.match_info["id"])
    if pkg is None:
        raise NotFound(f"no package {request.match_info['id']!r}", {"package_id": request.match_info["id"]})
    return pkg


async def get_package(request: web.Request) -> web.StreamResponse:
    return json_response(msgspec.to_builtins(await _get(request)))


async def download_package(request: web.Request) -> web.StreamResponse:
    pkg = await _get(request)
    path = BlobStore(request.app[SETTINGS].blob_root).path(pkg.sha256)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/gzip",
            "Content-Disposition": f'attachment; filename="cvops-{pkg.id}.tar.gz"',
            "X-Checksum-Sha256": pkg.sha256,
        },
    )


ROUTES = [
    Route(
        "POST",
        "/packages",
        create_package,
        ADMIN,
        "Build a package (tar.gz + sha256 manifest signed with the server's Ed25519 key) of a ready model",
        body=PackageRequest,
        response=PackageOut,
        status=201,
        tag="packages",
    ),
    Route("GET", "/packages", list_packages, ADMIN, "List packages", response=PackageList, tag="packages"),
    # before /packages/{id}, which would otherwise take "public-key" for a package id
    Route(
        "GET",
        "/packages/public-key",
        public_key,
        STAFF,
        "The Ed25519 public key packages are signed with (for `cvops package verify --key`)",
        response=PublicKeyOut,
        tag="packages",
    ),
    Route(
        "GET", "/packages/{id}", get_package, ADMIN, "One package record", response=PackageOut, tag="packages"
    ),
    Route(
        "GET",
        "/packages/{id}/download",
        download_package,
        ADMIN,
        "Download a package (verify with `cvops package verify --key`)",
        response="binary",
        tag="packages",
    ),
]
