"""The benchmark report: which engine to use and why, from ``BenchmarkMeasured`` and ``EngineSelected``.

:func:`report_data` takes the job record, the measurement and the selection as builtins (e.g.
``msgspec.to_builtins(event)``); :func:`from_events` finds them in a job's events.  Views: ``simple`` —
the chosen engine, its p95 and throughput, one sentence on why, one per other engine, and the latency
box plot; ``technical`` — additionally every figure of every engine × batch size (p50/p90/p95/p99,
stability), throughput against batch size, the constraint check, the agreement with the reference, the
method, the machine and the job's configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from cvops.bench_types import BatchResult, EngineResult
from cvops.errors import ValidationFailed
from cvops.events.schema import BenchmarkMeasured, EngineSelected, Event, JobStarted, JobSubmitted
from cvops.reports import svg
from cvops.reports.doc import Block, Bullets, Chart, Doc, Para, Pre, Section, Table
from cvops.reports.fmt import fixed, fmt_num, jsonable, rounded

VIEWS = ("simple", "technical")

# (key, header, decimals) of a batch row in the technical view
BATCH_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("batch_size", "batch", 0),
    ("iterations", "iters", 0),
    ("min_ms", "min ms", 3),
    ("mean_ms", "mean ms", 3),
    ("p50_ms", "p50 ms", 3),
    ("p90_ms", "p90 ms", 3),
    ("p95_ms", "p95 ms", 3),
    ("p99_ms", "p99 ms", 3),
    ("max_ms", "max ms", 3),
    ("std_ms", "std ms", 3),
    ("cv", "cv", 3),
    ("throughput_ips", "images/s", 1),
    ("cpu_percent", "CPU %", 0),
    ("peak_rss_mb", "RSS MB", 1),
    ("memory_mb", "mem MB", 1),
    ("gpu_util_percent", "GPU %", 0),
    ("gpu_memory_mb", "GPU MB", 1),
)
_round = rounded
_fixed = fixed
_jsonable = jsonable


def _results(measured: Mapping[str, Any]) -> list[EngineResult]:
    raw = measured.get("results")
    if not isinstance(raw, list):
        raise ValidationFailed("measured.results must be a list of engine results")
    try:
        return [msgspec.convert(r, EngineResult) for r in raw]
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"measured.results is not a list of engine results: {exc}") from exc


def _batch_row(b: BatchResult) -> dict[str, Any]:
    lat = b.latency
    row: dict[str, Any] = {
        "batch_size": b.batch_size,
        "warmup": b.warmup,
        "iterations": b.iterations,
        "min_ms": lat.min_ms,
        "mean_ms": lat.mean_ms,
        "p50_ms": lat.p50_ms,
        "p90_ms": lat.p90_ms,
        "p95_ms": lat.p95_ms,
        "p99_ms": lat.p99_ms,
        "max_ms": lat.max_ms,
        "std_ms": lat.std_ms,
        "cv": lat.cv,
        "unstable": lat.unstable,
        "throughput_ips": b.throughput_ips,
        "cpu_percent": b.cpu_percent,
        "peak_rss_mb": b.peak_rss_mb,
        "memory_mb": b.memory_mb,
        "gpu_util_percent": b.gpu_util_percent,
        "gpu_memory_mb": b.gpu_memory_mb,
        "truncated": b.truncated,
    }
    places = {key: p for key, _, p in BATCH_COLUMNS}
    return {k: _round(v, places.get(k, 3)) for k, v in row.items()}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _find_batch(results: list[EngineResult], engine: str | None, batch: int | None) -> BatchResult | None:
    for r in results:
        if r.engine == engine:
            for b in r.batches:
                if b.batch_size == batch:
                    return b
    return None


def _why(
    selection: Mapping[str, Any], results: list[EngineResult], chosen: BatchResult | None
) -> tuple[str, list[dict[str, str]]]:
    """(sentence on the choice, one sentence per other engine)."""
    selected = selection.get("selected")
    objective = str(selection.get("objective", "latency"))
    eligible = [str(e) for e in selection.get("eligible", [])]
    rejected = {str(k): str(v) for k, v in dict(selection.get("rejected", {})).items()}
    constrained = bool(selection.get("constraints"))
    pool = "engines that met all constraints" if constrained else "available engines"
    met = "met all constraints" if constrained else "ran"
    n = len(eligible)
    if selected is None or chosen is None:
        if any(r.available for r in results):
            summary = "No engine met all constraints, so none was selected."
        else:
            summary = "No engine could run on this machine, so none was selected."
    elif objective == "throughput":
        figure = f"{fmt_num(chosen.throughput_ips)} images/s at batch {chosen.batch_size}"
        if n == 1:
            summary = f"{selected} was the only one of the {pool} ({figure})."
        else:
            summary = f"{selected} had the highest throughput ({figure}) of the {n} {pool}."
    else:
        figure = f"{fmt_num(chosen.latency.p50_ms)} ms"
        if n == 1:
            summary = f"{selected} was the only one of the {pool} (median latency {figure})."
        else:
            summary = f"{selected} had the lowest median latency ({figure}) of the {n} {pool}."

    others: list[dict[str, str]] = []
    latency_batch = selection.get("selected_batch")
    for name in eligible:
        if name == selected:
            continue
        if objective == "throughput":
            best = max(
                (b for r in results if r.engine == name for b in r.batches),
                key=lambda b: (b.throughput_ips, -b.batch_size),
                default=None,
            )
            text = (
                f"{name} {met} but reached only {fmt_num(best.throughput_ips)} images/s."
                if best
                else f"{name} {met} but was beaten."
            )
        else:
            b = _find_batch(results, name, latency_batch)
            text = (
                f"{name} {met} but was slower (median {fmt_num(b.latency.p50_ms)} ms)."
                if b
                else f"{name} {met} but was slower."
            )
        others.append({"engine": name, "status": "eligible", "sentence": text})
    for name, reason in sorted(rejected.items()):
        if reason.startswith("unavailable"):
            detail = reason.partition(":")[2].strip() or "unavailable"
            text = f"{name} cannot run here: {detail}."
            status = "unavailable"
        else:
            text = f"{name} was rejected: {reason}."
            status = "rejected"
        others.append({"engine": name, "status": status, "reason": reason, "sentence": text})
    return summary, others


def _chart_data(results: list[EngineResult], want: int | None) -> list[dict[str, Any]]:
    """p50/p95 per measured engine: at the selected batch size if it has one, else its smallest batch."""
    out: list[dict[str, Any]] = []
    for r in results:
        if not r.batches:
            continue
        b = next((b for b in r.batches if b.batch_size == want), None) or min(
            r.batches, key=lambda b: b.batch_size
        )
        out.append(
            {
                "engine": r.engine,
                "batch_size": b.batch_size,
                "p50_ms": _round(b.latency.p50_ms, 3),
                "p95_ms": _round(b.latency.p95_ms, 3),
            }
        )
    return out


def _box(r: EngineResult, b: BatchResult) -> dict[str, Any]:
    lat = b.latency
    return {
        "engine": r.engine,
        "batch_size": b.batch_size,
        **{
            k: _round(getattr(lat, k), 3)
            for k in ("min_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")
        },
        "unstable": lat.unstable,
    }


def _distribution(results: list[EngineResult], want: int | None) -> list[dict[str, Any]]:
    """Latency spread per measured engine: at the selected batch size if it has one, else its smallest."""
    out: list[dict[str, Any]] = []
    for r in results:
        if not r.batches:
            continue
        b = next((b for b in r.batches if b.batch_size == want), None) or min(
            r.batches, key=lambda b: b.batch_size
        )
        out.append(_box(r, b))
    return out


def _constraint_check(
    selection: Mapping[str, Any], results: list[EngineResult], others: list[dict[str, str]]
) -> list[dict[str, str]]:
    """One row per engine: selected | eligible | rejected | unavailable, with the reason."""
    selected = selection.get("selected")
    by_engine = {o["engine"]: o for o in others}
    rows: list[dict[str, str]] = []
    for name in sorted({r.engine for r in results} | set(by_engine) | ({selected} if selected else set())):
        if name == selected:
            rows.append(
                {"engine": name, "status": "selected", "reason": "met every constraint and won the objective"}
            )
        elif name in by_engine:
            o = by_engine[name]
            rows.append({"engine": name, "status": o["status"], "reason": o.get("reason") or o["sentence"]})
        else:
            rows.append({"engine": name, "status": "not measured", "reason": ""})
    return rows


def report_data(
    job: Mapping[str, Any], measured: Mapping[str, Any], selection: Mapping[str, Any], view: str
) -> dict[str, Any]:
    """The report as plain, rounded builtins (what the JSON format prints)."""
    if view not in VIEWS:
        raise ValidationFailed(f"view must be one of {list(VIEWS)}, got {view!r}")
    results = _results(measured)
    selected = selection.get("selected")
    selected_batch = selection.get("selected_batch")
    chosen = _find_batch(results, selected, selected_batch)
    summary, others = _why(selection, results, chosen)
    data: dict[str, Any] = {
        "report": "benchmark",
        "view": view,
        "job_id": str(job.get("job_id") or job.get("id") or measured.get("job_id") or ""),
        "model_id": str(measured.get("model_id") or job.get("model_id") or ""),
        "objective": str(selection.get("objective", "latency")),
        "constraints": _jsonable(dict(selection.get("constraints") or {})),
        "selected": None,
        "summary": summary,
        "engines_summary": others,
        "eligible": [str(e) for e in selection.get("eligible", [])],
    }
    if chosen is not None:
        data["selected"] = {
            "engine": selected,
            "batch_size": chosen.batch_size,
            "p50_ms": _round(chosen.latency.p50_ms, 3),
            "p95_ms": _round(chosen.latency.p95_ms, 3),
            "throughput_ips": _round(chosen.throughput_ips, 1),
            "unstable": chosen.latency.unstable,
        }
    data["latency_distribution"] = _distribution(results, chosen.batch_size if chosen else None)
    if view == "technical":
        data["constraint_check"] = _constraint_check(selection, results, others)
        data["throughput"] = [
            {
                "engine": r.engine,
                "points": [
                    {"batch_size": b.batch_size, "throughput_ips": _round(b.throughput_ips, 1)}
                    for b in sorted(r.batches, key=lambda b: b.batch_size)
                ],
            }
            for r in results
            if r.batches
        ]
        data["stability"] = [
            {
                "engine": r.engine,
                "batch_size": b.batch_size,
                "cv": _round(b.latency.cv, 3),
                "unstable": b.latency.unstable,
            }
            for r in results
            for b in r.batches
            if b.latency.unstable or b.truncated
        ]
        spec = dict(job.get("spec") or {})
        data["method"] = (
            f"Each engine ran {spec.get('warmup', '?')} warm-up and up to {spec.get('iterations', '?')} timed "
            "iterations per batch size on the same random inputs; latency percentiles are over the timed "
            "iterations, throughput = batch size / mean latency, a measurement is unstable when its "
            "coefficient of variation (std / mean) exceeds 0.1. Outputs are compared with the reference "
            "engine (max absolute difference, top-1 agreement). Constraints are checked at every batch "
            f"size; among the engines that meet them the objective ({data['objective']}) picks one."
        )
        data["device"] = str(job.get("device") or "")
        data["machine"] = _jsonable(dict(measured.get("machine") or {}))
        data["config"] = _jsonable(spec)
        data["engines"] = [
            {
                "engine": r.engine,
                "available": r.available,
                "reason": r.reason,
                "device": r.device,
                "build_time_s": _round(r.build_time_s, 3),
                "agreement": None
                if r.agreement is None
                else {
                    "reference": r.agreement.reference,
                    "samples": r.agreement.samples,
                    "max_abs_diff": _round(r.agreement.max_abs_diff, 9),
                    "top1_agreement": _round(r.agreement.top1_agreement, 4),
                    "note": r.agreement.note,
                },
                "batches": [_batch_row(b) for b in r.batches],
                "skipped_batches": [
                    {"batch_size": s.batch_size, "reason": s.reason} for s in r.skipped_batches
                ],
            }
            for r in results
        ]
    return data


class BenchmarkInputs(msgspec.Struct):
    """What a benchmark report is built from, found in the job's events (the last of each)."""

    job: dict[str, Any]
    measured: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None


