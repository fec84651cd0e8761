"""What every job actor shares: :class:`JobActor` (the base of the Trainer, GAEvolver and Benchmarker
actor classes), the :class:`JobContext` a job body gets, and the blocking :class:`SyncStore`.

A job actor is a threaded actor, so ``cancel`` runs beside ``run`` and flips a flag the job checks
between steps.  The job's own facts (JobProgressed, CheckpointSaved, BenchmarkMeasured, ...) go to
its stream ``job-<id>``; only the scheduler writes the job's status.  This module imports no job body
and no other actor module but the event log's, so the bodies and the scheduler can import it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import msgspec
import ray

from cvops.actors.common import worker_priority
from cvops.actors.eventlog import EventStore
from cvops.blobs import BlobStore
from cvops.config import Settings
from cvops.errors import CvopsError
from cvops.events.projection import SyncProjection
from cvops.events.scheduling import job_stream
from cvops.events.schema import (
    CheckpointSaved,
    CheckpointsDiscarded,
    Event,
    JobProgressed,
)
from cvops.events.store import SyncStore
from cvops.gc import KEPT_TYPES, KeptCheckpoint, apply_kept, checkpoints_to_discard, parse_keep
from cvops.jobs_api import BenchmarkJob, EvolveJob, JobRequest, TrainJob

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


def typed_job(spec: dict[str, Any]) -> tuple[JobRequest, bool]:
    """The typed request a job's ``spec`` was made from, and whether a train job registers its model
    (an evolution's trials carry ``register: false``).  Keys a request type does not know (specs
    written by older versions) are dropped rather than failing a resumed job."""
    kind = str(spec.get("kind"))
    types: dict[str, type[TrainJob] | type[EvolveJob] | type[BenchmarkJob]] = {
        "train": TrainJob,
        "evolve": EvolveJob,
        "benchmark": BenchmarkJob,
    }
    cls = types.get(kind)
    if cls is None:
        raise CvopsError(f"unknown job kind {kind!r}")
    known = set(cls.__struct_fields__)
    data = {k: v for k, v in spec.items() if k in known and v is not None}
    return msgspec.convert(data, cls), spec.get("register") is not False


class JobOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a job actor's ``run`` ended; a raised error means the actor itself broke."""

    outcome: str  # "succeeded" | "cancelled" | "failed"
    result: dict[str, Any] | None = None
    error: str | None = None
    details: dict[str, Any] | None = None


