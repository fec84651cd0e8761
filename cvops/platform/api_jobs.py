"""Jobs (train, evolve, benchmark) and the scheduler's view (their reports: cvops.platform.api_reports)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from cvops.errors import (
    Forbidden,
    TooManyRequests,
    UnsupportedMediaType,
)
from cvops.events.scheduling import JobRecord
from cvops.jobs_api import decode_job_request, job_spec
from cvops.ml.hyperparameters import is_default
from cvops.platform.bodies import json_response, read_body
from cvops.platform.context import principal
from cvops.platform.keys import SERVICES, SETTINGS
from cvops.platform.routes import STAFF, Route
from cvops.views import JobView, job_view

if TYPE_CHECKING:
    from cvops.actors.scheduler_client import SchedulerClient

# one submission per user at a time in this gateway (user name -> lock)
SUBMIT_LOCKS: web.AppKey[dict[str, asyncio.Lock]] = web.AppKey("cvops.job_submit_locks")


class JobList(msgspec.Struct):
    """``GET /jobs``: the job views themselves (what OpenAPI declares is what is encoded)."""

    jobs: list[JobView]


async def _body(request: web.Request) -> bytes:
    ctype = request.content_type if request.headers.get("Content-Type") else ""
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")
    return await read_body(request, request.app[SETTINGS].max_json_bytes)


async def submit_job(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    services = request.app[SERVICES]
    scheduler = services.need_scheduler()
    limit = request.app[SETTINGS].max_queued_jobs_per_user
    await _check_queued(scheduler, who.username, limit)  # admitted before the body is read (§5)
    req = decode_job_request(await _body(request))
    spec = job_spec(req)
    kind = spec["kind"]
    # the role policy; every other rule of a submission is the scheduler's (plan_submit)
    if kind in ("evolve", "benchmark") and who.role != "admin":
        raise Forbidden(f"only admins may run {kind} jobs", {"required": ["admin"]})
    if kind == "train" and who.role != "admin" and not is_default(spec.get("hyperparameters") or {}):
        raise Forbidden("engineers may only train with the default hyperparameters", {"required": ["admin"]})
    # one submission per user at a time in this gateway, so the count cannot be raced past
    async with request.app[SUBMIT_LOCKS].setdefault(who.username, asyncio.Lock()):
        await _check_queued(scheduler, who.username, limit)
        job = await scheduler.submit(kind, spec, who.username)
    return json_response(job_view(job), status=202)


async def _check_queued(scheduler: SchedulerClient, username: str, limit: int) -> None:
    """429 naming the setting when ``username`` already has ``limit`` jobs waiting for a token."""
    waiting = await _waiting_jobs(scheduler, username)
    if len(waiting) >= limit:
        raise TooManyRequests(
            f"{username} already has {len(waiting)} jobs waiting in the queue; at most {limit} "
            f"per user (CVOPS_MAX_QUEUED_JOBS_PER_USER)",
            {"queued": len(waiting), "limit": limit, "setting": "CVOPS_MAX_QUEUED_JOBS_PER_USER"},
            retry_after=30.0,
        )


async def _waiting_jobs(scheduler: SchedulerClient, username: str) -> list[str]:
    """Ids of the jobs ``username`` submitted that wait for a GPU token (queued, or interrupted and
    about to be requeued); an evolution's trials belong to the evolution, not to this count."""
    ids: list[str] = []
    for status in ("queued", "interrupted"):
        for job in await scheduler.list_jobs(None, status):
            if job.submitted_by == username and not job.parent_job_id:
                ids.append(job.id)
    return ids


async def list_jobs(request: web.Request) -> web.StreamResponse:
    jobs = (
        await request.app[SERVICES]
        .need_scheduler()
        .list_jobs(request.query.get("kind"), request.query.get("status"))
    )
    return json_response(JobList(jobs=[job_view(j) for j in jobs]))


async def get_job(request: web.Request) -> web.StreamResponse:
    return json_response(job_view(await request.app[SERVICES].need_scheduler().get(request.match_info["id"])))


def check_may_cancel(job: JobRecord, username: str, role: str) -> None:
    """Admins cancel any job; others only the train jobs they submitted (benchmark and evolve jobs are
    admin-only to run, so admin-only to stop).  403 otherwise."""
    if role == "admin":
        return
    if job.kind != "train":
        raise Forbidden(f"only admins may cancel {job.kind} jobs", {"required": ["admin"], "job_id": job.id})
    if job.submitted_by != username:
        raise Forbidden(
            "only an admin or the job's submitter may cancel it",
            {"required": ["admin", "submitter"], "job_id": job.id},
        )


async def cancel_job(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    scheduler = request.app[SERVICES].need_scheduler()
    job = await scheduler.get(request.match_info["id"])  # 404 first; kind and submitter never change
    check_may_cancel(job, who.username, who.role)
    return json_response(job_view(await scheduler.cancel(job.id, who.username)), status=202)


async def scheduler_view(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SERVICES].need_scheduler().view())


ROUTES = [
    Route(
        "POST",
        "/jobs",
        submit_job,
        STAFF,
        "Submit a job {kind: train|evolve|benchmark}; evolve and benchmark are admin-only, engineers train with defaults only",
        body=dict,
        response=JobView,
        status=202,
        tag="jobs",
    ),
    Route(
        "GET",
        "/jobs",
        list_jobs,
        STAFF,
        "List jobs",
        response=JobList,
        query={"kind": "string", "status": "string"},
        tag="jobs",
    ),
    Route("GET", "/jobs/{id}", get_job, STAFF, "One job", response=JobView, tag="jobs"),
    Route(
        "POST",
        "/jobs/{id}/cancel",
        cancel_job,
        STAFF,
        "Cancel a job (admins: any job; engineers: the train jobs they submitted)",
        response=JobView,
        status=202,
        tag="jobs",
    ),
    Route(
        "GET", "/scheduler", scheduler_view, STAFF, "GPU tokens, holders and queue", response=dict, tag="jobs"
    ),
]
