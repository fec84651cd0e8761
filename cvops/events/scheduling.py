"""The GPUScheduler's pure core: the job / GPU-token state machine as a fold over events, and the
decision functions that say which events to append.  No I/O, no Ray: the actor is a thin shell that
calls a ``plan_*`` function, appends what it returns, and folds the appended envelopes back.

Streams (who writes where)
==========================

Every stream has exactly one writer, and every decision of the scheduler is ONE append:

* ``scheduler`` (:data:`SCHEDULER_STREAM`), written only by the GPUScheduler actor, always with
  ``expected_version=state.version`` (single writer, but optimistic concurrency is still checked):
  ``JobSubmitted``, ``JobQueued``, ``GpuTokenGranted``, ``JobStarted``, ``JobSucceeded``, ``JobFailed``,
  ``JobCancelled``, ``JobInterrupted``, ``GpuTokenReleased``.
* ``job-<id>`` (:func:`job_stream`), written only by the job's worker (Trainer, Benchmarker, ...):
  ``JobProgressed``, ``CheckpointSaved`` and the job's domain facts (``BenchmarkMeasured``,
  ``EngineSelected``, ``TrialCompleted``).  :attr:`JobRecord.version` is that stream's version, so a
  worker knows the ``expected_version`` of its next append.

:func:`stream_for` says which stream an event belongs to.  Canonical appends (all to ``scheduler``):

============  ================================================================================
submit        ``[JobSubmitted, JobQueued]``
start         ``[GpuTokenGranted(k, j), JobStarted(j, k, device, attempt)]``  (one append per job);
              a job of a :data:`TOKENLESS_KINDS` kind starts with ``[JobStarted(j, None, "cpu", attempt)]``
end           ``[JobSucceeded | JobFailed | JobCancelled | JobInterrupted, GpuTokenReleased]``
              (no release when the job held no token, e.g. cancelling a queued job)
worker died   ``[JobInterrupted, GpuTokenReleased, JobQueued | JobFailed]``
recover       one append: for each running job the "worker died" triple, for each job left
              ``interrupted`` a ``JobQueued``, and a release for every token held by a non-running job
============  ================================================================================

Within an append the terminal event comes BEFORE the release and the grant BEFORE the start, so no
job is ever seen running without a token.  The invariants (tokens in use ≤ tokens; holders ⇔ running
jobs that need a token; queue = queued jobs ordered by ``queue_seq``) hold at every append boundary.

Tokenless jobs
==============

An evolution (kind ``evolve``, :data:`TOKENLESS_KINDS`) only coordinates: it runs no model, so it holds
**no** GPU token.  Its trials are child ``train`` jobs that take tokens like any other job, as many at
once as tokens are free.  :func:`plan_dispatch` starts a queued coordinator at once (it waits for no
token, so it passes no one in the token queue); the fold accepts ``JobStarted(token=None)`` only for
those kinds, and the audit counts the children's tokens, never the coordinator's.  (Logs written before
this rule, where an evolution held a token, still fold clean: a job started with a token holds it.)

The fold
========

:func:`apply_scheduler` folds one envelope IN PLACE and returns the state (like every fold in
:mod:`cvops.events.projections`); it ignores event types it does not know, skips an envelope whose
``seq`` it has already folded (so folding your own append and then receiving it from a subscription
is harmless), and never raises on a strange log: an impossible transition is recorded in
``state.violations`` (and, for token facts, still counted, so an audit sees them).  Job records are
frozen and replaced on every change, never mutated, so a record handed out stays valid.  Apart from
``state.version`` (the version of ``scheduler``) and ``JobRecord.version`` (of ``job-<id>``) the fold
does not look at stream names.

A job's lifecycle: ``queued → running → succeeded | failed | cancelled``; ``running → interrupted →
queued`` (requeued at its ORIGINAL ``queue_seq``, i.e. ahead of every job submitted after it) or
``→ failed`` after ``max_attempts`` starts; ``queued | interrupted → cancelled | failed``.
``attempt`` counts starts (0 = never started); ``JobStarted.attempt`` is ``attempt + 1``.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from cvops.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from cvops.events.schema import (
    CheckpointSaved,
    CheckpointsDiscarded,
    Envelope,
    Event,
    GpuTokenGranted,
    GpuTokenReleased,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobProgressed,
    JobQueued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    type_of,
)

if TYPE_CHECKING:
    from cvops.events.memory import LogCore

log = logging.getLogger(__name__)

SCHEDULER_STREAM = "scheduler"
JOB_STREAM_PREFIX = "job-"
JOB_KINDS = ("train", "evolve", "benchmark")
# kinds whose jobs hold no GPU token while they run (they only coordinate child jobs that do)
TOKENLESS_KINDS: frozenset[str] = frozenset({"evolve"})
MAX_ATTEMPTS = 3

Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
Outcome = Literal["succeeded", "failed", "cancelled", "interrupted"]
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "interrupted")

# outcome / event type -> the statuses it may leave
_FROM: dict[str, frozenset[str]] = {
    "succeeded": frozenset({"running"}),
    "failed": frozenset({"queued", "running", "interrupted"}),
    "cancelled": frozenset({"queued", "running", "interrupted"}),
    "interrupted": frozenset({"running"}),
}

SCHEDULER_TYPES: frozenset[str] = frozenset(
    cls.__struct_config__.tag  # type: ignore[misc]
    for cls in (
        JobSubmitted,
        JobQueued,
        JobStarted,
        JobProgressed,
        JobSucceeded,
        JobFailed,
        JobCancelled,
        JobInterrupted,
        GpuTokenGranted,
        GpuTokenReleased,
        CheckpointSaved,
        CheckpointsDiscarded,
    )
)
_SCHEDULER_OWNED: tuple[type[Event], ...] = (
    JobSubmitted,
    JobQueued,
    GpuTokenGranted,
    JobStarted,
    JobSucceeded,
    JobFailed,
    JobCancelled,
    JobInterrupted,
    GpuTokenReleased,
)


def job_stream(job_id: str) -> str:
    return f"{JOB_STREAM_PREFIX}{job_id}"


def stream_for(event: Event) -> str:
    """The stream ``event`` is appended to (see the module docstring)."""
    if isinstance(event, _SCHEDULER_OWNED):
        return SCHEDULER_STREAM
    job_id = getattr(event, "job_id", None)
    if isinstance(job_id, str):
        return job_stream(job_id)
    raise ValidationFailed(f"{type_of(event)} is not a scheduler or job event", {"type": type_of(event)})


# -------------------------------------------------------------------------------------------- state


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the log says it is.  Frozen: the fold replaces it, never mutates it."""

    id: str
    kind: str
    spec: dict[str, Any]
    submitted_by: str = ""
    parent_job_id: str | None = None
    status: Status = "queued"
    token: int | None = None
    device: str | None = None
    attempt: int = 0  # JobStarted events so far
    progress: dict[str, Any] = {}  # the last JobProgressed
    result: dict[str, Any] | None = None
    error: str | None = None
    error_details: dict[str, Any] = {}
    cancelled_by: str | None = None
    interruptions: int = 0
    last_interruption: str | None = None
    submitted_ts: float = 0.0
    started_ts: float | None = None
    ended_ts: float | None = None
    queue_seq: int = 0  # FIFO ordering key, fixed at submission; a requeued job keeps it
    checkpoints: list[dict[str, Any]] = []  # {"epoch", "sha256"} per CheckpointSaved, in order
    version: int = 0  # version of stream job-<id>

    @property
    def last_checkpoint(self) -> dict[str, Any] | None:
        """Where a resumed attempt starts from."""
        return self.checkpoints[-1] if self.checkpoints else None