def from_events(job_id: str, events: Sequence[Event]) -> BenchmarkInputs:
    """The job (its submitted spec and device), the last measurement and the last selection."""
    out = BenchmarkInputs(job={"id": job_id, "kind": "benchmark", "spec": {}})
    for ev in events:
        if isinstance(ev, JobSubmitted) and ev.job_id == job_id:
            out.job.update(kind=ev.kind, spec=dict(ev.spec), submitted_by=ev.submitted_by)
        elif isinstance(ev, JobStarted) and ev.job_id == job_id:
            out.job["device"] = ev.device
        elif isinstance(ev, BenchmarkMeasured) and ev.job_id == job_id:
            out.measured = msgspec.to_builtins(ev)
        elif isinstance(ev, EngineSelected) and ev.job_id == job_id:
            out.selection = msgspec.to_builtins(ev)
    return out


# -------------------------------------------------------------------------------------------- layout


def _constraints_text(constraints: Mapping[str, Any]) -> str:
    if not constraints:
        return "none"
    return ", ".join(f"{k} {fmt_num(float(v))}" for k, v in sorted(constraints.items()))


def _technical_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["engine"] + [h for _, h, _ in BATCH_COLUMNS] + ["unstable"]
    rows: list[list[str]] = []
    for e in data["engines"]:
        for b in e["batches"]:
            rows.append(
                [e["engine"]] + [_fixed(b[k], p) for k, _, p in BATCH_COLUMNS] + [_fixed(b["unstable"], 0)]
            )
    return headers, rows


