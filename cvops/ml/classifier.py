"""The classification training loop (pure torch: no Ray, no HTTP); the Trainer actor wraps it.

:func:`train_classifier` — a real, seeded torch loop: AMP on cuda, warm-up + cosine/step schedule,
label smoothing, torchvision v2 augmentation, per-epoch checkpoints (``torch.save`` bytes that load with
``weights_only=True``), cancel within one batch, exact resume, early stopping.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml import train_common as tc
from cvops.ml.datasets import DatasetInfo, ImageFolderDataset
from cvops.ml.hyperparameters import (
    Hyperparameters,
    hyperparameters_dict,
    lr_factor,
    resolve_num_workers,
    validate_hyperparameters,
)
from cvops.ml.train_common import (
    CHECKPOINT_FORMAT,
    CheckpointFn,
    ProgressFn,
    StopFn,
    TrainingCancelled,
    TrainResult,
    build_optimizer,
    build_transforms,
    epoch_seed,
    never,
    noop_checkpoint,
    noop_progress,
    reseed,
    restore_rng,
    resume_checkpoint,
    rng_state,
    save_bytes,
    seed_worker,
    state_on_cpu,
)

log = logging.getLogger(__name__)


class _CheckpointWriter:
    """Calls the checkpoint callback with already-serialised bytes, on one helper thread (or inline):
    serialising stays on the training thread (it holds the GIL anyway and needs no snapshot copies); the
    callback's hashing, writing and fsync overlap the next epoch.  At most one call in flight."""

    def __init__(self, fn: CheckpointFn, asynchronous: bool) -> None:
        self.fn = fn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cvops-ckpt") if asynchronous else None
        self._pending: Future[None] | None = None

    def submit(self, epoch: int, data: bytes, metrics: dict[str, float]) -> None:
        self.wait()
        if self._pool is None:
            self.fn(epoch, data, metrics)
        else:
            self._pending = self._pool.submit(self.fn, epoch, data, metrics)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, suppress: bool = False) -> None:
        try:
            self.wait()
        except Exception:
            if not suppress:
                raise
            log.exception("checkpoint callback failed while the run was failing")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


class _Run:
    """Mutable bookkeeping of one run (what a checkpoint must carry besides the torch states)."""

    def __init__(self) -> None:
        self.best_acc: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None  # copy at best_epoch; None: no val data
        self.stale = 0
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False