class SchedulerState(msgspec.Struct, kw_only=True):
    """Everything the GPUScheduler knows; rebuilt from the log by :func:`fold_scheduler`."""

    tokens: int = 2
    jobs: dict[str, JobRecord] = {}
    queue: list[str] = []  # queued job ids, ordered by queue_seq (FIFO, requeues at their old place)
    holders: dict[int, str] = {}  # token -> job id
    in_use: int = 0  # jobs holding a token now
    max_in_use_seen: int = 0
    violations: list[str] = []
    next_queue_seq: int = 0
    version: int = 0  # version of stream "scheduler": the expected_version of the next append
    seq: int = 0  # last folded global seq

    @property
    def free_tokens(self) -> list[int]:
        return [k for k in range(self.tokens) if k not in self.holders]


def new_state(tokens: int = 2) -> SchedulerState:
    if tokens < 1:
        raise ValidationFailed(f"tokens must be >= 1, got {tokens}", {"field": "tokens"})
    return SchedulerState(tokens=tokens)


def copy_state(state: SchedulerState) -> SchedulerState:
    """A snapshot that later folds into ``state`` will not change (records are frozen)."""
    return msgspec.structs.replace(
        state,
        jobs=dict(state.jobs),
        queue=list(state.queue),
        holders=dict(state.holders),
        violations=list(state.violations),
    )