class JobContext:
    """What a job body gets: its typed request, device, and the ways to report progress and checkpoints."""

    def __init__(
        self,
        job_id: str,
        spec: dict[str, Any],
        device: str,
        token: int | None,
        attempt: int,
        settings: Settings,
        store: SyncStore,
        cancel_flag: threading.Event,
        last_checkpoint: dict[str, Any] | None,
    ) -> None:
        self.job_id = job_id
        self.job, self.register = typed_job(spec)
        trial = spec.get("trial")
        # an evolution's trial: {"evolution_job_id", "generation", "index"} (its model's lineage)
        self.trial: dict[str, Any] = dict(trial) if isinstance(trial, dict) else {}
        self.device = device
        self.token = token
        self.attempt = attempt
        self.settings = settings
        self.store = store
        self.blobs = BlobStore(settings.blob_root)
        self._cancel = cancel_flag
        self.last_checkpoint = last_checkpoint
        self._last_progress = 0.0
        self._kept: list[KeptCheckpoint] | None = None  # this run's checkpoints the policy keeps
        self.stream = job_stream(job_id)

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(self.job_id)

    def emit(self, events: Sequence[Event]) -> None:
        self.store.append(self.stream, events)

    def progress(self, progress: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        self.emit([JobProgressed(job_id=self.job_id, progress=progress)])

    def checkpoint(self, epoch: int, data: bytes, metrics: dict[str, float]) -> None:
        ref = self.blobs.put_bytes(data)  # fsynced before the event names it
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.emit([CheckpointSaved(job_id=self.job_id, epoch=epoch, sha256=ref.sha256, metrics=clean)])
        best = clean.get("best_epoch")
        self._discard_old(
            KeptCheckpoint(epoch=epoch, sha256=ref.sha256, best_epoch=None if best is None else int(best))
        )

    def _discard_old(self, newest: KeptCheckpoint) -> None:
        """Apply CVOPS_KEEP_CHECKPOINTS: record the checkpoints that go, then delete their blobs."""
        policy = parse_keep(self.settings.keep_checkpoints)
        if policy.last is None:
            return
        if self._kept is None:  # first checkpoint of this attempt: what earlier attempts kept, + newest
            self._kept = self._kept_from_log()
        else:
            self._kept.append(newest)
        drop = checkpoints_to_discard(self._kept, policy)
        if not drop:
            return
        self.emit(
            [
                CheckpointsDiscarded(
                    job_id=self.job_id, sha256s=[c.sha256 for c in drop], epochs=[c.epoch for c in drop]
                )
            ]
        )
        gone = {c.sha256 for c in drop}
        self._kept = [c for c in self._kept if c.sha256 not in gone]
        for sha in gone:
            try:
                self.blobs.delete(sha)
            except OSError as exc:  # the log no longer names it: `cvops gc` collects it later
                log.warning("could not delete checkpoint blob %s: %s", sha, exc)

    def _kept_from_log(self) -> list[KeptCheckpoint]:
        kept: SyncProjection[list[KeptCheckpoint]] = SyncProjection(
            self.store, apply_kept, [], stream=self.stream, types=KEPT_TYPES
        )
        return kept.catch_up()


JobBody = Callable[[JobContext], dict[str, Any]]


class JobActor:
    """The base of the job actor classes.  One actor per job attempt, created by the GPUScheduler
    (named ``<Class>:<job id>:<attempt>``) and killed when the job ends.  A subclass names its
    ``kind`` and its ``body``; it is declared ``@ray.remote`` so Ray lists it by its class name."""

    kind: ClassVar[str] = ""

    def __init__(self, settings: Settings) -> None:
        worker_priority()
        self._settings = settings
        self._cancel = threading.Event()

    @staticmethod
    def body(ctx: JobContext) -> dict[str, Any]:
        raise NotImplementedError

    def run(
        self,
        job_id: str,
        spec: dict[str, Any],
        device: str,
        token: int | None,
        attempt: int,
        last_checkpoint: dict[str, Any] | None,
    ) -> JobOutcome:
        """Never raises for a job error (that is an outcome), so a raised error means the actor broke."""
        if device.startswith("cuda") and ray.get_gpu_ids():
            device = "cuda:0"  # Ray made the GPU it assigned the only visible one
        try:
            ctx = JobContext(
                job_id,
                spec,
                device,
                token,
                attempt,
                self._settings,
                EventStore.connect().sync_view(),
                self._cancel,
                last_checkpoint,
            )
            result = self.body(ctx)
        except JobCancelled:
            return JobOutcome(outcome="cancelled")
        except CvopsError as exc:
            return JobOutcome(outcome="failed", error=exc.message, details={"code": exc.code, **exc.details})
        except Exception as exc:
            log.exception("job %s failed", job_id)
            return JobOutcome(outcome="failed", error=f"{type(exc).__name__}: {exc}", details={})
        if self._cancel.is_set() and result.get("cancelled"):
            return JobOutcome(outcome="cancelled")
        return JobOutcome(outcome="succeeded", result=result)

    def cancel(self) -> bool:
        self._cancel.set()
        return True


def job_actor_name(class_name: str, job_id: str, attempt: int) -> str:
    """The Ray actor name of a job's actor: its class, the job id and the attempt (a requeued job's next
    actor may start before the previous one is gone, and actor names are unique)."""
    return f"{class_name}:{job_id}:{attempt}"
