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

import io
import json
import logging
import math
import operator
import re
import tokenize
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from cvops.errors import UnsupportedMediaType, ValidationFailed
from cvops.ml.presets import (
    SPECS,
    build_preset,
    load_state_dict_file,
    load_weights,
)

log = logging.getLogger(__name__)

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


def _zip_names(path: Path) -> list[str] | None:
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
        names = _zip_names(p)
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


# ----------------------------------------------------------------------------------- torch.export

_PT2_TEXT = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_OPAQUE_PREFIXES = ("custom_obj_", "opaque_obj_")

_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
        "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
        "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair",
        "BooleanTrue", "BooleanFalse", "true", "false", "True", "False", "None", "oo", "zoo", "nan",
        "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "int_oo",
        "positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "zero",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
        "RoundDecimal", "ToFloat", "Identity", "floor", "ceiling", "sqrt",
    }
)  # fmt: skip
_GUARD_NAMES = frozenset(
    {"L", "size", "stride", "storage_offset", "dim", "math", "isnan", "inf", "and", "or", "not",
     "True", "False", "None", "is", "in"}
)  # fmt: skip
_SYMBOL = re.compile(r"^[a-z]{1,8}\d+$")
_SAFE_OPS = frozenset({"(", ")", ",", "+", "-", "*", "/", "//", "%", "**", "<", ">", "<=", ">=", "==", "!=",
                       "=", "[", "]", ".", "&", "|", "~"})  # fmt: skip


def _check_expression(text: str, names: frozenset[str], what: str, allow_brackets: bool) -> None:
    """Only whitelisted names, symbol names, numbers, string literals and arithmetic operators."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise ValidationFailed(f"torch.export archive has a malformed {what}", {what: text[:200]}) from exc
    for tok in toks:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if tok.type == tokenize.NAME and (tok.string in names or _SYMBOL.match(tok.string)):
            continue
        if tok.type == tokenize.STRING and re.fullmatch(r"'[\w.]{0,100}'|\"[\w.]{0,100}\"", tok.string):
            continue
        if tok.type == tokenize.OP and tok.string in _SAFE_OPS:
            if tok.string in ("[", "]", ".") and not allow_brackets:
                break
            continue
        raise ValidationFailed(
            f"torch.export archive refused: its {what} is not plain arithmetic (it would be evaluated as "
            "Python code on load)",
            {what: text[:200], "token": tok.string[:50]},
        )
    else:
        return
    raise ValidationFailed(f"torch.export archive refused: unexpected syntax in {what}", {what: text[:200]})


def _walk_json(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk_json(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_json(v, key)


def _check_model_json(data: bytes, name: str) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("torch.export archive has a corrupt program", {"member": name}) from exc
    if not isinstance(doc, dict):
        raise ValidationFailed("torch.export archive has a corrupt program", {"member": name})
    for guard in doc.get("guards_code") or []:
        if not isinstance(guard, str):
            raise ValidationFailed("torch.export archive has corrupt guards", {"member": name})
        _check_expression(guard, _GUARD_NAMES, "guard", allow_brackets=True)
    for sym in (doc.get("range_constraints") or {}).keys():
        if not _SYMBOL.match(sym):
            raise ValidationFailed("torch.export archive refused: bad symbol name", {"symbol": str(sym)[:80]})
    for key, value in _walk_json(doc):
        if key == "expr_str":
            if not isinstance(value, str):
                raise ValidationFailed("torch.export archive has a corrupt expression", {"member": name})
            _check_expression(value, _SYMPY_NAMES, "symbolic expression", allow_brackets=False)
        elif key == "target" and isinstance(value, str) and value:
            if not re.fullmatch(
                r"(torch\.ops\.[\w.]+|_operator\.\w+|math\.\w+|torch\.sym_\w+|#[\w.:\-]+)", value
            ):
                raise ValidationFailed(
                    "torch.export archive refused: a graph node calls something other than a torch operator",
                    {"target": value[:200]},
                )


def _check_torch_saved(data: bytes, name: str) -> None:
    """A nested torch.save blob must load with weights_only=True (no non-torch globals)."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means torch.export.load would unpickle freely
        raise ValidationFailed(
            "torch.export archive refused: it holds pickled Python objects beyond tensors",
            {"member": name, "reason": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__},
        ) from exc