# --------------------------------------------------------------------------------------------- fold


def _violate(state: SchedulerState, env: Envelope, message: str) -> None:
    text = f"seq {env.seq}: {message}"
    log.warning("scheduler log: %s", text)
    state.violations.append(text)


def _enqueue(state: SchedulerState, rec: JobRecord) -> None:
    if rec.id in state.queue:
        return
    keys = [state.jobs[j].queue_seq for j in state.queue]
    state.queue.insert(bisect.bisect_right(keys, rec.queue_seq), rec.id)


def _dequeue(state: SchedulerState, job_id: str) -> None:
    if job_id in state.queue:
        state.queue.remove(job_id)


def apply_scheduler(state: SchedulerState, env: Envelope) -> SchedulerState:
    """Fold one envelope into ``state`` (in place) and return it.  See the module docstring."""
    if env.seq <= state.seq:
        return state  # already folded
    state.seq = env.seq
    if env.type in SCHEDULER_TYPES:
        _apply_event(state, env)
    if env.stream == SCHEDULER_STREAM:
        state.version = env.version
    elif env.stream.startswith(JOB_STREAM_PREFIX):
        rec = state.jobs.get(env.stream[len(JOB_STREAM_PREFIX) :])
        if rec is not None:
            state.jobs[rec.id] = msgspec.structs.replace(rec, version=env.version)
    return state


