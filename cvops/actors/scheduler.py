"""GPUScheduler actor: CVOPS_GPU_TOKENS tokens and a bounded FIFO job queue, around the pure core in
:mod:`cvops.events.scheduling`.  Every decision is one append; the state is always the fold of the
log, caught up after each append (so folding stays in seq order).

For each started job the scheduler creates the actor of its kind (:data:`cvops.actors.job_kinds.JOB_ACTORS`:
Trainer, GAEvolver, Benchmarker) named ``<Class>:<job id>:<attempt>``, and kills it when the job ends.
:class:`Scheduler` is the facade the gateway starts it with; job bodies use
:class:`~cvops.actors.scheduler_client.SchedulerClient`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec
import ray
from ray.exceptions import RayActorError

from cvops.actors.common import NAMESPACE, call
from cvops.actors.eventlog import EventStore
from cvops.actors.job_kinds import job_actor_class
from cvops.actors.jobs import JobOutcome, job_actor_name
from cvops.actors.registry import Registry
from cvops.actors.scheduler_client import ACTOR_NAME, SchedulerClient
from cvops.config import Settings
from cvops.errors import Conflict, CvopsError, NotFound
from cvops.events import scheduling as core
from cvops.events.projection import Projection
from cvops.events.schema import Event
from cvops.jobs_api import check_job_spec

log = logging.getLogger(__name__)

__all__ = ["ACTOR_NAME", "GPUScheduler", "Scheduler"]


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:
        return 0


@ray.remote(num_cpus=0, max_restarts=-1)
class GPUScheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = EventStore.connect()
        # the scheduler's state: the pure fold of the log, kept current by one projection
        self.jobs: Projection[core.SchedulerState] = Projection(
            self.store,
            core.apply_scheduler,
            core.new_state(settings.gpu_tokens),
            types=sorted(core.SCHEDULER_TYPES),
        )
        self.lock = asyncio.Lock()
        self.workers: dict[str, Any] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelling: dict[str, str] = {}
        self.started = False
        self.gpus = _gpu_count()
        self.follower: asyncio.Task[None] | None = None
        self.stopping = False
        self.registry: Registry | None = None

    def _gpu_share(self, kind: str) -> float:
        """The GPU fraction a job's worker asks Ray for: tokens share the GPUs evenly, so Ray never
        holds back a job the scheduler started; an evolution itself runs no model (its trials do)."""
        if not self.gpus or kind in core.TOKENLESS_KINDS:
            return 0.0
        return min(1.0, self.gpus / max(1, self.settings.gpu_tokens))

    def _device(self, token: int) -> str:
        return f"cuda:{token % self.gpus}" if self.gpus else "cpu"

    @property
    def state(self) -> core.SchedulerState:
        return self.jobs.state

    async def _sync(self) -> None:
        await self.jobs.catch_up()

    async def _append(self, events: list[Event]) -> None:
        if events:
            await self.jobs.fold_appended(
                await self.store.append(core.SCHEDULER_STREAM, events, self.state.version)
            )

    async def start(self) -> dict[str, Any]:
        async with self.lock:
            if not self.started:
                await self._sync()
                await self._append(core.plan_recover(self.state))
                self.started = True
                self.follower = asyncio.create_task(self._follow())
            await self._dispatch()
        return core.scheduler_view(self.state)

    async def _follow(self) -> None:
        """Keep job progress (written by workers to job-<id>) folded in.  The projection's position
        stands at the head it has scanned (not at the last scheduler event), so each wait is for new
        events only; the fold runs under the decision lock, between appends."""
        while True:
            try:
                await self.store.wait_for(self.jobs.position, 5.0)
                async with self.lock:
                    await self._sync()
            except asyncio.CancelledError:
                raise
            except CvopsError as exc:
                log.warning("scheduler follow: %s", exc)
                await asyncio.sleep(1.0)  # back off while the log is unavailable

    async def _dispatch(self) -> None:
        for append in core.plan_dispatch(self.state, self._device):
            await self._append(append)
            job_id = append[0].job_id  # type: ignore[attr-defined]
            try:
                self._launch(self.state.jobs[job_id])
            except (ValueError, RayActorError, ray.exceptions.RaySystemError) as exc:
                # no worker could be made: the job gives its token back and is requeued (or fails)
                log.warning("could not start a worker for job %s: %s", job_id, exc)
                await self._append(
                    core.plan_worker_died(self.state, job_id, reason=f"worker start failed: {exc}")
                )

    def _launch(self, rec: core.JobRecord) -> None:
        cls = job_actor_class(rec.kind)
        worker = cls.options(
            name=job_actor_name(cls.__ray_metadata__.class_name, rec.id, rec.attempt),
            namespace=NAMESPACE,
            num_gpus=self._gpu_share(rec.kind),
        ).remote(self.settings)
        self.workers[rec.id] = worker
        ref = worker.run.remote(
            rec.id, rec.spec, rec.device or "cpu", rec.token, rec.attempt, rec.last_checkpoint
        )
        self.tasks[rec.id] = asyncio.create_task(self._watch(rec.id, ref, worker))

    async def _watch(self, job_id: str, ref: Any, worker: Any) -> None:
        died: str | None = None
        outcome = JobOutcome(outcome="failed")
        try:
            outcome = await ref
        except RayActorError as exc:
            died = f"worker died: {str(exc)[:200]}"
        except Exception as exc:  # noqa: BLE001 - any other failure of the worker is the job's failure
            outcome = JobOutcome(outcome="failed", error=f"{type(exc).__name__}: {str(exc)[:500]}")
        finally:
            self.workers.pop(job_id, None)
            self.tasks.pop(job_id, None)
        try:
            if not self.stopping:  # at shutdown the next start's recovery interrupts and requeues the job
                await self._record_end(job_id, died, outcome)
        finally:
            try:
                ray.kill(worker, no_restart=True)
            except (RayActorError, ValueError) as exc:
                log.debug("worker already gone: %s", exc)

    async def _record_end(self, job_id: str, died: str | None, outcome: JobOutcome) -> None:
        async with self.lock:
            await self._sync()
            rec = self.state.jobs.get(job_id)
            if rec is None or rec.status != "running":
                return
            if died is not None and job_id not in self.cancelling:
                events = core.plan_worker_died(self.state, job_id, reason=died)
            else:
                kind = outcome.outcome if died is None else "cancelled"
                if job_id in self.cancelling and kind != "succeeded":
                    kind = "cancelled"
                events = core.plan_finish(
                    self.state,
                    job_id,
                    kind,  # type: ignore[arg-type]
                    result=outcome.result,
                    error=outcome.error,
                    details=outcome.details,
                    by=self.cancelling.pop(job_id, ""),
                )
            try:
                await self._append(events)
            except CvopsError as exc:  # e.g. the log is shutting down; recovery at the next start fixes it
                log.warning("end of job %s not recorded: %s", job_id, exc)
                return
            await self._dispatch()

    # ------------------------------------------------------------------------------------ commands
    async def submit(
        self,
        kind: str,
        spec: dict[str, Any],
        user: str,
        job_id: str | None = None,
        parent_job_id: str | None = None,
    ) -> bytes:
        """Every rule of a submission is :func:`~cvops.jobs_api.check_job_spec` (what the spec means)
        and :func:`~cvops.events.scheduling.plan_submit` (readiness, evolve, queue); this shell only looks
        up the facts they need."""
        await self._ensure_started()
        check_job_spec(kind, spec)
        ready = await self._readiness(spec)
        async with self.lock:
            await self._sync()
            jid = job_id or uuid.uuid4().hex[:16]
            await self._append(
                core.plan_submit(
                    self.state,
                    jid,
                    kind,
                    spec,
                    user,
                    self.settings.job_queue_limit,
                    parent_job_id=parent_job_id,
                    ready=ready,
                )
            )
            await self._dispatch()
            return msgspec.msgpack.encode(self.state.jobs[jid])

    async def _readiness(self, spec: dict[str, Any]) -> core.Readiness:
        """The status of the model and dataset ``spec`` names (None: not found), from the registry."""
        if self.registry is None:
            self.registry = Registry.connect()
        model_status = dataset_status = None
        with contextlib.suppress(NotFound):
            if spec.get("model_id"):
                model_status = (await self.registry.get(str(spec["model_id"]))).status
        with contextlib.suppress(NotFound):
            if spec.get("dataset_id"):
                dataset_status = (await self.registry.get_dataset(str(spec["dataset_id"]))).status
        return core.Readiness(model_status=model_status, dataset_status=dataset_status)

    async def cancel(self, job_id: str, by: str) -> bytes:
        await self._ensure_started()
        async with self.lock:
            await self._sync()
            rec = self.state.jobs.get(job_id)
            if rec is None:
                raise core.NotFound(f"no job {job_id!r}", {"job_id": job_id})
            if rec.status in core.TERMINAL:
                raise Conflict(
                    f"job {job_id!r} already {rec.status}", {"job_id": job_id, "status": rec.status}
                )
            if rec.status == "running":
                self.cancelling[job_id] = by
                worker = self.workers.get(job_id)
                if worker is not None:
                    try:
                        await worker.cancel.remote()
                    except RayActorError as exc:  # already dead: its watcher records the end
                        log.info("cancel of %s: worker gone: %s", job_id, exc)
                return msgspec.msgpack.encode(rec)
            await self._append(core.plan_finish(self.state, job_id, "cancelled", by=by))
            return msgspec.msgpack.encode(self.state.jobs[job_id])

    async def get(self, job_id: str) -> bytes:
        await self._sync_unlocked()
        rec = self.state.jobs.get(job_id)
        if rec is None:
            raise core.NotFound(f"no job {job_id!r}", {"job_id": job_id})
        return msgspec.msgpack.encode(rec)

    async def list_jobs(self, kind: str | None = None, status: str | None = None) -> bytes:
        await self._sync_unlocked()
        recs = sorted(self.state.jobs.values(), key=lambda r: r.queue_seq)
        return msgspec.msgpack.encode(
            [r for r in recs if (kind is None or r.kind == kind) and (status is None or r.status == status)]
        )

    async def view(self) -> dict[str, Any]:
        await self._sync_unlocked()
        return core.scheduler_view(self.state)

    async def _sync_unlocked(self) -> None:
        await self._ensure_started()
        async with self.lock:
            await self._sync()

    async def _ensure_started(self) -> None:
        """Ray restarts this actor after a crash (max_restarts=-1) with an empty state: recover then."""
        if not self.started:
            await self.start()

    async def stop(self) -> None:
        """Graceful shutdown: running jobs stay ``running`` in the log; the next start interrupts
        and requeues them (resuming from their last checkpoint)."""
        self.stopping = True
        if self.follower is not None:
            self.follower.cancel()
        for jid, worker in list(self.workers.items()):
            try:
                ray.kill(worker, no_restart=True)
            except (RayActorError, ValueError) as exc:
                log.debug("worker %s gone: %s", jid, exc)


class Scheduler(SchedulerClient):
    """The facade the gateway starts the GPUScheduler with (its calls: :class:`SchedulerClient`)."""

    @classmethod
    async def start(cls, settings: Settings) -> Scheduler:
        handle = GPUScheduler.options(  # type: ignore[attr-defined]
            name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, max_concurrency=1000
        ).remote(settings)
        facade = cls(handle)
        await call(handle.start.remote())
        return facade

    async def stop(self) -> None:
        await call(self._h.stop.remote())
