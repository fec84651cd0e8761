"""Benchmark method and statistics: pure functions plus one Ray-free runner.

Method (per engine, see :func:`run_benchmark`):

1. ``available()``; unavailable engines get a result with ``available=False`` and the reason.
2. ``load()`` — the session/engine build time is recorded as ``build_time_s``.
3. Output agreement with the reference engine: ``agreement_samples`` seeded images, one at a time
   (batch 1), max |difference| over every output and top-1 agreement of the first output.
4. Per batch size: ``warmup`` untimed runs, then ``iterations`` runs each timed with
   ``time.perf_counter_ns`` around ``engine.run`` (which synchronises, so GPU time is real).
   Inputs come from ``numpy.random.default_rng`` seeded with ``[seed, 1, batch]``: the same config gives
   the same inputs on every run and in any engine order.
5. Latency statistics (:func:`latency_stats`), throughput ``batch / mean latency``, CPU utilisation
   (process CPU time / wall time over the timed loop, 100 = one core busy; ``time.process_time`` rather
   than psutil's tick-resolution counters, so short loops are measured too), peak RSS (psutil) and, with NVML,
   GPU utilisation and device memory, sampled every 0.1 s by a background thread.

``memory_mb`` (what ``Constraints.max_memory_mb`` is compared with) is the engine's footprint estimate:
for CUDA engines the NVML device-memory peak minus the level before the engine loaded; for CPU engines
(or without NVML) the peak RSS minus the RSS before the engine loaded.

GPU memory limit (``memory_limit_mb``, from ``CVOPS_GPU_MEMORY_MB``): before a batch size is run on a
CUDA engine its memory is estimated by :func:`estimate_memory_mb` — model file size plus
``ACTIVATION_FACTOR`` × the batch's input bytes — and batch sizes over the limit are skipped with the
reason.  It is a deliberately simple upper-bound-ish rule, not a measurement.

An engine that raises while loading or running becomes ``available=False`` with ``reason=str(error)``;
the rest of the benchmark carries on.
"""

from __future__ import annotations

import gc
import logging
import math
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvops.bench_types import (
    Agreement,
    BatchResult,
    BenchmarkConfig,
    BenchmarkResult,
    EngineResult,
    LatencyStats,
    SkippedBatch,
)
from cvops.errors import ValidationFailed
from cvops.ml import parity
from cvops.ml.engines import NO_TORCH_SOURCE, Engine, TorchModuleFactory, get_engine
from cvops.ml.spec import ENGINE_NAMES

log = logging.getLogger(__name__)

__all__ = [
    "Agreement",
    "BatchResult",
    "BenchmarkConfig",
    "BenchmarkResult",
    "EngineResult",
    "LatencyStats",
    "SkippedBatch",
    "estimate_memory_mb",
    "latency_stats",
    "machine_info",
    "percentile",
    "run_benchmark",
    "throughput_ips",
]

MIB = 1024 * 1024
UNSTABLE_CV = 0.1  # like trtexec: coefficient of variation above 10 % flags the run as unstable
ACTIVATION_FACTOR = 64  # activation memory per image ≈ 64 × its input bytes (CNN rule of thumb)
PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress callbacks a second (plus start/end of each batch)
SAMPLE_INTERVAL_S = 0.1


