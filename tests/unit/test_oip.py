"""The Open Inference Protocol's bodies (cvops.platform.oip_codec), a model's plan and outputs
(cvops.platform.oip_model) and the worker's tensor / raw-output items (cvops.ml.oip_items, Predictor)."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from cvops.errors import BadRequest, ValidationFailed
from cvops.events.projections import DeploymentRecord, ModelRecord, OnnxInfo
from cvops.events.schema import Preprocessing
from cvops.ml.inference import Predictor
from cvops.ml.oip_items import TENSOR_TYPE, output_mode, tensor_item, tensor_row, with_output
from cvops.platform.oip_codec import (
    OipInferRequest,
    OipOutputIn,
    Tensor,
    boxes_tensor,
    classification_strings,
    decode_request,
    encode_response,
    join_bytes,
    split_bytes,
)
from cvops.platform.oip_model import BYTES_INPUT, DETECTIONS, ModelInfo, config, metadata, outputs, plan


def _binary_request(head: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    h = json.dumps(head).encode()
    return h + b"".join(blobs), len(h)


# ------------------------------------------------------------------------------------------ codec


def test_json_fp32_input_nested_or_flat() -> None:
    for data in ([1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]):
        body = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": data}]})
        req, (t,) = decode_request(body.encode(), None)
        assert t.array is not None and t.array.dtype == np.float32 and t.array.shape == (2, 3)
        assert t.array.tolist() == [[1, 2, 3], [4, 5, 6]]
        assert req.outputs is None


def test_binary_tensors_in_order_after_the_json_header() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    items = [b"\xff\xd8jpeg", b"\x89PNG"]
    body, hl = _binary_request(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
                {
                    "name": "b",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(join_bytes(items))},
                },
            ]
        },  # fmt: skip
        a.tobytes(),
        join_bytes(items),
    )
    _req, (x, b) = decode_request(body, hl)
    assert x.array is not None and np.array_equal(x.array, a)
    assert b.items == tuple(items)


@pytest.mark.parametrize(
    "head,blob,hl,match",
    [
        ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]}]}, b"", None, "2 values"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, b"", None, "numbers"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1]}]}, b"", None, "datatype"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, b"", None, "negative"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", None, "neither"),
        ({"inputs": []}, b"", None, "no inputs"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 4, 0, "runs past"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                      "parameters": {"binary_data_size": 4}}]}, b"\0" * 8, 0, "belong to no input"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                      "parameters": {"binary_data_size": 4}}]}, b"\0" * 4, 0, "4 bytes"),
        ({"inputs": [{"name": "b", "shape": [2], "datatype": "BYTES",
                      "parameters": {"binary_data_size": 7}}]}, join_bytes([b"abc"]), 0, "1 BYTES"),
    ],
)  # fmt: skip
def test_malformed_requests_are_400(head: dict[str, Any], blob: bytes, hl: int | None, match: str) -> None:
    h = json.dumps(head).encode()
    with pytest.raises(BadRequest, match=match):
        decode_request(h + blob, None if hl is None else len(h))


def test_not_json_and_bad_header_length_are_400() -> None:
    with pytest.raises(BadRequest):
        decode_request(b"{nope", None)
    with pytest.raises(BadRequest, match="outside the body"):
        decode_request(b"{}", 99)


def test_split_bytes_refuses_truncation_and_round_trips() -> None:
    items = [b"", b"a", b"\x00" * 300]
    assert split_bytes(join_bytes(items)) == items
    with pytest.raises(BadRequest):
        split_bytes(struct.pack("<I", 10) + b"abc")
    with pytest.raises(BadRequest):
        split_bytes(b"\x01\x00")


def test_response_json_or_binary_per_output() -> None:
    rows = np.arange(4, dtype=np.float32).reshape(2, 2)
    outs = [Tensor("y", "FP32", (2, 2), array=rows), Tensor("s", "BYTES", (1, 2), items=(b"a", b"bc"))]
    req = OipInferRequest(inputs=[], id="r1")
    body, hl = encode_response("m", req, outs, "1")
    assert hl is None
    doc = json.loads(body)
    assert doc["model_name"] == "m" and doc["id"] == "r1" and doc["model_version"] == "1"
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0, 1, 2, 3]}
    assert doc["outputs"][1]["data"] == ["a", "bc"]
    # binary_data_output for all, overridden per output by its own binary_data
    req = OipInferRequest(
        inputs=[], parameters={"binary_data_output": True},
        outputs=[OipOutputIn(name="s", parameters={"binary_data": False})],
    )  # fmt: skip
    body, hl = encode_response("m", req, outs)
    assert hl is not None
    doc = json.loads(body[:hl])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 16} and "data" not in doc["outputs"][0]
    assert doc["outputs"][1]["data"] == ["a", "bc"]
    assert np.array_equal(np.frombuffer(body[hl:], dtype="<f4").reshape(2, 2), rows)


def test_classification_strings_as_triton() -> None:
    rows = np.array([[0.1, 2.5, 2.5, -1.0]], dtype=np.float32)
    assert classification_strings(rows, 3, ["a", "b", "c"]) == [
        [b"2.500000:1:b", b"2.500000:2:c", b"0.100000:0:a"]  # ties to the lower index
    ]
    assert classification_strings(rows, 99, [])[0][-1] == b"-1.000000:3"  # k capped; no label
    assert classification_strings(rows, 1, [])[0] == [b"2.500000:1"]


def test_boxes_tensor_pads_with_class_minus_one() -> None:
    det = {"box": [1, 2, 3, 4], "score": 0.9, "class_id": 2, "label": "c"}
    out = boxes_tensor([[det, det], []])
    assert out.shape == (2, 2, 6) and out.dtype == np.float32
    assert out[0, 0].tolist() == pytest.approx([1, 2, 3, 4, 0.9, 2])
    assert out[1].tolist() == [[0, 0, 0, 0, 0, -1]] * 2
    assert boxes_tensor([[]]).shape == (1, 0, 6)


# ------------------------------------------------------------------------------------ model plan


def _model(task: str = "classification") -> ModelRecord:
    out_shape: list[int | str] = ["batch", 3] if task == "classification" else ["batch", 7, 84]
    return ModelRecord(
        id="m1", name="tiny", task=task, labels=["a", "b", "c"], status="ready",
        onnx=msgspec.convert({
            "sha256": "a" * 64, "bytes": 1, "opset": 17, "parameter_count": 1,
            "preprocessing": {"image_size": [8, 8], "layout": "NCHW"},
            "inputs": [{"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": out_shape, "dtype": "float32"}],
        }, OnnxInfo),
    )  # fmt: skip


def _req(body: dict[str, Any]) -> tuple[OipInferRequest, list[Tensor]]:
    return decode_request(json.dumps(body).encode(), None)


def test_metadata_lists_the_tensor_and_the_bytes_input() -> None:
    info = ModelInfo.of(_model("detection"))
    dep = DeploymentRecord(id="d1", model_id="m1", engine="onnxruntime-cpu", workers=1, max_batch=4)
    meta = metadata("d1", info, dep)
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
        {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 7, 84]},
        {"name": DETECTIONS, "datatype": "FP32", "shape": [-1, -1, 6]},
    ]
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    cfg = config("d1", info, dep)
    assert cfg["max_batch_size"] == 4 and cfg["input"][0]["dims"] == [3, 8, 8]


def test_plan_of_a_tensor_and_of_images() -> None:
    info = ModelInfo.of(_model())
    x = np.zeros((2, 3, 8, 8)).tolist()
    p = plan(
        info, *_req({"inputs": [{"name": "input", "shape": [2, 3, 8, 8], "datatype": "FP32", "data": x}]})
    )
    assert len(p.items) == 2 and p.raw and not p.detections and p.classification == 0
    body, ctype, _k = p.items[0]
    assert ctype.startswith(TENSOR_TYPE) and output_mode(ctype) == "raw" and len(body) == 3 * 8 * 8 * 4
    p = plan(info, *_req({"inputs": [{"name": BYTES_INPUT, "shape": [1], "datatype": "BYTES", "data": ["x"]}],
                          "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}))  # fmt: skip
    assert p.classification == 2 and p.items[0][1] == "image/jpeg; out=raw"


@pytest.mark.parametrize(
    "body,match",
    [
        ({"inputs": [{"name": "input", "shape": [1, 3, 8, 7], "datatype": "FP32", "data": [0.0] * 168}]}, "shape"),
        ({"inputs": [{"name": "input", "shape": [3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]}, "shape"),
        ({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP64", "data": [0.0] * 192}]}, "FP32"),
        ({"inputs": [{"name": BYTES_INPUT, "shape": [1], "datatype": "FP32", "data": [0.0]}]}, "BYTES"),
        ({"inputs": [{"name": BYTES_INPUT, "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, "shape"),
        ({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [0.0]}]}, "unknown input"),
        ({"inputs": [{"name": BYTES_INPUT, "shape": [1], "datatype": "BYTES", "data": ["a"]}],
          "outputs": [{"name": "nope"}]}, "unknown output"),
        ({"inputs": [{"name": BYTES_INPUT, "shape": [1], "datatype": "BYTES", "data": ["a"]}],
          "outputs": [{"name": "logits", "parameters": {"classification": -2}}]}, "positive"),
        ({"inputs": [{"name": BYTES_INPUT, "shape": [1], "datatype": "BYTES", "data": [""]}]}, "empty"),
    ],
)  # fmt: skip
def test_plan_refuses_what_the_model_does_not_take(body: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        plan(ModelInfo.of(_model()), *_req(body))


def test_detection_plan_and_outputs() -> None:
    info = ModelInfo.of(_model("detection"))
    req = {"inputs": [{"name": BYTES_INPUT, "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    p = plan(info, *_req(req))
    assert p.detections and not p.raw and output_mode(p.items[0][1]) == "raw+post"
    with pytest.raises(BadRequest, match="classification"):
        plan(info, *_req({**req, "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}))
    det = {"box": [1, 2, 3, 4], "score": 0.5, "class_id": 1, "label": "b"}
    raw = np.zeros((7, 84), dtype="<f4")
    results = [{"raw": raw.tobytes(), "shape": [7, 84], DETECTIONS: [det]},
               {"raw": raw.tobytes(), "shape": [7, 84], DETECTIONS: []}]  # fmt: skip
    (boxes,) = outputs(info, p, results)
    assert boxes.name == DETECTIONS and boxes.shape == (2, 1, 6)
    p = plan(info, *_req({**req, "outputs": [{"name": "logits"}, {"name": DETECTIONS}]}))
    raw_out, boxes = outputs(info, p, results)
    assert raw_out.shape == (2, 7, 84) and boxes.shape == (2, 1, 6)


# ------------------------------------------------------------------------------- worker items


class _Echo:
    """An engine whose output row is the mean of each input channel (shape (3,))."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(batch.shape[0], 3, -1).mean(axis=2).astype(np.float32)  # type: ignore[no-any-return]


