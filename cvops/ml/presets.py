"""Model presets: named architectures built locally with random weights (nothing is downloaded).

``build_preset(name, ...)`` returns a :class:`BuiltModel`: the ``nn.Module`` in eval mode, its task, the
example input shape ``[1, 3, H, W]``, labels and the :class:`~cvops.events.schema.Preprocessing` an
inference client must apply.

Classification presets are torchvision architectures (``weights=None``) plus ``tiny_cnn``, a three-layer
CNN for very quick tests.  ``yolov8n`` is built by ultralytics from its architecture YAML
(``DetectionModel("yolov8n.yaml", nc=...)``); its Detect head is put in *export mode*, so the module
returns one tensor ``(N, 4 + nc, anchors)`` — see :func:`cvops.ml.convert.convert_module` for the layout.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.spec import (
    CLASSIFICATION,
    DETECTION,
    MAX_CLASSES,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    SPECS,
    TASKS,
    PresetSpec,
    default_labels,
    default_preprocessing,
)

log = logging.getLogger(__name__)

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "MAX_CLASSES",
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "PRESETS",
    "SPECS",
    "TASKS",
    "BuiltModel",
    "PresetSpec",
    "TinyCNN",
    "build_preset",
    "default_labels",
    "default_preprocessing",
    "import_ultralytics_tasks",
    "load_state_dict_file",
    "load_weights",
    "parameter_count",
    "preset_names",
    "unwrap_state_dict",
]


@dataclass(frozen=True)
class BuiltModel:
    """A preset (or an architecture with loaded weights) ready for export."""

    name: str
    module: nn.Module
    task: str
    input_shape: list[int]  # [1, 3, H, W]
    labels: list[str]
    preprocessing: Preprocessing
    num_classes: int
    image_size: int
    parameter_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ tiny_cnn


def _relu_pool() -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=True), nn.MaxPool2d(2))


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks, global max pool, linear head: ~25k parameters.

    Max pooling (not stride-2 convolutions and a global average) is what lets a net this small learn
    shapes at all: with strided convs and an average pool it stays at chance on the drawn-shapes
    dataset.  The pools have no weights, so the state_dict keys are those of the plain blocks."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            _relu_pool(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            _relu_pool(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            _relu_pool(),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------- ultralytics

_ULTRALYTICS_CONFIG_DIR = Path(tempfile.gettempdir()) / "cvops-ultralytics"


def import_ultralytics_tasks() -> Any:
    """Import ``ultralytics.nn.tasks`` offline, undoing the process-wide patches ultralytics applies.

    ``YOLO_OFFLINE=1`` stops its online probe; ``YOLO_CONFIG_DIR`` (if unset) points its settings file at a
    temp folder instead of the user's home.  ultralytics replaces ``PIL.Image.open`` and ``torch.save``
    with wrappers at import time; both are restored to the originals.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        _ULTRALYTICS_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(_ULTRALYTICS_CONFIG_DIR)
    from PIL import Image

    pil_open = Image.open
    torch_save = torch.save
    try:
        import ultralytics.nn.tasks as tasks
    except ImportError as exc:
        raise ValidationFailed(
            "the yolov8n preset needs ultralytics: pip install 'cvops[yolo]'", {"missing": "ultralytics"}
        ) from exc
    finally:
        Image.open = pil_open  # type: ignore[assignment]
        torch.save = torch_save
    return tasks


def _build_yolov8n(num_classes: int, image_size: int) -> nn.Module:
    tasks = import_ultralytics_tasks()
    from ultralytics.nn.modules.head import Detect

    ul_log = logging.getLogger("ultralytics")
    level = ul_log.level
    ul_log.setLevel(logging.WARNING)  # "Overriding model.yaml nc=80 with nc=..." on every build
    try:
        model: nn.Module = tasks.DetectionModel("yolov8n.yaml", nc=num_classes, verbose=False)
    finally:
        ul_log.setLevel(level)
    for m in model.modules():
        if isinstance(m, Detect):
            m.export = True  # forward returns the decoded tensor alone, not (y, raw dict)
            m.format = "onnx"  # type: ignore[assignment]
            m.dynamic = False
    return model


# -------------------------------------------------------------------------------------------- registry


