"""A deployed model as the Open Inference Protocol sees it: its metadata, what its inputs become on
the way to a worker, and what the workers' answers become on the way back.  Pure (no aiohttp, no Ray).

Inputs (one per request): the model's own ``FP32 [N, 3, H, W]`` tensor (``[N, H, W, 3]`` for NHWC
models), already preprocessed by the client, or ``BYTES [N]`` of encoded JPEG/PNG images
(:data:`BYTES_INPUT`), preprocessed by cvops as ``/predict`` does.  Outputs: the model's raw output
(``FP32 [N, ...]``; with ``parameters: {classification: k}`` the classification extension's
``BYTES [N, k]`` ``"score:index:label"`` strings instead) and, for detection models,
:data:`DETECTIONS` ``FP32 [N, K, 6]`` (x0, y0, x1, y1, score, class), the default output of detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvops.errors import BadRequest
from cvops.events.projections import DeploymentRecord, ModelRecord
from cvops.events.schema import Preprocessing
from cvops.ml.oip_items import tensor_item, with_output
from cvops.platform.oip_codec import OipInferRequest, Tensor, boxes_tensor, classification_strings

BYTES_INPUT = "image_bytes"
DETECTIONS = "detections"
MAX_ITEMS = 256  # images or tensor rows in one request
VERSION = "1"
Item = tuple[bytes, str, int]  # what the batching router carries: (body, content type, top_k)


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    name: str
    task: str
    labels: tuple[str, ...]
    input_name: str
    row_shape: tuple[int, ...]  # one input row: (3, H, W) or (H, W, 3)
    output_name: str
    output_shape: tuple[int, ...]  # one output row; -1 where the model does not fix it

    @classmethod
    def of(cls, model: ModelRecord) -> ModelInfo:
        onnx = model.onnx
        pre = onnx.preprocessing if onnx is not None else Preprocessing()
        h, w = int(pre.image_size[0]), int(pre.image_size[-1])
        nhwc = pre.layout.upper() == "NHWC"
        ins = onnx.inputs if onnx is not None and onnx.inputs else []
        outs = onnx.outputs if onnx is not None and onnx.outputs else []
        out_dims = list(outs[0].shape)[1:] if outs else []
        return cls(
            model_id=model.id,
            name=model.name,
            task=model.task,
            labels=tuple(model.labels),
            input_name=ins[0].name if ins else "input",
            row_shape=(h, w, 3) if nhwc else (3, h, w),
            output_name=outs[0].name if outs else "output",
            output_shape=tuple(d if isinstance(d, int) and d > 0 else -1 for d in out_dims),
        )


def platform_of(engine: str) -> str:
    if engine.startswith("onnxruntime"):
        return "onnxruntime_onnx"
    if engine.startswith("tensorrt"):
        return "tensorrt_plan"
    if engine.startswith("torch"):
        return "pytorch_libtorch"
    return engine


def metadata(name: str, info: ModelInfo, dep: DeploymentRecord) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    outputs = [{"name": info.output_name, "datatype": "FP32", "shape": [-1, *info.output_shape]}]
    if info.task == "detection":
        outputs.append({"name": DETECTIONS, "datatype": "FP32", "shape": [-1, -1, 6]})
    return {
        "name": name,
        "versions": [VERSION],
        "platform": platform_of(dep.engine),
        "inputs": [
            {"name": info.input_name, "datatype": "FP32", "shape": [-1, *info.row_shape]},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": outputs,
        "parameters": {"task": info.task, "model_id": info.model_id, "deployment_id": dep.id},
    }


def config(name: str, info: ModelInfo, dep: DeploymentRecord) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: Triton's model configuration, enough for perf_analyzer."""
    outputs = [{"name": info.output_name, "data_type": "TYPE_FP32", "dims": list(info.output_shape)}]
    if info.task == "detection":
        outputs.append({"name": DETECTIONS, "data_type": "TYPE_FP32", "dims": [-1, 6]})
    return {
        "name": name,
        "platform": platform_of(dep.engine),
        "max_batch_size": dep.max_batch,
        # a request carries one of the two: each is optional (perf_analyzer then sends only the one
        # its --input-data names)
        "input": [
            {
                "name": info.input_name,
                "data_type": "TYPE_FP32",
                "dims": list(info.row_shape),
                "optional": True,
            },
            {"name": BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
        ],
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": int(dep.max_wait_ms * 1000)},
        "instance_group": [
            {"count": dep.workers, "kind": "KIND_GPU" if "cpu" not in dep.engine else "KIND_CPU"}
        ],
    }


@dataclass(frozen=True)
class Plan:
    """What a request asks for: the worker items, and which outputs to build from their answers."""

    items: list[Item]
    raw: bool  # the raw output (as a tensor, or as classification strings)
    classification: int  # k of the classification extension on the raw output; 0: the tensor
    detections: bool


def _image_type(data: bytes) -> str:
    return "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"


def plan(info: ModelInfo, req: OipInferRequest, inputs: Sequence[Tensor]) -> Plan:
    """Check a decoded request against the model (400 for a wrong name, datatype or shape)."""
    if len(inputs) != 1:
        raise BadRequest(f"expected one input ({info.input_name!r} or {BYTES_INPUT!r}), got {len(inputs)}")
    want = [o.name for o in req.outputs] if req.outputs else []
    known = {info.output_name} | ({DETECTIONS} if info.task == "detection" else set())
    for n in want:
        if n not in known:
            raise BadRequest(f"unknown output {n!r}; this model has {sorted(known)}")
    if not want:
        want = [DETECTIONS if info.task == "detection" else info.output_name]
    k = 0
    for o in req.outputs or []:
        c = o.parameters.get("classification")
        if c is None or c == 0:
            continue
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise BadRequest(f"classification must be a positive integer, got {c!r}")
        if o.name != info.output_name or info.task != "classification":
            raise BadRequest("the classification extension applies to a classification model's output")
        k = c
    detections = DETECTIONS in want
    t = inputs[0]
    if t.name == BYTES_INPUT:
        if t.datatype != "BYTES":
            raise BadRequest(f"input {BYTES_INPUT!r} must be BYTES, got {t.datatype}")
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise BadRequest(f"input {BYTES_INPUT!r} must have shape [N] or [N, 1], got {list(t.shape)}")
        assert t.items is not None
        blobs = list(t.items)
        if not all(blobs):
            raise BadRequest(f"input {BYTES_INPUT!r} has an empty element")
        items = [(b, with_output(_image_type(b), detections), 5) for b in blobs]
    elif t.name == info.input_name:
        if t.datatype != "FP32":
            raise BadRequest(f"input {info.input_name!r} must be FP32, got {t.datatype}")
        if len(t.shape) != 1 + len(info.row_shape) or tuple(t.shape[1:]) != info.row_shape:
            raise BadRequest(
                f"input {info.input_name!r} must have shape [N, {', '.join(map(str, info.row_shape))}], "
                f"got {list(t.shape)}"
            )
        assert t.array is not None
        items = [(*tensor_item(row, detections), 5) for row in t.array]
    else:
        raise BadRequest(f"unknown input {t.name!r}; this model takes {info.input_name!r} or {BYTES_INPUT!r}")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise BadRequest(f"a request carries 1..{MAX_ITEMS} items, got {len(items)}")
    return Plan(items, info.output_name in want, k, detections)


def outputs(info: ModelInfo, p: Plan, results: Sequence[dict[str, Any]]) -> list[Tensor]:
    """The workers' ``out=raw`` answers (one per item, errors already raised) → the output tensors."""
    out: list[Tensor] = []
    if p.raw:
        rows = np.stack([np.frombuffer(r["raw"], dtype="<f4").reshape(r["shape"]) for r in results])
        if p.classification:
            strings = classification_strings(rows, p.classification, info.labels)
            k = len(strings[0])
            flat = tuple(s for row in strings for s in row)
            out.append(Tensor(info.output_name, "BYTES", (len(strings), k), items=flat))
        else:
            out.append(Tensor(info.output_name, "FP32", tuple(rows.shape), array=rows))
    if p.detections:
        boxes = boxes_tensor([r.get(DETECTIONS) or [] for r in results])
        out.append(Tensor(DETECTIONS, "FP32", tuple(boxes.shape), array=boxes))
    return out
