"""Hand-made event lists for the report builders (one per kind), shared by the unit tests and the
headless-browser test; everything the gateway would gather for the report, in log order."""

from __future__ import annotations

from typing import Any

import msgspec

from cvops.bench import Agreement, BatchResult, EngineResult, LatencyStats
from cvops.events.schema import (
    BenchmarkMeasured,
    CheckpointSaved,
    CheckpointsDiscarded,
    DatasetUploaded,
    DatasetValidated,
    DeploymentCreated,
    DeploymentDeleted,
    EngineSelected,
    Event,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    ModelConverted,
    ModelUploaded,
    Parity,
    Preprocessing,
    TensorSpec,
    TrialCompleted,
)
from cvops.selection import Constraints, select

HP = {"epochs": 4, "batch_size": 16, "lr": 0.01, "image_size": 32, "num_workers": 0}


def _stats(p50: float, spread: float) -> LatencyStats:
    return LatencyStats(
        samples=50, min_ms=p50 * 0.8, mean_ms=p50 * 1.1, p50_ms=p50, p90_ms=p50 * (1 + spread),
        p95_ms=p50 * (1 + 1.3 * spread), p99_ms=p50 * (1 + 2 * spread), max_ms=p50 * (1 + 3 * spread),
        std_ms=p50 * spread / 2, cv=spread / 2, unstable=spread / 2 > 0.1,
    )  # fmt: skip


def _batch(b: int, p50: float, spread: float = 0.1) -> BatchResult:
    return BatchResult(
        batch_size=b, warmup=5, iterations=50, latency=_stats(p50, spread),
        throughput_ips=b * 1000 / (p50 * 1.1), cpu_percent=95.0, peak_rss_mb=700.5, memory_mb=40.25,
    )  # fmt: skip


def _agree(diff: float) -> Agreement:
    return Agreement(reference="onnxruntime-cpu", samples=4, max_abs_diff=diff, top1_agreement=1.0)


RESULTS = [
    EngineResult(engine="onnxruntime-cpu", available=True, build_time_s=0.2, agreement=_agree(0.0),
                 batches=[_batch(1, 2.0), _batch(4, 5.5), _batch(8, 9.8)]),
    EngineResult(engine="torch-cpu", available=True, build_time_s=0.4, agreement=_agree(3e-7),
                 batches=[_batch(1, 3.1, 0.3), _batch(4, 8.0), _batch(8, 14.0)]),
    EngineResult(engine="onnxruntime-cpu-int8", available=True, build_time_s=1.1, agreement=_agree(0.02),
                 batches=[_batch(1, 1.6, 0.5), _batch(4, 4.0), _batch(8, 7.9)]),
    EngineResult(engine="torch-cuda", available=False, reason="no CUDA device", device="cuda"),
]  # fmt: skip


def model_events(model_id: str = "m1", **extra: Any) -> list[Event]:
    return [
        ModelUploaded(
            model_id=model_id, name="tiny-cnn", task="classification", source_format="preset",
            source_sha256="a" * 64, source_bytes=1234, preset="tiny_cnn", num_classes=3, image_size=32,
            labels=["circle", "square", "triangle"], **extra,
        ),
        ModelConverted(
            model_id=model_id, onnx_sha256="b" * 64, onnx_bytes=4321, opset=17,
            inputs=[TensorSpec(name="input", shape=["batch", 3, 32, 32], dtype="float32")],
            outputs=[TensorSpec(name="logits", shape=["batch", 3], dtype="float32")], parameter_count=9876,
            preprocessing=Preprocessing(image_size=[32, 32]),
            parity=Parity(max_abs_diff=1.5e-6, top1_agreement=1.0, tolerance=1e-4, samples=8, passed=True),
            labels=["circle", "square", "triangle"], torch_sha256="c" * 64, torch_format="torchscript",
        ),
    ]  # fmt: skip


def benchmark_events(job_id: str = "bench1", model_id: str = "m1") -> list[Event]:
    c = Constraints(max_p95_ms=4.0)
    sel = select(RESULTS, c, "latency")
    return [
        JobSubmitted(job_id=job_id, kind="benchmark", submitted_by="admin",
                     spec={"kind": "benchmark", "model_id": model_id, "batch_sizes": [1, 4, 8], "warmup": 5,
                           "iterations": 50, "constraints": c.to_dict(), "objective": "latency"}),
        JobStarted(job_id=job_id, token=0, device="cpu"),
        BenchmarkMeasured(job_id=job_id, model_id=model_id, results=[msgspec.to_builtins(r) for r in RESULTS],
                          machine={"platform": "Linux-6.1-x86_64", "cpu_count_logical": 2, "python": "3.12.3",
                                   "onnxruntime": "1.20.1", "torch": "2.5.1"}),
        EngineSelected(job_id=job_id, model_id=model_id, selected=sel.selected, selected_batch=sel.selected_batch,
                       eligible=sel.eligible, rejected=sel.rejected, objective="latency", constraints=c.to_dict()),
        JobSucceeded(job_id=job_id, result={"selected": sel.selected, "model_id": model_id}),  # as a real one
    ]  # fmt: skip


def _epoch(
    job_id: str, e: int, loss: float, val_loss: float, acc: float, best: tuple[float, int]
) -> JobProgressed:
    return JobProgressed(
        job_id=job_id,
        progress={"phase": "epoch", "epoch": e, "epochs": 4, "loss": loss, "val_loss": val_loss,
                  "val_accuracy": acc, "lr": 0.01 * (5 - e) / 4, "images_per_s": 400.0 + 10 * e,
                  "best_val_accuracy": best[0], "best_epoch": best[1]},
    )  # fmt: skip