def _png(size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_tensor_item_round_trip_and_its_checks() -> None:
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    body, ctype = tensor_item(x)
    assert np.array_equal(tensor_row(body, ctype, (3, 8, 8)), x)
    with pytest.raises(ValidationFailed):
        tensor_row(body, ctype, (3, 8, 4))
    with pytest.raises(ValidationFailed):
        tensor_row(body[:-4], ctype, (3, 8, 8))
    with pytest.raises(ValidationFailed):
        tensor_row(body, TENSOR_TYPE, (3, 8, 8))
    assert output_mode("image/jpeg") is None and output_mode(with_output("image/png", True)) == "raw+post"


def test_predictor_answers_raw_rows_beside_predictions() -> None:
    pre = Preprocessing(image_size=[8, 8], mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    pred = Predictor(_Echo(), "classification", ["r", "g", "b"], pre)  # type: ignore[arg-type]
    x = np.full((3, 8, 8), 2.0, dtype=np.float32)
    x[1] = 5.0
    items = [
        (*tensor_item(x), 5),
        (_png(), with_output("image/png", False), 5),
        (_png(), "image/png", 2),  # /predict's item, unchanged
        (*tensor_item(np.zeros((3, 4, 4))), 5),  # the wrong row shape: this item's error only
        (_png(), with_output("image/png", True), 1),  # raw+post: both
    ]
    out = pred.predict_images(items)  # type: ignore[arg-type]
    assert out[0]["shape"] == [3] and np.frombuffer(out[0]["raw"], "<f4").tolist() == [2.0, 5.0, 2.0]
    assert "predictions" not in out[0]
    red = np.frombuffer(out[1]["raw"], "<f4")
    assert red[0] == pytest.approx(1.0) and red[1] == pytest.approx(0.0)
    assert [p["label"] for p in out[2]["predictions"]] == ["r", "g"] and "raw" not in out[2]
    assert out[3]["error"]["status"] == 422
    assert out[4]["shape"] == [3] and [p["label"] for p in out[4]["predictions"]] == ["r"]


def test_a_made_up_huge_shape_is_400_not_an_overflow() -> None:
    body = {"inputs": [{"name": "x", "shape": [2**40, 2**40, 2**40], "datatype": "FP32", "data": [1.0]}]}
    with pytest.raises(BadRequest, match="over the limit"):
        decode_request(json.dumps(body).encode(), None)
