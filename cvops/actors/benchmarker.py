"""Benchmarker: the actor of a benchmark job (one per attempt, holding a GPU token) and its body.

Measures every configured engine with :func:`cvops.bench.run_benchmark`, then appends the results
(BenchmarkMeasured) and the pure selection (EngineSelected) to the job's stream."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import ray

from cvops.actors.jobs import JobActor, JobCancelled, JobContext
from cvops.actors.registry import Registry
from cvops.errors import ValidationFailed
from cvops.events.schema import BenchmarkMeasured, EngineSelected
from cvops.jobs_api import BenchmarkJob

log = logging.getLogger(__name__)

CONFIG_KEYS = (
    "engines",
    "batch_sizes",
    "warmup",
    "iterations",
    "seed",
    "constraints",
    "objective",
    "threads",
)


def benchmark_config(job: BenchmarkJob) -> Any:
    from cvops.bench import BenchmarkConfig

    spec = msgspec.to_builtins(job)
    data = {k: spec[k] for k in CONFIG_KEYS if spec.get(k) is not None}
    return BenchmarkConfig.from_dict(data)


def run_benchmark_job(ctx: JobContext) -> dict[str, Any]:
    from cvops.bench import run_benchmark
    from cvops.ml.torch_source import build_torch_source
    from cvops.selection import select

    job = ctx.job
    assert isinstance(job, BenchmarkJob)
    config = benchmark_config(job)
    rec = Registry.connect().get_sync(job.model_id)
    if rec.status != "ready" or not rec.onnx:
        raise ValidationFailed(f"model {rec.id} is not ready")
    onnx = rec.onnx
    onnx_path = ctx.blobs.path(onnx.sha256)
    input_dims = onnx.inputs[0].shape
    size = onnx.preprocessing.image_size
    input_shape = [1, int(input_dims[1]) if isinstance(input_dims[1], int) else 3, int(size[0]), int(size[1])]

    def factory() -> Any:
        return build_torch_source(rec, ctx.blobs)

    has_torch = bool(onnx.torch_sha256)
    device_index = int(ctx.device.split(":")[1]) if ctx.device.startswith("cuda:") else 0

    def progress(p: dict[str, Any]) -> None:
        ctx.progress({"phase": "benchmark", **p})

    result = run_benchmark(
        onnx_path,
        config,
        input_shape=input_shape,
        torch_module_factory=factory if has_torch else None,
        progress=progress,
        should_stop=ctx.should_stop,
        device_index=device_index,
        memory_limit_mb=ctx.settings.gpu_memory_mb,
    )
    if result.stopped or ctx.should_stop():
        raise JobCancelled(ctx.job_id)
    selection = select(result.results, config.constraints, config.objective)
    measured = BenchmarkMeasured(
        job_id=ctx.job_id, model_id=rec.id, results=result.event_results(), machine=result.machine
    )
    selected = EngineSelected(
        job_id=ctx.job_id,
        model_id=rec.id,
        selected=selection.selected,
        selected_batch=selection.selected_batch,
        eligible=list(selection.eligible),
        rejected=dict(selection.rejected),
        objective=selection.objective,
        constraints=config.constraints.to_dict(),
    )
    ctx.emit([measured, selected])
    ctx.progress({"phase": "done"}, force=True)
    return {
        "model_id": rec.id,
        "selected": selection.selected,
        "selected_batch": selection.selected_batch,
        "eligible": list(selection.eligible),
        "rejected": dict(selection.rejected),
        "engines": {
            r.engine: (
                msgspec.to_builtins(r.batches[0].latency)
                if r.batches
                else {"available": r.available, "reason": r.reason}
            )
            for r in result.results
        },
    }


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)  # type: ignore[call-overload]
class Benchmarker(JobActor):
    """The actor of one benchmark job attempt."""

    kind = "benchmark"
    body = staticmethod(run_benchmark_job)
