"""The GPUScheduler's pure core: fold, plan_* decisions, audit, the in-memory LogCore — plus a hypothesis state
machine that drives random submit / dispatch / finish / cancel / worker-death / restart sequences."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from cvops.errors import ConcurrencyError, Conflict, NotFound, TooManyRequests, ValidationFailed
from cvops.events.memory import LogCore
from cvops.events.scheduling import (
    MAX_ATTEMPTS,
    SCHEDULER_STREAM,
    SchedulerState,
    apply_scheduler,
    audit_tokens,
    check_state,
    commit,
    copy_state,
    fold_scheduler,
    job_stream,
    job_view,
    new_state,
    plan_dispatch,
    plan_finish,
    plan_recover,
    plan_submit,
    plan_worker_died,
    scheduler_view,
    stream_for,
)
from cvops.events.schema import (
    CheckpointSaved,
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
    ModelDeleted,
)


def dev(k: int) -> str:
    return f"cuda:{k % 2}"


class World:
    """A log plus the state folded from it, the actor's cycle in miniature."""

    def __init__(self, tokens: int = 2, limit: int = 100) -> None:
        self.log = LogCore()
        self.state = new_state(tokens)
        self.tokens = tokens
        self.limit = limit

    def submit(self, *ids: str, kind: str = "train") -> None:
        for job_id in ids:
            commit(self.log, self.state, plan_submit(self.state, job_id, kind, {"n": 1}, "alice", self.limit))

    def dispatch(self) -> list[list[Event]]:
        appends = plan_dispatch(self.state, dev)
        for events in appends:
            commit(self.log, self.state, events)
        return appends

    def do(self, events: Sequence[Event]) -> None:
        if events:
            commit(self.log, self.state, events)

    def restart(self) -> list[Event]:
        self.state = fold_scheduler(self.log.envelopes, self.tokens)
        events = plan_recover(self.state)
        self.do(events)
        return events

    def status(self, job_id: str) -> str:
        return self.state.jobs[job_id].status


