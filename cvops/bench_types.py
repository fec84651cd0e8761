"""Benchmark configuration, result types and constraints: pure data (no numpy, torch or ray).

The benchmark runner (:mod:`cvops.bench`) fills these; engine selection (:mod:`cvops.selection`), the
job API and the report read them.  Keeping them here is what lets the cores import them without the
runner, and what keeps ``bench`` and ``selection`` from importing each other.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from cvops.errors import ValidationFailed
from cvops.ml.spec import ENGINE_NAMES

Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[str, ...] = ("latency", "throughput")


class Constraints(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every bound is optional; ``None`` means unconstrained."""

    max_p50_ms: float | None = None
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    min_throughput: float | None = None  # images/s
    max_memory_mb: float | None = None
    min_top1_agreement: float | None = None  # 0..1

    def to_dict(self) -> dict[str, float]:
        """The set bounds only (the shape of ``EngineSelected.constraints``)."""
        return {k: float(v) for k, v in msgspec.structs.asdict(self).items() if v is not None}

    def validate(self) -> None:
        for key, value in msgspec.structs.asdict(self).items():
            if value is None:
                continue
            if not math.isfinite(value) or value < 0:
                raise ValidationFailed(f"constraint {key} must be a finite number >= 0, got {value}")
        if self.min_top1_agreement is not None and self.min_top1_agreement > 1:
            raise ValidationFailed(
                f"min_top1_agreement is a fraction in [0, 1], got {self.min_top1_agreement}"
            )


class LatencyStats(msgspec.Struct, frozen=True, kw_only=True):
    samples: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float  # population standard deviation
    cv: float  # std / mean
    unstable: bool  # cv > 0.1


class Agreement(msgspec.Struct, frozen=True, kw_only=True):
    reference: str
    samples: int
    max_abs_diff: float | None  # None when shapes differ or outputs are not finite (see note)
    top1_agreement: float  # fraction of samples whose argmax matches the reference
    note: str = ""


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int
    warmup: int
    iterations: int  # timed iterations actually run
    latency: LatencyStats
    throughput_ips: float  # images per second = batch / mean latency
    cpu_percent: float
    peak_rss_mb: float
    memory_mb: float  # footprint estimate, see module docstring
    gpu_util_percent: float | None = None
    gpu_memory_mb: float | None = None  # NVML device memory in use (peak)
    truncated: bool = False  # stopped early by max_seconds_per_engine or should_stop


class SkippedBatch(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int
    reason: str


class EngineResult(msgspec.Struct, frozen=True, kw_only=True):
    engine: str
    available: bool
    reason: str = ""
    device: str = "cpu"
    build_time_s: float | None = None
    batches: list[BatchResult] = []
    skipped_batches: list[SkippedBatch] = []
    agreement: Agreement | None = None


class BenchmarkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    engines: list[str] = msgspec.field(default_factory=lambda: list(ENGINE_NAMES))
    batch_sizes: list[int] = msgspec.field(default_factory=lambda: [1, 8])
    warmup: int = 10
    iterations: int = 50
    seed: int = 0
    max_seconds_per_engine: float | None = 120.0
    threads: int | None = None
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    objective: str = "latency"
    agreement_samples: int = 4

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkConfig:
        """Decode a job spec (JSON builtins) and validate it; bad input → ValidationFailed."""
        try:
            cfg = msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ValidationFailed(f"bad benchmark config: {exc}") from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.engines:
            raise ValidationFailed("engines must not be empty")
        unknown = [e for e in self.engines if e not in ENGINE_NAMES]
        if unknown:
            raise ValidationFailed(f"unknown engines {unknown}", {"known": list(ENGINE_NAMES)})
        if len(set(self.engines)) != len(self.engines):
            raise ValidationFailed("engines contains duplicates")
        if not self.batch_sizes or any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise ValidationFailed(f"batch_sizes must be 1..4096, got {self.batch_sizes}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValidationFailed("batch_sizes contains duplicates")
        if not 0 <= self.warmup <= 100_000:
            raise ValidationFailed(f"warmup must be 0..100000, got {self.warmup}")
        if not 1 <= self.iterations <= 1_000_000:
            raise ValidationFailed(f"iterations must be 1..1000000, got {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise ValidationFailed(f"threads must be >= 1, got {self.threads}")
        if self.max_seconds_per_engine is not None and not self.max_seconds_per_engine > 0:
            raise ValidationFailed("max_seconds_per_engine must be > 0")
        if self.objective not in OBJECTIVES:
            raise ValidationFailed(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if not 1 <= self.agreement_samples <= 1000:
            raise ValidationFailed("agreement_samples must be 1..1000")
        self.constraints.validate()


class BenchmarkResult(msgspec.Struct, frozen=True, kw_only=True):
    results: list[EngineResult]  # one per configured engine, in config order
    machine: dict[str, Any]
    config: BenchmarkConfig
    input_shape: list[int]  # C, H, W
    reference_engine: str
    stopped: bool = False  # should_stop() ended the run early

    def event_results(self) -> list[dict[str, Any]]:
        """``BenchmarkMeasured.results``: one builtins dict per engine."""
        return [msgspec.to_builtins(r) for r in self.results]
