"""What both training loops share: results, checkpoint (de)serialisation, RNG, transforms, optimiser.

Determinism: every epoch starts by reseeding python ``random``, numpy, torch (CPU and CUDA) and the
DataLoader's generator from ``(seed, epoch)``.  A run resumed from the epoch-*k* checkpoint therefore
replays epochs *k+1..n* exactly as the uninterrupted run would (bit-identical on CPU with
``num_workers=0``; with workers, persistent worker processes keep their own RNG streams, so augmentations
of a resumed run may differ).  RNG states are stored in the checkpoint as tensors all the same.
"""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import numpy as np
import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.hyperparameters import Hyperparameters

CHECKPOINT_FORMAT = "cvops-checkpoint-1"
BATCH_PROGRESS_INTERVAL_S = 2.0

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


def noop_progress(_: dict[str, Any]) -> None:
    return None


def noop_checkpoint(_epoch: int, _data: bytes, _metrics: dict[str, float]) -> None:
    return None


def never() -> bool:
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


def resume_checkpoint(resume_from: bytes | None, start_epoch: int) -> tuple[dict[str, Any] | None, int]:
    """The checkpoint a trainer resumes from and the epoch it is at (``None, 0`` without one).
    ValidationFailed if ``start_epoch`` is neither 0 nor that epoch, or is given without a checkpoint."""
    if resume_from is None:
        if start_epoch:
            raise ValidationFailed("start_epoch needs resume_from (a checkpoint)", {"field": "start_epoch"})
        return None, 0
    ckpt = load_checkpoint(resume_from)
    done = int(ckpt["epoch"])
    if start_epoch not in (0, done):
        raise ValidationFailed(
            f"start_epoch={start_epoch} but the checkpoint is at epoch {done}", {"field": "start_epoch"}
        )
    return ckpt, done


def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The model weights in :attr:`TrainResult.state_dict` (or a checkpoint's, whichever is given)."""
    obj = load_bytes(data)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["best_state"] if obj.get("best_state") is not None else obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValidationFailed("not a state_dict", {"reason": "bad state_dict"})
    return obj


# ----------------------------------------------------------------------------------------------- RNG


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def reseed(seed: int, generator: torch.Generator) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also every CUDA device
    generator.manual_seed(seed)


def seed_worker(_worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
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


def restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
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


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