def _torchvision(arch: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, image_size: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)  # type: ignore[no-any-return]

    return build


PRESETS: dict[str, Callable[[int, int], nn.Module]] = {  # in spec.PRESET_NAMES order
    "resnet50": _torchvision("resnet50"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "yolov8n": _build_yolov8n,
    "resnet18": _torchvision("resnet18"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "tiny_cnn": lambda num_classes, image_size: TinyCNN(num_classes),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationFailed(f"{name} must be an integer in {lo}..{hi}", {name: value})
    return value


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``; also accepts ``{"state_dict": {...}}`` / ``{"model": {...}}``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a refused upload
        text = str(exc)
        reason = _weights_only_reason(text) or type(exc).__name__
        with open(path, "rb") as f:
            head = f.read(4)
        # a pickle (protocol 2+) or a torch.save zip that the weights-only unpickler refused
        if head[:1] == b"\x80" or head.startswith(b"PK") or "global" in text.lower():
            raise ValidationFailed(
                "pickled Python objects are refused: only tensors (a state_dict saved with torch.save) "
                "load, with torch.load(weights_only=True)",
                {"reason": reason},
            ) from exc
        raise ValidationFailed(
            "not a readable torch state_dict file (corrupt, or not written by torch.save)", {"reason": reason}
        ) from exc
    return unwrap_state_dict(obj)


def _weights_only_reason(text: str) -> str:
    """The informative line of torch's weights_only error (which global was refused)."""
    for line in text.splitlines():
        if "WeightsUnpickler error" in line or "Unsupported" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else ""


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValidationFailed("the file is not a state_dict (a non-empty mapping of name -> tensor)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValidationFailed("the state_dict holds entries that are not tensors", {"keys": bad[:10]})
    return dict(obj)


def load_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)``; a mismatch is a :class:`ValidationFailed` naming the keys."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValidationFailed(
            "the weights do not fit the architecture", {"reason": str(exc)[:2000]}
        ) from exc


def build_preset(
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    weights_path: Path | str | None = None,
    *,
    labels: list[str] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> BuiltModel:
    """Build preset ``name`` with random weights (or ``weights_path`` / ``state_dict`` loaded strictly).

    ``num_classes`` defaults to ``len(labels)`` or the preset's default (1000 for ImageNet-style
    classifiers, 80 for yolov8n, 10 for tiny_cnn); ``image_size`` (square) to the preset's default
    (224, 640 for yolov8n, 32 for tiny_cnn).  Random weights come from ``seed`` (the global RNG is left
    as it was), so a preset request is reproducible.  Unknown names raise :class:`ValidationFailed`.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise ValidationFailed(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}", {"known": list(PRESETS)}
        )
    if num_classes is None:
        num_classes = len(labels) if labels else spec.default_num_classes
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    if labels is None:
        labels = default_labels(num_classes)
    elif len(labels) != num_classes or not all(isinstance(x, str) and x for x in labels):
        raise ValidationFailed(
            "labels must be non-empty strings, one per class",
            {"labels": len(labels), "num_classes": num_classes},
        )
    size = spec.default_image_size if image_size is None else image_size
    size = _check_int("image_size", size, spec.min_image_size, MAX_IMAGE_SIZE)
    if size % spec.multiple_of:
        raise ValidationFailed(
            f"image_size for {name} must be a multiple of {spec.multiple_of}", {"image_size": size}
        )
    with torch.random.fork_rng(devices=[]):  # seeded: the same request builds the same weights
        torch.manual_seed(seed)
        module = PRESETS[name](num_classes, size)
    if weights_path is not None:
        state_dict = load_state_dict_file(Path(weights_path))
    if state_dict is not None:
        load_weights(module, state_dict)
    module.eval()
    log.debug("built preset %s: %d classes, %dpx", name, num_classes, size)
    return BuiltModel(
        name=name,
        module=module,
        task=spec.task,
        input_shape=[1, 3, size, size],
        labels=list(labels),
        preprocessing=default_preprocessing(spec.task, size),
        num_classes=num_classes,
        image_size=size,
        parameter_count=parameter_count(module),
    )


assert tuple(PRESETS) == tuple(SPECS)  # every spec has a builder, in the same order
