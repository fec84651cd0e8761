"""Trainer: the actor of a train job (one per attempt, holding a GPU token) and its body.

Fine-tunes the model's torch form on a validated dataset with :func:`cvops.ml.training.train_classifier`:
progress per epoch (and every few seconds inside one) as JobProgressed, a checkpoint per epoch in the
blob store (CheckpointSaved), resume from the last checkpoint after a crash, and the result registered
as a new model version (lineage: parent model, dataset, hyperparameters).  The job ends once the model
is registered: its GPU token goes back then, and the model converts to ONNX on its own (CPU only;
``pending`` → ``converting`` → ``ready``), as every registered model does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import ray

from cvops.actors.jobs import JobActor, JobCancelled, JobContext
from cvops.actors.registry import Registry
from cvops.errors import CvopsError, ValidationFailed
from cvops.events.commands import RegisterModel
from cvops.events.projections import DatasetRecord, ModelRecord
from cvops.jobs_api import TrainJob

log = logging.getLogger(__name__)


def trained_model_id(job_id: str) -> str:
    """The id of the model a train job registers: 16 hex digits like every other id (uploads'
    ``uuid4().hex[:16]``), derived from the job id so a retried registration hits the same stream.
    (Before, it was ``<job id[:12]>t``; such ids stay in the log and keep working.)"""
    return hashlib.sha256(f"cvops-trained-model:{job_id}".encode()).hexdigest()[:16]


def _fit_head(module: Any, rec: ModelRecord, classes: list[str], blobs: Any) -> Any:
    """A model whose class count differs from the dataset's gets a fresh head: the preset is rebuilt
    with the dataset's classes and every weight whose shape still fits is kept."""
    import torch

    from cvops.ml import presets

    arch = (rec.onnx.torch_arch if rec.onnx else None) or rec.preset or rec.arch
    num = rec.num_classes or len(rec.labels)
    if num == len(classes):
        return module
    if arch not in presets.PRESETS:
        raise ValidationFailed(
            f"the model has {num} classes and the dataset {len(classes)}; only presets can be re-headed",
            {"model_classes": num, "dataset_classes": len(classes)},
        )
    fresh = presets.build_preset(arch, num_classes=len(classes), image_size=rec.image_size).module
    own = fresh.state_dict()
    keep = {k: v for k, v in module.state_dict().items() if k in own and own[k].shape == v.shape}
    own.update(keep)
    fresh.load_state_dict(own)
    log.info("re-headed %s: kept %d of %d tensors", arch, len(keep), len(own))
    return fresh.to(torch.float32)


def _dataset_root(ctx: JobContext, ds: DatasetRecord) -> Path:
    from cvops.ml.datasets import safe_extract

    root = ctx.settings.data_path / (ds.path or f"datasets/{ds.id}")
    if not root.exists():  # e.g. a data dir restored without its extracted folders
        safe_extract(ctx.blobs.path(ds.sha256), root, max_total_bytes=ctx.settings.max_dataset_bytes)
    return root


def run_train_job(ctx: JobContext) -> dict[str, Any]:
    import torch

    from cvops.ml.datasets import validate_dataset
    from cvops.ml.torch_source import build_torch_source
    from cvops.ml.training import (
        TrainingCancelled,
        train_classifier,
        train_detector,
        validate_hyperparameters,
    )

    t0 = time.monotonic()
    job = ctx.job
    assert isinstance(job, TrainJob)
    hp = validate_hyperparameters(dict(job.hyperparameters))
    registry = Registry.connect()
    rec = registry.get_sync(job.model_id)
    ds = registry.get_dataset_sync(job.dataset_id)
    if rec.task != ds.task:
        raise ValidationFailed(
            f"a {rec.task} model cannot train on a {ds.task} dataset", {"field": "dataset_id"}
        )
    module = build_torch_source(rec, ctx.blobs)
    if module is None:
        raise ValidationFailed(
            "this model has no torch form to train (ONNX uploads cannot be fine-tuned); use a preset or "
            "upload a state_dict with arch, a .pt2 or an Ultralytics checkpoint"
        )
    module = _fit_head(module, rec, list(ds.classes), ctx.blobs)
    root = _dataset_root(ctx, ds)
    info = validate_dataset(root, ds.task, ds.format)
    resume_from: bytes | None = None
    start_epoch = 0
    if ctx.last_checkpoint:
        resume_from = ctx.blobs.read_bytes(ctx.last_checkpoint["sha256"])
        start_epoch = int(ctx.last_checkpoint["epoch"])
        ctx.progress({"phase": "resumed", "from_epoch": start_epoch}, force=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pre = rec.onnx.preprocessing if rec.onnx else None

    def progress(p: dict[str, Any]) -> None:
        ctx.progress(p, force=p.get("phase") == "epoch")

    train = train_detector if rec.task == "detection" else train_classifier
    train_call_unix = time.time()
    try:
        result = train(
            module,
            root,
            info,
            hp,
            device=ctx.device,
            preprocessing=pre,
            progress=progress,
            checkpoint=ctx.checkpoint,
            should_stop=ctx.should_stop,
            resume_from=resume_from,
            start_epoch=start_epoch,
        )
    except TrainingCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    metrics = {
        "epochs_done": result.epochs_done,
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "final_loss": result.final_loss,
        "images_per_s": result.images_per_s,
        "first_step_s": result.first_step_s,
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
        "seconds": time.monotonic() - t0,
        # wall-clock time of the first optimiser step: minus the job's submitted_ts = time to first step
        "first_step_unix": train_call_unix + result.first_step_s,
    }
    if not ctx.register:  # a trial of an older evolution: only its fitness mattered
        return metrics
    weights = ctx.blobs.put_bytes(result.state_dict)
    arch = (rec.onnx.torch_arch if rec.onnx else None) or rec.preset or rec.arch
    new_id = trained_model_id(ctx.job_id)  # stable: a retried registration hits the same stream
    command = RegisterModel(
        model_id=new_id,
        name=f"{rec.name}-ft-{ctx.job_id[:8]}",
        task=rec.task,
        source_format="state_dict",
        source_sha256=weights.sha256,
        source_bytes=weights.bytes,
        arch=arch,
        num_classes=len(info.classes),
        image_size=rec.image_size or (pre.image_size[0] if pre else None),
        labels=list(info.classes),
        parent_model_id=rec.id,
        dataset_id=ds.id,
        hyperparameters=dict(job.hyperparameters),
    )
    if ctx.trial:  # an evolution's trial: its lineage names the evolution, the trial and its generation
        command = msgspec.structs.replace(
            command,
            evolution_job_id=str(ctx.trial.get("evolution_job_id") or ""),
            trial_job_id=ctx.job_id,
            generation=int(ctx.trial.get("generation") or 0),
            trial=int(ctx.trial.get("index") or 0),
        )
    try:
        new = registry.register_sync(command, ctx.job_id)
    except CvopsError as exc:  # already registered by an earlier attempt
        log.info("trained model registration: %s", exc)
        new = registry.get_sync(new_id)
    # the job ends here, so the token is free while the model converts (CPU-only work, the registry's):
    # model_status is the model's status at registration; GET /models/{id} follows it to ready
    return {"model_id": new.id, "model_status": new.status, **metrics}


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)  # type: ignore[call-overload]
class Trainer(JobActor):
    """The actor of one train job attempt."""

    kind = "train"
    body = staticmethod(run_train_job)
