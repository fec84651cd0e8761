"""Deterministic benchmark reports: same events in → same bytes out.

:func:`build_report` turns a job record, a ``BenchmarkMeasured`` and an ``EngineSelected`` (both as
builtins, e.g. ``msgspec.to_builtins(event)``) into JSON, Markdown or a self-contained HTML page (inline
CSS and an inline SVG bar chart; no JavaScript, no external assets).  Nothing depends on the clock, the
locale or dict order: keys are sorted, floats are rounded to fixed places before formatting.

Views: ``simple`` — the chosen engine, its p95 and throughput, one sentence on why, and one sentence
per other engine (rejected with the violated constraint, or eligible but beaten); ``technical`` —
additionally every figure of every engine × batch size, the agreement with the reference, the machine
and the job's configuration.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

import msgspec

from cvops.bench_types import BatchResult, EngineResult
from cvops.errors import ValidationFailed
from cvops.selection import fmt_num

VIEWS = ("simple", "technical")
FORMATS = ("json", "md", "html")

# (key, header, decimals) of a batch row in the technical view
_BATCH_COLUMNS: tuple[tuple[str, str, int], ...] = (
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


def _round(value: Any, places: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    if not math.isfinite(value):
        return None
    rounded = round(value, places)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _fixed(value: Any, places: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return "–"
    text = f"{v:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _jsonable(obj: Any) -> Any:
    """Builtins with every float rounded to 6 places (non-finite → None); keys as strings."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _round(obj, 6)
    return obj


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
    places = {key: p for key, _, p in _BATCH_COLUMNS}
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
        }
    data["latency_chart"] = _chart_data(results, chosen.batch_size if chosen else None)
    if view == "technical":
        data["machine"] = _jsonable(dict(measured.get("machine") or {}))
        data["config"] = _jsonable(dict(job.get("spec") or {}))
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


def build_report(
    job: Mapping[str, Any],
    measured: Mapping[str, Any],
    selection: Mapping[str, Any],
    view: str = "simple",
    fmt: str = "json",
) -> bytes:
    """The report in ``fmt`` (json | md | html) for ``view`` (simple | technical), as UTF-8 bytes."""
    if fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    data = report_data(job, measured, selection, view)
    if fmt == "json":
        text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    elif fmt == "md":
        text = _markdown(data)
    else:
        text = _html(data)
    return text.encode("utf-8")


# ------------------------------------------------------------------------------------------ markdown


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def _constraints_text(constraints: Mapping[str, Any]) -> str:
    if not constraints:
        return "none"
    return ", ".join(f"{k} {fmt_num(float(v))}" for k, v in sorted(constraints.items()))


