"""Engine selection: constraints, objectives, rejection text and order independence."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvops.bench import Agreement, BatchResult, EngineResult, latency_stats
from cvops.errors import ValidationFailed
from cvops.selection import Constraints, fmt_num, select


def batch(
    b: int, p50: float, p95: float | None = None, ips: float | None = None, mem: float = 100.0
) -> BatchResult:
    p95 = p50 * 1.2 if p95 is None else p95
    stats = latency_stats([p50] * 10 + [p95] * 2)  # p50 = p50, p95 between
    stats = msgspec.structs.replace(stats, p50_ms=p50, p95_ms=p95, p99_ms=p95)
    return BatchResult(
        batch_size=b,
        warmup=1,
        iterations=12,
        latency=stats,
        throughput_ips=ips if ips is not None else b * 1000 / p50,
        cpu_percent=100.0,
        peak_rss_mb=500.0,
        memory_mb=mem,
    )


def engine(name: str, *batches: BatchResult, top1: float | None = 1.0) -> EngineResult:
    agreement = (
        None
        if top1 is None
        else Agreement(reference="onnxruntime-cpu", samples=4, max_abs_diff=0.0, top1_agreement=top1)
    )
    return EngineResult(engine=name, available=True, batches=list(batches), agreement=agreement)


def unavailable(name: str, reason: str) -> EngineResult:
    return EngineResult(engine=name, available=False, reason=reason)


RESULTS = [
    engine("onnxruntime-cpu", batch(1, 3.1, 4.0), batch(8, 20.0, ips=400.0)),
    engine("torch-cpu", batch(1, 5.0, 6.0), batch(8, 15.0, ips=533.0)),
    engine("onnxruntime-cpu-int8", batch(1, 2.0, 12.3), batch(8, 12.0, ips=666.0), top1=0.5),
    unavailable("onnxruntime-cuda", "onnxruntime-gpu not installed"),
]


def test_latency_picks_lowest_p50() -> None:
    sel = select(RESULTS, None, "latency")
    assert sel.selected == "onnxruntime-cpu-int8" and sel.selected_batch == 1
    assert sel.eligible == ["onnxruntime-cpu-int8", "onnxruntime-cpu", "torch-cpu"]
    assert sel.rejected == {"onnxruntime-cuda": "unavailable: onnxruntime-gpu not installed"}


def test_constraint_rejection_text() -> None:
    sel = select(RESULTS, Constraints(max_p95_ms=10), "latency")
    assert sel.selected == "onnxruntime-cpu"
    assert sel.rejected["onnxruntime-cpu-int8"] == "p95 12.3 ms > max_p95_ms 10"
    sel = select(RESULTS, {"min_top1_agreement": 0.9, "max_p50_ms": 4}, "latency")
    assert sel.selected == "onnxruntime-cpu"
    assert sel.rejected["onnxruntime-cpu-int8"] == "top-1 agreement 0.5 < min_top1_agreement 0.9"
    assert sel.rejected["torch-cpu"] == "p50 5 ms > max_p50_ms 4"


def test_throughput_objective_picks_best_batch() -> None:
    sel = select(RESULTS, None, "throughput")
    assert (sel.selected, sel.selected_batch) == ("onnxruntime-cpu-int8", 8)
    sel = select(RESULTS, Constraints(max_p95_ms=19), "throughput")
    # int8 batch 8 (p95 14.4) fits; cpu batch 8 (p95 24) does not but batch 1 does
    assert (sel.selected, sel.selected_batch) == ("onnxruntime-cpu-int8", 8)
    assert sel.eligible == ["onnxruntime-cpu-int8", "torch-cpu", "onnxruntime-cpu"]
    sel = select(RESULTS, Constraints(min_throughput=10_000), "throughput")
    assert sel.selected is None and sel.eligible == []
    assert sel.rejected["torch-cpu"] == "batch 8: throughput 533 images/s < min_throughput 10000"


def test_memory_and_missing_agreement() -> None:
    rs = [engine("a", batch(1, 1.0, mem=900.0)), engine("b", batch(1, 2.0, mem=100.0), top1=None)]
    sel = select(rs, Constraints(max_memory_mb=500), "latency")
    assert sel.selected == "b" and sel.rejected == {"a": "memory 900 MB > max_memory_mb 500"}
    sel = select(rs, Constraints(min_top1_agreement=0.9), "latency")
    assert sel.selected == "a" and "not measured" in sel.rejected["b"]


def test_ties_break_by_p95_then_name() -> None:
    rs = [
        engine("zeta", batch(1, 2.0, 3.0)),
        engine("alpha", batch(1, 2.0, 3.0)),
        engine("mid", batch(1, 2.0, 2.5)),
    ]
    assert select(rs).selected == "mid"
    assert select(rs).eligible == ["mid", "alpha", "zeta"]
    rs2 = [engine("zeta", batch(8, 2.0, ips=100.0)), engine("alpha", batch(8, 9.0, ips=100.0))]
    assert select(rs2, None, "throughput").selected == "alpha"


def test_latency_uses_smallest_measured_batch() -> None:
    rs = [engine("a", batch(8, 5.0)), engine("b", batch(4, 9.0), batch(8, 4.0))]
    sel = select(rs)
    assert (sel.selected, sel.selected_batch) == ("b", 4)
    assert sel.rejected == {"a": "no measurement at batch 4"}


def test_nothing_available() -> None:
    sel = select([unavailable("x", "")] + [EngineResult(engine="y", available=True)])
    assert sel.selected is None and sel.selected_batch is None
    assert sel.rejected == {"x": "unavailable", "y": "no measurements"}


def test_accepts_builtins_and_rejects_bad_input() -> None:
    as_dicts = [msgspec.to_builtins(r) for r in RESULTS]
    assert select(as_dicts, {"max_p95_ms": 10}) == select(RESULTS, Constraints(max_p95_ms=10))
    with pytest.raises(ValidationFailed):
        select(RESULTS, None, "fastest")
    with pytest.raises(ValidationFailed):
        select([{"engine": 3}])
    with pytest.raises(ValidationFailed):
        select(RESULTS + RESULTS[:1])
    with pytest.raises(ValidationFailed):
        select(RESULTS, {"max_p95": 1})
    with pytest.raises(ValidationFailed):
        select(RESULTS, Constraints(min_throughput=float("nan")))


def test_constraints_to_dict() -> None:
    assert Constraints(max_p95_ms=10, min_top1_agreement=0.99).to_dict() == {
        "max_p95_ms": 10.0,
        "min_top1_agreement": 0.99,
    }
    assert fmt_num(12.34) == "12.3" and fmt_num(10.0) == "10"


NAMES = [
    "onnxruntime-cpu",
    "onnxruntime-cpu-int8",
    "torch-cpu",
    "torch-cuda",
    "tensorrt-fp16",
    "onnxruntime-cuda",
]
latencies = st.sampled_from([1.0, 2.0, 2.5, 3.0, 7.5])  # few values → many ties


@st.composite
def result_sets(draw: st.DrawFn) -> list[EngineResult]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    out: list[EngineResult] = []
    for name in names:
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(unavailable(name, "no device"))
            continue
        sizes = draw(st.lists(st.sampled_from([1, 8, 32]), min_size=1, max_size=3, unique=True))
        bs = [
            batch(b, draw(latencies), draw(latencies) * 2, ips=draw(st.sampled_from([100.0, 200.0, 400.0])))
            for b in sizes
        ]
        out.append(engine(name, *bs, top1=draw(st.sampled_from([None, 0.5, 1.0]))))
    return out


constraint_sets = st.builds(
    Constraints,
    max_p50_ms=st.none() | st.sampled_from([2.0, 3.0]),
    max_p95_ms=st.none() | st.sampled_from([5.0, 10.0]),
    min_throughput=st.none() | st.sampled_from([150.0, 300.0]),
    min_top1_agreement=st.none() | st.just(0.9),
)


@settings(max_examples=150, deadline=None)
@given(result_sets(), constraint_sets, st.sampled_from(["latency", "throughput"]), st.randoms())
def test_selection_ignores_result_order(
    rs: list[EngineResult], c: Constraints, objective: str, rnd: object
) -> None:
    base = select(rs, c, objective)
    shuffled = list(rs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert select(shuffled, c, objective) == base
    assert set(base.eligible) | set(base.rejected) == {r.engine for r in rs}
    assert not set(base.eligible) & set(base.rejected)
    assert (base.selected is None) == (not base.eligible)
    if base.selected is not None:
        assert base.selected == base.eligible[0]