def _engine_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "engine",
        "available",
        "device",
        "build s",
        "max abs diff",
        "top-1 agreement",
        "reason / notes",
    ]
    rows = []
    for e in data["engines"]:
        ag = e["agreement"]
        notes = [e["reason"]] if e["reason"] else []
        if ag and ag["note"]:
            notes.append(ag["note"])
        notes += [f"batch {s['batch_size']} skipped: {s['reason']}" for s in e["skipped_batches"]]
        rows.append(
            [
                e["engine"],
                _fixed(e["available"], 0),
                e["device"],
                _fixed(e["build_time_s"], 3),
                "–" if not ag or ag["max_abs_diff"] is None else f"{ag['max_abs_diff']:.2e}",
                "–" if not ag else _fixed(ag["top1_agreement"], 2),
                "; ".join(notes),
            ]
        )
    return headers, rows


def latency_chart(data: dict[str, Any]) -> Chart:
    sel = (data.get("selected") or {}).get("engine")
    boxes = [
        svg.Box(
            label=f"{d['engine']} (batch {d['batch_size']})" + (" — unstable" if d["unstable"] else ""),
            min=d["min_ms"] or 0.0,
            p50=d["p50_ms"] or 0.0,
            p95=d["p95_ms"] or 0.0,
            p99=d["p99_ms"] or 0.0,
            max=d["max_ms"] or 0.0,
            mean=d["mean_ms"] or 0.0,
            highlight=d["engine"] == sel,
        )
        for d in data["latency_distribution"]
    ]
    title = "Latency per engine (ms)"
    return Chart(
        svg=svg.box_plot(boxes, title),
        alt="latency distribution per engine (box: p50–p95, whiskers: min–max)",
    )


