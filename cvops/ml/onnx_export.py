"""The ONNX exporters :mod:`cvops.ml.convert` uses, and the fix-ups of their graphs.

``nn.Module`` and TorchScript sources go through the TorchScript-based exporter (opset 17, ``dynamic_axes``
on the batch); ``torch.export`` programs through the dynamo exporter (opset 18), whose symbolic batch dim
is renamed ``batch``; ``exporter="auto"`` falls back to dynamo when the TorchScript exporter fails.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvops.errors import CvopsError, ValidationFailed
from cvops.ml import formats

log = logging.getLogger(__name__)

LEGACY_OPSET = 17
DYNAMO_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"


def _rename_batch_dim(path: Path) -> None:
    """Name the dynamo exporter's symbolic batch dim (``s77``...) ``batch`` in the inputs and outputs."""
    import onnx

    model = onnx.load(str(path))
    first = model.graph.input[0].type.tensor_type.shape.dim
    if not first or not first[0].HasField("dim_param"):
        return
    sym = first[0].dim_param
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param == sym:
                d.dim_param = BATCH_DIM
    onnx.save(model, str(path))


def pin_output_dims(path: Path, observed: Sequence[int]) -> None:
    """Give non-batch output dims the exporter left symbolic (``Concatoutput_dim_1``) their static value.

    Only the batch axis is dynamic, so every other output dim is fixed by the (static) H and W.
    """
    import onnx

    model = onnx.load(str(path))
    changed = False
    for v in model.graph.output[:1]:
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(observed):
            return
        for i, d in enumerate(dims):
            if (
                i > 0
                and not d.HasField("dim_value")
                and (not d.HasField("dim_param") or d.dim_param != BATCH_DIM)
            ):
                d.dim_value = int(observed[i])
                changed = True
    if changed:
        onnx.save(model, str(path))


def _export_legacy(module: nn.Module, example: torch.Tensor, out_path: Path, dynamic: bool) -> None:
    axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module,
            (example,),
            str(out_path),
            dynamo=False,
            opset_version=LEGACY_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(program: Any, out_path: Path, example: torch.Tensor | None, dynamic: bool) -> None:
    if isinstance(program, nn.Module) and not isinstance(program, torch.jit.ScriptModule):
        if example is None:
            raise ValidationFailed("the dynamo exporter needs an example input")
        if dynamic and example.shape[0] == 1:  # torch.export specialises a batch of 1 to a constant
            example = torch.cat([example, example])
        shapes = ({0: torch.export.Dim(BATCH_DIM, min=1, max=formats.MAX_BATCH)},) if dynamic else None
        program = torch.export.export(program, (example,), dynamic_shapes=shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            (),
            dynamo=True,
            opset_version=DYNAMO_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
            optimize=True,
        )
    if onnx_program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ValidationFailed("the dynamo ONNX exporter returned nothing")
    onnx_program.save(str(out_path), external_data=False)
    _rename_batch_dim(out_path)


def export_onnx(
    source: Any, example: torch.Tensor, out_path: Path, dynamic: bool, exporter: str, exported_program: bool
) -> str:
    if exported_program or exporter == "dynamo":
        try:
            _export_dynamo(source, out_path, example, dynamic)
        except CvopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures are model problems
            raise ValidationFailed("ONNX export failed", {"reason": str(exc)[:1000]}) from exc
        return "dynamo"
    try:
        _export_legacy(source, example, out_path, dynamic)
        return "torchscript"
    except CvopsError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures are model problems, reported below
        if exporter != "auto" or isinstance(source, torch.jit.ScriptModule):
            raise ValidationFailed("ONNX export failed", {"reason": str(exc)[:1000]}) from exc
        log.warning("TorchScript-based ONNX export failed (%s); trying the dynamo exporter", exc)
    try:
        _export_dynamo(source, out_path, example, dynamic)
    except CvopsError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValidationFailed("ONNX export failed", {"reason": str(exc)[:1000]}) from exc
    return "dynamo"
