"""Conversion to ONNX with a parity check — the function the ModelRegistry's Ray task runs.

``convert(source_path, fmt, ...)`` handles every upload format; ``convert_module`` an ``nn.Module`` (presets
and trained models); ``convert_preset`` builds a preset and converts it.  Each returns a
:class:`ConversionResult` (the fields of :class:`~cvops.events.schema.ModelConverted` minus the model id
and the ONNX blob's sha/size; :meth:`ConversionResult.to_event` adds them).

Export.  ``nn.Module`` and TorchScript sources use the TorchScript-based exporter
(``torch.onnx.export(dynamo=False)``, opset 17, ``dynamic_axes`` on the batch): with torch 2.14 it
exports every preset, takes 0.1–1.5 s where the dynamo exporter takes 2–10 s, and keeps the batch axis
named ``batch``.  ``torch.export`` programs (``.pt2``) use the dynamo exporter (opset 18) because the
TorchScript exporter cannot trace an ``ExportedProgram``; its symbolic batch dim is renamed ``batch``.
If the TorchScript exporter fails on a module, the dynamo exporter is tried (``exporter="auto"``).
Input is named ``input`` and the output ``output``.

Output layouts.  Classification: ``output`` is ``(N, num_classes)`` logits.  Detection (yolov8n and other
YOLOv8-style heads): ``output`` is the raw export head ``(N, 4 + nc, anchors)``: rows 0..3 are box
``cx, cy, w, h`` in input pixels (after letterbox), rows ``4..4+nc`` the per-class scores, already after
sigmoid; there is no NMS in the graph (``cvops.ml.inference.postprocess_detection`` does it).

Parity.  ``PARITY_BATCHES`` batches of ``PARITY_BATCH`` seeded random images (uniform [0, 1), then
normalised with the model's mean/std) run through torch and through onnxruntime (CPUExecutionProvider).
``max_abs_diff`` is the largest absolute difference over all outputs; the check passes when it is
``<= atol + rtol * max|torch output|`` with ``atol = 1e-4`` and ``rtol = 1e-5`` (float16 ONNX uploads:
``1e-2`` and ``1e-3``; the relative term lets
large-valued outputs — yolov8n box coordinates reach ~640 px — keep float32 rounding).  For detection the
class-score rows are also held to ``atol`` alone (scores live in [0, 1]).  ``top1_agreement`` is the share
of decisive items — images (classification) or anchors (detection) whose reference top-1 class leads the
runner-up by more than ``atol`` — on which torch and ONNX pick the same class (1.0 when none is
decisive: random-weight YOLO heads give near-equal scores).  It is recorded, not gated.  A failed check
raises :class:`ValidationFailed` with the figures in ``details``.

ONNX uploads have no torch source: their parity compares onnxruntime with all graph optimisations off
(``ORT_DISABLE_ALL``) against the default (``ORT_ENABLE_ALL``) on the same seeded inputs — it proves the
model runs, and that the optimised graph (what is served) computes what the file says.

Memory.  The one conversion pipeline, :func:`cvops.ml.conversion.run_conversion`, caps the process' data
segment with ``setrlimit`` before converting; the exporters themselves are in :mod:`cvops.ml.onnx_export`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from torch import nn

from cvops.errors import CvopsError, ValidationFailed
from cvops.events.schema import Preprocessing, TensorSpec
from cvops.ml import formats
from cvops.ml.converted import ConversionResult
from cvops.ml.onnx_export import (
    LEGACY_OPSET,
    export_onnx,
    pin_output_dims,
)
from cvops.ml.presets import CLASSIFICATION, TASKS, build_preset, default_preprocessing

log = logging.getLogger(__name__)

ATOL = 1e-4
RTOL = 1e-5
FP16_ATOL = 1e-2  # float16 ONNX uploads: optimised vs unoptimised kernels round differently
FP16_RTOL = 1e-3
PARITY_BATCH = 2
PARITY_BATCHES = 2


# ------------------------------------------------------------------------------------------ helpers


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValidationFailed(f"task must be one of {', '.join(TASKS)}", {"task": str(task)[:50]})
    return task


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_spec(v: Any) -> TensorSpec:
    shape: list[int | str] = []
    tt = v.type.tensor_type
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(str(d.dim_param))
        else:
            shape.append("?")
    return TensorSpec(name=v.name, shape=shape, dtype=_dtype_name(tt.elem_type))


def io_specs(model: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an ONNX ModelProto; initializers listed as inputs are skipped."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [_value_spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [_value_spec(v) for v in model.graph.output]
    return inputs, outputs


def onnx_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def onnx_parameter_count(model: Any) -> int:
    return int(sum(int(np.prod(list(t.dims))) if t.dims else 1 for t in model.graph.initializer))


def ort_session(path: Path | str, *, optimize: bool = True, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValidationFailed("onnxruntime cannot load the model", {"reason": str(exc)[:500]}) from exc


def parity_inputs(
    shape: Sequence[int], preprocessing: Preprocessing, seed: int, batches: int, dtype: Any = np.float32
) -> list[np.ndarray]:
    """Seeded random images ``[B, C, H, W]`` in [0, 1), normalised with the model's mean/std."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    mean = torch.tensor((list(preprocessing.mean) + [0.0] * 4)[:c]).view(1, c, 1, 1)
    std = torch.tensor((list(preprocessing.std) + [1.0] * 4)[:c]).view(1, c, 1, 1)
    out = []
    for _ in range(batches):
        x = torch.rand(*shape, generator=gen)
        if len(preprocessing.mean) >= c and len(preprocessing.std) >= c:
            x = (x - mean) / std
        out.append(x.numpy().astype(dtype))
    return out


