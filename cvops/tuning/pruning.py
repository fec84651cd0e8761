"""Early stopping of bad trials: the median stopping rule (Optuna's ``MedianPruner``, Ray Tune's
``MedianStoppingRule``), pure.

A trial reports its validation accuracy after every epoch (a *curve*: ``curve[k - 1]`` is the value
after epoch ``k``).  After epoch ``k`` it is pruned when that value is strictly below the median of the
values the *earlier* trials reported after epoch ``k``, provided at least ``min_trials`` of them reached
epoch ``k`` and ``k >= min_epochs``.  Which trials are "earlier" is the caller's choice: pass the curves of
the trials that finished before this one (pruned trials' curves are fine too: they stop where they stop).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import msgspec

Curve = Sequence[float]


class MedianRule(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    min_trials: int = 4  # earlier trials that must have reached epoch k before anything is pruned at k
    min_epochs: int = 1  # never prune before this epoch (1-based)


def median_at(curves: Sequence[Curve], epoch: int) -> float | None:
    """The median of the values after ``epoch`` (1-based) over the curves that reached it, or None."""
    values = [c[epoch - 1] for c in curves if len(c) >= epoch]
    return statistics.median(values) if values else None


def should_prune(rule: MedianRule, curve: Curve, earlier: Sequence[Curve]) -> bool:
    """Whether the trial whose curve so far is ``curve`` stops after its last reported epoch."""
    epoch = len(curve)
    if not rule.enabled or epoch == 0 or epoch < rule.min_epochs:
        return False
    reached = [c for c in earlier if len(c) >= epoch]
    if len(reached) < max(1, rule.min_trials):
        return False
    median = median_at(reached, epoch)
    return median is not None and curve[-1] < median


def pruned_epoch(rule: MedianRule, curve: Curve, earlier: Sequence[Curve]) -> int | None:
    """The first epoch at which a trial with the full ``curve`` would have been pruned, or None (replay:
    what the rule decides epoch by epoch, given the same earlier trials)."""
    for k in range(1, len(curve) + 1):
        if should_prune(rule, curve[:k], earlier):
            return k
    return None
