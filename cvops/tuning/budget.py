"""When an evolution stops, pure: after its generations, past a wall-clock budget, or after ``patience``
generations without improvement.  Time is passed in (seconds since the evolution started)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

StopReason = Literal["generations", "wall_clock", "no_improvement"]


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    generations: Annotated[int, msgspec.Meta(ge=1)]
    wall_clock_s: Annotated[float, msgspec.Meta(gt=0)] | None = None  # None: no time limit
    patience: Annotated[int, msgspec.Meta(ge=1)] | None = None  # generations without improvement; None: off
    min_delta: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # what counts as an improvement


def stale_generations(progress: Sequence[float], min_delta: float = 0.0) -> int:
    """Generations since the best-so-far last improved by more than ``min_delta`` (``progress`` is one
    value per finished generation, higher is better: the best fitness, or the front's hypervolume)."""
    best: float | None = None
    stale = 0
    for value in progress:
        if best is None or value > best + min_delta:
            best, stale = value, 0
        else:
            stale += 1
    return stale


def stop_reason(budget: Budget, progress: Sequence[float], elapsed_s: float) -> StopReason | None:
    """Why no further generation starts after ``len(progress)`` finished ones, or None to go on."""
    if len(progress) >= budget.generations:
        return "generations"
    if budget.wall_clock_s is not None and elapsed_s >= budget.wall_clock_s:
        return "wall_clock"
    if (
        budget.patience is not None
        and progress
        and stale_generations(progress, budget.min_delta) >= budget.patience
    ):
        return "no_improvement"
    return None


def over_time(budget: Budget, elapsed_s: float) -> bool:
    """Whether the wall-clock budget is spent (running trials are then cancelled, not waited for)."""
    return budget.wall_clock_s is not None and elapsed_s >= budget.wall_clock_s