def document(data: dict[str, Any]) -> Doc:
    facts = [
        ("Model", data["model_id"]),
        ("Objective", data["objective"]),
        ("Constraints", _constraints_text(data["constraints"])),
    ]
    sel = data["selected"]
    choice: list[Block] = []
    if sel:
        choice.append(
            Table(
                ["engine", "batch", "p50 ms", "p95 ms", "images/s"],
                [[sel["engine"], str(sel["batch_size"]), _fixed(sel["p50_ms"], 3), _fixed(sel["p95_ms"], 3),
                  _fixed(sel["throughput_ips"], 1)]],
            )
        )  # fmt: skip
    choice.append(Para(data["summary"], highlight=bool(sel), warn=not sel))
    if sel and sel.get("unstable"):
        choice.append(
            Para(
                "Its latency varied a lot between runs (unstable); measure again before relying on it.",
                warn=True,
            )
        )
    sections = [Section("Selected engine", choice)]
    if data["engines_summary"]:
        sections.append(Section("Other engines", [Bullets([o["sentence"] for o in data["engines_summary"]])]))
    sections.append(Section("Latency distribution", [latency_chart(data)]))
    if data["view"] == "technical":
        series = [
            svg.Series(
                t["engine"],
                [(float(p["batch_size"]), float(p["throughput_ips"] or 0.0)) for p in t["points"]],
            )
            for t in data["throughput"]
        ]
        sections.append(
            Section(
                "Throughput against batch size",
                [Chart(svg.line_chart(series, "Throughput per engine", "batch size", "images/s"),
                       "throughput (images/s) against batch size per engine")],
            )
        )  # fmt: skip
        sections.append(
            Section(
                "Constraint check",
                [Table(["engine", "status", "reason"], [[c["engine"], c["status"], c["reason"]] for c in data["constraint_check"]])],
            )
        )  # fmt: skip
        stab = [
            [s["engine"], str(s["batch_size"]), _fixed(s["cv"], 3), _fixed(s["unstable"], 0)]
            for s in data["stability"]
        ]
        sections.append(
            Section("Stability", [Table(["engine", "batch", "cv", "unstable"], stab, empty="Every measurement was stable (cv ≤ 0.1).")])
        )  # fmt: skip
        sections.append(Section("Engines", [Table(*_engine_rows(data))]))
        headers, rows = _technical_rows(data)
        sections.append(
            Section("Measurements (engine × batch)", [Table(headers, rows, empty="No measurements.")])
        )
        sections.append(Section("Method", [Para(data["method"])]))
        machine = [[k, json.dumps(v, sort_keys=True)] for k, v in sorted(data["machine"].items())]
        if data["device"]:
            machine.insert(0, ["job device", data["device"]])
        sections.append(Section("Machine", [Table(["key", "value"], machine)]))
        sections.append(
            Section("Configuration", [Pre(json.dumps(data["config"], sort_keys=True, indent=2), "json")])
        )
    return Doc(title=f"Benchmark report — job {data['job_id']}", facts=facts, sections=sections)
