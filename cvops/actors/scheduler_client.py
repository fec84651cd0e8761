"""The GPUScheduler's client facade, with async and sync methods (as ``ray.util.queue.Queue`` has).

Kept apart from the actor class (:mod:`cvops.actors.scheduler`) so a job body (the GAEvolver submits
its trials here) can reach the scheduler without importing the module that creates job actors: no
import cycle.  Async methods are for event loops (the gateway, actors); ``*_sync`` ones for job bodies,
which run in a worker thread.  Jobs cross the process boundary as msgpack bytes and come out of here as
:class:`~cvops.events.scheduling.JobRecord` Structs."""

from __future__ import annotations

from typing import Any

import msgspec

from cvops.actors.common import call, call_sync, get_actor
from cvops.events.scheduling import JobRecord

ACTOR_NAME = "cvops-scheduler"

_JOB = msgspec.msgpack.Decoder(JobRecord)
_JOBS = msgspec.msgpack.Decoder(list[JobRecord])


class SchedulerClient:
    """Calls on the named GPUScheduler actor."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @classmethod
    def connect(cls) -> SchedulerClient:
        return cls(get_actor(ACTOR_NAME))

    # ---------------------------------------------------------------------------------- async
    async def submit(self, kind: str, spec: dict[str, Any], user: str) -> JobRecord:
        return _JOB.decode(await call(self._h.submit.remote(kind, spec, user)))

    async def cancel(self, job_id: str, by: str) -> JobRecord:
        return _JOB.decode(await call(self._h.cancel.remote(job_id, by)))

    async def get(self, job_id: str) -> JobRecord:
        return _JOB.decode(await call(self._h.get.remote(job_id)))

    async def list_jobs(self, kind: str | None = None, status: str | None = None) -> list[JobRecord]:
        return _JOBS.decode(await call(self._h.list_jobs.remote(kind, status)))

    async def view(self) -> dict[str, Any]:
        return await call(self._h.view.remote())  # type: ignore[no-any-return]

    # ----------------------------------------------------------------------------------- sync
    def submit_child_sync(
        self, kind: str, spec: dict[str, Any], user: str, job_id: str, parent_job_id: str
    ) -> JobRecord:
        """Submit a child job under a deterministic id (idempotent: a resubmission returns the job)."""
        return _JOB.decode(call_sync(self._h.submit.remote(kind, spec, user, job_id, parent_job_id)))

    def cancel_sync(self, job_id: str, by: str) -> JobRecord:
        return _JOB.decode(call_sync(self._h.cancel.remote(job_id, by)))

    def get_sync(self, job_id: str) -> JobRecord:
        return _JOB.decode(call_sync(self._h.get.remote(job_id)))
