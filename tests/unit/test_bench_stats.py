"""Latency statistics, percentiles, output agreement and memory estimates of cvops.bench."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvops.bench import (
    ACTIVATION_FACTOR,
    MIB,
    BenchmarkConfig,
    estimate_memory_mb,
    latency_stats,
    percentile,
    throughput_ips,
)
from cvops.errors import ValidationFailed
from cvops.ml.parity import agreement


def test_stats_of_known_samples() -> None:
    s = latency_stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.min_ms, s.max_ms, s.mean_ms, s.p50_ms, s.samples) == (1.0, 5.0, 3.0, 3.0, 5)
    assert s.p90_ms == pytest.approx(4.6)  # linear interpolation: rank 0.9 * 4 = 3.6
    assert s.p95_ms == pytest.approx(4.8)
    assert s.p99_ms == pytest.approx(4.96)
    assert s.std_ms == pytest.approx(np.std([1, 2, 3, 4, 5]))
    assert s.cv == pytest.approx(s.std_ms / 3.0)
    assert s.unstable  # cv 0.47 > 0.1


def test_stable_samples_are_not_flagged() -> None:
    s = latency_stats([10.0, 10.1, 9.9, 10.05, 9.95])
    assert s.cv < 0.1 and not s.unstable


def test_single_sample() -> None:
    s = latency_stats([2.5])
    assert s.p50_ms == s.p99_ms == s.min_ms == s.max_ms == 2.5
    assert s.std_ms == 0.0 and s.cv == 0.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -2.0], [float("inf")]])
def test_bad_samples_are_rejected(bad: list[float]) -> None:
    with pytest.raises(ValidationFailed):
        latency_stats(bad)


def test_percentile_bounds() -> None:
    with pytest.raises(ValidationFailed):
        percentile([1.0], 101)
    with pytest.raises(ValidationFailed):
        percentile([], 50)


@given(
    st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=60), st.randoms()
)
def test_matches_numpy_and_ignores_order(samples: list[float], rnd: object) -> None:
    s = latency_stats(samples)
    for q, got in ((50, s.p50_ms), (90, s.p90_ms), (95, s.p95_ms), (99, s.p99_ms)):
        assert got == pytest.approx(float(np.percentile(samples, q)), rel=1e-9, abs=1e-9)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    shuffled = list(samples)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert latency_stats(shuffled) == s


def test_throughput() -> None:
    assert throughput_ips(8, 4.0) == pytest.approx(2000.0)
    assert throughput_ips(1, 0.0) == 0.0


def test_memory_estimate_grows_with_batch() -> None:
    one = estimate_memory_mb(10 * MIB, [3, 224, 224], 1)
    assert one == pytest.approx(10 + ACTIVATION_FACTOR * 3 * 224 * 224 * 4 / MIB)
    assert estimate_memory_mb(10 * MIB, [3, 224, 224], 32) > 30 * (one - 10)


def test_compare_outputs() -> None:
    ref = [[np.array([[0.0, 1.0, 0.2]], np.float32)], [np.array([[3.0, 1.0, 0.0]], np.float32)]]
    same = agreement(ref, ref, "onnxruntime-cpu")
    assert same.max_abs_diff == 0.0 and same.top1_agreement == 1.0 and same.samples == 2
    other = [[np.array([[0.0, 1.0, 0.25]], np.float32)], [np.array([[0.0, 1.0, 0.0]], np.float32)]]
    a = agreement(ref, other, "onnxruntime-cpu")
    assert a.max_abs_diff == pytest.approx(3.0) and a.top1_agreement == 0.5
    shape = agreement(ref, [[np.zeros((1, 4), np.float32)]] * 2, "onnxruntime-cpu")
    assert shape.max_abs_diff is None and "shapes differ" in shape.note
    nan = agreement(ref, [[np.full((1, 3), np.nan, np.float32)]] * 2, "x")
    assert nan.max_abs_diff is None and "not finite" in nan.note
    with pytest.raises(ValidationFailed):
        agreement(ref, ref[:1], "x")


def test_config_defaults_and_validation() -> None:
    cfg = BenchmarkConfig()
    assert cfg.batch_sizes == [1, 8] and cfg.warmup == 10 and cfg.iterations == 50 and cfg.seed == 0
    assert len(cfg.engines) == 10 and cfg.objective == "latency"
    cfg2 = BenchmarkConfig.from_dict(
        {"engines": ["onnxruntime-cpu"], "iterations": 5, "constraints": {"max_p95_ms": 10}}
    )
    assert cfg2.constraints.max_p95_ms == 10 and cfg2.iterations == 5
    assert BenchmarkConfig.from_dict(msgspec.to_builtins(cfg2)) == cfg2  # round-trips through JSON builtins
    for bad in (
        {"engines": ["nope"]},
        {"engines": []},
        {"engines": ["torch-cpu", "torch-cpu"]},
        {"batch_sizes": [0]},
        {"batch_sizes": [2, 2]},
        {"iterations": 0},
        {"warmup": -1},
        {"threads": 0},
        {"objective": "cheapest"},
        {"max_seconds_per_engine": 0},
        {"constraints": {"max_p95_ms": -1}},
        {"constraints": {"min_top1_agreement": 1.5}},
        {"constraints": {"max_latency": 3}},
        {"iterations": "many"},
        {"surprise": 1},
    ):
        with pytest.raises(ValidationFailed):
            BenchmarkConfig.from_dict(bad)