def _apply_event(state: SchedulerState, env: Envelope) -> None:
    ev = env.event()
    jobs = state.jobs
    job_id: str = ev.job_id  # type: ignore[union-attr]  # every scheduler type has one
    rec = jobs.get(job_id)
    if isinstance(ev, JobSubmitted):
        if rec is not None:
            _violate(state, env, f"job {job_id} submitted twice")
            return
        rec = JobRecord(
            id=job_id,
            kind=ev.kind,
            spec=dict(ev.spec),
            submitted_by=ev.submitted_by,
            parent_job_id=ev.parent_job_id,
            submitted_ts=env.ts,
            queue_seq=state.next_queue_seq,
        )
        state.next_queue_seq += 1
        jobs[job_id] = rec
        _enqueue(state, rec)
        return
    if rec is None:
        _violate(state, env, f"{env.type} for unknown job {job_id}")
        return
    replace = msgspec.structs.replace
    match ev:
        case JobQueued():
            if rec.status == "queued":
                _enqueue(state, rec)  # the JobQueued of a submit: already queued
            elif rec.status == "interrupted":
                if rec.token is not None:
                    _violate(state, env, f"job {job_id} requeued while holding token {rec.token}")
                rec = replace(rec, status="queued", device=None)
                jobs[job_id] = rec
                _enqueue(state, rec)
            else:
                _violate(state, env, f"job {job_id} queued from status {rec.status}")
        case GpuTokenGranted(token=k):
            if rec.token is not None:
                _violate(
                    state, env, f"token {k} granted to job {job_id}, which already holds token {rec.token}"
                )
                return
            if not 0 <= k < state.tokens:
                _violate(state, env, f"token {k} granted to job {job_id} is outside 0..{state.tokens - 1}")
            other = state.holders.get(k)
            if other is not None:
                _violate(state, env, f"token {k} granted to job {job_id} while held by job {other}")
            if rec.status != "queued":
                _violate(state, env, f"token {k} granted to job {job_id} in status {rec.status}")
            jobs[job_id] = replace(rec, token=k)
            state.holders[k] = job_id
            state.in_use += 1
            state.max_in_use_seen = max(state.max_in_use_seen, state.in_use)
            if state.in_use > state.tokens:
                _violate(state, env, f"{state.in_use} tokens in use > {state.tokens} tokens")
        case GpuTokenReleased(token=k):
            if rec.token != k:
                _violate(state, env, f"release of token {k} not held by job {job_id}")
                return
            jobs[job_id] = replace(rec, token=None)
            if state.holders.get(k) == job_id:
                del state.holders[k]
            state.in_use -= 1
            if rec.status == "running":
                _violate(state, env, f"job {job_id} running without a token (released before its end)")
        case JobStarted(token=k):
            if rec.status != "queued":
                _violate(state, env, f"job {job_id} started from status {rec.status}")
                return
            if k is None:
                if rec.kind not in TOKENLESS_KINDS:
                    _violate(state, env, f"job {job_id} running without a token (a {rec.kind} job needs one)")
                elif rec.token is not None:
                    _violate(state, env, f"job {job_id} started tokenless while holding token {rec.token}")
            elif rec.token is None or rec.token != k or state.holders.get(k) != job_id:
                _violate(
                    state, env, f"job {job_id} running without a token (started on {k}, holds {rec.token})"
                )
            jobs[job_id] = replace(
                rec, status="running", device=ev.device, attempt=ev.attempt, started_ts=env.ts, ended_ts=None
            )
            _dequeue(state, job_id)
        case JobSucceeded() | JobFailed() | JobCancelled() | JobInterrupted():
            outcome = _OUTCOME_OF[type(ev)]
            if rec.status not in _FROM[outcome]:
                _violate(state, env, f"job {job_id} {outcome} from status {rec.status}")
                return
            if isinstance(ev, JobSucceeded):
                rec = replace(rec, result=dict(ev.result))
            elif isinstance(ev, JobFailed):
                rec = replace(rec, error=ev.error, error_details=dict(ev.details))
            elif isinstance(ev, JobCancelled):
                rec = replace(rec, cancelled_by=ev.by)
            else:
                rec = replace(rec, interruptions=rec.interruptions + 1, last_interruption=ev.reason)
            ended = env.ts if outcome in TERMINAL else None
            jobs[job_id] = replace(rec, status=outcome, ended_ts=ended)
            _dequeue(state, job_id)
        case JobProgressed():
            jobs[job_id] = replace(rec, progress=dict(ev.progress))
        case CheckpointSaved():
            jobs[job_id] = replace(
                rec, checkpoints=[*rec.checkpoints, {"epoch": ev.epoch, "sha256": ev.sha256}]
            )
        case CheckpointsDiscarded():
            gone = set(ev.sha256s)
            jobs[job_id] = replace(rec, checkpoints=[c for c in rec.checkpoints if c["sha256"] not in gone])
        case _:  # pragma: no cover - SCHEDULER_TYPES and this match list the same types
            raise AssertionError(env.type)


_OUTCOME_OF: dict[type, str] = {
    JobSucceeded: "succeeded",
    JobFailed: "failed",
    JobCancelled: "cancelled",
    JobInterrupted: "interrupted",
}


def fold_scheduler(
    envelopes: Iterable[Envelope], tokens: int = 2, state: SchedulerState | None = None
) -> SchedulerState:
    """Rebuild from scratch (or continue ``state``, in place) over ``envelopes``."""
    st = new_state(tokens) if state is None else state
    for env in envelopes:
        apply_scheduler(st, env)
    return st