def train_classifier(
    module: nn.Module,
    dataset_root: str | os.PathLike[str],
    info: DatasetInfo,
    hp: Hyperparameters | Mapping[str, Any],
    *,
    device: str = "cpu",
    preprocessing: Preprocessing | None = None,
    progress: ProgressFn | None = None,
    checkpoint: CheckpointFn | None = None,
    should_stop: StopFn | None = None,
    resume_from: bytes | None = None,
    start_epoch: int = 0,
    async_checkpoint: bool = True,
    checkpoint_min_interval_s: float = 0.0,
) -> TrainResult:
    """Train ``module`` (in place) on the ``train`` split of a validated ImageFolder dataset.

    ``progress`` gets ``{"phase": "epoch", epoch, epochs, loss, val_accuracy, val_loss, lr,
    images_per_s, best_val_accuracy}`` after every epoch, and ``{"phase": "batch", epoch, batch,
    batches, loss, images_per_s}`` at most every 2 s within one.  After each epoch the full state is
    serialised and passed to ``checkpoint(epoch, data, metrics)`` — with ``async_checkpoint`` (default)
    called from a helper thread while the next epoch trains (so the blob store's hashing, write and fsync
    cost no training time): calls come in epoch order, one at a time, each finished before the next
    starts and all finished before this function returns or raises; the epoch-k progress event may
    precede checkpoint k; a callback error fails the run at the next epoch's end (or at the return).
    ``checkpoint_min_interval_s`` > 0 skips an epoch's checkpoint taken sooner than that after the
    previous one (the last epoch, or an early stop, always gets one); a resume from any of them is exact.  ``should_stop()`` is polled before
    every batch; True raises :class:`TrainingCancelled`.  ``resume_from`` (a checkpoint's bytes)
    restores model, optimiser, schedule, scaler, RNG and early-stopping state and continues with the next
    epoch (``start_epoch``, if given, must equal the checkpoint's epoch); resuming from the final (or an
    early-stopped) checkpoint trains nothing and returns the finished result.  Epochs are numbered from 1.
    """
    t_call = time.perf_counter()
    hp = validate_hyperparameters(hp)
    preprocessing = preprocessing if preprocessing is not None else Preprocessing()
    if isinstance(preprocessing, Mapping):
        preprocessing = msgspec.convert(preprocessing, Preprocessing)
    progress = progress or noop_progress
    checkpoint = checkpoint or noop_checkpoint
    should_stop = should_stop or never
    if info.task != "classification":
        raise ValidationFailed("train_classifier needs a classification dataset", {"task": info.task})
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    use_amp = cuda
    num_classes = len(info.classes)

    generator = torch.Generator()
    reseed(epoch_seed(hp.seed, 0), generator)
    train_tf, eval_tf = build_transforms(preprocessing, hp)
    train_ds = ImageFolderDataset(dataset_root, info, "train", train_tf)
    val_ds = ImageFolderDataset(dataset_root, info, "val", eval_tf)
    if len(train_ds) == 0:
        raise ValidationFailed("the dataset has no training images", {"reason": "empty train split"})
    workers = resolve_num_workers(hp.num_workers)
    loader_kw: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": cuda,
        "persistent_workers": workers > 0,
        "worker_init_fn": seed_worker if workers > 0 else None,
    }
    if workers > 0:
        loader_kw["prefetch_factor"] = 4
    drop_last = len(train_ds) % hp.batch_size == 1 and len(train_ds) > 1  # no BatchNorm on a batch of one
    train_loader: torch.utils.data.DataLoader[tuple[Any, int]] = torch.utils.data.DataLoader(
        train_ds,
        batch_size=hp.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drop_last,
        **loader_kw,
    )
    val_loader: torch.utils.data.DataLoader[tuple[Any, int]] = torch.utils.data.DataLoader(
        val_ds, batch_size=hp.batch_size, shuffle=False, **loader_kw
    )
    steps_per_epoch = len(train_loader)

    if cuda:
        torch.backends.cudnn.benchmark = True
    model = module.to(dev)
    optimizer = build_optimizer(model, hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, hp)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    run = _Run()

    ckpt, done = resume_checkpoint(resume_from, start_epoch)
    if ckpt is not None:
        if ckpt.get("hyperparameters") not in (None, hyperparameters_dict(hp)):
            log.warning("resuming with hyperparameters that differ from the checkpoint's")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], generator)
        run.best_acc = ckpt["best_val_accuracy"]
        run.best_epoch = int(ckpt["best_epoch"])
        best_state = ckpt.get("best_state")
        if best_state is None and run.best_epoch == done and run.best_acc is not None:
            best_state = {k: v.clone() for k, v in ckpt["model"].items()}
        run.best_state = best_state
        run.stale = int(ckpt["stale_epochs"])
        run.history = list(ckpt["history"])
        run.stopped_early = bool(ckpt.get("stopped_early", False))
        log.info("resuming from epoch %d of %d", done, hp.epochs)
    resumed_from = done

    first_step_s: float | None = None
    train_images = 0
    train_time = 0.0
    writer = _CheckpointWriter(checkpoint, async_checkpoint)
    last_checkpoint = -math.inf
    try:
        for epoch in range(done + 1, hp.epochs + 1):
            if run.stopped_early:
                break
            reseed(epoch_seed(hp.seed, epoch), generator)
            model.train()
            t0 = time.perf_counter()
            last_report = t0
            loss_sum = torch.zeros((), device=dev)
            seen = 0
            batch = 0
            for batch, (x, y) in enumerate(train_loader, 1):
                if should_stop():
                    raise TrainingCancelled(epoch, batch)
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                    out = model(x)
                    if out.ndim != 2 or out.shape[1] != num_classes:
                        raise ValidationFailed(
                            f"the model outputs {tuple(out.shape[1:])} but the dataset has {num_classes} classes",
                            {"reason": "num_classes mismatch", "classes": num_classes},
                        )
                    loss = criterion(out, y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if first_step_s is None:
                    first_step_s = time.perf_counter() - t_call
                n = int(y.shape[0])
                seen += n
                loss_sum += loss.detach().float() * n
                now = time.perf_counter()
                if now - last_report >= tc.BATCH_PROGRESS_INTERVAL_S:
                    last_report = now
                    progress(
                        {
                            "phase": "batch",
                            "epoch": epoch,
                            "batch": batch,
                            "batches": steps_per_epoch,
                            "loss": float(loss.item()),
                            "images_per_s": round(seen / max(now - t0, 1e-9), 2),
                        }
                    )
            epoch_loss = float(loss_sum.item()) / max(seen, 1)  # .item() syncs: the timing below is honest
            epoch_time = time.perf_counter() - t0
            train_images += seen
            train_time += epoch_time
            val_acc, val_loss = _evaluate(
                model, val_loader, criterion, dev, use_amp, should_stop, epoch, batch
            )
            improved = val_acc is not None and (run.best_acc is None or val_acc > run.best_acc)
            if val_acc is None or improved:
                run.best_acc = val_acc if val_acc is not None else run.best_acc
                run.best_epoch = epoch
                run.best_state = state_on_cpu(model) if val_acc is not None else None
                run.stale = 0
            else:
                run.stale += 1
            if hp.patience and run.stale >= hp.patience:
                run.stopped_early = True
            record = {
                "phase": "epoch",
                "epoch": epoch,
                "epochs": hp.epochs,
                "loss": round(epoch_loss, 6),
                "val_accuracy": None if val_acc is None else round(val_acc, 6),
                "val_loss": None if val_loss is None else round(val_loss, 6),
                "lr": float(optimizer.param_groups[0]["lr"]),
                "images_per_s": round(seen / max(epoch_time, 1e-9), 2),
                "best_val_accuracy": run.best_acc,
                "best_epoch": run.best_epoch,
            }
            run.history.append(record)
            final = epoch == hp.epochs or run.stopped_early
            if final or time.perf_counter() - last_checkpoint >= checkpoint_min_interval_s:
                last_checkpoint = time.perf_counter()
                if run.best_epoch == epoch and run.best_state is not None:
                    model_state = run.best_state  # the copy made above: no second device-to-host transfer
                else:
                    model_state = model.state_dict()
                payload = {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "model": model_state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": dict(scaler.state_dict()) if use_amp else {},
                    "rng": rng_state(generator),
                    "best_val_accuracy": run.best_acc,
                    "best_epoch": run.best_epoch,
                    "best_state": None if run.best_epoch == epoch else run.best_state,  # None: same as model
                    "stale_epochs": run.stale,
                    "stopped_early": run.stopped_early,
                    "history": [dict(h) for h in run.history],
                    "hyperparameters": hyperparameters_dict(hp),
                    "classes": list(info.classes),
                }
                metrics = {
                    k: float(v) for k, v in record.items() if isinstance(v, int | float) and k != "epochs"
                }
                writer.submit(epoch, save_bytes(payload), metrics)
            progress(dict(record))
            if run.stopped_early:
                log.info(
                    "early stop after epoch %d (best %s at epoch %d)", epoch, run.best_acc, run.best_epoch
                )

    except BaseException:
        writer.close(suppress=True)  # the checkpoint in flight still lands; the original error wins
        raise
    writer.close()

    best = run.best_state if run.best_state is not None else state_on_cpu(model)
    return TrainResult(
        epochs_done=int(run.history[-1]["epoch"]),
        best_val_accuracy=run.best_acc,
        best_epoch=run.best_epoch,
        final_loss=float(run.history[-1]["loss"]),
        history=run.history,
        images_per_s=round(train_images / train_time, 2) if train_time > 0 else 0.0,
        first_step_s=round(first_step_s, 4) if first_step_s is not None else 0.0,
        state_dict=save_bytes(best),
        stopped_early=run.stopped_early,
        resumed_from_epoch=resumed_from,
        device=str(dev),
        amp=use_amp,
        num_workers=workers,
    )


def _evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    criterion: nn.Module,
    dev: torch.device,
    use_amp: bool,
    should_stop: StopFn,
    epoch: int,
    batch: int,
) -> tuple[float | None, float | None]:
    if len(loader.dataset) == 0:  # type: ignore[arg-type]
        return None, None
    model.eval()
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    loss_sum = torch.zeros((), device=dev)
    total = 0
    with torch.inference_mode():
        for x, y in loader:
            if should_stop():
                raise TrainingCancelled(epoch, batch)
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                out = model(x)
                loss = criterion(out.float(), y)
            correct += (out.argmax(1) == y).sum()
            loss_sum += loss.float() * y.shape[0]
            total += int(y.shape[0])
    return float(correct.item()) / total, float(loss_sum.item()) / total
