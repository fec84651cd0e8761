"""The rules of a job submission, each in one place: what the spec means (``check_job_spec``: valid
hyperparameters, a valid search space) and whether it may be queued now (``plan_submit``: the model and
dataset are ready, the bounded queue).  The gateway keeps only the role policy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cvops.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from cvops.events.memory import LogCore
from cvops.events.scheduling import Readiness, commit, new_state, plan_submit
from cvops.jobs_api import check_job_spec

READY = Readiness(model_status="ready", dataset_status="ready")
TRAIN = {"kind": "train", "model_id": "m1", "dataset_id": "d1", "hyperparameters": {}}
BENCH = {"kind": "benchmark", "model_id": "m1"}
EVOLVE = {"kind": "evolve", "model_id": "m1", "dataset_id": "d1"}


def test_the_model_must_exist_and_be_ready_404_then_422_naming_the_field() -> None:
    state = new_state(2)
    with pytest.raises(NotFound) as nf:
        plan_submit(state, "j", "benchmark", BENCH, "u", 10, ready=Readiness())
    assert (
        nf.value.status == 404
        and nf.value.message == "no model 'm1'"
        and nf.value.details == {"model_id": "m1"}
    )
    for status in ("pending", "converting", "failed"):
        with pytest.raises(ValidationFailed) as err:
            plan_submit(state, "j", "benchmark", BENCH, "u", 10, ready=Readiness(model_status=status))
        assert err.value.message == f"model m1 is {status}, not ready"
        assert err.value.details == {"field": "model_id"}
    assert [type(e).__name__ for e in plan_submit(state, "j", "benchmark", BENCH, "u", 10, ready=READY)] == [
        "JobSubmitted",
        "JobQueued",
    ]


def test_the_dataset_must_exist_and_be_ready_after_the_model() -> None:
    state = new_state(2)
    with pytest.raises(NotFound) as nf:
        plan_submit(state, "j", "train", TRAIN, "u", 10, ready=Readiness(model_status="ready"))
    assert nf.value.details == {"dataset_id": "d1"}
    with pytest.raises(ValidationFailed) as err:
        plan_submit(
            state,
            "j",
            "train",
            TRAIN,
            "u",
            10,
            ready=Readiness(model_status="ready", dataset_status="pending"),
        )
    assert err.value.message == "dataset d1 is pending, not ready" and err.value.details == {
        "field": "dataset_id"
    }
    # the model is checked first
    with pytest.raises(NotFound) as first:
        plan_submit(state, "j", "train", TRAIN, "u", 10, ready=Readiness(dataset_status="pending"))
    assert first.value.details == {"model_id": "m1"}


def test_evolve_needs_no_spare_token_any_number_of_evolutions_may_be_active() -> None:
    """The coordinator holds no token (its trials do): evolve works with 1 token, and a second
    evolution is not refused (the old ``tokens >= 2`` and ``tokens - 1 active`` rules are gone)."""
    log, one = LogCore(), new_state(1)
    for job_id in ("e1", "e2"):
        commit(log, one, plan_submit(one, job_id, "evolve", EVOLVE, "u", 10, ready=READY))
    commit(log, one, plan_submit(one, "t1", "train", TRAIN, "u", 10, ready=READY))
    assert one.queue == ["e1", "e2", "t1"]


def test_the_queue_limit_is_checked_last() -> None:
    log, state = LogCore(), new_state(2)
    commit(log, state, plan_submit(state, "a", "benchmark", BENCH, "u", 1, ready=READY))
    with pytest.raises(TooManyRequests):
        plan_submit(state, "b", "benchmark", BENCH, "u", 1, ready=READY)
    with pytest.raises(NotFound):  # a request that could never run is refused as such, not as 429
        plan_submit(state, "b", "benchmark", BENCH, "u", 1, ready=Readiness())


def test_a_child_resubmitted_under_its_id_is_idempotent_a_top_level_duplicate_is_409() -> None:
    log, state = LogCore(), new_state(2)
    commit(
        log, state, plan_submit(state, "c", "train", TRAIN, "evolve:e", 10, parent_job_id="e", ready=READY)
    )
    assert plan_submit(state, "c", "train", TRAIN, "evolve:e", 10, parent_job_id="e", ready=Readiness()) == []
    with pytest.raises(Conflict):
        plan_submit(state, "c", "train", TRAIN, "u", 10, ready=READY)
    with pytest.raises(Conflict):
        plan_submit(state, "c", "train", TRAIN, "evolve:x", 10, parent_job_id="x", ready=READY)


def test_check_job_spec_validates_hyperparameters_and_the_search_space_naming_the_field() -> None:
    check_job_spec("train", TRAIN)
    check_job_spec("evolve", EVOLVE)
    check_job_spec("benchmark", BENCH)
    check_job_spec("paint", {})  # unknown kinds are plan_submit's to refuse
    for hp, field in (
        ({"epochs": 0}, "epochs"),
        ({"lr": 5.0}, "lr"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ):
        with pytest.raises(ValidationFailed) as err:
            check_job_spec("train", {**TRAIN, "hyperparameters": hp})
        assert err.value.details["field"] == field
    with pytest.raises(ValidationFailed) as bad:
        check_job_spec(
            "evolve", {**EVOLVE, "search_space": {"bogus": {"type": "float", "low": 0, "high": 1}}}
        )
    assert bad.value.details["field"] == "search_space.bogus" and "bogus" in bad.value.message


def _calls(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and ("evolve needs" in node.value or "evolution(s) active" in node.value)
        ):
            names.add("<gpu-token-rule>")
    return names


def test_the_gateway_and_the_job_bodies_keep_no_copy_of_the_rules() -> None:
    root = Path(__file__).resolve().parents[2] / "cvops"
    for rel in ("platform/api_jobs.py", "actors/evolver.py", "actors/scheduler.py"):
        calls = _calls(root / rel)
        for rule in ("validate_hyperparameters", "parse_space", "<gpu-token-rule>", "get_dataset"):
            if rel == "actors/scheduler.py" and rule == "get_dataset":
                continue  # the shell looks the facts up; plan_submit judges them
            if rel == "actors/evolver.py" and rule == "parse_space":
                continue  # the evolver builds its search space from the validated spec
            assert rule not in calls, (rel, rule)