# -------------------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValidationFailed("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValidationFailed(f"percentile q must be in [0, 100], got {q}")
    rank = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Summary of latency samples (ms); deterministic for the same samples in any order."""
    values = sorted(float(v) for v in samples_ms)
    if not values:
        raise ValidationFailed("latency_stats needs at least one sample")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValidationFailed("latency samples must be finite and >= 0")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    cv = std / mean if mean > 0 else 0.0
    return LatencyStats(
        samples=n,
        min_ms=values[0],
        mean_ms=mean,
        p50_ms=percentile(values, 50),
        p90_ms=percentile(values, 90),
        p95_ms=percentile(values, 95),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
        std_ms=std,
        cv=cv,
        unstable=cv > UNSTABLE_CV,
    )


def throughput_ips(batch_size: int, mean_ms: float) -> float:
    return batch_size * 1000.0 / mean_ms if mean_ms > 0 else 0.0


def estimate_memory_mb(model_bytes: int, input_chw: Sequence[int], batch_size: int) -> float:
    """Rough device memory for one batch: weights (file size) + ACTIVATION_FACTOR × input bytes."""
    c, h, w = (int(v) for v in input_chw)
    input_bytes = batch_size * c * h * w * 4
    return (model_bytes + ACTIVATION_FACTOR * input_bytes) / MIB


# ------------------------------------------------------------------------------ resource sampling


class _Nvml:
    """NVML (nvidia-ml-py's ``pynvml``) for one device, or nothing when it is missing."""

    def __init__(self, device_index: int) -> None:
        self.handle: Any = None
        self._mod: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._mod = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as exc:  # noqa: BLE001 - ImportError or any NVMLError: no GPU telemetry
            log.debug("NVML unavailable: %s", exc)
            self.close()

    @property
    def ok(self) -> bool:
        return self.handle is not None

    def sample(self) -> tuple[float, float] | None:
        """(GPU utilisation %, device memory used MB) or None."""
        if self.handle is None:
            return None
        try:
            util = self._mod.nvmlDeviceGetUtilizationRates(self.handle)
            mem = self._mod.nvmlDeviceGetMemoryInfo(self.handle)
            return float(util.gpu), float(mem.used) / MIB
        except Exception as exc:  # noqa: BLE001 - NVMLError: treat as a missed sample
            log.debug("NVML sample failed: %s", exc)
            return None

    def close(self) -> None:
        if self._mod is not None:
            try:
                self._mod.nvmlShutdown()
            except Exception as exc:  # noqa: BLE001 - NVMLError on shutdown is harmless
                log.debug("nvmlShutdown failed: %s", exc)
        self._mod = None
        self.handle = None


class _Sampler:
    """Background thread: peak RSS and (with NVML) GPU util/memory every SAMPLE_INTERVAL_S."""

    def __init__(self, proc: Any, nvml: _Nvml | None) -> None:
        self._proc = proc
        self._nvml = nvml
        self._stop = threading.Event()
        self.peak_rss = 0
        self.gpu_utils: list[float] = []
        self.gpu_mem_peak: float | None = None
        self._thread = threading.Thread(target=self._loop, name="cvops-bench-sampler", daemon=True)

    def _once(self) -> None:
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        if self._nvml is not None:
            s = self._nvml.sample()
            if s is not None:
                self.gpu_utils.append(s[0])
                self.gpu_mem_peak = s[1] if self.gpu_mem_peak is None else max(self.gpu_mem_peak, s[1])

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._once()

    def __enter__(self) -> _Sampler:
        self._once()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._once()


def machine_info(device_index: int = 0) -> dict[str, Any]:
    """What the figures were measured on (no time stamps, so it is stable on one machine)."""
    import psutil

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_mb": round(psutil.virtual_memory().total / MIB),
        "numpy": np.__version__,
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = str(ort.__version__)
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        info["onnxruntime"] = None
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpu"] = str(torch.cuda.get_device_name(device_index))
            info["cuda"] = str(torch.version.cuda)
    except ImportError:
        info["torch"] = None
    return info


# ----------------------------------------------------------------------------------------- runner


class _Progress:
    def __init__(self, callback: Callable[[dict[str, Any]], None] | None, engines_total: int) -> None:
        self._cb = callback
        self.engines_total = engines_total
        self.engine_index = 0
        self._failed = False

    def emit(self, engine: str, batch_size: int, done: int, total: int, phase: str) -> None:
        if self._cb is None:
            return
        try:
            self._cb(
                {
                    "engine": engine,
                    "batch_size": batch_size,
                    "iterations_done": done,
                    "iterations_total": total,
                    "phase": phase,
                    "engine_index": self.engine_index,
                    "engines_total": self.engines_total,
                }
            )
        except Exception:  # noqa: BLE001 - a broken progress sink must not fail the benchmark
            if not self._failed:
                log.exception("benchmark progress callback failed; further failures are not logged")
                self._failed = True


def _chw(input_shape: Sequence[int]) -> list[int]:
    shape = [int(v) for v in input_shape]
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValidationFailed(
            f"input_shape must be CHW or NCHW with positive sizes, got {list(input_shape)}"
        )
    return shape


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _init_cuda_context(device_index: int) -> None:
    """Create the device's CUDA context (through torch, when it can) before memory baselines."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1, device=f"cuda:{device_index}")
            torch.cuda.synchronize(device_index)
    except (ImportError, RuntimeError) as exc:
        log.debug("could not initialise CUDA before the memory baseline: %s", exc)


class _Run:
    """State shared by the engines of one :func:`run_benchmark` call."""

    def __init__(
        self,
        onnx_path: Path,
        config: BenchmarkConfig,
        chw: list[int],
        torch_module_factory: TorchModuleFactory | None,
        reference_engine: str,
        progress: _Progress,
        should_stop: Callable[[], bool] | None,
        device_index: int,
        memory_limit_mb: float | None,
    ) -> None:
        import psutil

        self.onnx_path = onnx_path
        self.config = config
        self.chw = chw
        self.factory = torch_module_factory
        self.reference_engine = reference_engine
        self.progress = progress
        self._should_stop = should_stop
        self.device_index = device_index
        self.memory_limit_mb = memory_limit_mb
        self.model_bytes = onnx_path.stat().st_size
        self.proc = psutil.Process()
        self.nvml = _Nvml(device_index)
        self.stopped = False
        self.ref_outputs: list[list[np.ndarray]] | None = None
        self.agree_inputs = (
            np.random.default_rng([config.seed, 0])
            .standard_normal((config.agreement_samples, *chw))
            .astype(np.float32)
        )

    def stopping(self) -> bool:
        if not self.stopped and self._should_stop is not None and self._should_stop():
            self.stopped = True
        return self.stopped

    def batch_input(self, batch_size: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, 1, batch_size])
        return rng.standard_normal((batch_size, *self.chw)).astype(np.float32)

    def load(self, engine: Engine) -> None:
        engine.load(
            self.onnx_path,
            torch_module_factory=self.factory,
            device_index=self.device_index,
            threads=self.config.threads,
            max_batch=max(self.config.batch_sizes),
            input_shape=self.chw,
            batch_sizes=sorted({1, *self.config.batch_sizes}),  # 1: the agreement runs
        )

    def agreement_outputs(self, engine: Engine) -> list[list[np.ndarray]]:
        return [engine.run(self.agree_inputs[i : i + 1]) for i in range(len(self.agree_inputs))]

    def unusable(self, engine: Engine) -> str:
        """Why ``engine`` cannot run for this model, or ""."""
        ok, reason = engine.available()
        if not ok:
            return reason
        if engine.needs_torch_source and self.factory is None:
            return NO_TORCH_SOURCE
        return ""

    def reference_only(self) -> None:
        """Reference outputs from an engine that is not itself benchmarked."""
        engine = get_engine(self.reference_engine)
        reason = self.unusable(engine)
        if reason:
            log.warning("reference engine %s unavailable (%s): no agreement figures", engine.name, reason)
            return
        try:
            self.load(engine)
            self.ref_outputs = self.agreement_outputs(engine)
        except Exception as exc:  # noqa: BLE001 - without a reference there is just no agreement figure
            log.warning("reference engine %s failed (%s): no agreement figures", engine.name, exc)
        finally:
            engine.close()

    def engine(self, name: str) -> EngineResult:
        engine = get_engine(name)
        reason = self.unusable(engine)
        if reason:
            return EngineResult(engine=name, available=False, reason=reason, device=engine.device)
        if self.stopping():
            return EngineResult(
                engine=name,
                available=False,
                reason="benchmark stopped before this engine",
                device=engine.device,
            )
        cfg = self.config
        cuda = engine.device == "cuda"
        if cuda:
            _init_cuda_context(self.device_index)  # so the first CUDA engine is not charged for it
        gc.collect()
        rss_base = self.proc.memory_info().rss / MIB
        gpu_base: float | None = None
        if cuda:
            s = self.nvml.sample()
            gpu_base = s[1] if s else None
        budget = cfg.max_seconds_per_engine
        deadline = time.perf_counter() + budget if budget else math.inf
        batches: list[BatchResult] = []
        skipped: list[SkippedBatch] = []
        agreement: Agreement | None = None
        error = ""
        try:
            self.load(engine)
            outs = self.agreement_outputs(engine)
            if name == self.reference_engine:
                self.ref_outputs = outs
            if self.ref_outputs is not None:
                agreement = parity.agreement(self.ref_outputs, outs, self.reference_engine)
            del outs
            for b in cfg.batch_sizes:
                skip = ""
                if self.stopping():
                    skip = "benchmark stopped"
                elif time.perf_counter() >= deadline:
                    skip = f"time budget of {budget:g} s per engine spent"
                elif cuda and self.memory_limit_mb is not None:
                    est = estimate_memory_mb(self.model_bytes, self.chw, b)
                    if est > self.memory_limit_mb:
                        skip = f"estimated {est:.0f} MB > GPU memory limit {self.memory_limit_mb:g} MB"
                if skip:
                    skipped.append(SkippedBatch(batch_size=b, reason=skip))
                    continue
                batches.append(self.batch(engine, b, deadline, rss_base, gpu_base if cuda else None, cuda))
        except Exception as exc:  # noqa: BLE001 - one failing engine must not end the benchmark
            log.warning("engine %s failed: %s", name, exc, exc_info=True)
            error = _error_text(exc)
        finally:
            engine.close()
            gc.collect()
        return EngineResult(
            engine=name,
            available=not error,
            reason=error,
            device=engine.device,
            build_time_s=engine.build_time_s,
            batches=batches,
            skipped_batches=skipped,
            agreement=agreement,
        )

    def batch(
        self,
        engine: Engine,
        batch_size: int,
        deadline: float,
        rss_base_mb: float,
        gpu_base_mb: float | None,
        cuda: bool,
    ) -> BatchResult:
        cfg = self.config
        x = self.batch_input(batch_size)
        name = engine.name
        total = cfg.iterations
        prog = self.progress
        prog.emit(name, batch_size, 0, total, "warmup")
        for _ in range(cfg.warmup):
            engine.run(x)
            if time.perf_counter() >= deadline or self.stopping():
                break
        gc.collect()
        samples: list[float] = []
        truncated = False
        deadline_ns = deadline * 1e9 if math.isfinite(deadline) else math.inf
        check_every_ns = int(PROGRESS_INTERVAL_S * 1e9)
        next_check = 0
        with _Sampler(self.proc, self.nvml if cuda else None) as sampler:
            cpu0 = time.process_time_ns()
            wall0 = time.perf_counter_ns()
            for i in range(total):
                t0 = time.perf_counter_ns()
                engine.run(x)
                t1 = time.perf_counter_ns()
                samples.append((t1 - t0) / 1e6)
                if t1 >= next_check:  # progress, stop and budget checks, a few times a second
                    next_check = t1 + check_every_ns
                    if i + 1 < total:
                        prog.emit(name, batch_size, i + 1, total, "timed")
                    if self.stopping() or t1 >= deadline_ns:
                        truncated = i + 1 < total
                        break
            wall_s = (time.perf_counter_ns() - wall0) / 1e9
            cpu_s = (time.process_time_ns() - cpu0) / 1e9
        prog.emit(name, batch_size, len(samples), total, "done")
        stats = latency_stats(samples)
        peak_rss_mb = sampler.peak_rss / MIB
        gpu_util = sum(sampler.gpu_utils) / len(sampler.gpu_utils) if sampler.gpu_utils else None
        gpu_mem = sampler.gpu_mem_peak
        if cuda and gpu_mem is not None and gpu_base_mb is not None:
            memory_mb = max(0.0, gpu_mem - gpu_base_mb)
        else:
            memory_mb = max(0.0, peak_rss_mb - rss_base_mb)
        return BatchResult(
            batch_size=batch_size,
            warmup=cfg.warmup,
            iterations=len(samples),
            latency=stats,
            throughput_ips=throughput_ips(batch_size, stats.mean_ms),
            cpu_percent=100.0 * cpu_s / wall_s if wall_s > 0 else 0.0,
            peak_rss_mb=peak_rss_mb,
            memory_mb=memory_mb,
            gpu_util_percent=gpu_util,
            gpu_memory_mb=gpu_mem,
            truncated=truncated,
        )


def run_benchmark(
    onnx_path: Path | str,
    config: BenchmarkConfig,
    *,
    input_shape: Sequence[int],
    torch_module_factory: TorchModuleFactory | None = None,
    reference_engine: str = "onnxruntime-cpu",
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device_index: int = 0,
    memory_limit_mb: float | None = None,
) -> BenchmarkResult:
    """Benchmark ``onnx_path`` on every engine of ``config`` (see the module docstring for the method).

    ``input_shape`` is CHW or NCHW (the batch size in it is ignored).  ``torch_module_factory`` returns
    the torch module the ONNX was exported from (same weights), for the ``torch-*`` engines.  The
    reference engine runs first; if it is not in ``config.engines`` it is loaded only for agreement.
    ``progress`` gets ``{engine, batch_size, iterations_done, iterations_total, phase, engine_index,
    engines_total}`` a few times a second; ``should_stop`` is polled as often and ends the run early
    (the result then has ``stopped=True``).  Returns one EngineResult per configured engine.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValidationFailed(f"ONNX file not found: {onnx_path}")
    config.validate()
    if reference_engine not in ENGINE_NAMES:
        raise ValidationFailed(
            f"unknown reference engine {reference_engine!r}", {"known": list(ENGINE_NAMES)}
        )
    if memory_limit_mb is not None and memory_limit_mb <= 0:
        raise ValidationFailed(f"memory_limit_mb must be > 0, got {memory_limit_mb}")
    chw = _chw(input_shape)
    run = _Run(
        onnx_path,
        config,
        chw,
        torch_module_factory,
        reference_engine,
        _Progress(progress, len(config.engines)),
        should_stop,
        device_index,
        memory_limit_mb,
    )
    try:
        order = list(config.engines)
        if reference_engine in order:
            order.remove(reference_engine)
            order.insert(0, reference_engine)
        else:
            run.reference_only()
        results: dict[str, EngineResult] = {}
        for idx, name in enumerate(order):
            run.progress.engine_index = idx
            results[name] = run.engine(name)
    finally:
        run.nvml.close()
    return BenchmarkResult(
        results=[results[n] for n in config.engines],
        machine={**machine_info(device_index), "threads": config.threads},
        config=config,
        input_shape=chw,
        reference_engine=reference_engine,
        stopped=run.stopped,
    )
