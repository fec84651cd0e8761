"""Detection training: YOLOv8 through ultralytics' own trainer, offline, with the classifier's callbacks."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml import train_common as tc
from cvops.ml.datasets import DatasetInfo
from cvops.ml.hyperparameters import (
    Hyperparameters,
    detection_overrides,
    hyperparameters_dict,
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
    never,
    noop_checkpoint,
    noop_progress,
    resume_checkpoint,
    save_bytes,
)

log = logging.getLogger(__name__)

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
    progress = progress or noop_progress
    checkpoint = checkpoint or noop_checkpoint
    should_stop = should_stop or never
    if info.task != "detection":
        raise ValidationFailed("train_detector needs a detection dataset", {"task": info.task})
    trainer_cls = _import_ultralytics_trainer()
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    history: list[dict[str, Any]] = []
    best_acc: float | None = None
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    resume_state: dict[str, torch.Tensor] | None = None
    ckpt, done = resume_checkpoint(resume_from, start_epoch)
    if ckpt is not None:
        resume_state = ckpt["model"]
        history = list(ckpt["history"])
        best_acc, best_epoch = ckpt["best_val_accuracy"], int(ckpt["best_epoch"])
        best_state = ckpt.get("best_state") or (resume_state if best_epoch == done else None)

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
        overrides.update(detection_overrides(hp))  # the knobs an evolution tunes (ultralytics' keys)
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
            if now - clock.last >= tc.BATCH_PROGRESS_INTERVAL_S:
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
