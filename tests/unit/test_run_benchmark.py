"""run_benchmark end to end on a tiny CNN: every engine gets a result, agreement, progress, stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from cvops.bench import BenchmarkConfig, BenchmarkResult, run_benchmark
from cvops.errors import ValidationFailed
from cvops.events.schema import BenchmarkMeasured, decode_event, encode_event
from cvops.ml import engines as engines_mod
from cvops.ml.engines import ENGINE_NAMES, NO_TORCH_SOURCE
from cvops.selection import select
from tests.unit.tiny_models import export_tiny, make_tiny


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tinyrun") / "tiny.onnx")


CFG = BenchmarkConfig(warmup=2, iterations=5, batch_sizes=[1, 4], threads=1)


@pytest.fixture(scope="module")
def result(tiny_onnx: Path) -> tuple[BenchmarkResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    res = run_benchmark(
        tiny_onnx, CFG, input_shape=[1, 3, 16, 16], torch_module_factory=make_tiny, progress=events.append
    )
    return res, events


def test_every_engine_has_a_result(result: tuple[BenchmarkResult, list[dict[str, Any]]]) -> None:
    res, _ = result
    assert [r.engine for r in res.results] == list(ENGINE_NAMES)
    by = {r.engine: r for r in res.results}
    for name in ("onnxruntime-cpu", "onnxruntime-cpu-int8", "torch-cpu"):
        r = by[name]
        assert r.available, r.reason
        assert r.build_time_s is not None and r.build_time_s > 0
        assert [b.batch_size for b in r.batches] == [1, 4]
        for b in r.batches:
            assert b.iterations == 5 and b.warmup == 2 and not b.truncated
            assert 0 < b.latency.min_ms <= b.latency.p50_ms <= b.latency.max_ms
            assert b.throughput_ips == pytest.approx(b.batch_size * 1000 / b.latency.mean_ms)
            assert b.peak_rss_mb > 10 and b.cpu_percent >= 0
    for r in res.results:
        assert r.available or r.reason
    assert res.input_shape == [3, 16, 16] and res.reference_engine == "onnxruntime-cpu" and not res.stopped


def test_agreement(result: tuple[BenchmarkResult, list[dict[str, Any]]]) -> None:
    by = {r.engine: r for r in result[0].results}
    ref = by["onnxruntime-cpu"].agreement
    assert ref is not None and ref.max_abs_diff == 0.0 and ref.top1_agreement == 1.0 and ref.samples == 4
    torch_ag = by["torch-cpu"].agreement
    assert torch_ag is not None and torch_ag.max_abs_diff is not None
    assert torch_ag.max_abs_diff < 1e-4 and torch_ag.top1_agreement == 1.0
    int8 = by["onnxruntime-cpu-int8"].agreement
    assert int8 is not None and int8.max_abs_diff is not None and 0 < int8.max_abs_diff < 0.05


def test_progress_is_reported(result: tuple[BenchmarkResult, list[dict[str, Any]]]) -> None:
    res, events = result
    done = [e for e in events if e["phase"] == "done"]
    ran = {r.engine for r in res.results if r.available}  # the CUDA engines too, on a GPU machine
    assert {"onnxruntime-cpu", "onnxruntime-cpu-int8", "torch-cpu"} <= ran
    assert {(e["engine"], e["batch_size"]) for e in done} == {(n, b) for n in ran for b in (1, 4)}
    assert all(e["iterations_done"] == e["iterations_total"] == 5 for e in done)
    assert events[0]["engine"] == "onnxruntime-cpu" and events[0]["iterations_done"] == 0
    assert len(events) < 8 * len(ran)  # throttled, not one per iteration


def test_results_fit_the_event(result: tuple[BenchmarkResult, list[dict[str, Any]]]) -> None:
    res, _ = result
    ev = BenchmarkMeasured(job_id="j", model_id="m", results=res.event_results(), machine=res.machine)
    back = decode_event("BenchmarkMeasured", encode_event(ev))
    assert back == ev
    assert msgspec.json.decode(msgspec.json.encode(ev))["results"][0]["engine"] == "onnxruntime-cpu"
    sel = select(back.results, CFG.constraints, CFG.objective)  # type: ignore[union-attr]
    assert sel.selected in {"onnxruntime-cpu", "onnxruntime-cpu-int8", "torch-cpu"}


def test_no_torch_source_and_stop(tiny_onnx: Path) -> None:
    cfg = BenchmarkConfig(
        engines=["torch-cpu", "onnxruntime-cpu", "onnxruntime-cpu-int8"],
        warmup=0,
        iterations=3,
        batch_sizes=[1],
    )
    calls = {"n": 0}

    def stop_after_first_engine() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    res = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16], should_stop=stop_after_first_engine)
    by = {r.engine: r for r in res.results}
    assert [r.engine for r in res.results] == cfg.engines  # config order, though the reference ran first
    assert by["torch-cpu"].reason == NO_TORCH_SOURCE and not by["torch-cpu"].available
    assert by["onnxruntime-cpu"].available and by["onnxruntime-cpu"].batches
    assert res.stopped and "stopped" in by["onnxruntime-cpu-int8"].reason


def test_failing_engine_does_not_end_the_benchmark(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_run(self: object, batch: object) -> object:
        raise RuntimeError("kernel fell over")

    monkeypatch.setattr(engines_mod.OrtCpuInt8Engine, "run", broken_run)
    cfg = BenchmarkConfig(
        engines=["onnxruntime-cpu-int8", "onnxruntime-cpu"], warmup=0, iterations=2, batch_sizes=[1]
    )
    res = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16])
    by = {r.engine: r for r in res.results}
    assert (
        not by["onnxruntime-cpu-int8"].available and by["onnxruntime-cpu-int8"].reason == "kernel fell over"
    )
    assert by["onnxruntime-cpu"].available


def test_reference_outside_the_engine_list_and_budget(tiny_onnx: Path) -> None:
    cfg = BenchmarkConfig(
        engines=["torch-cpu"], warmup=1, iterations=100_000, batch_sizes=[1, 2], max_seconds_per_engine=0.3
    )
    res = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16], torch_module_factory=make_tiny)
    (r,) = res.results
    assert (
        r.agreement is not None
        and r.agreement.reference == "onnxruntime-cpu"
        and r.agreement.max_abs_diff is not None
    )
    assert r.batches[0].truncated and r.batches[0].iterations < 100_000
    assert [s.batch_size for s in r.skipped_batches] == [2] and "time budget" in r.skipped_batches[0].reason


def test_gpu_memory_limit_skips_large_batches(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeCuda(engines_mod.OrtCpuEngine):  # a CPU session that says it is a CUDA engine
        name = "torch-cuda"
        device = "cuda"

    monkeypatch.setitem(engines_mod._ENGINES, "torch-cuda", FakeCuda)
    cfg = BenchmarkConfig(
        engines=["torch-cuda", "onnxruntime-cpu"], warmup=0, iterations=2, batch_sizes=[1, 512]
    )
    res = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16], memory_limit_mb=50)
    fake, cpu = res.results
    assert fake.available and [b.batch_size for b in fake.batches] == [1]
    assert (
        fake.skipped_batches[0].batch_size == 512
        and "GPU memory limit 50 MB" in fake.skipped_batches[0].reason
    )
    assert [b.batch_size for b in cpu.batches] == [1, 512]  # the limit is for GPU memory only


def test_seeded_inputs_are_reproducible(tiny_onnx: Path) -> None:
    cfg = BenchmarkConfig(engines=["onnxruntime-cpu-int8"], warmup=0, iterations=1, batch_sizes=[1], seed=7)
    a = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16]).results[0].agreement
    b = run_benchmark(tiny_onnx, cfg, input_shape=[3, 16, 16]).results[0].agreement
    assert a is not None and a == b


def test_bad_arguments(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed):
        run_benchmark(tmp_path / "missing.onnx", CFG, input_shape=[3, 16, 16])
    with pytest.raises(ValidationFailed):
        run_benchmark(tiny_onnx, CFG, input_shape=[16, 16])
    with pytest.raises(ValidationFailed):
        run_benchmark(tiny_onnx, CFG, input_shape=[3, 16, 16], reference_engine="nope")
    with pytest.raises(ValidationFailed):
        run_benchmark(tiny_onnx, BenchmarkConfig(iterations=0), input_shape=[3, 16, 16])


def test_wrong_input_shape_is_an_engine_failure(tiny_onnx: Path) -> None:
    cfg = BenchmarkConfig(engines=["onnxruntime-cpu"], warmup=0, iterations=1, batch_sizes=[1])
    (r,) = run_benchmark(tiny_onnx, cfg, input_shape=[4, 16, 16]).results  # model wants 3 channels
    assert not r.available and r.reason
