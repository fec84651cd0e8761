"""The evolver's recorded trials (hand-made TrialCompleted events) as the pure core's inputs and result."""

from __future__ import annotations

import msgspec

from cvops.events.schema import TrialCompleted
from cvops.tuning.evolution import TrialOutcome, propose
from cvops.tuning.nsga2 import dominates, oriented
from cvops.tuning.records import (
    earlier_curves,
    epoch_curve,
    evolution_result,
    outcome_of,
    outcomes,
    trial_accuracy,
    winners,
)
from cvops.tuning.space import parse_space

SPACE = parse_space(
    {
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "optimizer": {"type": "choice", "choices": ["sgd", "adamw"]},
    }
)


def _ev(g: int, i: int, **kw: object) -> TrialCompleted:
    base: dict[str, object] = {
        "job_id": "e",
        "generation": g,
        "index": i,
        "genes": {"lr": 0.01 + i / 1000, "optimizer": "sgd"},
    }
    base.setdefault("fitness", 0.0)
    return TrialCompleted(**{**base, **kw})  # type: ignore[arg-type]


def test_an_old_event_decodes_as_a_finished_trial_whose_fitness_is_its_accuracy() -> None:
    raw = b'{"job_id":"e","generation":0,"index":1,"genes":{"lr":0.01},"fitness":0.7,"child_job_id":"c"}'
    ev = msgspec.json.decode(raw, type=TrialCompleted)
    assert (ev.state, ev.values, ev.curve, ev.model_id) == ("finished", {}, [], "")
    assert outcome_of(ev) == TrialOutcome(
        generation=0, index=1, genes={"lr": 0.01}, state="finished", values={"accuracy": 0.7}
    )


def test_failed_and_pruned_trials_carry_no_values_and_unknown_states_read_as_failed() -> None:
    assert outcome_of(_ev(0, 0, state="failed")).values == {}
    assert outcome_of(_ev(0, 0, state="pruned", fitness=0.3, curve=[0.3])).state == "pruned"
    assert outcome_of(_ev(0, 0, state="bogus")).state == "failed"
    multi = outcome_of(_ev(0, 0, fitness=0.8, values={"accuracy": 0.8, "latency": 3.0}))
    assert multi.values == {"accuracy": 0.8, "latency": 3.0}


def test_outcomes_are_in_generation_index_order_and_propose_reads_them_exactly() -> None:
    trials = {
        (g, i): _ev(g, i, fitness=(g + i) / 10, values={"accuracy": (g + i) / 10})
        for g in (1, 0)
        for i in (3, 0, 2, 1)
    }
    found = outcomes(trials)
    assert [(t.generation, t.index) for t in found] == [(g, i) for g in (0, 1) for i in range(4)]
    # generation 1's proposal depends on generation 0 only: adding generation 1's trials changes nothing
    only0 = {k: v for k, v in trials.items() if k[0] == 0}
    a = propose(SPACE, outcomes(only0), seed=5, generation=1, size=4)
    b = propose(SPACE, found, seed=5, generation=1, size=4)
    assert a == b


def test_earlier_curves_read_only_earlier_generations() -> None:
    trials = {
        (0, 0): _ev(0, 0, curve=[0.1, 0.2]),
        (0, 1): _ev(0, 1, state="pruned", curve=[0.05]),
        (0, 2): _ev(0, 2, state="failed"),
        (1, 0): _ev(1, 0, curve=[0.9]),
    }
    assert earlier_curves(trials, 1) == [[0.1, 0.2], [0.05]]
    assert earlier_curves(trials, 0) == []
    assert earlier_curves(trials, 2) == [[0.1, 0.2], [0.05], [0.9]]


def test_epoch_curve_from_progress_records() -> None:
    recs = [
        {"phase": "batch", "epoch": 1},
        {"phase": "epoch", "epoch": 1, "val_accuracy": 0.2, "map50_95": 0.1},
        {"phase": "resumed", "from_epoch": 1},
        {"phase": "epoch", "epoch": 2, "val_accuracy": 0.4, "map50_95": 0.3},
        {"phase": "epoch", "epoch": 2, "val_accuracy": 0.5, "map50_95": 0.35},  # a resumed epoch: last wins
        {"phase": "epoch", "epoch": 4, "val_accuracy": 0.9},  # after a gap: not read
    ]
    assert epoch_curve(recs, "classification") == [0.2, 0.5]
    assert epoch_curve(recs, "detection") == [0.1, 0.35]
    assert epoch_curve([{"phase": "epoch", "epoch": 1, "val_accuracy": None}], "classification") == []


def test_trial_accuracy_is_map50_95_for_detection() -> None:
    result = {"best_val_accuracy": 0.6, "history": [{"map50_95": 0.2}, {"map50_95": 0.31}, {"loss": 1}]}
    assert trial_accuracy(result, "detection") == 0.31
    assert trial_accuracy(result, "classification") == 0.6
    assert trial_accuracy({"best_val_accuracy": None}, "classification") == 0.0


def test_single_objective_result_keeps_only_the_best_trials_model() -> None:
    trials = {
        (0, 0): _ev(0, 0, fitness=0.5, values={"accuracy": 0.5}, model_id="m0", child_job_id="c0"),
        (0, 1): _ev(0, 1, fitness=0.9, values={"accuracy": 0.9}, model_id="m1", child_job_id="c1"),
        (0, 2): _ev(0, 2, state="pruned", fitness=0.95, curve=[0.95], child_job_id="c2"),
        (0, 3): _ev(0, 3, state="failed", child_job_id="c3"),
    }
    assert winners(outcomes(trials), ("accuracy",)) == [(0, 1)]
    res = evolution_result(trials, ("accuracy",))
    assert res["best_fitness"] == 0.9 and res["best_trial_job_id"] == "c1" and res["best"]["model_id"] == "m1"
    assert [t["model_id"] for t in res["trial_results"]] == [None, "m1", None, None]
    assert [t["state"] for t in res["trial_results"]] == ["finished", "finished", "pruned", "failed"]
    assert res["states"] == {"finished": 2, "pruned": 1, "failed": 1} and res["trials"] == 4
    assert "front" not in res and res["generations"][0]["best"] == 0.95


def test_multi_objective_result_is_the_non_dominated_front_with_its_knee() -> None:
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.5, 1.0), (0.9, 12.0), (0.6, 1.0)]
    trials = {
        (0, i): _ev(0, i, fitness=a, values={"accuracy": a, "latency": lat}, model_id=f"m{i}")
        for i, (a, lat) in enumerate(points)
    }
    objectives = ("accuracy", "latency")
    keep = winners(outcomes(trials), objectives)
    assert keep == [(0, 0), (0, 1), (0, 5)]
    res = evolution_result(trials, objectives)
    front = res["front"]
    assert [t["model_id"] for t in front] == ["m0", "m1", "m5"]
    pts = [oriented(t["values"], objectives) for t in front]
    assert not any(dominates(p, q) for p in pts for q in pts)
    assert res["knee"] in front
    kept = {t["model_id"] for t in res["trial_results"] if t["model_id"]}
    assert kept == {"m0", "m1", "m5"}