def check_state(state: SchedulerState) -> list[str]:
    """Problems with the state as it stands (holds at every append boundary of a sound log)."""
    problems: list[str] = []
    holding = {r.id: r.token for r in state.jobs.values() if r.token is not None}
    if state.in_use != len(holding):
        problems.append(f"in_use {state.in_use} but {len(holding)} jobs hold a token")
    if len(holding) > state.tokens:
        problems.append(f"{len(holding)} tokens in use > {state.tokens} tokens")
    for k, j in sorted(state.holders.items()):
        rec = state.jobs.get(j)
        if rec is None or rec.token != k:
            problems.append(f"holders says token {k} is held by job {j}, whose record disagrees")
    for j, k in sorted(holding.items(), key=lambda x: state.jobs[x[0]].queue_seq):
        rec = state.jobs[j]
        if state.holders.get(k) != j:
            problems.append(f"job {j} holds token {k}, which holders gives to {state.holders.get(k)}")
        if rec.status != "running":
            problems.append(f"token {k} held by job {j}, which is {rec.status}")
    for rec in sorted(state.jobs.values(), key=lambda r: r.queue_seq):
        if rec.status == "running" and rec.token is None and rec.kind not in TOKENLESS_KINDS:
            problems.append(f"job {rec.id} running without a token")
    queued = sorted((r for r in state.jobs.values() if r.status == "queued"), key=lambda r: r.queue_seq)
    if state.queue != [r.id for r in queued]:
        problems.append("queue is not the queued jobs in queue_seq order")
    return problems


def audit_tokens(envelopes: Iterable[Envelope], tokens: int) -> list[str]:
    """Fold the log and list every token problem: more tokens in use than exist at any point, a token
    granted while held, a release of a token not held, a job running without a token, a token left held
    by a job that ended.  Empty list = the log keeps the scheduler's promises."""
    state = fold_scheduler(envelopes, tokens)
    problems = list(state.violations)
    problems += [f"at end of log: {p}" for p in check_state(state)]
    return problems


# ---------------------------------------------------------------------------------------- decisions