def training_events(job_id: str = "train1", finished: bool = True) -> list[Event]:
    made = "m2"
    evs: list[Event] = [
        *model_events("m1"),
        DatasetUploaded(dataset_id="d1", name="shapes", task="classification", format="imagefolder", sha256="d" * 64, bytes=999),
        DatasetValidated(dataset_id="d1", classes=["circle", "square", "triangle"],
                         counts={"train": {"circle": 100, "square": 100, "triangle": 100}, "val": {"circle": 20, "square": 20, "triangle": 20}}),
        JobSubmitted(job_id=job_id, kind="train", submitted_by="eve",
                     spec={"kind": "train", "model_id": "m1", "dataset_id": "d1", "hyperparameters": HP}),
        JobStarted(job_id=job_id, token=1, device="cpu"),
        JobProgressed(job_id=job_id, progress={"phase": "batch", "epoch": 1, "batch": 3, "batches": 19, "loss": 1.2}),
        _epoch(job_id, 1, 1.05, 0.98, 0.55, (0.55, 1)),
        CheckpointSaved(job_id=job_id, epoch=1, sha256="1" * 64),
        _epoch(job_id, 2, 0.71, 0.66, 0.81, (0.81, 2)),
        CheckpointSaved(job_id=job_id, epoch=2, sha256="2" * 64),
        _epoch(job_id, 3, 0.42, 0.40, 0.93, (0.93, 3)),
        CheckpointSaved(job_id=job_id, epoch=3, sha256="3" * 64),
        CheckpointsDiscarded(job_id=job_id, sha256s=["1" * 64], epochs=[1]),
    ]  # fmt: skip
    if finished:
        evs += [
            _epoch(job_id, 4, 0.35, 0.44, 0.9, (0.93, 3)),
            CheckpointSaved(job_id=job_id, epoch=4, sha256="4" * 64),
            JobSucceeded(job_id=job_id, result={"model_id": made, "model_status": "ready", "epochs_done": 4,
                                                "best_val_accuracy": 0.93, "best_epoch": 3, "final_loss": 0.35,
                                                "images_per_s": 412.5, "first_step_s": 0.8, "seconds": 12.25,
                                                "resumed_from_epoch": None, "first_step_unix": 1.7e9}),
            *model_events(made, parent_model_id="m1", dataset_id="d1", hyperparameters=HP),
        ]  # fmt: skip
        evs[-2] = msgspec.structs.replace(evs[-2], name="tiny-cnn-ft")  # type: ignore[type-var]
    return evs


def evolution_events(job_id: str = "evo1", objectives: bool = False) -> list[Event]:
    evs: list[Event] = [
        JobSubmitted(job_id=job_id, kind="evolve", submitted_by="admin",
                     spec={"kind": "evolve", "model_id": "m1", "dataset_id": "d1", "population": 3, "generations": 2,
                           "seed": 7, "search_space": {"lr": {"type": "log", "low": 0.0001, "high": 0.1}}}),
        JobStarted(job_id=job_id, token=0, device="cpu"),
    ]  # fmt: skip
    fitness = {(0, 0): 0.5, (0, 1): 0.7, (0, 2): 0.0, (1, 0): 0.8, (1, 1): 0.75, (1, 2): 0.6}
    latency = {(0, 0): 2.0, (0, 1): 3.0, (0, 2): 9.0, (1, 0): 6.0, (1, 1): 3.5, (1, 2): 1.5}
    for (g, i), fit in fitness.items():
        cid = f"{job_id}-g{g}i{i}"
        hp = {"lr": round(0.001 * (1 + g + i), 6), "batch_size": 8 * (i + 1)}
        evs.append(
            JobSubmitted(
                job_id=cid, kind="train", spec={"kind": "train", "hyperparameters": hp}, parent_job_id=job_id
            )
        )
        evs.append(JobStarted(job_id=cid, token=1, device="cpu"))
        evs.append(
            JobFailed(job_id=cid, error="boom")
            if fit == 0.0
            else JobSucceeded(job_id=cid, result={"best_val_accuracy": fit})
        )
        trial = TrialCompleted(job_id=job_id, generation=g, index=i, genes=hp, fitness=fit, child_job_id=cid)
        evs.append(trial)
    if objectives:  # what a multi-objective evolver might add to a trial: read through getattr
        evs = [_with_objectives(e, fitness, latency) if isinstance(e, TrialCompleted) else e for e in evs]
    evs.append(JobSucceeded(job_id=job_id, result={"best_fitness": 0.8}))
    return evs


class _TrialWithObjectives(TrialCompleted, frozen=True, tag="TrialCompleted"):
    objectives: dict[str, float] = {}


def _with_objectives(
    t: TrialCompleted, fitness: dict[tuple[int, int], float], latency: dict[tuple[int, int], float]
) -> Event:
    key = (t.generation, t.index)
    return _TrialWithObjectives(
        **msgspec.structs.asdict(t), objectives={"val_accuracy": fitness[key], "latency_ms": latency[key]}
    )


def card_events(model_id: str = "m2") -> list[Event]:
    """A trained model with its lineage, a benchmark and a deployment (one created, one removed)."""
    evs = [
        e
        for e in training_events()
        if not isinstance(e, JobProgressed | CheckpointSaved | CheckpointsDiscarded)
    ]
    evs += benchmark_events("bench2", model_id)
    evs += [
        DeploymentCreated(deployment_id="dep1", model_id=model_id, engine="onnxruntime-cpu", workers=2, created_by="admin"),
        DeploymentCreated(deployment_id="dep0", model_id=model_id, engine="torch-cpu", workers=1, created_by="admin"),
        DeploymentDeleted(deployment_id="dep0"),
    ]  # fmt: skip
    return evs
