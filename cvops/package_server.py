"""``cvops serve-package PKG``: serve one deployment package on its own, without Ray, the event log or
the platform's other actors.

The package is verified first (checksums, and with ``--key`` the Ed25519 signature), its files are
extracted into a private temporary directory, and its serving config (``metadata.json``: engine,
preprocessing, labels, batching, workers, limits) starts the same serving path as a platform
deployment: a :class:`~cvops.serving.BatchingRouter` (bounded queue, dynamic batching, deadline,
least-loaded routing, one retry) over worker processes that each hold one engine session and one
:class:`~cvops.ml.inference.Predictor` (what an InferenceWorker actor holds).

Routes: ``GET /health``, ``GET /ready`` (503 until every worker has loaded the model),
``POST /predict?top_k=K`` (the body is the image or mp4, its Content-Type says which; the answer is the
platform's ``/predict`` answer).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import multiprocessing as mp
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
from aiohttp import web

from cvops.errors import CvopsError, PayloadTooLarge, Unavailable, ValidationFailed
from cvops.packaging import ROOT, ServingConfig, verify_package

PredictItem = tuple[bytes, str, int]


class OpenedPackage(msgspec.Struct, frozen=True):
    directory: str  # the extracted files
    metadata: dict[str, Any]
    serving: ServingConfig

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.metadata.get("model") or {})


def open_package(path: str | Path, into: str | Path, public_key: Any = None) -> OpenedPackage:
    """Verify the package at ``path`` and extract its files into the directory ``into``.  A package that
    does not verify is refused (:class:`ValidationFailed` listing the problems)."""
    problems = verify_package(path, public_key)
    if problems:
        raise ValidationFailed("the package does not verify", {"problems": problems})
    out = Path(into)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="r:gz") as tar:
        for m in tar.getmembers():  # verify_package checked: ROOT/<name>, regular files, no duplicates
            name = PurePosixPath(m.name)
            if len(name.parts) != 2 or name.parts[0] != ROOT or not m.isfile():
                raise ValidationFailed(f"unexpected member {m.name!r}")
            src = tar.extractfile(m)
            if src is None:
                raise ValidationFailed(f"{m.name} cannot be read")
            with src, open(out / name.name, "wb") as dst:
                while chunk := src.read(1024 * 1024):
                    dst.write(chunk)
    metadata = json.loads((out / "metadata.json").read_bytes())
    serving = msgspec.convert(
        metadata.get("serving") or {"engine": metadata.get("engine", "onnxruntime-cpu")}, ServingConfig
    )
    return OpenedPackage(str(out), metadata, serving)


def load_predictor(pkg: OpenedPackage, engine_name: str | None = None) -> Any:
    """The Predictor of an opened package (an InferenceWorker's engine session and pipeline)."""
    from cvops.events.schema import Preprocessing
    from cvops.ml.engines import get_engine
    from cvops.ml.inference import Predictor

    model = pkg.model
    onnx = model.get("onnx") or {}
    cfg = pkg.serving
    engine = get_engine(engine_name or cfg.engine)
    if getattr(engine, "needs_torch_source", False):
        raise ValidationFailed(
            f"serve-package runs ONNX engines; {engine.name} needs the torch source "
            "(pass --engine onnxruntime-cpu or another ONNX engine)",
            {"engine": engine.name},
        )
    engine.load(
        Path(pkg.directory) / "model.onnx",
        torch_module_factory=None,
        threads=cfg.threads,
        max_batch=cfg.max_batch,
    )
    pre = msgspec.convert(onnx["preprocessing"], Preprocessing)
    return Predictor(engine, str(model["task"]), list(model.get("labels") or []), pre, threads=cfg.threads)


# ------------------------------------------------------------------------------ worker processes

_PREDICTOR: Any = None


def _init_worker(pkg: OpenedPackage, engine_name: str | None) -> None:
    global _PREDICTOR
    _PREDICTOR = load_predictor(pkg, engine_name)


def _loaded() -> bool:
    return _PREDICTOR is not None


def _predict(items: list[PredictItem]) -> list[dict[str, Any]]:
    return _PREDICTOR.predict_images(items)  # type: ignore[no-any-return]


class ProcessWorker:
    """A worker handle of the BatchingRouter whose batches run in one dedicated (spawned) process."""

    def __init__(self, pkg: OpenedPackage, engine_name: str | None) -> None:
        self.pool = cf.ProcessPoolExecutor(
            1, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(pkg, engine_name)
        )

    async def call(self, items: list[PredictItem]) -> list[dict[str, Any]]:
        from cvops.serving import WorkerDied

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, _predict, items)
        except cf.process.BrokenProcessPool as exc:
            raise WorkerDied(str(exc)) from exc

    async def warm(self) -> None:
        """Load the model (the pool's initializer runs with the first call)."""
        await asyncio.get_running_loop().run_in_executor(self.pool, _loaded)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class ThreadWorker:
    """A worker handle that runs batches on a thread of this process (tests, one-core machines)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    async def call(self, items: list[PredictItem]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.predictor.predict_images, items)  # type: ignore[no-any-return]

    async def warm(self) -> None:
        return None

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------- the app

ROUTER: web.AppKey[Any] = web.AppKey("cvops.package.router", object)
READY: web.AppKey[asyncio.Event] = web.AppKey("cvops.package.ready", asyncio.Event)
WARM: web.AppKey[asyncio.Task[None]] = web.AppKey("cvops.package.warm", asyncio.Task)


def _error(err: CvopsError) -> web.Response:
    headers = (
        {"Retry-After": str(max(1, round(getattr(err, "retry_after", 1))))} if err.status == 429 else None
    )
    return web.json_response(err.to_dict(), status=err.status, headers=headers)


def make_app(pkg: OpenedPackage, workers: Sequence[Any]) -> web.Application:
    """The package's HTTP app over ``workers`` (ProcessWorker or ThreadWorker handles)."""
    from cvops.serving import BatchingRouter

    cfg = pkg.serving
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[READY] = asyncio.Event()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        if not request.app[READY].is_set():
            return _error(Unavailable("the package's workers are loading the model"))
        return web.json_response({"status": "ready", "model_id": pkg.model.get("id"), "engine": cfg.engine})

    async def predict(request: web.Request) -> web.Response:
        if not request.app[READY].is_set():
            return _error(Unavailable("the package's workers are loading the model"))
        try:
            raw = request.query.get("top_k", "5")
            if not raw.isdigit() or not 1 <= int(raw) <= 1000:
                raise ValidationFailed("top_k must be an integer in [1, 1000]", {"field": "top_k"})
            if request.content_length is not None and request.content_length > cfg.max_body_bytes:
                raise PayloadTooLarge(f"body over {cfg.max_body_bytes} bytes")
            body = await request.read()
            out = await request.app[ROUTER].submit((body, request.content_type, int(raw)))
        except web.HTTPRequestEntityTooLarge:
            return _error(PayloadTooLarge(f"body over {cfg.max_body_bytes} bytes"))
        except CvopsError as err:
            return _error(err)
        return web.json_response(out, status=422 if isinstance(out, dict) and "error" in out else 200)

    async def start(app: web.Application) -> None:
        app[ROUTER] = BatchingRouter(
            list(workers),
            queue_limit=cfg.queue_limit,
            max_batch=cfg.max_batch,
            max_wait_ms=cfg.max_wait_ms,
            timeout_s=cfg.timeout_s,
        )

        async def warm() -> None:
            await asyncio.gather(*(w.warm() for w in workers))
            app[READY].set()
            print("cvops package ready", flush=True)

        app[WARM] = asyncio.create_task(warm())

    async def stop(app: web.Application) -> None:
        app[WARM].cancel()
        await app[ROUTER].close(grace_s=5.0)
        for w in workers:
            w.close()

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/predict", predict)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def register(sub: Any) -> None:
    p = sub.add_parser("serve-package", help="serve one deployment package on its own (no Ray, no platform)")
    p.add_argument("path", help="the package (.tar.gz)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=None, help="default: the package's serving config")
    p.add_argument("--engine", default=None, help="default: the package's engine")
    p.add_argument(
        "--key", default=None, metavar="KEYFILE", help="the server's public key: check the signature"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvops.packaging import load_public_key

    with tempfile.TemporaryDirectory(prefix="cvops-package-") as tmp:
        try:
            key = load_public_key(Path(args.key).read_bytes()) if args.key else None
            pkg = open_package(args.path, tmp, key)
        except OSError as exc:
            print(f"cvops serve-package: {exc.strerror or exc}", flush=True)
            return 1
        except CvopsError as err:
            print(f"cvops serve-package: {err.message}: {err.details}", flush=True)
            return 1
        if args.workers is not None:
            pkg = msgspec.structs.replace(
                pkg, serving=msgspec.structs.replace(pkg.serving, workers=args.workers)
            )
        n = max(1, pkg.serving.workers)
        workers = [ProcessWorker(pkg, args.engine) for _ in range(n)]
        print(
            f"cvops package {pkg.model.get('id')} on http://{args.host}:{args.port} ({n} workers)", flush=True
        )
        web.run_app(make_app(pkg, workers), host=args.host, port=args.port, print=None, access_log=None)
    return 0