def _record(state: SchedulerState, job_id: str) -> JobRecord:
    rec = state.jobs.get(job_id)
    if rec is None:
        raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
    return rec


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`plan_submit` needs to know beyond the scheduler's own state: the status of the
    model and the dataset the spec names, as the shell looked them up in the registry (``None``: no
    such record, or it was deleted)."""

    model_status: str | None = None
    dataset_status: str | None = None


def _check_ready(what: str, record_id: Any, status: str | None) -> None:
    if status is None:
        raise NotFound(f"no {what} {record_id!r}", {f"{what}_id": record_id})
    if status != "ready":
        raise ValidationFailed(f"{what} {record_id} is {status}, not ready", {"field": f"{what}_id"})


def plan_submit(
    state: SchedulerState,
    job_id: str,
    kind: str,
    spec: dict[str, Any],
    user: str,
    limit: int,
    *,
    parent_job_id: str | None = None,
    ready: Readiness = Readiness(),
) -> list[Event]:
    """``[JobSubmitted, JobQueued]``, after every rule a submission must pass (the one place they live):

    * a child job resubmitted under its deterministic id (an evolution resuming) is already there:
      ``[]``, nothing to append;
    * 422 for an unknown kind or an empty id; 409 for a known id;
    * the model ``spec["model_id"]`` and the dataset ``spec["dataset_id"]`` (when the spec names one)
      must exist (404) and be ``ready`` (422 naming the field), as ``ready`` says;
    * 429 when ``limit`` jobs are already queued.
    """
    known = state.jobs.get(job_id)
    if known is not None and parent_job_id is not None and known.parent_job_id == parent_job_id:
        return []  # idempotent for an evolution's deterministic child ids
    if not job_id:
        raise ValidationFailed("job id must not be empty", {"field": "job_id"})
    if kind not in JOB_KINDS:
        raise ValidationFailed(f"unknown job kind {kind!r}", {"field": "kind", "allowed": list(JOB_KINDS)})
    if known is not None:
        raise Conflict(f"job {job_id!r} already exists", {"job_id": job_id})
    if "model_id" in spec:
        _check_ready("model", spec["model_id"], ready.model_status)
    if spec.get("dataset_id"):
        _check_ready("dataset", spec["dataset_id"], ready.dataset_status)
    if len(state.queue) >= limit:
        raise TooManyRequests(
            f"job queue is full ({len(state.queue)} of {limit})", {"queued": len(state.queue), "limit": limit}
        )
    return [
        JobSubmitted(job_id=job_id, kind=kind, spec=spec, submitted_by=user, parent_job_id=parent_job_id),
        JobQueued(job_id=job_id, position=len(state.queue)),
    ]


def plan_dispatch(state: SchedulerState, device_for: Callable[[int], str]) -> list[list[Event]]:
    """One ``[GpuTokenGranted, JobStarted]`` append per (lowest free token, oldest queued job that needs
    one) pair, and one ``[JobStarted(token=None, device="cpu")]`` per queued job of a tokenless kind (it
    waits for nothing).  Append them in order; each is valid after the ones before it."""
    free = state.free_tokens[: max(0, state.tokens - state.in_use)]
    out: list[list[Event]] = []
    for job_id in state.queue:
        rec = state.jobs[job_id]
        if rec.kind in TOKENLESS_KINDS:
            out.append([JobStarted(job_id=job_id, token=None, device="cpu", attempt=rec.attempt + 1)])
        elif free:
            k = free.pop(0)
            out.append(
                [
                    GpuTokenGranted(token=k, job_id=job_id),
                    JobStarted(job_id=job_id, token=k, device=device_for(k), attempt=rec.attempt + 1),
                ]
            )
    return out


def plan_finish(
    state: SchedulerState,
    job_id: str,
    outcome: Outcome,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
    by: str = "",
    reason: str = "",
) -> list[Event]:
    """The terminal (or interrupted) event, then ``GpuTokenReleased`` if the job holds a token.
    404 for an unknown job; 409 for a job already ended or in a status the outcome cannot leave."""
    if outcome not in OUTCOMES:
        raise ValidationFailed(
            f"unknown outcome {outcome!r}", {"field": "outcome", "allowed": list(OUTCOMES)}
        )
    rec = _record(state, job_id)
    if rec.status in TERMINAL:
        raise Conflict(f"job {job_id!r} already {rec.status}", {"job_id": job_id, "status": rec.status})
    if rec.status not in _FROM[outcome]:
        raise Conflict(
            f"job {job_id!r} cannot become {outcome} while {rec.status}",
            {"job_id": job_id, "status": rec.status, "outcome": outcome},
        )
    event: Event
    if outcome == "succeeded":
        event = JobSucceeded(job_id=job_id, result=result or {})
    elif outcome == "failed":
        event = JobFailed(job_id=job_id, error=error or "job failed", details=details or {})
    elif outcome == "cancelled":
        event = JobCancelled(job_id=job_id, by=by)
    else:
        event = JobInterrupted(job_id=job_id, reason=reason or error or "interrupted")
    events: list[Event] = [event]
    if rec.token is not None:
        events.append(GpuTokenReleased(token=rec.token, job_id=job_id))
    return events


def _requeue_or_fail(rec: JobRecord, reason: str, max_attempts: int, queue_keys: list[int]) -> Event:
    """``JobFailed`` once ``max_attempts`` starts have died, else ``JobQueued`` at the job's old place
    (``queue_keys``: the queue_seqs that will be queued, updated)."""
    if rec.attempt >= max_attempts:
        return JobFailed(
            job_id=rec.id,
            error=f"{reason}; gave up after {rec.attempt} attempts",
            details={"attempts": rec.attempt, "reason": reason},
        )
    pos = bisect.bisect_right(queue_keys, rec.queue_seq)
    queue_keys.insert(pos, rec.queue_seq)
    return JobQueued(job_id=rec.id, position=pos)


def plan_worker_died(
    state: SchedulerState, job_id: str, *, reason: str = "worker died", max_attempts: int = MAX_ATTEMPTS
) -> list[Event]:
    """``[JobInterrupted, GpuTokenReleased, JobQueued]`` (the next start is attempt+1), or ``JobFailed``
    instead of ``JobQueued`` when the job has been started ``max_attempts`` times.  409 unless running."""
    rec = _record(state, job_id)
    if rec.status != "running":
        raise Conflict(
            f"job {job_id!r} is {rec.status}, not running", {"job_id": job_id, "status": rec.status}
        )
    events: list[Event] = [JobInterrupted(job_id=job_id, reason=reason)]
    if rec.token is not None:
        events.append(GpuTokenReleased(token=rec.token, job_id=job_id))
    keys = [state.jobs[j].queue_seq for j in state.queue]
    events.append(_requeue_or_fail(rec, reason, max_attempts, keys))
    return events


def plan_recover(
    state: SchedulerState, *, reason: str = "scheduler restarted", max_attempts: int = MAX_ATTEMPTS
) -> list[Event]:
    """At start-up, after :func:`fold_scheduler`: one append that interrupts every running job, frees
    every token, and requeues each interrupted job at its original place (ahead of later submissions),
    or fails it once it has been started ``max_attempts`` times.  Empty when there is nothing to do."""
    events: list[Event] = []
    keys = [state.jobs[j].queue_seq for j in state.queue]
    released: set[tuple[int, str]] = set()
    for rec in sorted(state.jobs.values(), key=lambda r: r.queue_seq):
        if rec.status == "running":
            events.append(JobInterrupted(job_id=rec.id, reason=reason))
            if rec.token is not None:
                events.append(GpuTokenReleased(token=rec.token, job_id=rec.id))
                released.add((rec.token, rec.id))
            events.append(_requeue_or_fail(rec, reason, max_attempts, keys))
        elif rec.status == "interrupted":  # e.g. interrupted at a graceful shutdown
            if rec.token is not None:
                events.append(GpuTokenReleased(token=rec.token, job_id=rec.id))
                released.add((rec.token, rec.id))
            pos = bisect.bisect_right(keys, rec.queue_seq)
            keys.insert(pos, rec.queue_seq)
            events.append(JobQueued(job_id=rec.id, position=pos))
        elif rec.token is not None and (rec.token, rec.id) not in released:  # ended but never released
            events.append(GpuTokenReleased(token=rec.token, job_id=rec.id))
            released.add((rec.token, rec.id))
    return events


# -------------------------------------------------------------------------------------------- views


def job_view(record: JobRecord) -> dict[str, Any]:
    """JSON-ready record for ``GET /jobs`` (no internal ordering key)."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    out.pop("queue_seq", None)
    return out


def scheduler_view(state: SchedulerState) -> dict[str, Any]:
    """JSON-ready summary for ``GET /scheduler``."""
    return {
        "tokens": state.tokens,
        "in_use": state.in_use,
        "free": state.free_tokens,
        "holders": [{"token": k, "job_id": j} for k, j in sorted(state.holders.items())],
        "queue": list(state.queue),
        "max_in_use_seen": state.max_in_use_seen,
        "version": state.version,
    }


def commit(log_: LogCore, state: SchedulerState, events: Sequence[Event]) -> list[Envelope]:
    """Append ``events`` (all of one stream) to an in-memory :class:`~cvops.events.memory.LogCore` at the
    state's expected version and fold them back into ``state`` — the actor's cycle, for tests."""
    streams = {stream_for(e) for e in events}
    if len(streams) != 1:
        raise ValidationFailed("one append goes to one stream", {"streams": sorted(streams)})
    (stream,) = streams
    if stream == SCHEDULER_STREAM:
        expected = state.version
    else:
        job = state.jobs.get(stream[len(JOB_STREAM_PREFIX) :])
        expected = job.version if job is not None else 0
    envs = log_.append(stream, events, expected)
    fold_scheduler(envs, state.tokens, state)
    return envs
