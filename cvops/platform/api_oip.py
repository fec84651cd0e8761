"""The Open Inference Protocol (KServe v2 / Triton HTTP/REST) at the server root, beside ``/health``.

A model name is a deployment's id, or its model's name where one active deployment serves a model of
that name.  Infer takes the same roles, admission, queue, 429 and 504 as ``/predict`` and goes through
the same batching router; errors on ``/v2`` come in the protocol's shape ``{"error": "..."}`` (the
errors middleware renders them so).  gRPC is not served.  See :mod:`cvops.platform.oip_model`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from cvops import __version__
from cvops import errors as E
from cvops.platform.api_deployments import _router
from cvops.platform.bodies import json_response, read_body
from cvops.platform.keys import METRICS, SERVICES, SETTINGS
from cvops.platform.oip_codec import decode_request, encode_response
from cvops.platform.oip_model import VERSION, ModelInfo, config, metadata, outputs, plan
from cvops.platform.routes import ANYONE, EVERY_ROLE, Route
from cvops.serving import Admission

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
_INFOS: dict[str, ModelInfo] = {}  # model id -> its metadata (a ready model's ONNX never changes)


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class Live(msgspec.Struct):
    live: bool


class Ready(msgspec.Struct):
    ready: bool


class ModelReady(msgspec.Struct):
    name: str
    ready: bool


async def _info(request: web.Request, model_id: str) -> ModelInfo:
    info = _INFOS.get(model_id)
    if info is None:
        model = await request.app[SERVICES].need_registry().get(model_id)
        info = ModelInfo.of(model)
        if model.status == "ready":
            _INFOS[model_id] = info
    return info


async def _resolve(request: web.Request) -> tuple[str, ModelInfo, Any]:
    """``(deployment id, model info, deployment record)`` of ``{model}`` (and ``{version}``): 404 for
    a name that names no active deployment, or more than one."""
    name = request.match_info["model"]
    version = request.match_info.get("version")
    pool = request.app[SERVICES].need_pool()
    try:
        rec: Any = pool.view(name)  # a deployment id: no catch-up on the hot path
    except E.NotFound:
        deps = await pool.list_deployments()
        rec = next((r for r in deps if r.id == name), None)
        if rec is None:
            by_name = [r for r in deps if (await _info(request, r.model_id)).name == name]
            if len(by_name) > 1:
                raise E.NotFound(
                    f"model name {name!r} is served by {len(by_name)} deployments; use a deployment id"
                ) from None
            rec = by_name[0] if by_name else None
        if rec is None:
            raise E.NotFound(f"no model {name!r}") from None
    if version is not None and version != VERSION:
        raise E.NotFound(f"model {name!r} has no version {version!r} (it has {VERSION!r})")
    return rec.id, await _info(request, rec.model_id), rec


async def server_metadata(request: web.Request) -> web.StreamResponse:
    return json_response(ServerMetadata(name="cvops", version=__version__, extensions=EXTENSIONS))


async def server_live(request: web.Request) -> web.StreamResponse:
    return json_response(Live(live=True))


async def server_ready(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.ready or services.pool is None:
        raise E.Unavailable("actors are starting" if not services.boot_error else "actors failed to start")
    return json_response(Ready(ready=True))


async def model_metadata(request: web.Request) -> web.StreamResponse:
    _dep_id, info, rec = await _resolve(request)
    return json_response(metadata(request.match_info["model"], info, rec))


async def model_config(request: web.Request) -> web.StreamResponse:
    _dep_id, info, rec = await _resolve(request)
    return json_response(config(request.match_info["model"], info, rec))


async def model_ready(request: web.Request) -> web.StreamResponse:
    dep_id, _info_, _rec = await _resolve(request)
    if request.app[SERVICES].need_pool().router_of(dep_id) is None:
        raise E.Unavailable(f"deployment {dep_id} is not serving (its engine could not be loaded)")
    return json_response(ModelReady(name=request.match_info["model"], ready=True))


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise E.BadRequest(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None


async def _submit_all(router: Any, items: list[Any], admission: Admission) -> list[dict[str, Any]]:
    """Every item through the router (the first in the admitted slot); the first error is raised, a
    worker's 415/422 for one image as the protocol's 400."""
    first = router.submit(items[0], admission)
    rest = [router.submit(it) for it in items[1:]]
    got = await asyncio.gather(first, *rest, return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException):
            raise r
    results: list[dict[str, Any]] = list(got)  # type: ignore[arg-type]
    for r in results:
        err = r.get("error") if isinstance(r, dict) else None
        if err:
            exc = E.from_dict(err, status=422)
            if exc.status in (415, 422):
                raise E.BadRequest(exc.message, exc.details)
            raise exc
    return results


async def infer(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    pool = request.app[SERVICES].need_pool()
    metrics = request.app[METRICS]
    start = time.perf_counter()
    status = "200"
    dep_id = request.match_info["model"]
    admission: Admission | None = None
    try:
        dep_id, info, _rec = await _resolve(request)
        router = _router(pool, dep_id)
        if request.content_length is not None and request.content_length > settings.max_predict_bytes:
            raise E.PayloadTooLarge(
                f"body over {settings.max_predict_bytes} bytes", {"limit": settings.max_predict_bytes}
            )
        admission = router.admit(request.content_length or 0, settings.max_predict_inflight_bytes)
        body = await read_body(request, settings.max_predict_bytes, admission.hold)
        req, tensors = decode_request(body, _header_length(request))
        p = plan(info, req, tensors)
        results = await _submit_all(router, p.items, admission)
        out, head_len = encode_response(request.match_info["model"], req, outputs(info, p, results), VERSION)
        if head_len is None:
            return web.Response(body=out, content_type="application/json")
        return web.Response(
            body=out, content_type="application/octet-stream", headers={HEADER_LENGTH: str(head_len)}
        )
    except E.CvopsError as exc:
        status = str(exc.status)
        raise
    finally:
        if admission is not None:
            admission.release()
        live = pool.router_of(dep_id)
        label = dep_id if live is not None else "unknown"  # no series per made-up name
        metrics.inference_requests.labels(label, status).inc()
        metrics.inference_latency.labels(label).observe(time.perf_counter() - start)
        if live is not None:
            metrics.inference_queue.labels(dep_id).set(live.queued + live.inflight)


def _v2(method: str, path: str, handler: Any, roles: frozenset[str], summary: str, **kw: Any) -> Route:
    return Route(method, path, handler, roles, summary, prefix="/v2", tag="inference-protocol", **kw)


ROUTES = [
    _v2("GET", "", server_metadata, EVERY_ROLE, "Server metadata (Open Inference Protocol)",
        response=ServerMetadata),
    _v2("GET", "/health/live", server_live, ANYONE, "Server liveness (Open Inference Protocol)",
        response=Live),
    _v2("GET", "/health/ready", server_ready, ANYONE, "Server readiness (Open Inference Protocol)",
        response=Ready),
    _v2("GET", "/models/{model}", model_metadata, EVERY_ROLE, "Model metadata: inputs and outputs",
        response="oip-model"),
    _v2("GET", "/models/{model}/versions/{version}", model_metadata, EVERY_ROLE,
        "Model metadata of one version (there is one: 1)", response="oip-model"),
    _v2("GET", "/models/{model}/config", model_config, EVERY_ROLE,
        "Model configuration in Triton's shape (for perf_analyzer)", response="oip-model"),
    _v2("GET", "/models/{model}/ready", model_ready, EVERY_ROLE, "Model readiness", response=ModelReady),
    _v2("GET", "/models/{model}/versions/{version}/ready", model_ready, EVERY_ROLE,
        "Model readiness of one version", response=ModelReady),
    _v2("POST", "/models/{model}/infer", infer, EVERY_ROLE,
        "Inference: FP32 tensors or BYTES images, JSON or binary tensors, classification extension",
        body="oip-infer", response="oip-infer"),
    _v2("POST", "/models/{model}/versions/{version}/infer", infer, EVERY_ROLE,
        "Inference on one version", body="oip-infer", response="oip-infer"),
]  # fmt: skip
