"""What an evolution proposes next and what it reports, as pure functions of its recorded trials.

The actor records each trial's outcome as an event (:class:`TrialOutcome`'s fields); everything here is a
function of those outcomes and the seed, so a resumed evolution rebuilt from the log proposes exactly the
genomes an uninterrupted run would have:

* :func:`propose`: generation 0 is :func:`~cvops.tuning.operators.initial_population`; generation ``g``
  breeds from the survivors of every finished trial of generations ``< g`` (elitism: the best half,
  single-objective, or NSGA-II's selection by front and crowding distance), never re-proposing any genome
  tried before;
* :func:`best_trial` / :func:`front`: the result (single objective: one trial; multi: the Pareto front and
  its knee);
* :func:`generation_progress`: one number per generation for the no-improvement budget (best fitness, or
  the hypervolume of the front so far).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from cvops.tuning.nsga2 import (
    Objective,
    hypervolume,
    knee_point,
    nsga2_select,
    oriented,
    pareto_front,
    selection_scores,
)
from cvops.tuning.operators import breed, initial_population
from cvops.tuning.space import Genome, SearchSpace

TrialState = Literal["finished", "pruned", "failed"]


class TrialOutcome(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    index: int
    genes: dict[str, Any]
    state: TrialState = "finished"
    values: dict[str, float] = {}  # objective -> measured value (accuracy, latency ms p95, size MB)


class Front(msgspec.Struct, frozen=True, kw_only=True):
    trials: list[TrialOutcome]  # the non-dominated finished trials, in (generation, index) order
    knee: int  # index into ``trials``


def _scored(trials: Sequence[TrialOutcome], objectives: Sequence[Objective]) -> list[TrialOutcome]:
    ordered = sorted(trials, key=lambda t: (t.generation, t.index))
    return [t for t in ordered if t.state == "finished" and all(o in t.values for o in objectives)]


def survivors(
    trials: Sequence[TrialOutcome], objectives: Sequence[Objective], size: int
) -> tuple[list[TrialOutcome], list[float]]:
    """The ``size`` parents for the next generation and their tournament scores (higher is better)."""
    scored = _scored(trials, objectives)
    points = [oriented(t.values, objectives) for t in scored]
    chosen = nsga2_select(points, size)
    parents = [scored[i] for i in chosen]
    return parents, selection_scores([points[i] for i in chosen])


def propose(
    space: SearchSpace,
    trials: Sequence[TrialOutcome],
    *,
    seed: int,
    generation: int,
    size: int,
    objectives: Sequence[Objective] = ("accuracy",),
    include_default: bool = True,
    parents: float | None = None,
    tournament_size: int = 3,
    mutation_rate: float = 0.3,
) -> list[Genome]:
    """The ``size`` genomes of ``generation``, given every trial recorded so far (only those of earlier
    generations are read, so a half-finished generation re-proposes the same genomes).

    The parents are the best ``parents`` x ``size`` of all finished trials so far ((μ+λ) elitism: a good
    genome stays a parent until better ones displace it; default: half single-objective, all ``size``
    multi-objective, as NSGA-II keeps a whole population for the spread of its front).  Children come
    from tournaments of ``tournament_size``, BLX-0.5 / uniform crossover and mutation (each gene with
    ``mutation_rate``, one at least; step: twice the parents' spread).  The defaults were chosen on
    shifted Rastrigin / Ackley over mixed spaces with seeds the comparison script does not use
    (``scripts/bench_evolver.py``)."""
    earlier = [t for t in trials if t.generation < generation]
    tried = [t.genes for t in earlier]
    if generation == 0:
        return initial_population(space, size, seed, include_default=include_default)
    share = parents if parents is not None else (0.5 if len(objectives) == 1 else 1.0)
    pool, scores = survivors(earlier, objectives, max(2, math.ceil(share * size)))
    if not pool:  # every trial failed or was pruned: start afresh, still never repeating one
        return initial_population(space, size, seed + generation, include_default=False, exclude=tried)
    return breed(
        [p.genes for p in pool],
        scores,
        space,
        seed=seed,
        generation=generation,
        n=size,
        exclude=tried,
        mutation_rate=mutation_rate,
        tournament_size=tournament_size,
    )


def best_trial(trials: Sequence[TrialOutcome], objective: Objective = "accuracy") -> TrialOutcome | None:
    """The best finished trial on one objective (ties: the earliest)."""
    scored = _scored(trials, (objective,))
    if not scored:
        return None
    return min(scored, key=lambda t: oriented(t.values, (objective,)))


def front(trials: Sequence[TrialOutcome], objectives: Sequence[Objective]) -> Front | None:
    """The Pareto front of the finished trials and its suggested knee."""
    scored = _scored(trials, objectives)
    if not scored:
        return None
    points = [oriented(t.values, objectives) for t in scored]
    members = [scored[i] for i in pareto_front(points)]
    knee = knee_point([oriented(t.values, objectives) for t in members])
    return Front(trials=members, knee=knee)


def reference_point(trials: Sequence[TrialOutcome], objectives: Sequence[Objective]) -> tuple[float, ...]:
    """A hypervolume reference for ``objectives``: accuracy 0, and 1.1 x the worst latency/size seen."""
    scored = _scored(trials, objectives)
    ref: list[float] = []
    for o in objectives:
        if o == "accuracy":
            ref.append(0.0)
        else:
            ref.append(1.1 * max((t.values[o] for t in scored), default=1.0) or 1.0)
    return tuple(ref)


def generation_progress(
    trials: Sequence[TrialOutcome],
    objectives: Sequence[Objective],
    reference: Sequence[float] | None = None,
) -> list[float]:
    """One value per generation, higher is better: the best accuracy so far (single objective) or the
    hypervolume of the front of every trial so far (multi; ``reference`` fixed for the whole run)."""
    if not trials:
        return []
    last = max(t.generation for t in trials)
    ref = tuple(reference) if reference is not None else reference_point(trials, objectives)
    out: list[float] = []
    for g in range(last + 1):
        upto = _scored([t for t in trials if t.generation <= g], objectives)
        if len(objectives) == 1:
            out.append(max((t.values[objectives[0]] for t in upto), default=float("-inf")))
        else:
            out.append(hypervolume([oriented(t.values, objectives) for t in upto], ref))
    return out
