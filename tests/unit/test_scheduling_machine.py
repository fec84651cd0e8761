"""The hypothesis state machine of the GPUScheduler's pure core: random submit / dispatch / finish /
cancel / worker-death / restart sequences against the real fold and plans, checked against a tiny model
(moved out of test_scheduling.py to keep each file under 700 lines)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cvops.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from cvops.events.memory import LogCore
from cvops.events.scheduling import (
    MAX_ATTEMPTS,
    STATUSES,
    Readiness,
    audit_tokens,
    check_state,
    commit,
    fold_scheduler,
    new_state,
    plan_dispatch,
    plan_finish,
    plan_recover,
    plan_submit,
    plan_worker_died,
)
from cvops.events.schema import Event, JobProgressed


def types(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------ the state machine


class SchedulerMachine(RuleBasedStateMachine):
    """Random command sequences against the real fold and plans, checked against a tiny model."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 4
        self.tokens = 2
        self.log = LogCore()
        self.state = new_state(self.tokens)
        self.n = 0
        self.order: list[str] = []  # submission order
        self.model: dict[str, str] = {}  # job -> expected status
        self.starts: dict[str, int] = {}  # job -> expected attempt
        self.kinds: dict[str, str] = {}  # job -> kind

    @initialize(tokens=st.integers(min_value=1, max_value=3))
    def setup(self, tokens: int) -> None:
        self.tokens = tokens
        self.state = new_state(tokens)

    def _with(self, status: str) -> list[str]:
        return [j for j in self.order if self.model[j] == status]

    def _commit(self, events: Sequence[Event]) -> None:
        commit(self.log, self.state, events)

    # ------------------------------------------------------------------------------------- rules

    @rule(
        kind=st.sampled_from(["train", "evolve", "benchmark"]),
        model=st.sampled_from(["ready", "ready", "ready", "converting", None]),
    )
    def submit(self, kind: str, model: str | None) -> None:
        """Evolve is submitted freely: an evolution holds no token (its trials do), so any number may
        be active with any number of tokens; plan_submit decides on readiness and the bounded queue."""
        job_id = f"j{self.n}"
        spec = {"model_id": "m", "i": self.n}
        ready = Readiness(model_status=model)
        expected: type[Exception] | None = None
        if model is None:
            expected = NotFound
        elif model != "ready":
            expected = ValidationFailed
        elif len(self._with("queued")) >= self.limit:
            expected = TooManyRequests
        if expected is not None:
            with pytest.raises(expected):
                plan_submit(self.state, job_id, kind, spec, "u", self.limit, ready=ready)
            return
        self.n += 1
        self._commit(plan_submit(self.state, job_id, kind, spec, "u", self.limit, ready=ready))
        self.order.append(job_id)
        self.kinds[job_id] = kind
        self.model[job_id] = "queued"
        self.starts[job_id] = 0

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def submit_duplicate(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.order))
        with pytest.raises(Conflict):
            plan_submit(self.state, job_id, "train", {}, "u", 10**6)

    @rule()
    def dispatch(self) -> None:
        """Every queued evolution starts (tokenless); the other queued jobs take the free tokens, oldest
        first."""
        free = self.tokens - len([j for j in self._with("running") if self.kinds[j] != "evolve"])
        expected = []
        for j in self._with("queued"):
            if self.kinds[j] == "evolve":
                expected.append(j)
            elif free > 0:
                expected.append(j)
                free -= 1
        appends = plan_dispatch(self.state, lambda k: f"cuda:{k}")
        assert [a[-1].job_id for a in appends] == expected  # type: ignore[attr-defined]
        for events in appends:
            if self.kinds[events[-1].job_id] == "evolve":  # type: ignore[attr-defined]
                assert types(events) == ["JobStarted"] and events[0].token is None  # type: ignore[attr-defined]
            else:
                assert types(events) == ["GpuTokenGranted", "JobStarted"]
            self._commit(events)
        for j in expected:
            self.model[j] = "running"
            self.starts[j] += 1

    @precondition(lambda self: any(s == "running" for s in self.model.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "failed"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        job_id = data.draw(st.sampled_from(self._with("running")))
        self._commit(plan_finish(self.state, job_id, outcome, result={"ok": 1}, error="boom"))  # type: ignore[arg-type]
        self.model[job_id] = outcome

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.order))
        if self.model[job_id] in ("succeeded", "failed", "cancelled"):
            with pytest.raises(Conflict):
                plan_finish(self.state, job_id, "cancelled")
            return
        self._commit(plan_finish(self.state, job_id, "cancelled", by="u"))
        self.model[job_id] = "cancelled"

    @precondition(lambda self: any(s == "running" for s in self.model.values()))
    @rule(data=st.data())
    def worker_died(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._with("running")))
        self._commit(plan_worker_died(self.state, job_id))
        self.model[job_id] = "failed" if self.starts[job_id] >= MAX_ATTEMPTS else "queued"

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.order))
        self._commit([JobProgressed(job_id=job_id, progress={"seq": self.log.last_seq})])

    @rule()
    def restart(self) -> None:
        rebuilt = fold_scheduler(self.log.envelopes, self.tokens)
        assert rebuilt == self.state
        self.state = rebuilt
        events = plan_recover(self.state)
        if events:
            self._commit(events)
        for j in self._with("running"):
            self.model[j] = "failed" if self.starts[j] >= MAX_ATTEMPTS else "queued"
        assert self.state.in_use == 0 and plan_recover(self.state) == []

    # -------------------------------------------------------------------------------- invariants

    @invariant()
    def tokens_in_use_never_exceed_tokens(self) -> None:
        s = self.state
        assert s.in_use <= s.tokens and s.max_in_use_seen <= s.tokens and len(s.holders) <= s.tokens
        assert all(0 <= k < s.tokens for k in s.holders)

    @invariant()
    def holders_are_exactly_the_running_jobs_that_need_a_token(self) -> None:
        s = self.state
        running = {j for j, r in s.jobs.items() if r.status == "running" and r.kind != "evolve"}
        assert set(s.holders.values()) == running
        assert len(set(s.holders.values())) == len(s.holders) == s.in_use
        for k, j in s.holders.items():
            assert s.jobs[j].token == k
        for j, r in s.jobs.items():
            assert (r.token is not None) == (j in running)

    @invariant()
    def queue_order_is_submission_order_of_queued_jobs(self) -> None:
        assert self.state.queue == self._with("queued")

    @invariant()
    def every_job_has_exactly_the_expected_status(self) -> None:
        s = self.state
        assert list(s.jobs) == self.order
        for j, r in s.jobs.items():
            assert r.status in STATUSES and r.status == self.model[j], (j, r.status, self.model[j])
            assert r.attempt == self.starts[j]
            assert (j in s.queue) == (r.status == "queued")
        assert s.violations == [] and check_state(s) == []

    @invariant()
    def rebuilt_state_equals_incremental_state(self) -> None:
        assert fold_scheduler(self.log.envelopes, self.tokens) == self.state
        assert audit_tokens(self.log.envelopes, self.tokens) == []


SchedulerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