def check_torch_export_archive(path: Path | str) -> None:
    """Refuse ``.pt2`` archives that ``torch.export.load`` could not open without running foreign code.

    Every member must be one of the documented PT2 parts; pickled payloads (sample inputs, pickled
    weights/constants) must load with ``weights_only=True``; opaque/custom objects, compiled code
    (AOTInductor, ExecuTorch) and the pre-2.8 archive layout are refused; symbolic expressions and guard
    code in the program JSON (both evaluated by torch as Python source) must be plain arithmetic over
    whitelisted names, and every node target must be a torch operator.
    """
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValidationFailed("not a valid torch.export archive (corrupt zip)") from exc
    with z:
        infos = z.infolist()
        roots = {i.filename.split("/", 1)[0] for i in infos}
        if len(roots) != 1 or any("/" not in i.filename for i in infos):
            raise ValidationFailed("not a torch.export archive (unexpected layout)")
        members = {i.filename.split("/", 1)[1]: i for i in infos if not i.is_dir()}
        if members.get("archive_format") is None or z.read(members["archive_format"]).strip() != b"pt2":
            raise ValidationFailed("not a torch.export archive (archive_format is not pt2)")
        if "models/model.json" not in members:
            raise ValidationFailed("torch.export archive has no models/model.json")
        raw_payloads: set[str] = set()
        for rel, info in members.items():
            if re.fullmatch(r"data/(weights|constants)/\w+_(weights|constants)_config\.json", rel):
                try:
                    cfg = json.loads(z.read(info)).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise ValidationFailed(
                        "torch.export archive has a corrupt config", {"member": rel}
                    ) from exc
                folder = rel.rsplit("/", 1)[0]
                for meta in cfg.values():
                    path_name = str(meta.get("path_name", ""))
                    if path_name.startswith(_OPAQUE_PREFIXES):
                        raise ValidationFailed(
                            "torch.export archive refused: it holds opaque Python objects",
                            {"member": path_name},
                        )
                    if not meta.get("use_pickle", True):
                        raw_payloads.add(f"{folder}/{path_name}")
        for rel, info in members.items():
            if rel in _PT2_TEXT or rel in raw_payloads:
                continue
            if re.fullmatch(r"models/\w+\.json", rel):
                _check_model_json(z.read(info), rel)
            elif re.fullmatch(r"data/(weights|constants)/\w+_(weights|constants)_config\.json", rel):
                continue
            elif re.fullmatch(r"data/(weights|constants|sample_inputs)/[\w.]+", rel):
                if PurePosixPath(rel).name.startswith(_OPAQUE_PREFIXES):
                    raise ValidationFailed(
                        "torch.export archive refused: opaque Python objects", {"member": rel}
                    )
                _check_torch_saved(z.read(info), rel)
            elif rel.startswith("extra/") and not rel.endswith((".so", ".pyd", ".dll", ".dylib")):
                continue  # extra files are read as strings only
            else:
                raise ValidationFailed(
                    "torch.export archive refused: unexpected member (compiled code or an unknown part)",
                    {"member": rel[:200]},
                )


_ALLOWED_NAMESPACES = ("aten", "prims", "higher_order")
_DENIED_OPS = ("from_file", "_load", "save", "_pickle")


def check_graph_targets(ep: Any) -> None:
    """Every ``call_function`` in the (nested) graphs is a torch operator, ``operator``/``math`` or a sym op."""
    from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method", "call_module"):
                continue
            t = node.target
            if node.op != "call_function":
                raise ValidationFailed(
                    "torch.export program refused: unexpected node", {"node": str(node.op)}
                )
            if isinstance(t, (OpOverload, OpOverloadPacket)):
                ns = getattr(t, "namespace", "") or str(t).split(".", 1)[0]
                if ns not in _ALLOWED_NAMESPACES or any(d in str(t) for d in _DENIED_OPS):
                    raise ValidationFailed(
                        "torch.export program refused: operator not allowed", {"op": str(t)}
                    )
                continue
            if isinstance(t, HigherOrderOperator):
                continue
            mod = getattr(t, "__module__", None)
            name = getattr(t, "__name__", "")
            if (mod in ("_operator", "operator") and getattr(operator, name, None) is t) or (
                mod == "math" and getattr(math, name, None) is t
            ):
                continue
            if name.startswith("sym_") and getattr(torch, name, None) is t:
                continue
            raise ValidationFailed(
                "torch.export program refused: it calls a non-operator", {"target": str(t)[:200]}
            )


def load_exported_program(path: Path | str) -> Any:
    """Checked ``torch.export.load``; returns the ``ExportedProgram``."""
    check_torch_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to deserialise is a bad upload
        raise ValidationFailed("cannot load the torch.export archive", {"reason": str(exc)[:500]}) from exc
    check_graph_targets(ep)
    return ep


def exported_input_shape(ep: Any) -> tuple[list[int], bool]:
    """(example input shape, batch is dynamic) of an ExportedProgram's single image input."""
    specs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(specs) != 1:
        raise ValidationFailed("the exported program must take exactly one input", {"inputs": len(specs)})
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == specs[0].arg.name)
    val = node.meta.get("val")
    if val is None or val.ndim != 4:
        raise ValidationFailed("the exported program's input must be a 4-D image tensor [N, C, H, W]")
    dims = list(val.shape)
    dynamic = not isinstance(dims[0], int)
    example = ep.example_inputs[0][0].shape if ep.example_inputs and ep.example_inputs[0] else None
    concrete = [int(example[i]) if example is not None else int(d) for i, d in enumerate(dims)]
    for d in dims[1:]:
        if not isinstance(d, int):
            raise ValidationFailed("only the batch dimension of an exported program may be dynamic")
    return concrete, dynamic


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
    names = _zip_names(p) if head.startswith(b"PK") else None
    try:
        if names is not None and any(PurePosixPath(n).name == "saved_model.pb" for n in names):
            with tempfile.TemporaryDirectory() as tmp:
                root = _safe_extract(p, Path(tmp))
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


def _safe_extract(path: Path, dest: Path) -> Path:  # pragma: no cover - used by the tensorflow path
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if _escapes(info.filename) or info.filename.startswith("/"):
                raise ValidationFailed("zip entry escapes the folder", {"entry": info.filename[:200]})
        z.extractall(dest)
    pbs = list(dest.rglob("saved_model.pb"))
    return pbs[0].parent


def labels_for(num_classes: int, labels: Sequence[str] | None) -> list[str]:
    if labels is None or len(labels) == 0:
        return [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ValidationFailed(
            f"{len(labels)} labels given but the model has {num_classes} classes",
            {"labels": len(labels), "num_classes": num_classes},
        )
    return [str(x) for x in labels]
