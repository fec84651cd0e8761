"""Recognise and safely load an uploaded model file (DESIGN.md §5: an uploaded file is data, never code).

Accepted: ONNX, ``torch.export`` archives (``.pt2``, the graph checked against an operator allow-list),
state_dicts (``.pt``/``.pth`` loaded only with ``torch.load(weights_only=True)`` into a named
architecture), Ultralytics YOLOv8n checkpoints (``torch.load(weights_only=True)`` with an explicit
allow-list of the classes such a checkpoint holds) and TensorFlow (``.keras``, ``.h5``, a zipped
SavedModel; needs the optional extra).  Refused before anything is deserialised: TorchScript (it is
code: its ``__setstate__`` and methods run inside TorchScript's loader), pickled modules and any other
pickle needing a general unpickler, and ``.pt2`` archives whose pickles reference non-torch globals,
whose symbolic expressions or guards are not plain arithmetic, or that carry compiled code.

After acceptance only what cvops itself wrote from the verified model is kept and loaded again (the
ONNX, and a state_dict or a re-saved ``.pt2`` as the torch form): see :func:`save_torch_form`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.ml.export_check import (
    check_graph_targets,
    check_torch_export_archive,
    exported_input_shape,
    load_exported_program,
)
from cvops.ml.presets import (
    SPECS,
    build_preset,
    load_state_dict_file,
    load_weights,
)

# recognised by cvops.ml.sniff; loaded here (callers may name either module)
from cvops.ml.sniff import (
    FORMATS,
    MAX_BATCH,
    MAX_HW,
    MIN_HW,
    ONNX,
    STATE_DICT,
    TENSORFLOW,
    TF_MISSING,
    TORCH_EXPORT,
    TORCH_FORMATS,
    TORCHSCRIPT,
    TORCHSCRIPT_REFUSED,
    ULTRALYTICS,
    detect_format,
    labels_for,
    validate_input_shape,
    zip_names,
)

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "LoadedTorch",
    "MAX_BATCH",
    "MAX_HW",
    "MAX_SAVED_MODEL_BYTES",
    "MIN_HW",
    "ONNX",
    "STATE_DICT",
    "TENSORFLOW",
    "TF_MISSING",
    "TORCHSCRIPT",
    "TORCHSCRIPT_REFUSED",
    "TORCHVISION_HEADS",
    "TORCH_EXPORT",
    "TORCH_FORMATS",
    "ULTRALYTICS",
    "ULTRALYTICS_ALLOWED",
    "UltralyticsCheckpoint",
    "check_graph_targets",
    "check_onnx",
    "check_torch_export_archive",
    "detect_format",
    "exported_input_shape",
    "infer_num_classes",
    "known_archs",
    "labels_for",
    "load_exported_program",
    "load_state_dict_model",
    "load_torch_model",
    "load_torch_source",
    "load_ultralytics_model",
    "read_ultralytics_checkpoint",
    "save_torch_form",
    "tensorflow_available",
    "tensorflow_to_onnx",
    "torchvision_archs",
    "validate_input_shape",
]

MAX_SAVED_MODEL_BYTES = 8 << 30  # a zipped SavedModel may unpack to at most 8 GiB

# -------------------------------------------------------------------------------------------- ONNX


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph, its sparse initializers, node attributes and subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            for sp in a.sparse_tensors:
                yield sp.values
                yield sp.indices
            if a.HasField("g"):
                yield from _graph_tensors(a.g)
            for g in a.graphs:
                yield from _graph_tensors(g)


def _external_locations(model: Any) -> Iterator[str]:
    import onnx

    tensors = list(_graph_tensors(model.graph))
    for fn in model.functions:
        tensors.extend(_node_tensors(fn.node))
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield next((e.value for e in t.external_data if e.key == "location"), "")


def _escapes(location: str) -> bool:
    if not location:
        return True
    if location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        return True
    parts = re.split(r"[\\/]", location)
    return ".." in parts


def check_onnx(path: Path | str, *, allow_external_data: bool = False) -> Any:
    """Load (without external data) and check an ONNX file; returns the ``onnx.ModelProto``.

    External data whose location is absolute or leaves the model's folder is always refused; uploads
    must be self-contained, so any external data is refused unless ``allow_external_data``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(
            "not a valid ONNX model (truncated or corrupt protobuf)", {"reason": str(exc)[:300]}
        ) from exc
    if not model.graph.node or model.ir_version < 3:
        raise ValidationFailed(
            "not a valid ONNX model (no graph; truncated or not ONNX at all)",
            {"ir_version": model.ir_version},
        )
    locations = list(_external_locations(model))
    bad = [loc for loc in locations if _escapes(loc)]
    if bad:
        raise ValidationFailed(
            "ONNX external data location escapes the model folder", {"locations": [b[:200] for b in bad[:5]]}
        )
    if locations and not allow_external_data:
        raise ValidationFailed(
            "ONNX external data is not supported: upload a single self-contained .onnx file",
            {"locations": locations[:5]},
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ValidationFailed("the ONNX model fails onnx.checker", {"reason": str(exc)[:500]}) from exc
    return model


# -------------------------------------------------------------------------------------- state dict

TORCHVISION_HEADS = ("fc", "classifier", "head", "heads")


def torchvision_archs() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def known_archs() -> list[str]:
    """Architectures a state_dict can name: torchvision classifiers plus cvops presets."""
    return sorted(set(torchvision_archs()) | set(SPECS))


def infer_num_classes(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of classes from the head weight's first dimension."""
    if arch == "yolov8n":
        for k, v in state_dict.items():
            if re.search(r"\.cv3\.\d+\.2\.weight$", k) and v.ndim == 4:
                return int(v.shape[0])
    else:
        found: int | None = None
        for k, v in state_dict.items():
            if k.split(".", 1)[0] in TORCHVISION_HEADS and k.endswith("weight") and v.ndim in (2, 4):
                found = int(v.shape[0])
        if found is not None:
            return found
    raise ValidationFailed(
        f"cannot infer num_classes from the state_dict for arch {arch!r}; pass num_classes",
        {"arch": arch},
    )


def load_state_dict_model(
    path: Path | str, arch: str | None, num_classes: int | None = None
) -> tuple[nn.Module, int]:
    """``torch.load(weights_only=True)`` + build ``arch`` + ``load_state_dict(strict=True)``."""
    if not arch:
        raise ValidationFailed(
            "a state_dict upload needs arch (the architecture to load it into, e.g. resnet18)",
            {"known_archs": known_archs()},
        )
    if arch not in SPECS and arch not in torchvision_archs():
        raise ValidationFailed(f"unknown arch {arch!r}", {"known_archs": known_archs()})
    state_dict = load_state_dict_file(Path(path))
    nc = num_classes if num_classes is not None else infer_num_classes(arch, state_dict)
    if arch in SPECS:
        built = build_preset(arch, num_classes=nc, state_dict=state_dict)
        return built.module, nc
    import torchvision

    try:
        module = torchvision.models.get_model(arch, weights=None, num_classes=nc)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"cannot build arch {arch!r}", {"reason": str(exc)[:300]}) from exc
    load_weights(module, state_dict)
    return module.eval(), nc


# ------------------------------------------------------------------------------------------ loader


@dataclass
class LoadedTorch:
    """A torch source ready for export: a module (or an ExportedProgram) and what is known of its input."""

    module: Any  # nn.Module | ExportedProgram
    fmt: str
    input_shape: list[int] | None = None
    dynamic_batch: bool = True
    num_classes: int | None = None
    arch: str | None = None
    labels: list[str] | None = None

    @property
    def is_exported_program(self) -> bool:
        return self.fmt == TORCH_EXPORT

    def callable(self) -> Any:
        return self.module.module() if self.is_exported_program else self.module


def load_torch_source(
    path: Path | str, fmt: str, arch: str | None = None, num_classes: int | None = None
) -> LoadedTorch:
    if fmt == TORCHSCRIPT:
        raise ValidationFailed(TORCHSCRIPT_REFUSED, {"format": TORCHSCRIPT})
    if fmt == TORCH_EXPORT:
        ep = load_exported_program(path)
        shape, dynamic = exported_input_shape(ep)
        return LoadedTorch(ep, fmt, input_shape=shape, dynamic_batch=dynamic)
    if fmt == STATE_DICT:
        module, nc = load_state_dict_model(path, arch, num_classes)
        size = SPECS[arch].default_image_size if arch in SPECS else None
        sd_shape = [1, 3, size, size] if size else None
        return LoadedTorch(module, fmt, input_shape=sd_shape, num_classes=nc, arch=arch)
    if fmt == ULTRALYTICS:
        module, nc, labels = load_ultralytics_model(path)
        size = SPECS["yolov8n"].default_image_size
        return LoadedTorch(
            module, fmt, input_shape=[1, 3, size, size], num_classes=nc, arch="yolov8n", labels=labels
        )
    raise ValidationFailed(f"{fmt!r} is not a torch format", {"formats": list(TORCH_FORMATS)})


def load_torch_model(
    path: Path | str, fmt: str, arch: str | None = None, num_classes: int | None = None
) -> nn.Module:
    """A runnable module (eval mode) from a ``.pt2``, state_dict or Ultralytics upload."""
    loaded = load_torch_source(path, fmt, arch, num_classes)
    return loaded.callable()  # type: ignore[no-any-return]


# ------------------------------------------------------------------------- Ultralytics checkpoints

# The classes an Ultralytics YOLOv8 checkpoint (``yolov8n.pt`` as ultralytics saves it) pickles, and
# nothing else: it is loaded with ``torch.load(weights_only=True)`` and exactly these as safe globals.
ULTRALYTICS_ALLOWED = (
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.utils.IterableSimpleNamespace",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.linear.Identity",
)


def _resolve_globals(names: Sequence[str]) -> list[Any]:
    import importlib

    out: list[Any] = []
    for qual in names:
        mod, _, attr = qual.rpartition(".")
        obj = getattr(importlib.import_module(mod), attr, None)
        if obj is not None:  # a class a newer or older ultralytics does not have is simply not allowed
            out.append(obj)
    return out


@dataclass
class UltralyticsCheckpoint:
    state_dict: dict[str, torch.Tensor]
    num_classes: int
    labels: list[str]


def read_ultralytics_checkpoint(path: Path | str) -> UltralyticsCheckpoint:
    """The weights, class count and class names of an Ultralytics YOLOv8n checkpoint, read through
    ``torch.load(weights_only=True)`` with :data:`ULTRALYTICS_ALLOWED` as the only extra globals.

    A global outside the list (``os.system``, a class of another model family) is refused with a
    :class:`ValidationFailed` naming it, before it is resolved.
    """
    import pickle

    from cvops.ml.presets import import_ultralytics_tasks

    tasks = import_ultralytics_tasks()
    allowed = _resolve_globals(ULTRALYTICS_ALLOWED)
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        text = str(exc)
        m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[s]? ([\w.]+)", text)
        name = m.group(1) if m else ""
        if name:
            raise ValidationFailed(
                f"Ultralytics checkpoint refused: it names {name}, which is not one of the classes a "
                "YOLOv8 checkpoint holds (cvops never runs a general unpickler on uploads)",
                {"class": name[:200], "allowed": list(ULTRALYTICS_ALLOWED)},
            ) from exc
        raise ValidationFailed(
            "cannot read the Ultralytics checkpoint", {"reason": text.splitlines()[0][:300] if text else ""}
        ) from exc
    model = None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, tasks.DetectionModel):
        raise ValidationFailed(
            "the Ultralytics checkpoint holds no detection model (expected 'model' or 'ema')",
            {"type": type(model).__name__},
        )
    yaml = getattr(model, "yaml", None)
    scale = yaml.get("scale") if isinstance(yaml, dict) else None
    if scale not in (None, "n"):
        raise ValidationFailed(
            "only YOLOv8n checkpoints are accepted as .pt; export other sizes to ONNX "
            "(yolo export model=yolov8s.pt format=onnx) and upload that",
            {"scale": str(scale)[:20]},
        )
    state = {str(k): v.detach().float() for k, v in model.state_dict().items()}
    raw_names = getattr(model, "names", None)
    if isinstance(raw_names, dict) and raw_names:
        labels = [str(raw_names[i]) for i in sorted(raw_names)]
    elif isinstance(raw_names, list) and raw_names:
        labels = [str(x) for x in raw_names]
    else:
        labels = []
    nc = infer_num_classes("yolov8n", state)
    if len(labels) != nc:
        labels = [f"class_{i}" for i in range(nc)]
    return UltralyticsCheckpoint(state, nc, labels)


