"""Reports over HTTP: every job kind's report, each model's card, and short-lived signed links to them.

The handlers only gather events (one snapshot of the log: every read stops at the head seen first) and
hand them to the pure builders of :mod:`cvops.reports`; the same events give the same bytes.
``?download=1`` serves the report as an attachment; ``?sig=`` (from ``POST …/report-link`` or
``POST …/card-link``) opens it without a Bearer header (the auth middleware checks the link, see
:mod:`cvops.platform.report_links`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from cvops.errors import BadRequest
from cvops.events.scheduling import SCHEDULER_STREAM, job_stream
from cvops.events.schema import Envelope, Event
from cvops.events.store import Store
from cvops.platform import report_links
from cvops.platform.bodies import json_response
from cvops.platform.context import principal, query_bool
from cvops.platform.keys import SERVICES
from cvops.platform.routes import STAFF, Route

REPORT_TYPES = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
# an HTML report is a document from the API's origin: it may not run or load anything
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
}
_JOB_TYPES = (
    "JobSubmitted",
    "JobQueued",
    "JobStarted",
    "JobSucceeded",
    "JobFailed",
    "JobCancelled",
    "JobInterrupted",
)
_CARD_TYPES = (
    "BenchmarkMeasured",
    "EngineSelected",
    "JobSubmitted",
    "JobStarted",
    "JobSucceeded",
    "DeploymentCreated",
    "DeploymentDeleted",
    "PackageBuilt",
)
PAGE = 5000


class ReportLink(msgspec.Struct):
    url: str  # absolute, as this request reached the server
    path: str  # the same, relative to the server
    expires_at: int  # epoch seconds
    expires_in_s: int


async def read_all(
    store: Store, until: int, keep: Callable[[Envelope], bool] = lambda _: True, **filters: Any
) -> list[Envelope]:
    """Every envelope matching ``filters`` up to seq ``until`` that ``keep`` accepts, in log order."""
    out: list[Envelope] = []
    after = 0
    while True:
        page = await store.read(after, PAGE, until_seq=until, **filters)
        out += [e for e in page if keep(e)]
        if len(page) < PAGE:
            return out
        after = page[-1].seq


def _events(envs: list[Envelope]) -> list[Event]:
    """Decoded, in log order (several reads merged by seq, each envelope once)."""
    unique = {e.seq: e for e in envs}
    return [unique[s].event() for s in sorted(unique)]


async def job_events(store: Store, job_id: str) -> list[Event]:
    """What a job's report is built from: the scheduler events of the job and of its trials, the job's
    own stream, and the streams of the models and dataset it names."""
    until = await store.wait_for(0, 0)
    ids = {job_id}
    specs: dict[str, dict[str, Any]] = {}

    def ours(env: Envelope) -> bool:
        ev = env.event()
        jid = getattr(ev, "job_id", None)
        if env.type == "JobSubmitted" and (jid == job_id or getattr(ev, "parent_job_id", None) in ids):
            ids.add(str(jid))
            specs[str(jid)] = dict(getattr(ev, "spec", {}))
        return jid in ids

    envs = await read_all(store, until, ours, stream=SCHEDULER_STREAM, types=_JOB_TYPES)
    envs += await read_all(store, until, stream=job_stream(job_id))
    spec = specs.get(job_id, {})
    names = [f"model-{spec['model_id']}"] if spec.get("model_id") else []
    if spec.get("dataset_id"):
        names.append(f"dataset-{spec['dataset_id']}")
    for env in envs:  # the model a train job registered
        if env.type == "JobSucceeded":
            made = env.event().result.get("model_id")  # type: ignore[union-attr]
            if isinstance(made, str) and made:
                names.append(f"model-{made}")
    for name in sorted(set(names)):
        envs += await read_all(store, until, stream=name)
    return _events(envs)


async def model_events(store: Store, model_id: str) -> list[Event]:
    """What a model card is built from: the model's stream, its parent's and its dataset's, and every
    benchmark, training result, deployment and package that names it."""
    until = await store.wait_for(0, 0)
    envs = await read_all(store, until, stream=f"model-{model_id}")
    up = next((e.event() for e in envs if e.type == "ModelUploaded"), None)
    for attr, prefix in (("parent_model_id", "model-"), ("dataset_id", "dataset-")):
        other = getattr(up, attr, None)
        if other:
            envs += await read_all(store, until, stream=f"{prefix}{other}")
    jobs: set[str] = set()
    deployments: set[str] = set()
    parent = getattr(up, "parent_model_id", None)

    def ours(env: Envelope) -> bool:
        ev = env.event()
        if env.type == "JobSubmitted":
            spec = getattr(ev, "spec", {})
            if getattr(ev, "kind", "") == "benchmark" and spec.get("model_id") == model_id:
                jobs.add(ev.job_id)  # type: ignore[union-attr]
                return True
            # the train jobs that may have made this model (from its parent): which one did, JobSucceeded says
            return bool(parent) and getattr(ev, "kind", "") == "train" and spec.get("model_id") == parent
        if env.type == "JobStarted":
            return getattr(ev, "job_id", None) in jobs
        if env.type == "JobSucceeded":
            return getattr(ev, "result", {}).get("model_id") == model_id
        if env.type == "DeploymentCreated" and getattr(ev, "model_id", None) == model_id:
            deployments.add(ev.deployment_id)  # type: ignore[union-attr]
            return True
        if env.type == "DeploymentDeleted":
            return getattr(ev, "deployment_id", None) in deployments
        return getattr(ev, "model_id", None) == model_id

    envs += await read_all(store, until, ours, types=_CARD_TYPES)
    return _events(envs)


def _view_format(request: web.Request) -> tuple[str, str]:
    view = request.query.get("view", "simple")
    fmt = request.query.get("format", "json")
    if view not in ("simple", "technical"):
        raise BadRequest("view must be simple or technical", {"parameter": "view"})
    if fmt not in REPORT_TYPES:
        raise BadRequest("format must be json, md or html", {"parameter": "format"})
    return view, fmt


def _respond(request: web.Request, body: bytes, fmt: str, filename: str) -> web.Response:
    headers = {
        "Content-Type": REPORT_TYPES[fmt],
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }
    if fmt == "html":
        headers.update(_HTML_HEADERS)
    if query_bool(request, "download"):
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return web.Response(body=body, headers=headers)


async def job_report(request: web.Request) -> web.StreamResponse:
    from cvops.reports import job_report as build

    view, fmt = _view_format(request)
    query_bool(request, "download")  # a bad value is a 400 before any work
    services = request.app[SERVICES]
    job = await services.need_scheduler().get(request.match_info["id"])  # 404 for an unknown job
    body = build(job.id, await job_events(services.need_store(), job.id), view, fmt)
    return _respond(request, body, fmt, f"cvops-{job.kind}-report-{job.id}-{view}.{fmt}")


async def model_card(request: web.Request) -> web.StreamResponse:
    from cvops.reports import model_card_report

    view, fmt = _view_format(request)
    query_bool(request, "download")
    services = request.app[SERVICES]
    model = await services.need_registry().get(request.match_info["id"])  # 404 for an unknown model
    body = model_card_report(model.id, await model_events(services.need_store(), model.id), view, fmt)
    return _respond(request, body, fmt, f"cvops-model-card-{model.id}-{view}.{fmt}")


def _link(request: web.Request, path: str) -> ReportLink:
    view, fmt = _view_format(request)
    sig, exp = report_links.issue(request.app[SERVICES].need_auth(), principal(request), path)
    rel = f"{path}?{urlencode({'view': view, 'format': fmt, 'download': '1', 'sig': sig})}"
    return ReportLink(
        url=f"{request.url.origin()}{rel}", path=rel, expires_at=exp, expires_in_s=report_links.LINK_TTL_S
    )


async def job_report_link(request: web.Request) -> web.StreamResponse:
    job = await request.app[SERVICES].need_scheduler().get(request.match_info["id"])
    return json_response(_link(request, f"/api/v1/jobs/{job.id}/report"))


async def model_card_link(request: web.Request) -> web.StreamResponse:
    model = await request.app[SERVICES].need_registry().get(request.match_info["id"])
    return json_response(_link(request, f"/api/v1/models/{model.id}/card"))


_REPORT_QUERY = {"view": "string", "format": "string", "download": "boolean", "sig": "string"}
_LINK_QUERY = {"view": "string", "format": "string"}

ROUTES = [
    Route(
        "GET",
        "/jobs/{id}/report",
        job_report,
        STAFF,
        "A job's report: benchmark, training or evolution (deterministic bytes); ?sig= opens a signed link",
        response=dict,
        query=_REPORT_QUERY,
        tag="jobs",
    ),
    Route(
        "POST",
        "/jobs/{id}/report-link",
        job_report_link,
        STAFF,
        "A link to the job's report that a browser can open without a token, valid for minutes",
        response=ReportLink,
        query=_LINK_QUERY,
        tag="jobs",
    ),
    Route(
        "GET",
        "/models/{id}/card",
        model_card,
        STAFF,
        "A model's card: source, format, parity, lineage, benchmarks, deployments; ?sig= opens a signed link",
        response=dict,
        query=_REPORT_QUERY,
        tag="models",
    ),
    Route(
        "POST",
        "/models/{id}/card-link",
        model_card_link,
        STAFF,
        "A link to the model's card that a browser can open without a token, valid for minutes",
        response=ReportLink,
        query=_LINK_QUERY,
        tag="models",
    ),
]