from cvops.ml.parity import compare_outputs as compare_outputs  # noqa: E402


def _output_classes(outputs: list[TensorSpec], task: str, observed: Sequence[int]) -> int:
    """num_classes from the output layout, checking it fits the task."""
    if len(outputs) < 1:
        raise ValidationFailed("the model has no outputs")
    if task == CLASSIFICATION:
        if len(observed) != 2:
            raise ValidationFailed(
                "a classification model must output (N, num_classes) logits", {"output_shape": list(observed)}
            )
        return int(observed[1])
    if len(observed) != 3 or observed[1] <= 4:
        raise ValidationFailed(
            "a detection model must output the YOLOv8 export head (N, 4 + num_classes, anchors)",
            {"output_shape": list(observed)},
        )
    return int(observed[1]) - 4


def _run_torch(fn: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        y = fn(torch.from_numpy(x))
    if isinstance(y, (tuple, list)):
        if len(y) != 1:
            raise ValidationFailed("the model must return one tensor", {"outputs": len(y)})
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise ValidationFailed("the model must return one tensor", {"type": type(y).__name__})
    return np.asarray(y.detach().float().cpu().numpy())


# -------------------------------------------------------------------------------------------- torch


def convert_module(
    module: Any,
    task: str,
    input_shape: Sequence[int],
    out_path: Path | str,
    *,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    source_format: str = "module",
    threads: int = 1,
) -> ConversionResult:
    """Export ``module`` (an ``nn.Module``, ScriptModule or ``ExportedProgram``) to ``out_path`` and check parity.

    ``input_shape`` is ``[N, C, H, W]``; with ``dynamic_batch`` the ONNX batch axis is ``"batch"`` and parity
    runs at batch 2, else at N.  On any failure ``out_path`` is removed.
    """
    t0 = time.perf_counter()
    _check_task(task)
    shape = formats.validate_input_shape(list(input_shape))
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValidationFailed("exporter must be auto, torchscript or dynamo", {"exporter": exporter})
    out = Path(out_path)
    is_ep = isinstance(module, torch.export.ExportedProgram)
    fn = module.module() if is_ep else module
    if isinstance(module, nn.Module) and not is_ep:
        module.eval()
    c, h, w = shape[1:]
    batch = PARITY_BATCH if dynamic_batch else max(1, shape[0])
    pre = preprocessing or default_preprocessing(task, [h, w])
    xs = parity_inputs([batch, c, h, w], pre, seed, PARITY_BATCHES)
    try:
        refs = [_run_torch(fn, x) for x in xs]
    except CvopsError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot run on its declared input is a bad upload
        raise ValidationFailed(
            "the model fails on an input of the declared shape",
            {"input_shape": [batch, c, h, w], "reason": str(exc)[:500]},
        ) from exc
    example = torch.from_numpy(xs[0][: 1 if dynamic_batch else batch].copy())
    try:
        with torch.inference_mode(False), torch.no_grad():
            used = export_onnx(module, example, out, dynamic_batch, exporter, is_ep)
        result = _finish_torch(out, task, refs, xs, labels, pre, threads)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    params = sum(int(p.numel()) for p in fn.parameters()) if hasattr(fn, "parameters") else 0
    result = msgspec.structs.replace(
        result,
        parameter_count=params or result.parameter_count,
        source_format=source_format,
        exporter=used,
        seconds=time.perf_counter() - t0,
    )
    log.info(
        "converted %s (%s, %s exporter): max_abs_diff=%.3g tol=%.3g top1=%.3f in %.1fs",
        source_format, task, used, result.parity.max_abs_diff, result.parity.tolerance,
        result.parity.top1_agreement, result.seconds,
    )  # fmt: skip
    return result


def _finish_torch(
    out: Path,
    task: str,
    refs: list[np.ndarray],
    xs: list[np.ndarray],
    labels: Sequence[str] | None,
    pre: Preprocessing,
    threads: int,
) -> ConversionResult:
    pin_output_dims(out, refs[0].shape)
    model = formats.check_onnx(out)
    inputs, outputs = io_specs(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValidationFailed(
            "the model must take one image tensor and return one tensor",
            {"inputs": len(inputs), "outputs": len(outputs)},
        )
    sess = ort_session(out, threads=threads)
    name = sess.get_inputs()[0].name
    outs = [np.asarray(sess.run(None, {name: x})[0]) for x in xs]
    parity, rel = compare_outputs(refs, outs, task, samples=sum(x.shape[0] for x in xs))
    nc = _output_classes(outputs, task, refs[0].shape)
    result = ConversionResult(
        opset=onnx_opset(model),
        inputs=inputs,
        outputs=outputs,
        parameter_count=onnx_parameter_count(model),
        preprocessing=pre,
        parity=parity,
        labels=formats.labels_for(nc, labels),
        task=task,
        num_classes=nc,
        max_rel_diff=rel,
    )
    if not parity.passed:
        raise ValidationFailed(
            "ONNX parity check failed: onnxruntime output differs from torch beyond tolerance",
            {**msgspec.to_builtins(parity), "max_rel_diff": rel},
        )
    return result


def convert_preset(
    preset: str,
    out_path: Path | str,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    labels: Sequence[str] | None = None,
    weights_path: Path | str | None = None,
    seed: int = 0,
    threads: int = 1,
) -> ConversionResult:
    built = build_preset(
        preset, num_classes=num_classes, image_size=image_size, weights_path=weights_path,
        labels=list(labels) if labels is not None else None,
    )  # fmt: skip
    return convert_module(
        built.module, built.task, built.input_shape, out_path, labels=built.labels,
        preprocessing=built.preprocessing, seed=seed, source_format="preset", threads=threads,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- ONNX


def _onnx_input_shape(spec: TensorSpec, input_shape: Sequence[int] | None) -> tuple[list[int], bool]:
    if len(spec.shape) != 4:
        raise ValidationFailed("the ONNX model's input must be 4-D [N, C, H, W]", {"shape": spec.shape})
    given = formats.validate_input_shape(list(input_shape)) if input_shape is not None else None
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            if given is not None and given[i] not in (d, -1) and i > 0:
                raise ValidationFailed(
                    "input_shape does not match the ONNX model's input",
                    {"onnx": spec.shape, "input_shape": given},
                )
            dims.append(d)
        elif given is not None and given[i] > 0:
            dims.append(given[i])
        elif i == 0:
            dims.append(-1)
        else:
            raise ValidationFailed(
                "the ONNX model has a dynamic height/width: pass input_shape", {"onnx": spec.shape}
            )
    dynamic = not (isinstance(spec.shape[0], int) and spec.shape[0] > 0)
    formats.validate_input_shape(dims)
    return dims, dynamic


def convert_onnx(
    source_path: Path | str,
    out_path: Path | str,
    *,
    task: str,
    input_shape: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    threads: int = 1,
    source_format: str = formats.ONNX,
) -> ConversionResult:
    """Check an uploaded ONNX model, copy it to ``out_path`` and record ORT-unoptimised vs optimised parity."""
    t0 = time.perf_counter()
    _check_task(task)
    model = formats.check_onnx(source_path)
    inputs, outputs = io_specs(model)
    if len(inputs) != 1:
        raise ValidationFailed("the ONNX model must take exactly one image input", {"inputs": len(inputs)})
    if not outputs:
        raise ValidationFailed("the ONNX model has no outputs")
    dims, dynamic = _onnx_input_shape(inputs[0], input_shape)
    if inputs[0].dtype not in ("float32", "float16"):
        raise ValidationFailed(
            "the ONNX model's input must be float32 or float16", {"dtype": inputs[0].dtype}
        )
    out = Path(out_path)
    if Path(source_path).resolve() != out.resolve():
        shutil.copyfile(source_path, out)
    try:
        pre = preprocessing or default_preprocessing(task, dims[2:])
        batch = PARITY_BATCH if dynamic else dims[0]
        dtype = np.float16 if inputs[0].dtype == "float16" else np.float32
        xs = parity_inputs([batch, *dims[1:]], pre, seed, PARITY_BATCHES, dtype)
        plain = ort_session(out, optimize=False, threads=threads)
        fast = ort_session(out, optimize=True, threads=threads)
        name = plain.get_inputs()[0].name
        try:
            refs = [np.asarray(plain.run(None, {name: x})[0]) for x in xs]
            outs = [np.asarray(fast.run(None, {name: x})[0]) for x in xs]
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors on a bad graph
            raise ValidationFailed(
                "the ONNX model fails on an input of its declared shape", {"reason": str(exc)[:500]}
            ) from exc
        half = dtype == np.float16
        parity, rel = compare_outputs(
            refs, outs, task, samples=sum(x.shape[0] for x in xs),
            atol=FP16_ATOL if half else ATOL, rtol=FP16_RTOL if half else RTOL,
        )  # fmt: skip
        nc = _output_classes(outputs, task, refs[0].shape)
        out_labels = formats.labels_for(nc, labels)
        if not parity.passed:
            raise ValidationFailed(
                "ONNX parity check failed: optimised and unoptimised onnxruntime outputs differ",
                {**msgspec.to_builtins(parity), "max_rel_diff": rel},
            )
    except BaseException:
        if Path(source_path).resolve() != out.resolve():
            out.unlink(missing_ok=True)
        raise
    return ConversionResult(
        opset=onnx_opset(model),
        inputs=inputs,
        outputs=outputs,
        parameter_count=onnx_parameter_count(model),
        preprocessing=pre,
        parity=parity,
        labels=out_labels,
        source_format=source_format,
        exporter="none",
        task=task,
        num_classes=nc,
        max_rel_diff=rel,
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------------------ any upload


def convert(
    source_path: Path | str,
    fmt: str,
    *,
    task: str,
    out_path: Path | str,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    exporter: str = "auto",
    threads: int = 1,
    torch_out: Path | str | None = None,
) -> ConversionResult:
    """Convert an uploaded model file of format ``fmt`` (see :func:`cvops.ml.formats.detect_format`).

    ``fmt="preset"`` is not handled here (use :func:`convert_preset`).  Every user-caused problem raises a
    :class:`~cvops.errors.CvopsError` (mostly ``ValidationFailed``, 422); ``out_path`` then does not exist.
    With ``torch_out``, a torch upload's torch form is written there by cvops from the verified model
    (:func:`cvops.ml.formats.save_torch_form`); the result names its format and architecture.
    """
    _check_task(task)
    src = Path(source_path)
    if fmt == formats.ONNX:
        return convert_onnx(
            src, out_path, task=task, input_shape=input_shape, labels=labels,
            preprocessing=preprocessing, seed=seed, threads=threads,
        )  # fmt: skip
    if fmt == formats.TENSORFLOW:
        if not formats.tensorflow_available():
            raise ValidationFailed(formats.TF_MISSING, {"install": "pip install 'cvops[tensorflow]'"})
        out = Path(out_path)  # pragma: no cover - needs the optional tensorflow extra
        formats.tensorflow_to_onnx(src, out, opset=LEGACY_OPSET)  # pragma: no cover
        return convert_onnx(  # pragma: no cover
            out, out, task=task, input_shape=input_shape, labels=labels, preprocessing=preprocessing,
            seed=seed, threads=threads, source_format=formats.TENSORFLOW,
        )  # fmt: skip
    if fmt not in formats.FORMATS:
        raise ValidationFailed(f"unknown model format {fmt!r}", {"formats": list(formats.FORMATS)})
    if fmt == formats.ULTRALYTICS and task != "detection":
        raise ValidationFailed(
            "an Ultralytics checkpoint is a detection model: upload it with task=detection", {"task": task}
        )
    loaded = formats.load_torch_source(src, fmt, arch=arch, num_classes=num_classes)
    if labels is None and loaded.labels:
        labels = loaded.labels
    if input_shape is not None:
        shape = formats.validate_input_shape(list(input_shape))
        if (
            loaded.input_shape is not None
            and fmt == formats.TORCH_EXPORT
            and shape[1:] != loaded.input_shape[1:]
        ):
            raise ValidationFailed(
                "input_shape does not match the exported program's input",
                {"input_shape": shape, "exported": loaded.input_shape},
            )
    else:
        shape = loaded.input_shape or [1, 3, 224, 224]
    if shape[0] == -1:
        shape = [1, *shape[1:]]
    result = convert_module(
        loaded.module, task, shape, out_path, labels=labels, preprocessing=preprocessing, seed=seed,
        dynamic_batch=loaded.dynamic_batch if fmt == formats.TORCH_EXPORT else True,
        exporter=exporter, source_format=fmt, threads=threads,
    )  # fmt: skip
    if torch_out is None:
        return result
    torch_format, torch_arch = formats.save_torch_form(loaded, torch_out)
    return msgspec.structs.replace(result, torch_format=torch_format, arch=torch_arch)


# ------------------------------------------------------------------------------------ memory limited
