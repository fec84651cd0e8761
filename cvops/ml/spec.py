"""Static facts about models that the gateway and the cores need without loading any framework:
tasks, the presets (as data), which presets have published weights, and the engine names.

Nothing here imports torch, torchvision, onnxruntime or ray; :mod:`cvops.ml.presets` builds the
modules these specs describe.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing

CLASSIFICATION = "classification"
DETECTION = "detection"
TASKS = (CLASSIFICATION, DETECTION)

MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096
MAX_CLASSES = 100_000

ENGINE_NAMES: tuple[str, ...] = (
    "onnxruntime-cpu",
    "onnxruntime-cpu-int8",
    "onnxruntime-cuda",
    "onnxruntime-cuda-fp16",
    "onnxruntime-tensorrt",
    "tensorrt-fp16",
    "torch-cpu",
    "torch-cuda",
    "torch-cuda-fp16",
    "torch-cuda-compiled",
)


#: A deployment's batching when its request names none and no benchmark chose a batch for its engine.
CPU_MAX_BATCH, GPU_MAX_BATCH, DEFAULT_MAX_WAIT_MS = 8, 32, 5.0


def default_max_batch(engine: str, selected_engine: str | None, selected_batch: int | None) -> int:
    """``max_batch`` for a deployment that names none: the batch size the model's last benchmark
    selected, when it selected this engine; else by the engine's device (measured: a GPU engine serves
    more at 32 than at 8 — scripts/bench_gpu_serving.py — and a CPU engine gains nothing above 8)."""
    if selected_batch and selected_engine == engine:
        return max(1, min(256, selected_batch))
    return GPU_MAX_BATCH if any(tag in engine for tag in ("cuda", "tensorrt")) else CPU_MAX_BATCH


@dataclass(frozen=True)
class PresetSpec:
    """Static facts about a preset (what the gateway can list without building anything)."""

    name: str
    task: str
    default_image_size: int
    default_num_classes: int
    min_image_size: int = 32
    multiple_of: int = 1  # image sizes must be a multiple of this (YOLO strides)
    description: str = ""


SPECS: dict[str, PresetSpec] = {
    "resnet50": PresetSpec("resnet50", CLASSIFICATION, 224, 1000, description="torchvision ResNet-50"),
    "efficientnet_b0": PresetSpec(
        "efficientnet_b0", CLASSIFICATION, 224, 1000, description="torchvision EfficientNet-B0"
    ),
    "yolov8n": PresetSpec(
        "yolov8n", DETECTION, 640, 80, min_image_size=64, multiple_of=32, description="ultralytics YOLOv8n"
    ),
    "resnet18": PresetSpec("resnet18", CLASSIFICATION, 224, 1000, description="torchvision ResNet-18"),
    "mobilenet_v3_small": PresetSpec(
        "mobilenet_v3_small", CLASSIFICATION, 224, 1000, description="torchvision MobileNetV3-Small"
    ),
    "tiny_cnn": PresetSpec(
        "tiny_cnn",
        CLASSIFICATION,
        32,
        10,
        min_image_size=MIN_IMAGE_SIZE,
        description="3-layer CNN for quick tests",
    ),
}
PRESET_NAMES: tuple[str, ...] = tuple(SPECS)

# presets whose published weights ``"pretrained": true`` can load (cvops.ml.pretrained fetches them)
TORCHVISION_PRESETS = ("resnet50", "efficientnet_b0", "resnet18", "mobilenet_v3_small")
PUBLISHED_PRESETS: tuple[str, ...] = (*TORCHVISION_PRESETS, "yolov8n")


def check_published(preset: str) -> None:
    """ValidationFailed (422) for a preset without published pre-trained weights."""
    if preset not in PUBLISHED_PRESETS:
        raise ValidationFailed(
            f"no published pre-trained weights for the preset {preset!r}",
            {"field": "pretrained", "presets_with_weights": list(PUBLISHED_PRESETS)},
        )


def default_labels(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def default_preprocessing(task: str, image_size: int | list[int]) -> Preprocessing:
    """ImageNet mean/std and a plain resize for classification; letterbox, mean 0, std 1 for detection."""
    hw = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    if task == DETECTION:
        return Preprocessing(image_size=hw, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], resize="letterbox")
    return Preprocessing(image_size=hw)