def load_ultralytics_model(path: Path | str) -> tuple[nn.Module, int, list[str]]:
    ck = read_ultralytics_checkpoint(path)
    try:
        built = build_preset("yolov8n", num_classes=ck.num_classes, state_dict=ck.state_dict)
    except ValidationFailed as exc:
        raise ValidationFailed(
            "the checkpoint's weights do not fit YOLOv8n; export other models to ONNX and upload that",
            exc.details,
        ) from exc
    return built.module, ck.num_classes, ck.labels


# ----------------------------------------------------------------------- the torch form cvops keeps


def save_torch_form(loaded: LoadedTorch, path: Path | str) -> tuple[str, str | None]:
    """Write the torch form of a verified upload that the torch engines, training and packages use.

    cvops writes it itself from the loaded model: a ``weights_only`` state_dict for state_dict and
    Ultralytics uploads (with the architecture to build), ``torch.export.save`` of the checked program
    for ``.pt2``.  Returns ``(torch_format, arch)``.  The user's original archive is never loaded again.
    """
    if loaded.fmt == TORCH_EXPORT:
        torch.export.save(loaded.module, str(path))
        return TORCH_EXPORT, None
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.module.state_dict().items()}
    torch.save(state, str(path))
    return STATE_DICT, loaded.arch


