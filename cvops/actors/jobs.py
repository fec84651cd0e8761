"""The job worker actor: runs one job (train, evolve, benchmark) for the GPUScheduler.

A worker is a threaded actor, so ``cancel`` runs beside ``run`` and flips a flag the job checks
between steps.  The job's own facts (JobProgressed, CheckpointSaved, BenchmarkMeasured, ...) go to
its stream ``job-<id>``; only the scheduler writes the job's status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from cvops.actors.common import unwrap, worker_priority
from cvops.actors.eventlog import ACTOR_NAME
from cvops.blobs import BlobStore
from cvops.config import Settings
from cvops.errors import CvopsError
from cvops.events.scheduling import job_stream
from cvops.events.schema import (
    CheckpointSaved,
    CheckpointsDiscarded,
    Envelope,
    Event,
    JobProgressed,
    decode_envelopes,
    encode_event,
    type_of,
)
from cvops.events.store import appended_envelopes
from cvops.gc import KeptCheckpoint, checkpoints_to_discard, parse_keep

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


class SyncStore:
    """Blocking access to the EventLog actor, for code running in a worker thread."""

    def __init__(self) -> None:
        self._h = ray.get_actor(ACTOR_NAME, namespace="cvops")

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[Envelope]:
        items = [(type_of(e), encode_event(e)) for e in events]
        try:
            head: Any = ray.get(self._h.append.remote(stream, items, expected_version, "", "", ""))
            return appended_envelopes(stream, items, head)
        except ray.exceptions.RayTaskError as exc:
            inner = unwrap(exc)
            if isinstance(inner, CvopsError):
                raise inner from None
            raise

    def read_stream(self, stream: str) -> list[Envelope]:
        out: list[Envelope] = []
        after = 0
        while True:
            data: Any = ray.get(self._h.read.remote(after, 5000, stream, None, None, None))
            batch = decode_envelopes(data)
            out.extend(batch)
            if len(batch) < 5000:
                return out
            after = batch[-1].seq

    def stream_version(self, stream: str) -> int:
        version: Any = ray.get(self._h.stream_version.remote(stream))
        return int(version)


class JobContext:
    """What a job body gets: its spec, device, and the ways to report progress and checkpoints."""

    def __init__(
        self,
        job_id: str,
        spec: dict[str, Any],
        device: str,
        token: int,
        attempt: int,
        settings: Settings,
        store: SyncStore,
        cancel_flag: threading.Event,
        last_checkpoint: dict[str, Any] | None,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
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
        kept: list[KeptCheckpoint] = []
        for env in self.store.read_stream(self.stream):
            ev = env.event()
            if isinstance(ev, CheckpointSaved):
                best = ev.metrics.get("best_epoch")
                kept.append(
                    KeptCheckpoint(
                        epoch=ev.epoch, sha256=ev.sha256, best_epoch=None if best is None else int(best)
                    )
                )
            elif isinstance(ev, CheckpointsDiscarded):
                gone = set(ev.sha256s)
                kept = [c for c in kept if c.sha256 not in gone]
        return kept


JobBody = Callable[[JobContext], dict[str, Any]]


def job_body(kind: str) -> JobBody:
    if kind == "benchmark":
        from cvops.actors.benchmarker import run_benchmark_job

        return run_benchmark_job
    if kind == "train":
        from cvops.actors.trainer import run_train_job

        return run_train_job
    if kind == "evolve":
        from cvops.actors.evolver import run_evolve_job

        return run_evolve_job
    raise CvopsError(f"unknown job kind {kind!r}")


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)  # type: ignore[call-overload]
class JobWorker:
    """One per running job; the scheduler kills it when the job ends."""

    def __init__(self, settings: Settings) -> None:
        worker_priority()
        self._settings = settings
        self._cancel = threading.Event()

    def run(
        self,
        job_id: str,
        kind: str,
        spec: dict[str, Any],
        device: str,
        token: int,
        attempt: int,
        last_checkpoint: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Returns ``{"outcome": "succeeded"|"cancelled"|"failed", ...}``; never raises for a job
        error (that is an outcome), so a raised error means the worker itself broke."""
        if device.startswith("cuda") and ray.get_gpu_ids():
            device = "cuda:0"  # Ray made the GPU it assigned the only visible one
        ctx = JobContext(
            job_id, spec, device, token, attempt, self._settings, SyncStore(), self._cancel, last_checkpoint
        )
        body = job_body(kind)
        try:
            result = body(ctx)
        except JobCancelled:
            return {"outcome": "cancelled"}
        except CvopsError as exc:
            return {"outcome": "failed", "error": exc.message, "details": {"code": exc.code, **exc.details}}
        except Exception as exc:
            log.exception("job %s failed", job_id)
            return {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}", "details": {}}
        if self._cancel.is_set() and result.get("cancelled"):
            return {"outcome": "cancelled"}
        return {"outcome": "succeeded", "result": result}

    def cancel(self) -> bool:
        self._cancel.set()
        return True
