"""Training (pure torch: no Ray, no HTTP); the Trainer actor wraps it.  This module is the one name to
import from; the parts live in their own modules:

* :mod:`cvops.ml.hyperparameters` — :class:`Hyperparameters`, validated by
  :func:`validate_hyperparameters` (torch-free: the gateway and the GA use it).
* :mod:`cvops.ml.train_common` — results, checkpoints, RNG, transforms, optimiser.
* :mod:`cvops.ml.classifier` — :func:`train_classifier`, the seeded classification loop.
* :mod:`cvops.ml.detector` — :func:`train_detector`, YOLOv8 through ultralytics' trainer.
"""

from __future__ import annotations

from cvops.ml.classifier import train_classifier
from cvops.ml.detector import MAP50_KEY, train_detector, undo_ultralytics_patches
from cvops.ml.hyperparameters import (
    DEFAULTS,
    HYPERPARAMETER_FIELDS,
    Hyperparameters,
    hyperparameters_dict,
    is_default,
    lr_factor,
    resolve_num_workers,
    validate_hyperparameters,
)
from cvops.ml.train_common import (
    CHECKPOINT_FORMAT,
    TrainingCancelled,
    TrainResult,
    build_optimizer,
    build_transforms,
    image_size_of,
    load_bytes,
    load_checkpoint,
    load_state_dict_bytes,
    save_bytes,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULTS",
    "HYPERPARAMETER_FIELDS",
    "MAP50_KEY",
    "Hyperparameters",
    "TrainResult",
    "TrainingCancelled",
    "build_optimizer",
    "build_transforms",
    "hyperparameters_dict",
    "image_size_of",
    "is_default",
    "load_bytes",
    "load_checkpoint",
    "load_state_dict_bytes",
    "lr_factor",
    "resolve_num_workers",
    "save_bytes",
    "train_classifier",
    "train_detector",
    "undo_ultralytics_patches",
    "validate_hyperparameters",
]
