"""The evolution report: best and mean fitness per generation, every trial (state, fitness,
hyperparameters) and, when the trials carry several objectives, the Pareto front with its knee point.

Fed by the evolve job's events (JobSubmitted, TrialCompleted, its JobSucceeded) and the scheduler
events of its trial jobs (JobSubmitted with ``parent_job_id``, their terminal events).  Trials are read
defensively: a trial may carry ``objectives`` or ``values`` (name → value; the GAEvolver records
``values``: accuracy, latency, size), a ``state`` (pruned and failed trials show as such) and
``directions`` (name → "max"|"min")
beside its single ``fitness``; without directions, names that look like costs (latency, ms, size,
bytes, params, loss) are minimised and everything else maximised.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cvops.errors import NotFound
from cvops.events.schema import Event, JobSubmitted, TrialCompleted
from cvops.reports import svg
from cvops.reports.common import job_facts
from cvops.reports.doc import Block, Chart, Doc, Para, Pre, Section, Table
from cvops.reports.fmt import fixed, fmt_num, jsonable, num, rounded

_COSTS = ("latency", "_ms", "size", "bytes", "params", "loss", "time", "seconds")


def direction(name: str, given: Mapping[str, Any] | None = None) -> str:
    if given and str(given.get(name, "")).lower() in ("max", "min"):
        return str(given[name]).lower()
    return "min" if any(c in name.lower() for c in _COSTS) else "max"


def _objectives(ev: Any) -> dict[str, float]:
    for attr in ("objectives", "metrics", "values"):
        raw = getattr(ev, attr, None)
        if isinstance(raw, Mapping):
            out = {str(k): v for k, v in ((k, num(v)) for k, v in raw.items()) if v is not None}
            if out:
                return out
    return {}


def pareto(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (each objective maximised or minimised per ``senses``)."""
    signed = [[v if s == "max" else -v for v, s in zip(p, senses, strict=True)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return [
        i for i, p in enumerate(signed) if not any(dominates(q, p) for j, q in enumerate(signed) if j != i)
    ]


def knee(points: Sequence[Sequence[float]], senses: Sequence[str]) -> int | None:
    """The front point closest to the ideal point after normalising each objective to [0, 1] (for two
    objectives this is the classic knee: the best trade-off, not an extreme).  Ties: the lowest index."""
    if not points:
        return None
    dims = len(senses)
    norm: list[list[float]] = [[0.0] * dims for _ in points]
    for d in range(dims):
        col = [p[d] for p in points]
        lo, hi = min(col), max(col)
        for i, v in enumerate(col):
            good = (v - lo) / (hi - lo) if hi > lo else 1.0
            norm[i][d] = good if senses[d] == "max" else 1.0 - good
    dist = [math.sqrt(sum((1.0 - v) ** 2 for v in n)) for n in norm]
    return min(range(len(points)), key=lambda i: (round(dist[i], 12), i))


def report_data(job_id: str, events: Sequence[Event], view: str) -> dict[str, Any]:
    job = job_facts(job_id, events)
    if job.kind and job.kind != "evolve":
        raise NotFound(f"job {job_id} is a {job.kind} job, not an evolve job", {"job_id": job_id})
    trials: dict[tuple[int, int], dict[str, Any]] = {}
    directions: dict[str, Any] = {}
    children = [ev.job_id for ev in events if isinstance(ev, JobSubmitted) and ev.parent_job_id == job_id]
    for n, cid in enumerate(children):
        child = job_facts(cid, events)
        gen, idx = _position(cid, n)
        trials[(gen, idx)] = {
            "generation": gen,
            "index": idx,
            "job_id": cid,
            "state": child.status,
            "fitness": None,
            "hyperparameters": jsonable(dict(child.spec.get("hyperparameters") or {})),
            "objectives": {},
        }
    for ev in events:
        if isinstance(ev, TrialCompleted) and ev.job_id == job_id:
            key = (ev.generation, ev.index)
            state = job_facts(ev.child_job_id, events).status if ev.child_job_id else "completed"
            trials[key] = {
                "generation": ev.generation,
                "index": ev.index,
                "job_id": ev.child_job_id,
                "state": ev.state
                if ev.state in ("pruned", "failed")
                else ("completed" if state in ("unknown", "running") else state),
                "fitness": rounded(num(ev.fitness), 6),
                "hyperparameters": jsonable(dict(ev.genes)),
                "objectives": {k: rounded(v, 6) for k, v in sorted(_objectives(ev).items())},
            }
            given = getattr(ev, "directions", None)
            if isinstance(given, Mapping):
                directions.update({str(k): v for k, v in given.items()})
    if not any(t["fitness"] is not None for t in trials.values()) and job.status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        raise NotFound("this job has no report yet (no trial has finished)", {"job_id": job_id})
    ordered = [trials[k] for k in sorted(trials) if k[0] >= 0] + [
        trials[k] for k in sorted(trials) if k[0] < 0
    ]
    generations = []
    for g in sorted({t["generation"] for t in ordered if t["fitness"] is not None}):
        fit = [t["fitness"] for t in ordered if t["generation"] == g and t["fitness"] is not None]
        generations.append(
            {
                "generation": g,
                "trials": len(fit),
                "best": rounded(max(fit), 6),
                "mean": rounded(sum(fit) / len(fit), 6),
            }
        )
    scored = [t for t in ordered if t["fitness"] is not None]
    best = max(scored, key=lambda t: (t["fitness"], -t["generation"], -t["index"])) if scored else None
    data: dict[str, Any] = {
        "report": "evolution",
        "view": view,
        "job_id": job_id,
        "status": job.status,
        "model_id": str(job.spec.get("model_id") or ""),
        "dataset_id": str(job.spec.get("dataset_id") or ""),
        "population": job.spec.get("population"),
        "generations_planned": job.spec.get("generations"),
        "fitness": "best validation accuracy of the trial's training",
        "best": None
        if best is None
        else {k: best[k] for k in ("generation", "index", "job_id", "fitness", "hyperparameters")},
        "generations": generations,
        "trials_done": len(scored),
        "pareto": _pareto(scored, directions),
    }
    data["summary"] = _summary(data)
    if view == "technical":
        data["trials"] = ordered
        data["search_space"] = jsonable(dict(job.spec.get("search_space") or {}))
        data["seed"] = job.spec.get("seed")
        data["device"] = job.device
        data["method"] = (
            "A seeded genetic algorithm: generation 0 is sampled from the search space; each later "
            "generation keeps the fittest genome (elitism) and breeds the rest by tournament selection, "
            "uniform crossover and mutation. Every genome is one train job (not registered as a model); "
            "its fitness is that training's best validation accuracy (0 when the trial failed)."
        )
    return data


_TRIAL_ID = re.compile(r"-g(\d+)i(\d+)$")


def _position(child_id: str, fallback: int) -> tuple[int, int]:
    """(generation, index) from a trial job id ``<job>-g<gen>i<index>``; else (-1, ``fallback``)."""
    m = _TRIAL_ID.search(child_id)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, fallback)


def _pareto(scored: list[dict[str, Any]], directions: Mapping[str, Any]) -> dict[str, Any] | None:
    scored = [t for t in scored if t["objectives"]]  # pruned and failed trials measured nothing
    names = sorted(set.intersection(*(set(t["objectives"]) for t in scored))) if scored else []
    if len(names) < 2:
        return None
    senses = [direction(n, directions) for n in names]
    points = [[float(t["objectives"][n]) for n in names] for t in scored]
    front = pareto(points, senses)
    k = knee([points[i] for i in front], senses)
    members = [
        {"generation": scored[i]["generation"], "index": scored[i]["index"], "job_id": scored[i]["job_id"],
         "objectives": scored[i]["objectives"], "knee": k is not None and front[k] == i}
        for i in front
    ]  # fmt: skip
    members.sort(key=lambda m: tuple(m["objectives"][n] for n in names))
    return {
        "objectives": [{"name": n, "direction": s} for n, s in zip(names, senses, strict=True)],
        "front": members,
        "points": [
            {"generation": t["generation"], "index": t["index"], "objectives": t["objectives"]}
            for t in scored
        ],
    }


def _genes(hp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_num(v) if isinstance(v, float) else v}" for k, v in sorted(hp.items()))


def _summary(data: dict[str, Any]) -> list[str]:
    best = data["best"]
    out: list[str] = []
    if best is None:
        out.append(f"The evolution {data['status']} before any trial finished.")
        return out
    verb = "Use" if data["status"] == "succeeded" else f"So far ({data['status']}), the best is"
    out.append(
        f"{verb} the hyperparameters of trial {best['generation']}/{best['index']} ({_genes(best['hyperparameters'])}): "
        f"fitness {fixed(best['fitness'], 4)}, the best of {data['trials_done']} trials over "
        f"{len(data['generations'])} generations."
    )
    gens = data["generations"]
    if len(gens) > 1:
        first, last = gens[0], gens[-1]
        trend = "rose" if last["mean"] > first["mean"] else "did not rise"
        out.append(
            f"The mean fitness {trend} from {fixed(first['mean'], 4)} in generation {first['generation']} to {fixed(last['mean'], 4)} in generation {last['generation']}."
        )
    par = data["pareto"]
    if par:
        kp = next((m for m in par["front"] if m["knee"]), None)
        if kp:
            objs = ", ".join(f"{n} {fmt_num(v)}" for n, v in sorted(kp["objectives"].items()))
            out.append(
                f"For the best trade-off between {' and '.join(o['name'] for o in par['objectives'])}, take the knee point, trial {kp['generation']}/{kp['index']} ({objs})."
            )
    return out


def fitness_chart(data: dict[str, Any]) -> Chart:
    gens = data["generations"]
    series = [
        svg.Series("best", [(float(g["generation"]), float(g["best"])) for g in gens]),
        svg.Series("mean", [(float(g["generation"]), float(g["mean"])) for g in gens], dashed=True),
    ]
    return Chart(
        svg.line_chart(series, "Fitness per generation", "generation", "fitness"),
        "best and mean fitness per generation",
    )


def document(data: dict[str, Any]) -> Doc:
    facts = [("Status", data["status"]), ("Model", data["model_id"]), ("Dataset", data["dataset_id"])]
    what: list[Block] = [
        Para(s, highlight=i == 0, warn=i == 0 and data["best"] is None) for i, s in enumerate(data["summary"])
    ]
    sections = [
        Section("What to use and why", what),
        Section("Fitness per generation", [fitness_chart(data)]),
    ]
    if data["view"] == "technical":
        rows = [
            [str(g["generation"]), str(g["trials"]), fixed(g["best"], 4), fixed(g["mean"], 4)]
            for g in data["generations"]
        ]
        sections.append(Section("Generations", [Table(["generation", "trials", "best", "mean"], rows)]))
        trows = [
            [
                f"{t['generation']}/{t['index']}",
                t["job_id"],
                t["state"],
                fixed(t["fitness"], 4),
                _genes(t["hyperparameters"]),
            ]
            for t in data["trials"]
        ]
        sections.append(
            Section(
                "Trials",
                [
                    Table(
                        ["trial", "job", "state", "fitness", "hyperparameters"], trows, empty="No trial yet."
                    )
                ],
            )
        )
        par = data["pareto"]
        if par:
            names = [o["name"] for o in par["objectives"]]
            pts = [
                svg.Point(
                    x=float(p["objectives"][names[0]]), y=float(p["objectives"][names[1]]), label=f"{p['generation']}/{p['index']}",
                    front=any(m["generation"] == p["generation"] and m["index"] == p["index"] for m in par["front"]),
                    knee=any(m["knee"] and m["generation"] == p["generation"] and m["index"] == p["index"] for m in par["front"]),
                )
                for p in par["points"]
            ]  # fmt: skip
            frows = [
                [
                    f"{m['generation']}/{m['index']}",
                    *(fmt_num(m["objectives"][n]) for n in names),
                    fixed(m["knee"], 0),
                ]
                for m in par["front"]
            ]
            sections.append(
                Section(
                    "Pareto front",
                    [
                        Para("Objectives: " + ", ".join(f"{o['name']} ({'higher' if o['direction'] == 'max' else 'lower'} is better)" for o in par["objectives"]) + ". The knee point is the front member closest to the ideal point after scaling each objective to [0, 1]."),
                        Chart(svg.scatter(pts, "Pareto front", names[0], names[1]), f"trials by {names[0]} and {names[1]}, the Pareto front and its knee point"),
                        Table(["trial", *names, "knee"], frows),
                    ],
                )
            )  # fmt: skip
        setup = [["population", fixed(data["population"], 0)], ["generations", fixed(data["generations_planned"], 0)],
                 ["seed", fixed(data["seed"], 0)], ["fitness", data["fitness"]], ["device", data["device"] or "–"]]  # fmt: skip
        sections.append(Section("Setup", [Table(["", "value"], setup)]))
        sections.append(
            Section("Search space", [Pre(json.dumps(data["search_space"], sort_keys=True, indent=2), "json")])
        )
        sections.append(Section("Method", [Para(data["method"])]))
    return Doc(title=f"Evolution report — job {data['job_id']}", facts=facts, sections=sections)