# -------------------------------------------------------------------------------------- TensorFlow


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def tensorflow_to_onnx(
    path: Path | str, out_path: Path | str, *, opset: int = 17, filename: str = ""
) -> None:  # pragma: no cover - needs the optional tensorflow extra
    """Convert a ``.keras``/``.h5`` model or a zipped SavedModel to ONNX with NCHW input (tf2onnx)."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise ValidationFailed(TF_MISSING, {"install": "pip install 'cvops[tensorflow]'"}) from exc
    import tempfile

    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(4)
    names = zip_names(p) if head.startswith(b"PK") else None
    try:
        if names is not None and any(PurePosixPath(n).name == "saved_model.pb" for n in names):
            with tempfile.TemporaryDirectory() as tmp:
                root = _extract_saved_model(p, Path(tmp))
                loaded = tf.saved_model.load(str(root))
                fn = loaded.signatures["serving_default"]
                spec = list(fn.structured_input_signature[1].values())
                tf2onnx.convert.from_function(
                    fn, input_signature=spec, opset=opset, output_path=str(out_path),
                    inputs_as_nchw=[s.name + ":0" for s in spec],
                )  # fmt: skip
        else:
            suffix = ".keras" if names is not None else ".h5"
            with tempfile.NamedTemporaryFile(suffix=suffix) as tmpf:
                tmpf.write(p.read_bytes())
                tmpf.flush()
                model = tf.keras.models.load_model(tmpf.name, compile=False, safe_mode=True)
            spec = [tf.TensorSpec(i.shape, i.dtype, name=f"input_{k}") for k, i in enumerate(model.inputs)]
            tf2onnx.convert.from_keras(
                model, input_signature=spec, opset=opset, output_path=str(out_path),
                inputs_as_nchw=[s.name for s in spec],
            )  # fmt: skip
    except ValidationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds of errors for bad files
        raise ValidationFailed("cannot convert the TensorFlow model", {"reason": str(exc)[:500]}) from exc


def _extract_saved_model(path: Path, dest: Path) -> Path:  # pragma: no cover - the tensorflow path
    """Unzip a SavedModel through the guarded extractor (traversal, links, bombs refused)."""
    from cvops.ml.archives import safe_extract

    safe_extract(path, dest, max_total_bytes=MAX_SAVED_MODEL_BYTES)
    pbs = sorted(dest.rglob("saved_model.pb"))
    if not pbs:
        raise ValidationFailed("the zip archive holds no saved_model.pb")
    return pbs[0].parent
