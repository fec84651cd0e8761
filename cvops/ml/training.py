"""Training loops (pure torch: no Ray, no HTTP); the Trainer actor wraps them.

* :class:`Hyperparameters` — the validated knob set (bounds in the type, checked by
  :func:`validate_hyperparameters`, which names the offending field).
* :func:`train_classifier` — a real, seeded torch loop: AMP on cuda, warm-up + cosine/step schedule,
  label smoothing, torchvision v2 augmentation, per-epoch checkpoints (``torch.save`` bytes that load with
  ``weights_only=True``), cancel within one batch, exact resume, early stopping.
* :func:`train_detector` — YOLOv8 through ultralytics' own trainer, offline, same callbacks.

Determinism: every epoch starts by reseeding python ``random``, numpy, torch (CPU and CUDA) and the
DataLoader's generator from ``(seed, epoch)``.  A run resumed from the epoch-*k* checkpoint therefore
replays epochs *k+1..n* exactly as the uninterrupted run would (bit-identical on CPU with
``num_workers=0``; with workers, persistent worker processes keep their own RNG streams, so augmentations
of a resumed run may differ).  RNG states are stored in the checkpoint as tensors all the same.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.datasets import DatasetInfo, ImageFolderDataset

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cvops-checkpoint-1"
BATCH_PROGRESS_INTERVAL_S = 2.0

# ---------------------------------------------------------------------------------- hyperparameters


class Hyperparameters(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    epochs: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: Annotated[float, msgspec.Meta(ge=1e-6, le=1.0)] = 1e-3
    momentum: Annotated[float, msgspec.Meta(ge=0.0, le=0.999)] = 0.9
    weight_decay: Annotated[float, msgspec.Meta(ge=0.0, le=0.1)] = 1e-4
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0  # also <= epochs
    label_smoothing: Annotated[float, msgspec.Meta(ge=0.0, le=0.5)] = 0.0
    augment_flip: bool = True
    augment_scale_crop: bool = True
    color_jitter: Annotated[float, msgspec.Meta(ge=0.0, le=0.5)] = 0.0
    image_size: Annotated[int, msgspec.Meta(ge=16, le=1024)] | None = None  # None: the model's
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    patience: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0  # 0: no early stopping
    num_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None  # None: min(2, cpus - 1)


DEFAULTS = Hyperparameters()
HYPERPARAMETER_FIELDS: tuple[str, ...] = Hyperparameters.__struct_fields__


def _field_of(message: str) -> str | None:
    for pattern in ("`$.", "unknown field `"):
        start = message.find(pattern)
        if start >= 0:
            rest = message[start + len(pattern) :]
            return rest.split("`", 1)[0].split(".", 1)[0].split("[", 1)[0]
    return None


def validate_hyperparameters(values: Mapping[str, Any] | Hyperparameters | None) -> Hyperparameters:
    """Hyperparameters from a JSON-like mapping; any problem raises ValidationFailed naming the field
    (``details["field"]``): wrong type, out of bounds, unknown field, ``warmup_epochs > epochs``."""
    if isinstance(values, Hyperparameters):
        hp = values
    else:
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ValidationFailed("hyperparameters must be an object", {"field": None})
        try:
            hp = msgspec.convert(dict(values), Hyperparameters)
        except msgspec.ValidationError as exc:
            field = _field_of(str(exc))
            raise ValidationFailed(
                f"invalid hyperparameter {field!r}: {exc}", {"field": field, "error": str(exc)}
            ) from exc
    if hp.warmup_epochs > hp.epochs:
        raise ValidationFailed(
            f"invalid hyperparameter 'warmup_epochs': {hp.warmup_epochs} > epochs ({hp.epochs})",
            {"field": "warmup_epochs"},
        )
    return hp


def is_default(values: Mapping[str, Any] | Hyperparameters | None) -> bool:
    """True when ``values`` is valid and equal to :data:`DEFAULTS` (explicitly given defaults count)."""
    try:
        return validate_hyperparameters(values) == DEFAULTS
    except ValidationFailed:
        return False


def hyperparameters_dict(hp: Hyperparameters) -> dict[str, Any]:
    return msgspec.to_builtins(hp)  # type: ignore[no-any-return]


def resolve_num_workers(requested: int | None) -> int:
    if requested is not None:
        return requested
    return max(0, min(2, (os.cpu_count() or 1) - 1))


# ------------------------------------------------------------------------------------------ results


class TrainingCancelled(Exception):
    """``should_stop()`` returned True; raised before the next batch runs."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__(f"training cancelled at epoch {epoch}, batch {batch}")
        self.epoch = epoch
        self.batch = batch


