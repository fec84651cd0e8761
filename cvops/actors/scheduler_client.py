"""The GPUScheduler's client facade, with async and sync methods (as ``ray.util.queue.Queue`` has).

Kept apart from the actor class (:mod:`cvops.actors.scheduler`) so a job body (the GAEvolver submits
its trials here) can reach the scheduler without importing the module that creates job actors: no
import cycle.  Async methods are for event loops (the gateway, actors); ``*_sync`` ones for job bodies,
which run in a worker thread."""

from __future__ import annotations

from typing import Any

from cvops.actors.common import call, call_sync, get_actor

ACTOR_NAME = "cvops-scheduler"


class SchedulerClient:
    """Calls on the named GPUScheduler actor."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @classmethod
    def connect(cls) -> SchedulerClient:
        return cls(get_actor(ACTOR_NAME))

    # ---------------------------------------------------------------------------------- async
    async def submit(self, kind: str, spec: dict[str, Any], user: str) -> dict[str, Any]:
        return await call(self._h.submit.remote(kind, spec, user))  # type: ignore[no-any-return]

    async def cancel(self, job_id: str, by: str) -> dict[str, Any]:
        return await call(self._h.cancel.remote(job_id, by))  # type: ignore[no-any-return]

    async def get(self, job_id: str) -> dict[str, Any]:
        return await call(self._h.get.remote(job_id))  # type: ignore[no-any-return]

    async def list_jobs(self, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return await call(self._h.list_jobs.remote(kind, status))  # type: ignore[no-any-return]

    async def view(self) -> dict[str, Any]:
        return await call(self._h.view.remote())  # type: ignore[no-any-return]

    # ----------------------------------------------------------------------------------- sync
    def submit_child_sync(
        self, kind: str, spec: dict[str, Any], user: str, job_id: str, parent_job_id: str
    ) -> dict[str, Any]:
        """Submit a child job under a deterministic id (idempotent: a resubmission returns the job)."""
        return call_sync(self._h.submit.remote(kind, spec, user, job_id, parent_job_id))  # type: ignore[no-any-return]

    def cancel_sync(self, job_id: str, by: str) -> dict[str, Any]:
        return call_sync(self._h.cancel.remote(job_id, by))  # type: ignore[no-any-return]

    def get_sync(self, job_id: str) -> dict[str, Any]:
        return call_sync(self._h.get.remote(job_id))  # type: ignore[no-any-return]
