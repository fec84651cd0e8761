"""Deployments and the predict path."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from cvops import errors as E
from cvops.platform.bodies import json_response, read_body, read_json
from cvops.platform.context import principal, query_int
from cvops.platform.keys import METRICS, SERVICES, SETTINGS
from cvops.platform.routes import ADMIN, EVERY_ROLE, STAFF, Route
from cvops.serving import Admission, BatchingRouter
from cvops.views import DeploymentView

IMAGE_TYPES = ("image/jpeg", "image/png")
VIDEO_TYPES = ("video/mp4",)


class DeploymentRequest(msgspec.Struct, forbid_unknown_fields=True):
    model_id: str
    engine: str = "auto"
    workers: int | None = None
    max_batch: int | None = (
        None  # default: the benchmark's selected batch for the engine, else 8 (CPU) / 32 (GPU)
    )
    max_wait_ms: float | None = None  # default 5


class DeploymentList(msgspec.Struct):
    """``GET /deployments``: the views themselves (what OpenAPI declares is what is encoded)."""

    deployments: list[DeploymentView]


class Prediction(msgspec.Struct):
    class_id: int
    label: str
    score: float


class PredictOut(msgspec.Struct):
    predictions: list[Prediction] | None = None
    detections: list[dict[str, Any]] | None = None
    frames: list[dict[str, Any]] | None = None
    fps: float | None = None


async def create_deployment(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, DeploymentRequest, request.app[SETTINGS].max_json_bytes)
    if body.workers is not None and not 1 <= body.workers <= 64:
        raise E.ValidationFailed("workers must be 1..64", {"field": "workers"})
    if body.max_batch is not None and not 1 <= body.max_batch <= 256:
        raise E.ValidationFailed("max_batch must be 1..256", {"field": "max_batch"})
    if body.max_wait_ms is not None and not 0 <= body.max_wait_ms <= 1000:
        raise E.ValidationFailed("max_wait_ms must be 0..1000", {"field": "max_wait_ms"})
    pool = request.app[SERVICES].need_pool()
    view = await pool.create(
        body.model_id,
        body.engine,
        body.workers,
        body.max_batch,
        body.max_wait_ms,
        principal(request).username,
    )
    return json_response(view, status=201)


async def list_deployments(request: web.Request) -> web.StreamResponse:
    return json_response(
        DeploymentList(deployments=await request.app[SERVICES].need_pool().list_deployments())
    )


async def get_deployment(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SERVICES].need_pool().get(request.match_info["id"]))


async def delete_deployment(request: web.Request) -> web.StreamResponse:
    await request.app[SERVICES].need_pool().delete(request.match_info["id"], principal(request).username)
    return web.Response(status=204)


def _router(pool: Any, dep_id: str) -> BatchingRouter[Any, Any]:
    """The live router of ``dep_id``: 404 for an unknown deployment, 409 for one that is not serving."""
    router: BatchingRouter[Any, Any] | None = pool.router_of(dep_id)
    if router is None:
        pool.view(dep_id)  # NotFound for an unknown or deleted deployment
        raise E.Conflict(f"deployment {dep_id} is not serving (its engine could not be loaded)")
    return router


async def predict(request: web.Request) -> web.StreamResponse:
    """Body: image/jpeg, image/png, or video/mp4 (detection models). The bytes go to a worker
    untouched; decoding happens there."""
    settings = request.app[SETTINGS]
    pool = request.app[SERVICES].need_pool()
    dep_id = request.match_info["id"]
    ctype = request.content_type
    if ctype not in IMAGE_TYPES + VIDEO_TYPES:
        raise E.UnsupportedMediaType(f"expected image/jpeg, image/png or video/mp4, got {ctype or 'nothing'}")
    top_k = query_int(request, "top_k", 5, 1, 1000)
    metrics = request.app[METRICS]
    start = time.perf_counter()
    status = "200"
    admission: Admission | None = None
    try:
        # admitted before the body is read (DESIGN.md §5): an unknown deployment, a full queue or too
        # many bodies in flight is refused from the headers alone
        router = _router(pool, dep_id)
        if request.content_length is not None and request.content_length > settings.max_predict_bytes:
            raise E.PayloadTooLarge(
                f"body over {settings.max_predict_bytes} bytes", {"limit": settings.max_predict_bytes}
            )
        admission = router.admit(request.content_length or 0, settings.max_predict_inflight_bytes)
        body = await read_body(request, settings.max_predict_bytes, admission.hold)
        if not body:
            raise E.ValidationFailed("empty body; send the image bytes")
        if ctype in VIDEO_TYPES and pool.fans_out_video(dep_id):  # frames spread over the workers
            result = await pool.predict_video(dep_id, body, top_k)
        else:
            result = await router.submit((body, ctype, top_k), admission)
        err = result.get("error") if isinstance(result, dict) else None
        if err:
            raise E.from_dict(err, status=422)
        return json_response(result)
    except E.CvopsError as exc:
        status = str(exc.status)
        raise
    finally:
        if admission is not None:
            admission.release()
        live = pool.router_of(dep_id)
        label = dep_id if live is not None else "unknown"  # no series per made-up id
        metrics.inference_requests.labels(label, status).inc()
        metrics.inference_latency.labels(label).observe(time.perf_counter() - start)
        if live is not None:
            metrics.inference_queue.labels(dep_id).set(live.queued + live.inflight)


ROUTES = [
    Route(
        "POST",
        "/deployments",
        create_deployment,
        ADMIN,
        "Deploy a ready model on an engine ('auto' = the engine its latest benchmark selected)",
        body=DeploymentRequest,
        response=DeploymentView,
        status=201,
        tag="deployments",
    ),
    Route(
        "GET",
        "/deployments",
        list_deployments,
        STAFF,
        "List deployments",
        response=DeploymentList,
        tag="deployments",
    ),
    Route(
        "GET",
        "/deployments/{id}",
        get_deployment,
        STAFF,
        "One deployment with its router stats",
        response=DeploymentView,
        tag="deployments",
    ),
    Route(
        "DELETE",
        "/deployments/{id}",
        delete_deployment,
        ADMIN,
        "Delete a deployment",
        status=204,
        tag="deployments",
    ),
    Route(
        "POST",
        "/deployments/{id}/predict",
        predict,
        EVERY_ROLE,
        "Predict on one image (jpeg/png) or a video (mp4, detection)",
        body="image",
        response=PredictOut,
        query={"top_k": "integer"},
        tag="deployments",
    ),
]
