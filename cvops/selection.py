"""Engine selection: constraints + objective → one engine, as a pure, order-independent function.

Rules
- An unavailable engine is rejected with ``"unavailable: <reason>"``.
- ``objective="latency"``: constraints are checked at the *latency batch* — the smallest batch size any
  available engine measured (1 by default).  Among engines meeting every constraint there, the lowest
  p50 wins; ties go to the lower p95, then to the engine name.
- ``objective="throughput"``: an engine is eligible if at least one measured batch size meets every
  constraint; its best such batch is the one with the highest images/s (ties: the smaller batch).
  The highest images/s wins; ties go to the engine name.
- ``max_memory_mb`` is compared with a batch's ``memory_mb`` (see :mod:`cvops.bench`);
  ``min_top1_agreement`` with the engine's agreement with the reference engine.

Results may be given as :class:`cvops.bench_types.EngineResult` structs or as their builtins (dicts), so the
selection can be recomputed from a ``BenchmarkMeasured`` event.  Shuffling the results never changes
the answer: every ordering used is a total order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from cvops.bench_types import OBJECTIVES, BatchResult, Constraints, EngineResult
from cvops.errors import ValidationFailed


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    selected: str | None
    selected_batch: int | None
    eligible: list[str]  # best first
    rejected: dict[str, str]  # engine -> violated constraint(s), sorted by engine
    objective: str


def fmt_num(value: float) -> str:
    """Compact, deterministic number text, 3 significant digits: 12.345 → "12.3", 10.0 → "10",
    0.01734 → "0.0173", 1234.5 → "1234"."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 999.5:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}"
    return "0" if text == "-0" else text


def violations(batch: BatchResult, agreement_top1: float | None, c: Constraints) -> list[str]:
    """Every constraint ``batch`` breaks, as text such as ``"p95 12.3 ms > max_p95_ms 10"``."""
    out: list[str] = []
    lat = batch.latency
    checks: list[tuple[str, float | None, float, str]] = [
        ("p50", c.max_p50_ms, lat.p50_ms, "max_p50_ms"),
        ("p95", c.max_p95_ms, lat.p95_ms, "max_p95_ms"),
        ("p99", c.max_p99_ms, lat.p99_ms, "max_p99_ms"),
    ]
    for label, bound, value, key in checks:
        if bound is not None and value > bound:
            out.append(f"{label} {fmt_num(value)} ms > {key} {fmt_num(bound)}")
    if c.min_throughput is not None and batch.throughput_ips < c.min_throughput:
        out.append(
            f"throughput {fmt_num(batch.throughput_ips)} images/s < min_throughput {fmt_num(c.min_throughput)}"
        )
    if c.max_memory_mb is not None and batch.memory_mb > c.max_memory_mb:
        out.append(f"memory {fmt_num(batch.memory_mb)} MB > max_memory_mb {fmt_num(c.max_memory_mb)}")
    if c.min_top1_agreement is not None:
        if agreement_top1 is None:
            out.append("top-1 agreement not measured (min_top1_agreement set)")
        elif agreement_top1 < c.min_top1_agreement:
            out.append(
                f"top-1 agreement {fmt_num(agreement_top1)} < min_top1_agreement {fmt_num(c.min_top1_agreement)}"
            )
    return out


def _as_results(results: Sequence[EngineResult | Mapping[str, Any]]) -> list[EngineResult]:
    out: list[EngineResult] = []
    for r in results:
        if isinstance(r, EngineResult):
            out.append(r)
        else:
            try:
                out.append(msgspec.convert(r, EngineResult))
            except msgspec.ValidationError as exc:
                raise ValidationFailed(f"not a benchmark engine result: {exc}") from exc
    names = [r.engine for r in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationFailed(f"duplicate engine results: {dupes}")
    return out


def select(
    results: Sequence[EngineResult | Mapping[str, Any]],
    constraints: Constraints | Mapping[str, Any] | None = None,
    objective: str = "latency",
) -> Selection:
    """Pick the engine (and batch size) that best meets ``objective`` within ``constraints``."""
    if objective not in OBJECTIVES:
        raise ValidationFailed(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if constraints is None:
        cons = Constraints()
    elif isinstance(constraints, Constraints):
        cons = constraints
    else:
        try:
            cons = msgspec.convert(dict(constraints), Constraints)
        except msgspec.ValidationError as exc:
            raise ValidationFailed(f"bad constraints: {exc}") from exc
    cons.validate()
    engines = _as_results(results)

    rejected: dict[str, str] = {}
    measured: list[EngineResult] = []
    for r in engines:
        if not r.available:
            rejected[r.engine] = f"unavailable: {r.reason}" if r.reason else "unavailable"
        elif not r.batches:
            rejected[r.engine] = "no measurements"
        else:
            measured.append(r)

    # (engine, batch) candidates with their sort key
    ranked: list[tuple[tuple[Any, ...], str, int]] = []
    if objective == "latency":
        lat_batch = min((b.batch_size for r in measured for b in r.batches), default=1)
        for r in measured:
            batch = next((b for b in r.batches if b.batch_size == lat_batch), None)
            if batch is None:
                rejected[r.engine] = f"no measurement at batch {lat_batch}"
                continue
            broken = violations(batch, _top1(r), cons)
            if broken:
                rejected[r.engine] = "; ".join(broken)
                continue
            ranked.append(((batch.latency.p50_ms, batch.latency.p95_ms, r.engine), r.engine, lat_batch))
    else:
        for r in measured:
            ok = [b for b in r.batches if not violations(b, _top1(r), cons)]
            if not ok:
                best = min(r.batches, key=lambda b: (-b.throughput_ips, b.batch_size))
                rejected[r.engine] = f"batch {best.batch_size}: " + "; ".join(
                    violations(best, _top1(r), cons)
                )
                continue
            best = min(ok, key=lambda b: (-b.throughput_ips, b.batch_size))
            ranked.append(((-best.throughput_ips, r.engine), r.engine, best.batch_size))

    ranked.sort(key=lambda t: t[0])
    selected, selected_batch = (ranked[0][1], ranked[0][2]) if ranked else (None, None)
    return Selection(
        selected=selected,
        selected_batch=selected_batch,
        eligible=[name for _, name, _ in ranked],
        rejected=dict(sorted(rejected.items())),
        objective=objective,
    )


def _top1(r: EngineResult) -> float | None:
    return r.agreement.top1_agreement if r.agreement is not None else None