def types(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------------------- submit


def test_submit_appends_submitted_then_queued_and_keeps_fifo_order() -> None:
    w = World()
    events = plan_submit(w.state, "a", "train", {"epochs": 2}, "alice", 10)
    assert types(events) == ["JobSubmitted", "JobQueued"]
    assert {stream_for(e) for e in events} == {SCHEDULER_STREAM}
    w.do(events)
    w.submit("b", "c")
    assert w.state.queue == ["a", "b", "c"]
    rec = w.state.jobs["a"]
    assert (rec.status, rec.kind, rec.spec, rec.submitted_by, rec.attempt, rec.token) == (
        "queued",
        "train",
        {"epochs": 2},
        "alice",
        0,
        None,
    )
    assert [w.state.jobs[j].queue_seq for j in "abc"] == [0, 1, 2]
    queued = [e for e in w.log.envelopes if e.type == "JobQueued"]
    assert [msgspec.structs.asdict(e.event())["position"] for e in queued] == [0, 1, 2]
    assert w.state.version == w.log.version(SCHEDULER_STREAM) == 6


def test_submit_refuses_a_full_queue_with_429_and_duplicates_with_409() -> None:
    w = World(limit=2)
    w.submit("a", "b")
    with pytest.raises(TooManyRequests) as err:
        plan_submit(w.state, "c", "train", {}, "alice", 2)
    assert err.value.status == 429 and err.value.details["limit"] == 2
    with pytest.raises(Conflict):
        plan_submit(w.state, "a", "train", {}, "alice", 100)
    with pytest.raises(ValidationFailed):
        plan_submit(w.state, "z", "paint", {}, "alice", 100)
    with pytest.raises(ValidationFailed):
        plan_submit(w.state, "", "train", {}, "alice", 100)
    # running jobs do not count against the queue limit
    w.dispatch()
    w.submit("c", "d")
    assert w.state.queue == ["c", "d"]


# ----------------------------------------------------------------------------------------- dispatch


def test_dispatch_grants_free_tokens_to_the_oldest_jobs_one_atomic_append_each() -> None:
    w = World(tokens=2)
    w.submit("a", "b", "c")
    appends = w.dispatch()
    assert [types(a) for a in appends] == [["GpuTokenGranted", "JobStarted"]] * 2
    assert [(a[0].token, a[0].job_id) for a in appends] == [(0, "a"), (1, "b")]  # type: ignore[attr-defined]
    assert [(a[1].device, a[1].attempt) for a in appends] == [("cuda:0", 1), ("cuda:1", 1)]  # type: ignore[attr-defined]
    assert w.state.holders == {0: "a", 1: "b"}
    assert (w.status("a"), w.status("b"), w.status("c")) == ("running", "running", "queued")
    assert w.state.queue == ["c"] and w.state.in_use == 2
    assert plan_dispatch(w.state, dev) == []  # no free token
    w.do(plan_finish(w.state, "a", "succeeded", result={"acc": 0.9}))
    (again,) = w.dispatch()
    assert (again[0].token, again[0].job_id) == (0, "c")  # type: ignore[attr-defined]
    assert w.state.jobs["c"].device == "cuda:0"


def test_an_evolution_starts_without_a_token_and_its_trials_take_them_all() -> None:
    """Issue 13: the coordinator holds no token; with 2 tokens two of its trials run at once, and an
    evolution waits for nothing (it passes no one: it needs no token), also with a single token."""
    w = World(tokens=2)
    w.submit("e", kind="evolve")
    w.submit("c1", "c2", "c3")
    appends = w.dispatch()
    assert [types(a) for a in appends] == [
        ["JobStarted"],
        ["GpuTokenGranted", "JobStarted"],
        ["GpuTokenGranted", "JobStarted"],
    ]
    started = appends[0][0]
    assert (started.token, started.device) == (None, "cpu")  # type: ignore[attr-defined]
    assert w.state.holders == {0: "c1", 1: "c2"} and w.state.in_use == 2
    assert [w.status(j) for j in ("e", "c1", "c2", "c3")] == ["running", "running", "running", "queued"]
    assert w.state.jobs["e"].token is None and check_state(w.state) == []
    # its end releases nothing; its trials' ends release theirs
    w.do(plan_finish(w.state, "c1", "succeeded"))
    (again,) = w.dispatch()
    assert again[-1].job_id == "c3"  # type: ignore[attr-defined]
    assert types(plan_finish(w.state, "e", "succeeded")) == ["JobSucceeded"]
    assert types(plan_worker_died(w.state, "e")) == ["JobInterrupted", "JobQueued"]
    w.do(plan_finish(w.state, "e", "succeeded", result={"best": 1.0}))
    assert audit_tokens(w.log.envelopes, 2) == [] and w.state.max_in_use_seen == 2
    one = World(tokens=1)
    one.submit("t")
    one.dispatch()
    one.submit("e2", kind="evolve")
    (only,) = one.dispatch()  # the token is busy: the evolution still starts
    assert types(only) == ["JobStarted"] and one.status("e2") == "running"
    assert types(one.restart()) == [
        "JobInterrupted",
        "GpuTokenReleased",
        "JobQueued",
        "JobInterrupted",
        "JobQueued",
    ]


def test_the_audit_accepts_a_tokenless_start_only_for_an_evolution_and_still_reads_old_logs() -> None:
    log = LogCore()
    for job_id, kind in (("t", "train"), ("e", "evolve"), ("old", "evolve")):
        log.append(
            SCHEDULER_STREAM,
            [JobSubmitted(job_id=job_id, kind=kind, spec={}), JobQueued(job_id=job_id)],
            None,
        )
    log.append(SCHEDULER_STREAM, [JobStarted(job_id="e", token=None, device="cpu")], None)
    assert audit_tokens(log.envelopes, 1) == []
    # an evolution of an older version held a token: still sound
    log.append(
        SCHEDULER_STREAM,
        [GpuTokenGranted(token=0, job_id="old"), JobStarted(job_id="old", token=0, device="cpu")],
        None,
    )
    assert audit_tokens(log.envelopes, 1) == []
    log.append(SCHEDULER_STREAM, [JobStarted(job_id="t", token=None, device="cpu")], None)
    problems = audit_tokens(log.envelopes, 1)
    assert any("job t running without a token" in p for p in problems), problems


def test_dispatch_with_nothing_queued_plans_nothing_and_devices_come_from_device_for() -> None:
    w = World(tokens=3)
    assert plan_dispatch(w.state, dev) == []
    w.submit("a")
    (ap,) = plan_dispatch(w.state, lambda k: "cpu")
    assert ap[1].device == "cpu"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- finish


def test_finish_records_the_outcome_and_releases_the_token() -> None:
    w = World()
    w.submit("a", "b")
    w.dispatch()
    events = plan_finish(w.state, "a", "succeeded", result={"acc": 0.5})
    assert types(events) == ["JobSucceeded", "GpuTokenReleased"]
    w.do(events)
    a = w.state.jobs["a"]
    assert (a.status, a.result, a.token, a.ended_ts is not None) == ("succeeded", {"acc": 0.5}, None, True)
    w.do(plan_finish(w.state, "b", "failed", error="nan loss", details={"epoch": 3}))
    b = w.state.jobs["b"]
    assert (b.status, b.error, b.error_details) == ("failed", "nan loss", {"epoch": 3})
    assert w.state.holders == {} and w.state.in_use == 0
    assert w.state.free_tokens == [0, 1]


def test_cancel_of_a_queued_job_only_cancels_and_of_a_running_one_also_releases() -> None:
    w = World(tokens=1)
    w.submit("a", "b", "c")
    w.dispatch()
    queued = plan_finish(w.state, "b", "cancelled", by="bob")
    assert types(queued) == ["JobCancelled"]
    w.do(queued)
    assert w.state.queue == ["c"] and w.state.jobs["b"].cancelled_by == "bob"
    running = plan_finish(w.state, "a", "cancelled", by="bob")
    assert types(running) == ["JobCancelled", "GpuTokenReleased"]
    w.do(running)
    assert w.status("a") == "cancelled" and w.state.holders == {}
    (ap,) = w.dispatch()
    assert ap[1].job_id == "c"  # type: ignore[attr-defined]


def test_finishing_a_finished_job_is_a_conflict_and_bad_requests_are_refused() -> None:
    w = World()
    w.submit("a", "b")
    w.dispatch()
    w.do(plan_finish(w.state, "a", "succeeded"))
    for outcome in ("succeeded", "failed", "cancelled", "interrupted"):
        with pytest.raises(Conflict):
            plan_finish(w.state, "a", outcome)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        plan_finish(w.state, "nope", "cancelled")
    with pytest.raises(ValidationFailed):
        plan_finish(w.state, "b", "exploded")  # type: ignore[arg-type]
    w.submit("q")
    with pytest.raises(Conflict):  # a queued job cannot succeed
        plan_finish(w.state, "q", "succeeded")
    with pytest.raises(Conflict):
        plan_finish(w.state, "q", "interrupted")


def test_interrupt_via_finish_parks_the_job_until_recovery_requeues_it() -> None:
    w = World(tokens=1)
    w.submit("a", "b")
    w.dispatch()
    events = plan_finish(w.state, "a", "interrupted", reason="shutdown")
    assert types(events) == ["JobInterrupted", "GpuTokenReleased"]
    w.do(events)
    assert w.status("a") == "interrupted" and w.state.queue == ["b"]
    assert w.state.jobs["a"].last_interruption == "shutdown"
    recovered = w.restart()
    assert types(recovered) == ["JobQueued"]
    assert w.state.queue == ["a", "b"]


# ------------------------------------------------------------------------------------------ recover


def test_recover_interrupts_running_jobs_frees_tokens_and_requeues_them_ahead_in_submission_order() -> None:
    w = World(tokens=2)
    w.submit("a", "b", "c")
    w.dispatch()  # a: token 0, b: token 1
    w.do(plan_finish(w.state, "a", "succeeded"))
    w.dispatch()  # c: token 0
    w.submit("d", "e")
    assert w.state.holders == {0: "c", 1: "b"}
    events = w.restart()
    assert types(events) == ["JobInterrupted", "GpuTokenReleased", "JobQueued"] * 2
    assert [e.job_id for e in events if isinstance(e, JobInterrupted)] == ["b", "c"]
    assert w.state.queue == ["b", "c", "d", "e"]  # original order, ahead of later submissions
    assert w.state.holders == {} and w.state.in_use == 0
    assert all(w.status(j) == "queued" for j in "bcde")
    appends = w.dispatch()
    assert [(a[1].job_id, a[1].attempt) for a in appends] == [("b", 2), ("c", 2)]  # type: ignore[attr-defined]
    assert audit_tokens(w.log.envelopes, 2) == []


def test_recover_of_a_clean_state_does_nothing_and_a_second_recover_is_empty() -> None:
    w = World()
    w.submit("a")
    assert plan_recover(w.state) == []
    w.dispatch()
    assert w.restart()
    assert plan_recover(w.state) == []


def test_recover_fails_a_job_whose_starts_are_used_up_and_releases_leaked_tokens() -> None:
    log = LogCore()
    log.append(SCHEDULER_STREAM, [JobSubmitted(job_id="x", kind="train", spec={}), JobQueued(job_id="x")], 0)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        v = log.version(SCHEDULER_STREAM)
        log.append(
            SCHEDULER_STREAM,
            [
                GpuTokenGranted(token=0, job_id="x"),
                JobStarted(job_id="x", token=0, device="cpu", attempt=attempt),
            ],
            v,
        )
        if attempt < MAX_ATTEMPTS:
            log.append(
                SCHEDULER_STREAM,
                [
                    JobInterrupted(job_id="x", reason="oom"),
                    GpuTokenReleased(token=0, job_id="x"),
                    JobQueued(job_id="x"),
                ],
                v + 2,
            )
    # a forged leak: y succeeded but its token was never released
    log.append(SCHEDULER_STREAM, [JobSubmitted(job_id="y", kind="train", spec={}), JobQueued(job_id="y")])
    log.append(SCHEDULER_STREAM, [GpuTokenGranted(token=1, job_id="y")])
    log.append(
        SCHEDULER_STREAM, [JobStarted(job_id="y", token=1, device="cpu"), JobSucceeded(job_id="y", result={})]
    )
    state = fold_scheduler(log.envelopes, 2)
    assert any("token 1 held by job y, which is succeeded" in p for p in check_state(state))
    events = plan_recover(state)
    assert types(events) == ["JobInterrupted", "GpuTokenReleased", "JobFailed", "GpuTokenReleased"]
    failed = events[2]
    assert isinstance(failed, JobFailed) and failed.details["attempts"] == MAX_ATTEMPTS
    commit(log, state, events)
    assert state.jobs["x"].status == "failed" and state.holders == {} and check_state(state) == []


# ------------------------------------------------------------------------------------- dead workers


def test_a_dead_worker_is_retried_ahead_of_later_jobs_then_failed_after_three_attempts() -> None:
    w = World(tokens=1)
    w.submit("a", "b")
    w.dispatch()
    for attempt in (1, 2):
        assert w.state.jobs["a"].attempt == attempt
        events = plan_worker_died(w.state, "a", reason="segfault")
        assert types(events) == ["JobInterrupted", "GpuTokenReleased", "JobQueued"]
        w.do(events)
        assert w.state.queue == ["a", "b"] and w.state.jobs["a"].interruptions == attempt
        (ap,) = w.dispatch()
        assert (ap[1].job_id, ap[1].attempt) == ("a", attempt + 1)  # type: ignore[attr-defined]
    events = plan_worker_died(w.state, "a", reason="segfault")
    assert types(events) == ["JobInterrupted", "GpuTokenReleased", "JobFailed"]
    w.do(events)
    a = w.state.jobs["a"]
    assert a.status == "failed" and "3 attempts" in (a.error or "") and a.error_details["attempts"] == 3
    assert w.state.queue == ["b"] and w.state.holders == {}
    with pytest.raises(Conflict):
        plan_worker_died(w.state, "a")
    with pytest.raises(Conflict):  # b is queued, it has no worker
        plan_worker_died(w.state, "b")
    with pytest.raises(NotFound):
        plan_worker_died(w.state, "ghost")
    assert audit_tokens(w.log.envelopes, 1) == []


def test_resume_information_survives_requeue() -> None:
    w = World(tokens=1)
    w.submit("a")
    w.dispatch()
    w.log.append(job_stream("a"), [JobProgressed(job_id="a", progress={"epoch": 1})], 0)
    w.log.append(job_stream("a"), [CheckpointSaved(job_id="a", epoch=1, sha256="ab" * 32)], 1)
    fold_scheduler(w.log.envelopes, 1, w.state)  # a worker's appends reach the scheduler's fold
    commit(w.log, w.state, [CheckpointSaved(job_id="a", epoch=2, sha256="cd" * 32)])
    w.state = fold_scheduler(w.log.envelopes, 1)
    a = w.state.jobs["a"]
    assert a.version == 3 and a.progress == {"epoch": 1}
    assert a.checkpoints == [{"epoch": 1, "sha256": "ab" * 32}, {"epoch": 2, "sha256": "cd" * 32}]
    w.do(plan_worker_died(w.state, "a"))
    assert w.state.jobs["a"].last_checkpoint == {"epoch": 2, "sha256": "cd" * 32}


# -------------------------------------------------------------------------------------------- audit


def _forged(*appends: list[Event]) -> LogCore:
    log = LogCore()
    for events in appends:
        log.append(SCHEDULER_STREAM, events)
    return log


def _submitted(*ids: str) -> list[Event]:
    out: list[Event] = []
    for j in ids:
        out += [JobSubmitted(job_id=j, kind="train", spec={}), JobQueued(job_id=j)]
    return out


def _start(j: str, k: int) -> list[Event]:
    return [GpuTokenGranted(token=k, job_id=j), JobStarted(job_id=j, token=k, device="cpu")]


def test_audit_detects_a_forged_log_with_three_tokens_in_use() -> None:
    log = _forged(_submitted("a", "b", "c"), _start("a", 0), _start("b", 1), _start("c", 2))
    problems = audit_tokens(log.envelopes, 2)
    assert any("3 tokens in use > 2 tokens" in p for p in problems), problems
    assert any("token 2" in p and "outside" in p for p in problems)
    # the same log is sound for a 3-token machine
    assert audit_tokens(log.envelopes, 3) == []


def test_audit_detects_overuse_in_the_past_even_when_the_log_ends_clean() -> None:
    ends = [
        [JobSucceeded(job_id=j, result={}), GpuTokenReleased(token=k, job_id=j)]
        for j, k in (("a", 0), ("b", 1), ("c", 0))
    ]
    log = _forged(_submitted("a", "b", "c"), _start("a", 0), _start("b", 1), _start("c", 0), *ends)
    problems = audit_tokens(log.envelopes, 2)
    assert not any(p.startswith("at end of log") for p in problems), problems
    over = [p for p in problems if "3 tokens in use > 2 tokens" in p]
    assert len(over) == 1 and over[0].startswith("seq 11:"), problems
    assert fold_scheduler(log.envelopes, 2).max_in_use_seen == 3


def test_audit_detects_double_grants_foreign_releases_and_tokenless_starts() -> None:
    log = _forged(
        _submitted("a", "b", "c"),
        _start("a", 0),
        _start("b", 0),  # token 0 granted while a holds it
        [GpuTokenReleased(token=1, job_id="a")],  # a never held 1
        [JobStarted(job_id="c", token=1, device="cpu")],  # no grant
    )
    problems = audit_tokens(log.envelopes, 2)
    joined = "\n".join(problems)
    assert "token 0 granted to job b while held by job a" in joined
    assert "release of token 1 not held by job a" in joined
    assert "job c running without a token" in joined
    assert all(p.startswith(("seq ", "at end of log")) for p in problems)


def test_audit_flags_a_release_before_the_end_and_a_token_kept_after_it() -> None:
    early = _forged(_submitted("a"), _start("a", 0), [GpuTokenReleased(token=0, job_id="a")])
    problems = audit_tokens(early.envelopes, 2)
    assert "seq 5: job a running without a token (released before its end)" in problems, problems
    assert "at end of log: job a running without a token" in problems
    kept = _forged(_submitted("a"), _start("a", 0), [JobSucceeded(job_id="a", result={})])
    assert any("at end of log" in p and "succeeded" in p for p in audit_tokens(kept.envelopes, 2))


def test_audit_of_a_sound_log_is_clean() -> None:
    w = World()
    w.submit("a", "b", "c")
    w.dispatch()
    w.do(plan_worker_died(w.state, "a"))
    w.do(plan_finish(w.state, "b", "cancelled"))
    w.dispatch()
    w.restart()
    w.dispatch()
    assert audit_tokens(w.log.envelopes, 2) == []
    assert w.state.max_in_use_seen == 2


# --------------------------------------------------------------------------------------------- fold


def test_fold_is_idempotent_per_seq_and_ignores_unrelated_events() -> None:
    w = World()
    w.submit("a")
    envs = w.log.envelopes
    snapshot = msgspec.json.encode(w.state)
    for env in envs:  # already folded: no change
        apply_scheduler(w.state, env)
    assert msgspec.json.encode(w.state) == snapshot
    (other,) = w.log.append("model-m", [ModelDeleted(model_id="m")], 0)
    apply_scheduler(w.state, other)
    assert w.state.seq == other.seq and w.state.jobs.keys() == {"a"} and w.state.version == 2


def test_fold_records_impossible_transitions_instead_of_raising() -> None:
    log = _forged(
        [JobStarted(job_id="ghost", token=0, device="cpu")],
        _submitted("a"),
        [JobSucceeded(job_id="a", result={})],  # never started
        _submitted("a"),  # duplicate
        [JobCancelled(job_id="a"), JobCancelled(job_id="a")],
        [JobQueued(job_id="a")],
    )
    state = fold_scheduler(log.envelopes, 2)
    joined = "\n".join(state.violations)
    for text in (
        "unknown job ghost",
        "a succeeded from status queued",
        "a submitted twice",
        "a cancelled from status cancelled",
        "a queued from status cancelled",
    ):
        assert text in joined
    assert state.jobs["a"].status == "cancelled" and state.queue == []


def test_copy_state_is_a_snapshot_that_later_folds_do_not_touch() -> None:
    w = World()
    w.submit("a")
    snap = copy_state(w.state)
    before = msgspec.json.encode(snap)
    w.dispatch()
    assert msgspec.json.encode(snap) == before and snap.jobs["a"].status == "queued"
    assert w.state.jobs["a"].status == "running"


def test_default_state_and_views_are_json_ready() -> None:
    assert SchedulerState().tokens == 2  # projections.rebuild builds it with no arguments
    with pytest.raises(ValidationFailed):
        new_state(0)
    w = World()
    w.submit("a", "b")
    w.dispatch()
    view = job_view(w.state.jobs["a"])
    assert "queue_seq" not in view and view["status"] == "running" and view["token"] == 0
    assert msgspec.json.decode(msgspec.json.encode(view)) == view
    sv = scheduler_view(w.state)
    assert sv["holders"] == [{"token": 0, "job_id": "a"}, {"token": 1, "job_id": "b"}]
    assert (sv["in_use"], sv["free"], sv["queue"]) == (2, [], [])


def test_in_memory_log_checks_expected_versions_and_streams() -> None:
    log = LogCore(clock=lambda: 123.0)
    (e1,) = log.append("s", [JobQueued(job_id="x")], 0)
    assert (e1.seq, e1.version, e1.ts) == (1, 1, 123.0)
    with pytest.raises(ConcurrencyError):
        log.append("s", [JobQueued(job_id="x")], 0)
    with pytest.raises(ConcurrencyError):
        log.append("s", [JobQueued(job_id="x")], 5)
    assert log.last_seq == 1  # nothing written by the failed appends
    e2, e3 = log.append("s", [JobQueued(job_id="x"), JobQueued(job_id="y")], 1)
    assert (e2.version, e3.version, e3.seq) == (2, 3, 3)
    with pytest.raises(ValidationFailed):
        log.append("s", [], None)
    with pytest.raises(ValidationFailed):
        log.append("", [JobQueued(job_id="x")])
    assert [e.seq for e in log.read(after=1)] == [2, 3]
    assert stream_for(JobProgressed(job_id="j", progress={})) == "job-j"
    assert stream_for(GpuTokenReleased(token=0, job_id="j")) == SCHEDULER_STREAM
    with pytest.raises(ValidationFailed):
        stream_for(ModelDeleted(model_id="m"))
    with pytest.raises(ValidationFailed):  # one append, one stream
        commit(log, new_state(), [JobQueued(job_id="x"), JobProgressed(job_id="x", progress={})])


def test_a_stale_state_cannot_append() -> None:
    w = World()
    stale = copy_state(w.state)
    w.submit("a")
    with pytest.raises(ConcurrencyError):
        commit(w.log, stale, plan_submit(stale, "b", "train", {}, "alice", 10))
