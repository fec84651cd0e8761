"""Training hyperparameters: the validated knob set, torch-free (the gateway and the GA import it).

:class:`Hyperparameters` carries its bounds in the type; :func:`validate_hyperparameters` checks them and
names the offending field.  :func:`lr_factor` is the learning-rate schedule both training loops use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from cvops.errors import ValidationFailed


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
    # detection only, named as ultralytics names them (its tuner's keys); None = today's behaviour
    # (ultralytics' default, or the value derived from augment_flip / augment_scale_crop / color_jitter)
    lrf: Annotated[float, msgspec.Meta(ge=0.001, le=1.0)] | None = None  # final lr = lr * lrf
    box: Annotated[float, msgspec.Meta(ge=0.0, le=50.0)] | None = None  # box loss gain
    cls: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] | None = None  # class loss gain
    dfl: Annotated[float, msgspec.Meta(ge=0.0, le=20.0)] | None = None  # distribution focal loss gain
    hsv_h: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    hsv_s: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    hsv_v: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    degrees: Annotated[float, msgspec.Meta(ge=0.0, le=180.0)] | None = None
    translate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    scale: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    fliplr: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None  # flip probability
    mosaic: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    mixup: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None


DEFAULTS = Hyperparameters()
HYPERPARAMETER_FIELDS: tuple[str, ...] = Hyperparameters.__struct_fields__
# the detection-only knobs, passed to ultralytics' trainer under the same names when set
DETECTION_KEYS: tuple[str, ...] = (
    "lrf",
    "box",
    "cls",
    "dfl",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "fliplr",
    "mosaic",
    "mixup",
)


def detection_overrides(hp: Hyperparameters) -> dict[str, float]:
    """The ultralytics overrides the detection-only knobs set (unset knobs change nothing)."""
    return {key: value for key in DETECTION_KEYS if (value := getattr(hp, key)) is not None}


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
