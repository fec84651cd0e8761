"""The Open Inference Protocol end to end with Triton's own client (``tritonclient[http]``) against a
real ``cvops serve``: server and model readiness, metadata, FP32 tensors (JSON and binary) and BYTES
images, the classification extension, wrong shapes and datatypes (400 in the protocol's shape),
roles (a viewer infers as on /predict; no token is 401)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import Live
from tests.e2e.server import request
from tests.e2e.test_predict import _deploy, _jpeg, _predict, _preset

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def dep(live: Live) -> Iterator[str]:
    rec = _preset(live, {"preset": "tiny_cnn", "name": "oip-e2e"})
    dep_id = _deploy(live, rec["id"])
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


def _client(live: Live) -> Any:
    return httpclient.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=120.0)


def _auth(live: Live, role: str = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token_for(role)}"}


def _meta(live: Live, dep: str) -> dict[str, Any]:
    meta: dict[str, Any] = _client(live).get_model_metadata(dep, headers=_auth(live))
    return meta


def test_server_live_ready_and_metadata(live: Live, dep: str) -> None:
    c = _client(live)
    assert c.is_server_live() and c.is_server_ready()  # public, like /health
    meta = c.get_server_metadata(headers=_auth(live))
    assert meta["name"] == "cvops" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    assert c.is_model_ready(dep, headers=_auth(live))
    assert c.is_model_ready(dep, "1", headers=_auth(live))
    assert not c.is_model_ready("no-such-model", headers=_auth(live))


def test_model_metadata_and_config(live: Live, dep: str) -> None:
    meta = _meta(live, dep)
    assert meta["versions"] == ["1"]
    tensor, images = meta["inputs"]
    assert tensor["datatype"] == "FP32" and tensor["shape"][0] == -1 and tensor["shape"][1] == 3
    assert images == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    (out,) = meta["outputs"]
    assert out["datatype"] == "FP32" and out["shape"] == [-1, 10]  # tiny_cnn: 10 classes
    cfg = _client(live).get_model_config(dep, headers=_auth(live))
    assert cfg["max_batch_size"] >= 1 and cfg["input"][0]["dims"] == tensor["shape"][1:]
    # the model's name works where one deployment serves it
    by_name = _client(live).get_model_metadata("oip-e2e", headers=_auth(live))
    assert by_name["inputs"] == meta["inputs"]


def _tensor(meta: dict[str, Any], n: int, seed: int = 0) -> np.ndarray:
    shape = [n, *meta["inputs"][0]["shape"][1:]]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensor_inference_json_and_binary(live: Live, dep: str, binary: bool) -> None:
    meta = _meta(live, dep)
    x = _tensor(meta, 3)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out_name = meta["outputs"][0]["name"]
    res = _client(live).infer(
        dep, [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=binary)],
        headers=_auth(live), request_id="r-1",
    )  # fmt: skip
    y = res.as_numpy(out_name)
    assert y.shape == (3, 10) and y.dtype == np.float32 and np.isfinite(y).all()
    assert res.get_response()["id"] == "r-1"
    # each row is the row alone: the batching does not mix them
    one = httpclient.InferInput(meta["inputs"][0]["name"], [1, *x.shape[1:]], "FP32")
    one.set_data_from_numpy(x[1:2])
    alone = _client(live).infer(dep, [one], headers=_auth(live)).as_numpy(out_name)
    np.testing.assert_allclose(alone[0], y[1], rtol=1e-4, atol=1e-4)


def test_bytes_images_agree_with_predict(live: Live, dep: str) -> None:
    meta = _meta(live, dep)
    imgs = [_jpeg(seed=s) for s in (1, 2)]
    inp = httpclient.InferInput("image_bytes", [2], "BYTES")
    inp.set_data_from_numpy(np.array(imgs, dtype=np.object_))
    out_name = meta["outputs"][0]["name"]
    res = _client(live).infer(dep, [inp], headers=_auth(live))
    logits = res.as_numpy(out_name)
    assert logits.shape == (2, 10)
    for i, img in enumerate(imgs):
        status, body = _predict(live, dep, img, query="?top_k=1")
        assert status == 200, body
        assert int(np.argmax(logits[i])) == body["predictions"][0]["class_id"]


def test_classification_extension(live: Live, dep: str) -> None:
    meta = _meta(live, dep)
    x = _tensor(meta, 2, seed=3)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out_name = meta["outputs"][0]["name"]
    c = _client(live)
    raw = c.infer(dep, [inp], headers=_auth(live)).as_numpy(out_name)
    res = c.infer(
        dep, [inp], outputs=[httpclient.InferRequestedOutput(out_name, class_count=3)], headers=_auth(live)
    )
    strings = res.as_numpy(out_name)
    assert strings.shape == (2, 3)
    for row, logits in zip(strings, raw, strict=True):
        parts = [s.decode().split(":") for s in row]
        assert [int(p[1]) for p in parts] == list(np.argsort(-logits, kind="stable")[:3])
        assert float(parts[0][0]) == pytest.approx(float(logits.max()), abs=1e-4)
        assert all(len(p) == 3 and p[2] for p in parts)  # score:index:label


def _raw_infer(live: Live, dep: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    return request(live.url, "POST", f"/v2/models/{dep}/infer", body, token)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: {**t, "shape": [1, 3, 7, 7]},  # wrong shape
        lambda t: {**t, "datatype": "FP64"},  # wrong datatype for the model
        lambda t: {**t, "datatype": "UINT8"},  # a datatype cvops does not read
        lambda t: {**t, "data": t["data"][:-1]},  # too few values
        lambda t: {**t, "name": "nope"},  # no such input
        lambda t: {**t, "name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["not a jpeg"]},
    ],
)
def test_wrong_inputs_are_400_in_the_protocols_shape(live: Live, dep: str, mutate: Any) -> None:
    meta = _meta(live, dep)
    shape = [1, *meta["inputs"][0]["shape"][1:]]
    good = {"name": meta["inputs"][0]["name"], "shape": shape, "datatype": "FP32",
            "data": [0.0] * int(np.prod(shape))}  # fmt: skip
    status, body = _raw_infer(live, dep, {"inputs": [good]}, live.viewer)
    assert status == 200, body
    status, body = _raw_infer(live, dep, {"inputs": [mutate(good)]}, live.viewer)
    assert status == 400, body
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def test_tritonclient_sees_the_error_message(live: Live, dep: str) -> None:
    inp = httpclient.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\xff\xd8 truncated"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as exc:
        _client(live).infer(dep, [inp], headers=_auth(live))
    assert exc.value.status() == "400" and "decode" in (exc.value.message() or "")


def test_roles_and_not_found(live: Live, dep: str) -> None:
    for role in ("viewer", "engineer", "admin"):
        status, _ = request(live.url, "GET", f"/v2/models/{dep}", token=live.token_for(role))
        assert status == 200
    shape = [1, *_meta(live, dep)["inputs"][0]["shape"][1:]]
    body = {"inputs": [{"name": _meta(live, dep)["inputs"][0]["name"], "shape": shape, "datatype": "FP32",
                        "data": [0.0] * int(np.prod(shape))}]}  # fmt: skip
    status, out = _raw_infer(live, dep, body, None)
    assert status == 401 and set(out) == {"error"} and isinstance(out["error"], str)
    status, out = request(live.url, "GET", "/v2/models/no-such-model", token=live.viewer)
    assert status == 404 and isinstance(out["error"], str)
    status, out = request(live.url, "GET", f"/v2/models/{dep}/versions/2", token=live.viewer)
    assert status == 404 and isinstance(out["error"], str)
    # the rest of the API keeps its own error shape
    status, out = request(live.url, "GET", "/api/v1/deployments/no-such", token=live.admin)
    assert status == 404 and out["error"]["code"] == "not_found", json.dumps(out)


@pytest.fixture(scope="module")
def detector(live: Live) -> Iterator[str]:
    rec = _preset(live, {"preset": "yolov8n", "name": "oip-e2e-det", "image_size": 160})
    dep_id = _deploy(live, rec["id"])
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


@pytest.mark.slow
def test_detection_boxes_and_the_raw_head(live: Live, detector: str) -> None:
    meta = _meta(live, detector)
    head, boxes = meta["outputs"]
    assert boxes == {"name": "detections", "datatype": "FP32", "shape": [-1, -1, 6]}
    img = _jpeg(200, 150, seed=5)
    inp = httpclient.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([img], dtype=np.object_))
    c = _client(live)
    dets = c.infer(detector, [inp], headers=_auth(live)).as_numpy("detections")
    status, body = _predict(live, detector, img)
    assert status == 200, body
    assert dets.shape == (1, len(body["detections"]), 6)
    for row, d in zip(dets[0], body["detections"], strict=True):
        np.testing.assert_allclose(row[:4], d["box"], atol=0.01)
        assert row[5] == d["class_id"] and row[4] == pytest.approx(d["score"], abs=1e-5)
    both = c.infer(
        detector, [inp], headers=_auth(live),
        outputs=[httpclient.InferRequestedOutput(head["name"]), httpclient.InferRequestedOutput("detections")],
    )  # fmt: skip
    raw = both.as_numpy(head["name"])
    assert raw.shape[0] == 1 and list(raw.shape[1:-1]) == head["shape"][1:-1] and raw.shape[1] == 84
    assert both.as_numpy("detections").shape == dets.shape
    # a preprocessed tensor's boxes come back in input pixels
    x = np.zeros([1, *meta["inputs"][0]["shape"][1:]], dtype=np.float32)
    t = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    assert c.infer(detector, [t], headers=_auth(live)).as_numpy("detections").shape[2] == 6
