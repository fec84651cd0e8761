"""The median stopping rule against a hand-made trial table, and the budget rules."""

from __future__ import annotations

import pytest

from cvops.tuning.budget import Budget, over_time, stale_generations, stop_reason
from cvops.tuning.pruning import MedianRule, median_at, pruned_epoch, should_prune

# validation accuracy after epochs 1, 2, 3 of the trials that ran before
EARLIER = [
    [0.5, 0.6, 0.7],
    [0.4, 0.5, 0.6],
    [0.3, 0.55, 0.65],
    [0.6, 0.7],  # stopped after epoch 2
]
# medians: epoch 1 of (.5 .4 .3 .6) = .45; epoch 2 of (.6 .5 .55 .7) = .575; epoch 3 of (.7 .6 .65) = .65


def test_medians_by_hand() -> None:
    assert median_at(EARLIER, 1) == pytest.approx(0.45)
    assert median_at(EARLIER, 2) == pytest.approx(0.575)
    assert median_at(EARLIER, 3) == pytest.approx(0.65)
    assert median_at(EARLIER, 4) is None


@pytest.mark.parametrize(
    ("curve", "rule", "pruned"),
    [
        ([0.44], MedianRule(min_trials=3), True),
        ([0.45], MedianRule(min_trials=3), False),  # at the median: kept
        ([0.5, 0.57], MedianRule(min_trials=3), True),
        ([0.5, 0.58], MedianRule(min_trials=3), False),
        ([0.5, 0.6, 0.64], MedianRule(min_trials=3), True),
        ([0.5, 0.6, 0.64], MedianRule(min_trials=4), False),  # only 3 earlier trials reached epoch 3
        ([0.44], MedianRule(min_trials=3, min_epochs=2), False),  # too early to judge
        ([0.1, 0.1], MedianRule(min_trials=3, min_epochs=2), True),
        ([0.1], MedianRule(min_trials=5), False),  # too few earlier trials
        ([0.1], MedianRule(enabled=False), False),  # the off switch
        ([], MedianRule(), False),
    ],
)
def test_median_rule_on_the_table(curve: list[float], rule: MedianRule, pruned: bool) -> None:
    assert should_prune(rule, curve, EARLIER) is pruned


def test_replay_finds_the_first_pruning_epoch() -> None:
    rule = MedianRule(min_trials=3)
    assert pruned_epoch(rule, [0.5, 0.57, 0.9], EARLIER) == 2
    assert pruned_epoch(rule, [0.9, 0.9, 0.9], EARLIER) is None
    assert pruned_epoch(rule, [0.1, 0.9], []) is None  # the first trials are never pruned


def test_budget_stops_after_the_generations() -> None:
    b = Budget(generations=3)
    assert stop_reason(b, [], 0.0) is None
    assert stop_reason(b, [0.1, 0.2], 1e9) is None  # no time limit
    assert stop_reason(b, [0.1, 0.2, 0.3], 0.0) == "generations"


def test_budget_stops_on_the_clock() -> None:
    b = Budget(generations=10, wall_clock_s=60.0)
    assert stop_reason(b, [0.1], 59.9) is None and not over_time(b, 59.9)
    assert stop_reason(b, [0.1], 60.0) == "wall_clock" and over_time(b, 60.0)


def test_budget_stops_without_improvement() -> None:
    assert stale_generations([0.5, 0.6, 0.6, 0.55]) == 2
    assert stale_generations([0.5, 0.6, 0.61], min_delta=0.02) == 1
    assert stale_generations([]) == 0
    b = Budget(generations=10, patience=2)
    assert stop_reason(b, [0.5, 0.6, 0.6], 0.0) is None
    assert stop_reason(b, [0.5, 0.6, 0.6, 0.59], 0.0) == "no_improvement"
    assert stop_reason(b, [0.5, 0.6, 0.6, 0.7], 0.0) is None