class TrainResult(msgspec.Struct, frozen=True, kw_only=True):
    epochs_done: int  # epochs completed, counting those before a resume
    best_val_accuracy: float | None  # detection: best mAP50
    best_epoch: int
    final_loss: float
    history: list[dict[str, Any]]  # one entry per epoch (the "epoch" progress dicts)
    images_per_s: float  # training images per second (train phase, this call)
    first_step_s: float  # from the call to the first completed optimiser step
    state_dict: bytes  # torch.save of the best model's state_dict (final model without val data)
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    device: str = "cpu"
    amp: bool = False
    num_workers: int = 0

    def metrics(self) -> dict[str, float]:
        out = {"epochs_done": float(self.epochs_done), "final_loss": self.final_loss}
        out["images_per_s"] = self.images_per_s
        out["first_step_s"] = self.first_step_s
        if self.best_val_accuracy is not None:
            out["best_val_accuracy"] = self.best_val_accuracy
        return out


ProgressFn = Callable[[dict[str, Any]], None]
CheckpointFn = Callable[[int, bytes, dict[str, float]], None]
StopFn = Callable[[], bool]


def _noop_progress(_: dict[str, Any]) -> None:
    return None


def _noop_checkpoint(_epoch: int, _data: bytes, _metrics: dict[str, float]) -> None:
    return None


def _never() -> bool:
    return False


# -------------------------------------------------------------------------------------- (de)serialise


def save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_bytes(data: bytes) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and primitives only, never pickled code."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ValidationFailed(f"not a loadable checkpoint: {exc}", {"reason": "bad checkpoint"}) from exc


def load_checkpoint(data: bytes) -> dict[str, Any]:
    ckpt = load_bytes(data)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValidationFailed("not a cvops training checkpoint", {"reason": "bad checkpoint"})
    return ckpt


def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The model weights in :attr:`TrainResult.state_dict` (or a checkpoint's, whichever is given)."""
    obj = load_bytes(data)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["best_state"] if obj.get("best_state") is not None else obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValidationFailed("not a state_dict", {"reason": "bad state_dict"})
    return obj


# ----------------------------------------------------------------------------------------------- RNG


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def _reseed(seed: int, generator: torch.Generator) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also every CUDA device
    generator.manual_seed(seed)


def _seed_worker(_worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": [str(np_name), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def _restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    generator.set_state(state["generator"])
    random.setstate(
        (state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"])
    )
    name, pos, has_gauss, gauss = state["numpy_meta"]
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))


# ----------------------------------------------------------------------------------------- pieces


def image_size_of(preprocessing: Preprocessing, hp: Hyperparameters) -> tuple[int, int]:
    if hp.image_size is not None:
        return hp.image_size, hp.image_size
    h, w = (list(preprocessing.image_size) + list(preprocessing.image_size))[:2]
    return int(h), int(w)


def build_transforms(
    preprocessing: Preprocessing, hp: Hyperparameters
) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """(train, eval) torchvision v2 pipelines: PIL → augment → float tensor normalised by
    ``preprocessing.mean/std``."""
    from torchvision.transforms import v2

    size = image_size_of(preprocessing, hp)
    tail = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ]
    train: list[Any] = [v2.ToImage()]
    if hp.augment_scale_crop:
        train.append(v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True))
    else:
        train.append(v2.Resize(size, antialias=True))
    if hp.augment_flip:
        train.append(v2.RandomHorizontalFlip())
    if hp.color_jitter > 0:
        cj = hp.color_jitter
        train.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=min(cj, 0.5) / 5))
    evaluate: list[Any] = [v2.ToImage(), v2.Resize(size, antialias=True)]
    return v2.Compose(train + tail), v2.Compose(evaluate + tail)


