"""Reports: byte-identical on repeat, figures present in every format, bad input refused."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from cvops.bench import Agreement, BatchResult, EngineResult, LatencyStats, SkippedBatch
from cvops.errors import ValidationFailed
from cvops.events.schema import BenchmarkMeasured, EngineSelected
from cvops.report import build_report, report_data
from cvops.selection import Constraints, select


def stats(p50: float, p95: float) -> LatencyStats:
    return LatencyStats(
        samples=50, min_ms=p50 * 0.9, mean_ms=p50 * 1.05, p50_ms=p50, p90_ms=p95 * 0.95, p95_ms=p95,
        p99_ms=p95 * 1.1, max_ms=p95 * 1.3, std_ms=p50 * 0.05, cv=0.05, unstable=False,
    )  # fmt: skip


def batch(b: int, p50: float, p95: float, gpu: bool = False) -> BatchResult:
    return BatchResult(
        batch_size=b, warmup=10, iterations=50, latency=stats(p50, p95), throughput_ips=b * 1000 / (p50 * 1.05),
        cpu_percent=97.3, peak_rss_mb=812.25, memory_mb=41.5,
        gpu_util_percent=88.0 if gpu else None, gpu_memory_mb=1234.5 if gpu else None,
    )  # fmt: skip


def agreement(diff: float) -> Agreement:
    return Agreement(reference="onnxruntime-cpu", samples=4, max_abs_diff=diff, top1_agreement=1.0)


RESULTS = [
    EngineResult(engine="onnxruntime-cpu", available=True, build_time_s=0.25, agreement=agreement(0.0),
                 batches=[batch(1, 3.1, 3.9), batch(8, 19.87654, 23.5)]),
    EngineResult(engine="torch-cpu", available=True, build_time_s=0.5, agreement=agreement(2.5e-7),
                 batches=[batch(1, 4.2, 5.0), batch(8, 25.0, 29.0)]),
    EngineResult(engine="onnxruntime-cpu-int8", available=True, build_time_s=1.5, agreement=agreement(0.01),
                 batches=[batch(1, 2.0, 12.3)], skipped_batches=[SkippedBatch(batch_size=8, reason="time budget of 1 s per engine spent")]),
    EngineResult(engine="torch-cuda", available=False, reason="no CUDA device", device="cuda"),
    EngineResult(engine="onnxruntime-cuda", available=True, device="cuda", batches=[batch(1, 1.5, 1.9, gpu=True)],
                 agreement=agreement(0.002)),
]  # fmt: skip
CONSTRAINTS = Constraints(max_p95_ms=10, max_p99_ms=100)


def inputs(
    results: list[EngineResult] = RESULTS, c: Constraints = CONSTRAINTS, objective: str = "latency"
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    sel = select(results, c, objective)
    measured = BenchmarkMeasured(job_id="job-1", model_id="model-1", results=[msgspec.to_builtins(r) for r in results],
                                 machine={"platform": "Linux-x", "cpu_count_logical": 2, "onnxruntime": "1.32.0"})  # fmt: skip
    selected = EngineSelected(job_id="job-1", model_id="model-1", selected=sel.selected, selected_batch=sel.selected_batch,
                              eligible=sel.eligible, rejected=sel.rejected, objective=objective, constraints=c.to_dict())  # fmt: skip
    job = {
        "job_id": "job-1",
        "kind": "benchmark",
        "spec": {"iterations": 50, "warmup": 10, "batch_sizes": [1, 8]},
    }
    return job, msgspec.to_builtins(measured), msgspec.to_builtins(selected)


@pytest.mark.parametrize("view", ["simple", "technical"])
@pytest.mark.parametrize("fmt", ["json", "md", "html"])
def test_same_input_same_bytes(view: str, fmt: str) -> None:
    job, measured, selection = inputs()
    first = build_report(job, measured, selection, view, fmt)
    # rebuilt from freshly decoded copies with shuffled dict order: still the same bytes
    job2, measured2, selection2 = (json.loads(json.dumps(x)) for x in inputs())
    measured2 = dict(reversed(list(measured2.items())))
    selection2["rejected"] = dict(reversed(list(selection2["rejected"].items())))
    assert build_report(job2, measured2, selection2, view, fmt) == first
    assert first.endswith(b"\n") and b"job-1" in first


def test_simple_view_explains_the_choice() -> None:
    data = report_data(*inputs(), "simple")
    assert data["selected"] == {"engine": "onnxruntime-cuda", "batch_size": 1, "p50_ms": 1.5, "p95_ms": 1.9,
                                "throughput_ips": 634.9, "unstable": False}  # fmt: skip
    assert data["summary"] == (
        "onnxruntime-cuda had the lowest median latency (1.5 ms) of the 3 engines that met all constraints."
    )
    sentences = {o["engine"]: o["sentence"] for o in data["engines_summary"]}
    assert (
        sentences["onnxruntime-cpu-int8"] == "onnxruntime-cpu-int8 was rejected: p95 12.3 ms > max_p95_ms 10."
    )
    assert sentences["torch-cuda"] == "torch-cuda cannot run here: no CUDA device."
    assert sentences["torch-cpu"] == "torch-cpu met all constraints but was slower (median 4.2 ms)."
    assert "engines" not in data and "machine" not in data


def test_throughput_and_no_selection_sentences() -> None:
    data = report_data(*inputs(objective="throughput", c=Constraints()), "simple")
    assert data["selected"]["engine"] == "onnxruntime-cuda" and data["selected"]["batch_size"] == 1
    assert data["summary"] == (
        "onnxruntime-cuda had the highest throughput (635 images/s at batch 1) of the 4 available engines."
    )
    sentences = {o["engine"]: o["sentence"] for o in data["engines_summary"]}
    assert sentences["onnxruntime-cpu"] == "onnxruntime-cpu ran but reached only 383 images/s."
    none = report_data(*inputs(c=Constraints(max_p50_ms=0.1)), "simple")
    assert (
        none["selected"] is None and none["summary"] == "No engine met all constraints, so none was selected."
    )
    nothing = report_data(*inputs(results=[RESULTS[3]]), "simple")
    assert nothing["summary"] == "No engine could run on this machine, so none was selected."
    one = report_data(*inputs(results=RESULTS[:1]), "simple")
    assert (
        one["summary"]
        == "onnxruntime-cpu was the only one of the engines that met all constraints (median latency 3.1 ms)."
    )


def test_json_is_sorted_and_rounded() -> None:
    raw = build_report(*inputs(), "technical", "json")
    data = json.loads(raw)
    assert raw.decode() == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    cpu = next(e for e in data["engines"] if e["engine"] == "onnxruntime-cpu")
    assert cpu["batches"][1]["p50_ms"] == 19.877  # 19.87654 at 3 places
    assert cpu["batches"][1]["throughput_ips"] == 383.3
    assert data["machine"]["onnxruntime"] == "1.32.0" and data["config"]["iterations"] == 50
    int8 = next(e for e in data["engines"] if e["engine"] == "onnxruntime-cpu-int8")
    assert int8["skipped_batches"] == [{"batch_size": 8, "reason": "time budget of 1 s per engine spent"}]


def test_markdown_contains_the_figures() -> None:
    md = build_report(*inputs(), "technical", "md").decode()
    assert "| onnxruntime-cpu | 8 | 50 |" in md and "19.877" in md and "23.500" in md
    assert "| onnxruntime-cuda | 1 | 50 |" in md and "1234.5" in md  # GPU memory
    assert "2.50e-07" in md  # torch vs reference agreement
    assert "batch 8 skipped: time budget" in md
    simple = build_report(*inputs(), "simple", "md").decode()
    assert "| onnxruntime-cuda | 1 | 1.500 | 1.900 | 634.9 |" in simple
    assert "19.877" not in simple  # the simple view leaves the per-batch table out


def test_html_is_self_contained_with_chart() -> None:
    page = build_report(*inputs(), "technical", "html").decode()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<svg" in page
    assert not re.search(r"<script|src=|href=|@import|url\(", page)  # no JS, no external assets
    assert page.count('<rect class="box"') == 4  # a latency box (p50–p95) for each of the 4 measured engines
    assert page.count('<polyline class="line"') == 2  # throughput against batch size: 2 engines ran 2 batches
    assert "19.877" in page and "634.9" in page
    simple = build_report(*inputs(), "simple", "html").decode()
    assert "<svg" in simple and "onnxruntime-cuda had the lowest median latency" in simple


def test_html_escapes_reasons() -> None:
    evil = [EngineResult(engine="torch-cuda", available=False, reason="<script>alert(1)</script>")]
    page = build_report(*inputs(results=evil), "technical", "html").decode()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_bad_view_format_and_input() -> None:
    job, measured, selection = inputs()
    with pytest.raises(ValidationFailed):
        build_report(job, measured, selection, "fancy", "md")
    with pytest.raises(ValidationFailed):
        build_report(job, measured, selection, "simple", "pdf")
    with pytest.raises(ValidationFailed):
        build_report(job, {"results": "nope"}, selection, "simple", "json")
    with pytest.raises(ValidationFailed):
        build_report(job, {"results": [{"engine": 1}]}, selection, "simple", "json")
