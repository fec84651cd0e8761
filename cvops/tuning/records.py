"""An evolution's recorded trials (``TrialCompleted`` events) as the pure core's inputs and its result.

The GAEvolver keeps its trials only as events; everything it decides is a function of them, read here:

* :func:`outcome_of` / :func:`outcomes`: the :class:`~cvops.tuning.evolution.TrialOutcome` of each event
  (older events, recorded before trial states and objective values existed, read as ``finished`` with
  their fitness as the accuracy; a failed trial is ``failed``, never "finished with fitness 0");
* :func:`earlier_curves`: the per-epoch accuracy curves the median rule compares a running trial of
  generation ``g`` with: those of generations ``< g`` only, so a resumed evolution prunes exactly as an
  uninterrupted one would;
* :func:`epoch_curve` / :func:`trial_accuracy`: a trial's curve from its epoch progress, and the accuracy
  objective from its result (best validation accuracy; mAP50-95 for detection);
* :func:`winners` and :func:`evolution_result`: which trials' models are kept, and the job's result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cvops.events.schema import TrialCompleted
from cvops.tuning.evolution import TrialOutcome, TrialState, best_trial, front, generation_progress
from cvops.tuning.nsga2 import Objective

Key = tuple[int, int]  # (generation, index)
STATES: tuple[TrialState, ...] = ("finished", "pruned", "failed")


def outcome_of(ev: TrialCompleted) -> TrialOutcome:
    state: TrialState = ev.state if ev.state in STATES else "failed"  # type: ignore[assignment]
    values = dict(ev.values)
    if not values and state == "finished":  # recorded before objective values existed
        values = {"accuracy": float(ev.fitness)}
    return TrialOutcome(
        generation=ev.generation, index=ev.index, genes=dict(ev.genes), state=state, values=values
    )


def outcomes(trials: Mapping[Key, TrialCompleted]) -> list[TrialOutcome]:
    """Every recorded trial's outcome, in (generation, index) order."""
    return [outcome_of(trials[k]) for k in sorted(trials)]


def earlier_curves(trials: Mapping[Key, TrialCompleted], generation: int) -> list[list[float]]:
    """The accuracy curves of the trials of generations before ``generation`` (pruned ones included:
    they stop where they stopped), in (generation, index) order."""
    return [list(trials[k].curve) for k in sorted(trials) if k[0] < generation and trials[k].curve]


def epoch_accuracy(record: Mapping[str, Any], task: str) -> float | None:
    """The validation accuracy of one epoch record (``phase: epoch``): mAP50-95 for detection."""
    raw = record.get("map50_95") if task == "detection" else None
    if raw is None:
        raw = record.get("val_accuracy")
    return float(raw) if isinstance(raw, int | float) else None


def epoch_curve(records: Iterable[Mapping[str, Any]], task: str) -> list[float]:
    """A trial's curve from its progress records: the accuracy after epochs 1..k, in epoch order (a
    resumed trial repeats no epoch; the last record of an epoch wins; the curve stops at a gap)."""
    by_epoch: dict[int, float] = {}
    for rec in records:
        if rec.get("phase") != "epoch" or not isinstance(rec.get("epoch"), int):
            continue
        acc = epoch_accuracy(rec, task)
        if acc is not None:
            by_epoch[int(rec["epoch"])] = acc
    curve: list[float] = []
    while len(curve) + 1 in by_epoch:
        curve.append(by_epoch[len(curve) + 1])
    return curve


def trial_accuracy(result: Mapping[str, Any], task: str) -> float:
    """The accuracy objective of a finished trial: its best validation accuracy (mAP50-95, detection)."""
    if task == "detection":
        history = [h for h in result.get("history") or [] if isinstance(h, Mapping)]
        maps = [float(h["map50_95"]) for h in history if isinstance(h.get("map50_95"), int | float)]
        if maps:
            return max(maps)
    return float(result.get("best_val_accuracy") or 0.0)


def winners(found: Sequence[TrialOutcome], objectives: Sequence[Objective]) -> list[Key]:
    """The trials whose models an evolution keeps: the best (single objective) or the front (multi)."""
    if len(objectives) == 1:
        best = best_trial(found, objectives[0])
        return [] if best is None else [(best.generation, best.index)]
    fr = front(found, objectives)
    return [] if fr is None else [(t.generation, t.index) for t in fr.trials]


def trial_view(ev: TrialCompleted, keep: bool) -> dict[str, Any]:
    """One trial of ``GET /jobs/{evolution}``'s result."""
    return {
        "generation": ev.generation,
        "index": ev.index,
        "job_id": ev.child_job_id,
        "state": outcome_of(ev).state,
        "fitness": ev.fitness,
        "values": dict(ev.values) or ({"accuracy": ev.fitness} if ev.state == "finished" else {}),
        "hyperparameters": dict(ev.genes),
        "model_id": ev.model_id if keep else None,
    }


def evolution_result(
    trials: Mapping[Key, TrialCompleted],
    objectives: Sequence[Objective],
    *,
    reference: Sequence[float] | None = None,
    stop_reason: str = "generations",
) -> dict[str, Any]:
    """The result of an evolve job: every trial (fitness, values, state, model id of the kept ones), the
    best trial, and for several objectives the front and its knee; plus per-generation best and mean."""
    found = outcomes(trials)
    keep = set(winners(found, objectives))
    views = {k: trial_view(trials[k], k in keep) for k in sorted(trials)}
    history = []
    progress = generation_progress(found, objectives, reference)
    for g in sorted({k[0] for k in trials}):
        fits = [trials[k].fitness for k in sorted(trials) if k[0] == g]
        history.append(
            {
                "generation": g,
                "best": max(fits),
                "mean": sum(fits) / len(fits),
                "progress": progress[g] if g < len(progress) else None,
            }
        )
    best = best_trial(found, "accuracy")
    out: dict[str, Any] = {
        "objectives": list(objectives),
        "trials": len(trials),
        "trial_results": list(views.values()),
        "generations": history,
        "stop_reason": stop_reason,
        "states": {s: sum(1 for t in found if t.state == s) for s in STATES},
    }
    if best is not None:
        b = trials[(best.generation, best.index)]
        out.update(
            best_fitness=b.fitness,
            best_hyperparameters=dict(b.genes),
            best_trial_job_id=b.child_job_id,
            best=views[(best.generation, best.index)],
        )
    else:
        out.update(best_fitness=None, best_hyperparameters=None, best_trial_job_id=None, best=None)
    if len(objectives) > 1:
        fr = front(found, objectives)
        members = [] if fr is None else [views[(t.generation, t.index)] for t in fr.trials]
        out["front"] = members
        out["knee"] = members[fr.knee] if fr is not None and members else None
    return out
