"""What an uploaded model file is, by its magic bytes: torch-free (the gateway sniffs uploads with it).

:func:`detect_format` reads the first bytes (and, for a zip, its member names; an Ultralytics pickle is
recognised by scanning its bytes, never by unpickling) and names one of :data:`FORMATS`, or refuses the
file.  :func:`validate_input_shape` and :func:`labels_for` check what came with it.
:mod:`cvops.ml.formats` loads what this module recognised.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from cvops.errors import UnsupportedMediaType, ValidationFailed

ONNX = "onnx"
TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch_export"
STATE_DICT = "state_dict"
TENSORFLOW = "tensorflow"
ULTRALYTICS = "ultralytics"
# what an upload may be; TORCHSCRIPT is recognised only to be refused (older records may still name it)
FORMATS = (ONNX, TORCH_EXPORT, STATE_DICT, ULTRALYTICS, TENSORFLOW)
TORCH_FORMATS = (TORCH_EXPORT, STATE_DICT, ULTRALYTICS)

TORCHSCRIPT_REFUSED = (
    "TorchScript is not accepted: a TorchScript archive is code (its __setstate__ and methods run when "
    "it is loaded), and cvops never runs uploaded code. Send the same model as ONNX "
    "(torch.onnx.export(model, x, 'model.onnx')), as a torch.export archive "
    "(torch.export.save(torch.export.export(model, (x,)), 'model.pt2')) or as a state_dict "
    "(torch.save(model.state_dict(), 'model.pt')) with the form field arch=<architecture>"
)

TF_MISSING = (
    "TensorFlow models need TensorFlow and tf2onnx, which are not installed: pip install 'cvops[tensorflow]'"
)

_EXTENSIONS = {
    ".onnx": ONNX,
    ".pt2": TORCH_EXPORT,
    ".pt": STATE_DICT,
    ".pth": STATE_DICT,
    ".bin": STATE_DICT,
    ".ts": TORCHSCRIPT,
    ".torchscript": TORCHSCRIPT,
    ".jit": TORCHSCRIPT,
    ".keras": TENSORFLOW,
    ".h5": TENSORFLOW,
    ".hdf5": TENSORFLOW,
}

# ------------------------------------------------------------------------------------- input shape

MIN_HW, MAX_HW = 8, 4096
MAX_BATCH = 4096


def validate_input_shape(shape: object) -> list[int]:
    """``[N or -1, C, H, W]``: 4 ints, C in 1..4, H and W in 8..4096, N in 1..4096 or -1 (dynamic)."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 4:
        raise ValidationFailed("input_shape must be 4 integers [N, C, H, W]", {"input_shape": _short(shape)})
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ValidationFailed("input_shape must be 4 integers [N, C, H, W]", {"input_shape": _short(shape)})
    n, c, h, w = (int(d) for d in shape)
    if not (n == -1 or 1 <= n <= MAX_BATCH):
        raise ValidationFailed(
            f"input_shape batch must be -1 or 1..{MAX_BATCH}", {"input_shape": list(shape)}
        )
    if not 1 <= c <= 4:
        raise ValidationFailed("input_shape channels must be in 1..4", {"input_shape": list(shape)})
    if not (MIN_HW <= h <= MAX_HW and MIN_HW <= w <= MAX_HW):
        raise ValidationFailed(
            f"input_shape height and width must be in {MIN_HW}..{MAX_HW}", {"input_shape": list(shape)}
        )
    return [n, c, h, w]


def _short(v: object) -> str:
    return repr(v)[:200]


# --------------------------------------------------------------------------------------- detection


def zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def detect_format(path: Path | str, filename: str = "") -> str:
    """Format of an uploaded file by its magic bytes (and, where bytes are not telling, its extension).

    The content wins over the name: a pickle called ``model.onnx`` is a ``state_dict`` upload (and is then
    refused by the weights-only loader).
    """
    p = Path(path)
    ext = PurePosixPath(filename or p.name).suffix.lower()
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        raise ValidationFailed("the model file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        names = zip_names(p)
        if names is None:
            raise ValidationFailed("the model file is a corrupt zip archive")
        rels = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if any(r == "constants.pkl" or r.startswith("code/") or r.endswith(".debug_pkl") for r in rels):
            raise ValidationFailed(TORCHSCRIPT_REFUSED, {"format": TORCHSCRIPT, "filename": filename})
        if "archive_format" in rels or any(r.startswith("models/") and r.endswith(".json") for r in rels):
            return TORCH_EXPORT
        if "data.pkl" in rels:
            return ULTRALYTICS if _pickle_names_ultralytics(p, names) else STATE_DICT
        if any(PurePosixPath(n).name == "saved_model.pb" for n in names) or ext == ".keras":
            return TENSORFLOW
        if {"config.json", "metadata.json"} <= rels or "model.weights.h5" in rels:
            return TENSORFLOW
        raise UnsupportedMediaType(
            "unrecognised zip archive: expected a torch.export archive (.pt2), a torch.save state_dict, "
            "an Ultralytics checkpoint or a TensorFlow model",
            {"filename": filename},
        )
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return TENSORFLOW
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2..5 (legacy torch.save)
        return STATE_DICT
    if ext in _EXTENSIONS:
        if _EXTENSIONS[ext] == TORCHSCRIPT:
            raise ValidationFailed(TORCHSCRIPT_REFUSED, {"format": TORCHSCRIPT, "filename": filename})
        return _EXTENSIONS[ext]
    if head[0] == 0x08:  # protobuf field 1 (ir_version), varint: how every ONNX file starts
        return ONNX
    raise UnsupportedMediaType(
        "unrecognised model format: upload .onnx, a torch.export .pt2, a .pt/.pth state_dict, an "
        "Ultralytics checkpoint or a TensorFlow model",
        {"filename": filename},
    )


_MAX_PICKLE_SCAN = 64 * 1024 * 1024


def _pickle_names_ultralytics(path: Path, names: Sequence[str]) -> bool:
    """Whether a torch.save archive's ``data.pkl`` names an ``ultralytics.`` class (its bytes are read,
    never unpickled)."""
    pkl = next((n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)
    if pkl is None:
        return False
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(pkl)
        if info.file_size > _MAX_PICKLE_SCAN:
            return False
        return b"ultralytics.nn." in z.read(info)


def labels_for(num_classes: int, labels: Sequence[str] | None) -> list[str]:
    if labels is None or len(labels) == 0:
        return [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ValidationFailed(
            f"{len(labels)} labels given but the model has {num_classes} classes",
            {"labels": len(labels), "num_classes": num_classes},
        )
    return [str(x) for x in labels]