def _technical_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["engine"] + [h for _, h, _ in _BATCH_COLUMNS] + ["unstable"]
    rows: list[list[str]] = []
    for e in data["engines"]:
        for b in e["batches"]:
            rows.append(
                [e["engine"]] + [_fixed(b[k], p) for k, _, p in _BATCH_COLUMNS] + [_fixed(b["unstable"], 0)]
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


def _markdown(data: dict[str, Any]) -> str:
    lines = [f"# Benchmark report — job {data['job_id']}", ""]
    lines += [f"- Model: `{data['model_id']}`", f"- Objective: {data['objective']}"]
    lines += [f"- Constraints: {_constraints_text(data['constraints'])}", ""]
    sel = data["selected"]
    lines.append("## Selected engine")
    lines.append("")
    if sel:
        lines += _md_table(
            ["engine", "batch", "p50 ms", "p95 ms", "images/s"],
            [
                [
                    sel["engine"],
                    str(sel["batch_size"]),
                    _fixed(sel["p50_ms"], 3),
                    _fixed(sel["p95_ms"], 3),
                    _fixed(sel["throughput_ips"], 1),
                ]
            ],
        )
        lines.append("")
    lines += [data["summary"], ""]
    if data["engines_summary"]:
        lines += ["## Other engines", ""]
        lines += [f"- {o['sentence']}" for o in data["engines_summary"]]
        lines.append("")
    if data["view"] == "technical":
        lines += ["## Engines", ""]
        lines += _md_table(*_engine_rows(data))
        lines += ["", "## Measurements (engine × batch)", ""]
        headers, rows = _technical_rows(data)
        lines += _md_table(headers, rows) if rows else ["No measurements."]
        lines += ["", "## Machine", ""]
        lines += [
            f"- {k}: {_md_cell(json.dumps(v, sort_keys=True))}" for k, v in sorted(data["machine"].items())
        ]
        lines += [
            "",
            "## Configuration",
            "",
            "```json",
            json.dumps(data["config"], sort_keys=True, indent=2),
            "```",
        ]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1b1f24;padding:0 1rem;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
.summary{font-size:1.05rem;background:#eef6ee;border-left:4px solid #2da44e;padding:.5rem 1rem}
.none{background:#fff4e5;border-left-color:#d4a72c}
ul.others li{margin:.2rem 0}code,pre{background:#f6f8fa;padding:.1rem .3rem}pre{padding:.75rem;overflow:auto}
svg text{font-family:inherit;font-size:12px}
""".strip()


def _h(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(rows: list[dict[str, Any]]) -> str:
    """Inline SVG: horizontal p50 and p95 bars per engine."""
    if not rows:
        return "<p>No latency measurements to chart.</p>"
    label_w, bar_w, row_h, bar_h = 190.0, 440.0, 34.0, 12.0
    top = 24.0
    width = label_w + bar_w + 90.0
    height = top + row_h * len(rows) + 8.0
    peak = max(max(b["p95_ms"] or 0.0, b["p50_ms"] or 0.0) for b in rows) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="p50 and p95 latency per engine">',
        f'<rect x="{label_w:.1f}" y="4" width="10" height="10" fill="#0969da"/>'
        f'<text x="{label_w + 14:.1f}" y="13">p50</text>'
        f'<rect x="{label_w + 50:.1f}" y="4" width="10" height="10" fill="#9ecbff"/>'
        f'<text x="{label_w + 64:.1f}" y="13">p95 (ms)</text>',
    ]
    for i, b in enumerate(rows):
        y = top + i * row_h
        label = f"{b['engine']} (batch {b['batch_size']})"
        parts.append(f'<text x="0" y="{y + bar_h + 4:.1f}">{_h(label)}</text>')
        for j, (key, colour) in enumerate((("p50_ms", "#0969da"), ("p95_ms", "#9ecbff"))):
            value = float(b[key] or 0.0)
            w = max(1.0, bar_w * value / peak)
            yy = y + j * (bar_h + 2)
            parts.append(
                f'<rect x="{label_w:.1f}" y="{yy:.1f}" width="{w:.1f}" height="{bar_h:.1f}" fill="{colour}"/>'
                f'<text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 2:.1f}">{_fixed(value, 3)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _html(data: dict[str, Any]) -> str:
    title = f"Benchmark report — job {data['job_id']}"
    body: list[str] = [f"<h1>{_h(title)}</h1>"]
    body.append(
        "<p>"
        f"Model <code>{_h(data['model_id'])}</code> · objective <b>{_h(data['objective'])}</b> · "
        f"constraints: {_h(_constraints_text(data['constraints']))}</p>"
    )
    sel = data["selected"]
    body.append("<h2>Selected engine</h2>")
    if sel:
        body.append(
            _html_table(
                ["engine", "batch", "p50 ms", "p95 ms", "images/s"],
                [
                    [
                        sel["engine"],
                        str(sel["batch_size"]),
                        _fixed(sel["p50_ms"], 3),
                        _fixed(sel["p95_ms"], 3),
                        _fixed(sel["throughput_ips"], 1),
                    ]
                ],
            )
        )
    css_class = "summary" if sel else "summary none"
    body.append(f'<p class="{css_class}">{_h(data["summary"])}</p>')
    if data["engines_summary"]:
        body.append('<h2>Other engines</h2><ul class="others">')
        body += [f"<li>{_h(o['sentence'])}</li>" for o in data["engines_summary"]]
        body.append("</ul>")
    body.append("<h2>Latency (p50 and p95)</h2>")
    body.append(_chart(data["latency_chart"]))
    if data["view"] == "technical":
        body.append("<h2>Engines</h2>")
        body.append(_html_table(*_engine_rows(data)))
        body.append("<h2>Measurements (engine × batch)</h2>")
        headers, rows = _technical_rows(data)
        body.append(_html_table(headers, rows) if rows else "<p>No measurements.</p>")
        body.append("<h2>Machine</h2>")
        body.append(
            _html_table(
                ["key", "value"],
                [[k, json.dumps(v, sort_keys=True)] for k, v in sorted(data["machine"].items())],
            )
        )
        body.append("<h2>Configuration</h2>")
        body.append(f"<pre>{_h(json.dumps(data['config'], sort_keys=True, indent=2))}</pre>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_h(title)}</title><style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