def build_optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValidationFailed("the model has no trainable parameters", {"reason": "no parameters"})
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, hp: Hyperparameters) -> float:
    """Multiplier of ``hp.lr`` before optimiser step ``step`` (0-based, counted over the whole run):
    linear warm-up over ``warmup_epochs``, then cosine to 0 or x0.1 every third of the run."""
    spe = max(1, steps_per_epoch)
    warm = hp.warmup_epochs * spe
    if step < warm:
        return (step + 1) / warm
    if hp.schedule == "cosine":
        span = max(1, hp.epochs * spe - warm)
        t = min(1.0, (step - warm) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    every = max(1, round(hp.epochs / 3))
    return float(0.1 ** ((step // spe) // every))


def _state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------- classifier


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
    progress = progress or _noop_progress
    checkpoint = checkpoint or _noop_checkpoint
    should_stop = should_stop or _never
    if info.task != "classification":
        raise ValidationFailed("train_classifier needs a classification dataset", {"task": info.task})
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    use_amp = cuda
    num_classes = len(info.classes)

    generator = torch.Generator()
    _reseed(_epoch_seed(hp.seed, 0), generator)
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
        "worker_init_fn": _seed_worker if workers > 0 else None,
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

    done = 0
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        done = int(ckpt["epoch"])
        if start_epoch not in (0, done):
            raise ValidationFailed(
                f"start_epoch={start_epoch} but the checkpoint is at epoch {done}", {"field": "start_epoch"}
            )
        if ckpt.get("hyperparameters") not in (None, hyperparameters_dict(hp)):
            log.warning("resuming with hyperparameters that differ from the checkpoint's")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _restore_rng(ckpt["rng"], generator)
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
    elif start_epoch:
        raise ValidationFailed("start_epoch needs resume_from (a checkpoint)", {"field": "start_epoch"})
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
            _reseed(_epoch_seed(hp.seed, epoch), generator)
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
                if now - last_report >= BATCH_PROGRESS_INTERVAL_S:
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
                run.best_state = _state_on_cpu(model) if val_acc is not None else None
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
                    "rng": _rng_state(generator),
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

    best = run.best_state if run.best_state is not None else _state_on_cpu(model)
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


# --------------------------------------------------------------------------------------- detector

_ULTRALYTICS_DIR = Path(tempfile.gettempdir()) / "cvops-ultralytics"
_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
MAP50_KEY = "metrics/mAP50(B)"


def _import_ultralytics_trainer() -> Any:
    """ultralytics' DetectionTrainer, imported offline: ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=false`` (it
    would otherwise pip-install missing extras at run time) and its settings in a temp dir unless
    ``YOLO_CONFIG_DIR`` is set.  These variables only work if set before ultralytics' first import in
    the process (the lead sets them in the actors' environment)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:
        _ULTRALYTICS_DIR.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(_ULTRALYTICS_DIR)
    try:
        from ultralytics.models.yolo.detect import DetectionTrainer
    except ImportError as exc:
        raise ValidationFailed(
            "detection training needs ultralytics: pip install 'cvops[yolo]'", {"missing": "ultralytics"}
        ) from exc
    finally:
        undo_ultralytics_patches()
    return DetectionTrainer


def undo_ultralytics_patches() -> None:
    """Put back the ``PIL.Image.open`` and ``torch.save`` that ultralytics replaces at import time (its
    ``Image.open`` tries to pip-install an HEIF plugin on any unidentified file)."""
    import sys

    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is None:
        return
    from PIL import Image

    if Image.open is getattr(patches, "image_open", None) and hasattr(patches, "_image_open"):
        Image.open = patches._image_open
    if torch.save is getattr(patches, "torch_save", None) and hasattr(patches, "_torch_save"):
        torch.save = patches._torch_save


@contextmanager
def _offline_patches(amp: bool) -> Iterator[None]:
    """Stop the two places where ultralytics' trainer reaches for the network: the font check in
    ``check_det_dataset`` (plots are off, no font needed) and the AMP self-check, which downloads a model
    (skipped: AMP is simply on for cuda, off for cpu)."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as engine_trainer

    saved_font, saved_amp = data_utils.check_font, engine_trainer.check_amp
    data_utils.check_font = lambda *a, **k: None  # type: ignore[assignment]
    engine_trainer.check_amp = lambda *a, **k: amp  # type: ignore[assignment]
    ul_log = logging.getLogger("ultralytics")
    level = ul_log.level
    ul_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        data_utils.check_font, engine_trainer.check_amp = saved_font, saved_amp
        ul_log.setLevel(level)


def _write_yolo_data(root: Path, info: DatasetInfo, workdir: Path) -> Path:
    """A data.yaml for ultralytics whose train/val are list files of absolute image paths (so a carved
    val split needs no file moved)."""
    import yaml

    lists = {}
    for split in ("train", "val"):
        files = info.splits.get(split) or info.splits["train"]
        lst = workdir / f"{split}.txt"
        lst.write_text("".join(f"{(root / f).resolve()}\n" for f in files))
        lists[split] = str(lst)
    data = {
        "path": str(root.resolve()),
        "train": lists["train"],
        "val": lists["val"],
        "names": dict(enumerate(info.classes)),
    }
    path = workdir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path


def _loss_total(tloss: Any) -> float:
    """ultralytics' running mean loss: a dict of tensors (8.4), a tensor (8.3) or None."""
    if tloss is None:
        return float("nan")
    if isinstance(tloss, Mapping):
        return float(sum(float(v) for v in tloss.values()))
    return float(torch.as_tensor(tloss).sum())


class _Clock:
    def __init__(self) -> None:
        self.first: float | None = None
        self.t0 = self.last = time.perf_counter()
        self.batch = 0
        self.images = 0
        self.train_time = 0.0


def _ultralytics_device(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return str(dev.index if dev.index is not None else 0)
    return "cpu"


def train_detector(
    module: nn.Module | None,
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
    model_cfg: str = "yolov8n.yaml",
    workdir: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train a YOLOv8 detector with ultralytics' own trainer, offline, from random weights.

    ``module``: an ultralytics ``DetectionModel`` with ``nc == len(info.classes)`` (e.g. the yolov8n
    preset), or None to build ``model_cfg``.  Callbacks as in :func:`train_classifier`; the epoch
    progress carries ``map50`` / ``map50_95`` and ``val_accuracy`` is mAP50 (so is
    ``best_val_accuracy``).  Checkpoints hold the EMA weights (the ones ultralytics validates).

    Limits: ``label_smoothing`` is ignored (ultralytics has none); ``schedule="step"`` maps to
    ultralytics' linear decay; ``color_jitter`` drives HSV augmentation; a resume restores the weights
    and runs the remaining epochs, but optimiser/EMA state restarts (not bit-exact, unlike the
    classifier).  ultralytics writes its label caches next to the dataset's labels.
    """
    t_call = time.perf_counter()
    hp = validate_hyperparameters(hp)
    progress = progress or _noop_progress
    checkpoint = checkpoint or _noop_checkpoint
    should_stop = should_stop or _never
    if info.task != "detection":
        raise ValidationFailed("train_detector needs a detection dataset", {"task": info.task})
    trainer_cls = _import_ultralytics_trainer()
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    done = 0
    history: list[dict[str, Any]] = []
    best_acc: float | None = None
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    resume_state: dict[str, torch.Tensor] | None = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        done = int(ckpt["epoch"])
        if start_epoch not in (0, done):
            raise ValidationFailed(
                f"start_epoch={start_epoch} but the checkpoint is at epoch {done}", {"field": "start_epoch"}
            )
        resume_state = ckpt["model"]
        history = list(ckpt["history"])
        best_acc, best_epoch = ckpt["best_val_accuracy"], int(ckpt["best_epoch"])
        best_state = ckpt.get("best_state") or (resume_state if best_epoch == done else None)
    elif start_epoch:
        raise ValidationFailed("start_epoch needs resume_from (a checkpoint)", {"field": "start_epoch"})

    nc = len(info.classes)
    if module is None:
        with _offline_patches(False):
            module = DetectionModel(model_cfg, nc=nc, verbose=False)
    if not isinstance(module, DetectionModel):
        raise ValidationFailed("detection training needs an ultralytics DetectionModel", {"reason": "model"})
    if int(getattr(module, "nc", nc)) != nc:
        raise ValidationFailed(
            f"the model has {module.nc} classes but the dataset has {nc}", {"reason": "num_classes mismatch"}
        )
    for m in module.modules():
        if isinstance(m, Detect):
            m.export = False  # the preset builds it in export mode
    if resume_state is not None:
        module.load_state_dict(resume_state)
    remaining = hp.epochs - done
    size = hp.image_size
    if size is None:
        size = int((preprocessing or Preprocessing(image_size=[640, 640])).image_size[0])
    cuda = torch.device(device).type == "cuda"
    workers = resolve_num_workers(hp.num_workers)

    def result(images_per_s: float, first_step: float) -> TrainResult:
        state = (
            best_state
            if best_state is not None
            else {k: v.detach().cpu() for k, v in module.state_dict().items()}
        )
        return TrainResult(
            epochs_done=int(history[-1]["epoch"]) if history else done,
            best_val_accuracy=best_acc,
            best_epoch=best_epoch,
            final_loss=float(history[-1]["loss"]) if history else float("nan"),
            history=history,
            images_per_s=images_per_s,
            first_step_s=first_step,
            state_dict=save_bytes(state),
            stopped_early=bool(history and history[-1].get("stopped_early")),
            resumed_from_epoch=done,
            device=str(torch.device(device)),
            amp=cuda,
            num_workers=workers,
        )

    if remaining <= 0:
        return result(0.0, 0.0)

    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="cvops-yolo-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_yaml = _write_yolo_data(Path(dataset_root), info, work)
        cj = hp.color_jitter
        overrides: dict[str, Any] = {
            "model": model_cfg,
            "data": str(data_yaml),
            "epochs": remaining,
            "batch": hp.batch_size,
            "imgsz": size,
            "device": _ultralytics_device(device),
            "workers": workers,
            "project": str(work),
            "name": "run",
            "exist_ok": True,
            "plots": False,
            "amp": cuda,
            "verbose": False,
            "pretrained": False,
            "val": True,
            "save": False,
            "seed": hp.seed,
            "deterministic": True,
            "optimizer": _OPTIMIZERS[hp.optimizer],
            "lr0": hp.lr,
            "momentum": hp.momentum,
            "weight_decay": hp.weight_decay,
            "warmup_epochs": 0 if done else hp.warmup_epochs,
            "cos_lr": hp.schedule == "cosine",
            "fliplr": 0.5 if hp.augment_flip else 0.0,
            "scale": 0.5 if hp.augment_scale_crop else 0.0,
            "hsv_h": cj / 10,
            "hsv_s": cj,
            "hsv_v": cj,
            "patience": hp.patience,
        }
        with _offline_patches(cuda):
            trainer = trainer_cls(overrides=overrides)
        trainer.model = module
        # no pickled ultralytics checkpoints: our checkpoint callback keeps the state instead
        trainer.save_model = lambda: False
        trainer.final_eval = lambda: None
        clock = _Clock()
        emitted: set[int] = set()

        def on_train_epoch_start(t: Any) -> None:
            clock.t0 = clock.last = time.perf_counter()
            clock.batch = 0

        def on_train_batch_start(t: Any) -> None:
            if should_stop():
                raise TrainingCancelled(done + t.epoch + 1, clock.batch + 1)

        def on_train_batch_end(t: Any) -> None:
            if clock.first is None:
                clock.first = time.perf_counter() - t_call
            clock.batch += 1
            now = time.perf_counter()
            if now - clock.last >= BATCH_PROGRESS_INTERVAL_S:
                clock.last = now
                progress(
                    {
                        "phase": "batch",
                        "epoch": done + t.epoch + 1,
                        "batch": clock.batch,
                        "batches": len(t.train_loader),
                        "loss": _loss_total(t.tloss),
                        "images_per_s": round(clock.batch * hp.batch_size / max(now - clock.t0, 1e-9), 2),
                    }
                )

        def on_train_epoch_end(t: Any) -> None:
            clock.images += len(t.train_loader.dataset)
            clock.train_time += time.perf_counter() - clock.t0

        def on_fit_epoch_end(t: Any) -> None:
            nonlocal best_acc, best_epoch, best_state
            epoch = done + t.epoch + 1
            if epoch in emitted or epoch > hp.epochs:
                return
            emitted.add(epoch)
            metrics = t.metrics or {}
            map50 = float(metrics.get(MAP50_KEY, 0.0))
            ema = t.ema.ema if t.ema is not None else t.model
            state = {
                k: v.detach().to("cpu", copy=True).float()
                if v.is_floating_point()
                else v.detach().cpu().clone()
                for k, v in ema.state_dict().items()
            }
            if best_acc is None or map50 > best_acc:
                best_acc, best_epoch, best_state = map50, epoch, state
            elapsed = max(time.perf_counter() - clock.t0, 1e-9)
            record = {
                "phase": "epoch",
                "epoch": epoch,
                "epochs": hp.epochs,
                "loss": round(_loss_total(t.tloss), 6),
                "val_accuracy": round(map50, 6),
                "map50": round(map50, 6),
                "map50_95": round(float(metrics.get("metrics/mAP50-95(B)", 0.0)), 6),
                "lr": float(t.optimizer.param_groups[0]["lr"]),
                "images_per_s": round(len(t.train_loader.dataset) / elapsed, 2),
                "best_val_accuracy": best_acc,
                "best_epoch": best_epoch,
                "stopped_early": bool(t.stop and epoch < hp.epochs),
            }
            history.append(record)
            data = save_bytes(
                {
                    "format": CHECKPOINT_FORMAT,
                    "task": "detection",
                    "epoch": epoch,
                    "model": state,
                    "best_val_accuracy": best_acc,
                    "best_epoch": best_epoch,
                    "best_state": None if best_epoch == epoch else best_state,
                    "history": history,
                    "hyperparameters": hyperparameters_dict(hp),
                    "classes": list(info.classes),
                }
            )
            checkpoint(
                epoch,
                data,
                {k: float(v) for k, v in record.items() if isinstance(v, int | float) and k != "epochs"},
            )
            progress(dict(record))

        for name, fn in (
            ("on_train_epoch_start", on_train_epoch_start),
            ("on_train_batch_start", on_train_batch_start),
            ("on_train_batch_end", on_train_batch_end),
            ("on_train_epoch_end", on_train_epoch_end),
            ("on_fit_epoch_end", on_fit_epoch_end),
        ):
            trainer.add_callback(name, fn)
        with _offline_patches(cuda):
            trainer.train()
        return result(
            round(clock.images / clock.train_time, 2) if clock.train_time > 0 else 0.0,
            round(clock.first, 4) if clock.first is not None else 0.0,
        )
    finally:
        undo_ultralytics_patches()
        if owned:
            shutil.rmtree(work, ignore_errors=True)
