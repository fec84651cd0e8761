"""Verify a ``torch.export`` archive (``.pt2``) before anything in it is deserialised, then load it.

:func:`check_torch_export_archive` reads the archive's JSON and pickles as bytes: pickles may name only
torch globals, symbolic expressions and guards must be plain arithmetic, and compiled code is refused.
:func:`check_graph_targets` checks the loaded graph's operators against an allow-list.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from cvops.errors import ValidationFailed

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
