"""The predict path end to end: a tiny_cnn deployment answered for every role, every kind of bad
input refused with its own 4xx, RBAC on deployments, delete, metrics; a YOLOv8n deployment for
boxes on an image and frames of an mp4 (slow)."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.e2e.conftest import Live
from tests.e2e.server import request


def _jpeg(width: int = 96, height: int = 72, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse([10, 10, width // 2, height // 2], fill=(200, 30, 40))
    draw.rectangle([width // 2, height // 3, width - 5, height - 5], fill=(20, 160, 220))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _predict(live: Live, dep_id: str, raw: bytes, ctype: str = "image/jpeg", token: str | None = None,
             query: str = "") -> tuple[int, Any]:  # fmt: skip
    return request(
        live.url,
        "POST",
        f"/api/v1/deployments/{dep_id}/predict{query}",
        raw=raw,
        token=token or live.viewer,
        headers={"Content-Type": ctype},
    )


def _preset(live: Live, body: dict[str, Any]) -> dict[str, Any]:
    status, rec = request(live.url, "POST", "/api/v1/models/presets?wait=true", body, live.admin, timeout=600)
    assert status in (200, 201, 202), rec
    assert rec["status"] == "ready", rec
    return rec


def _deploy(live: Live, model_id: str, workers: int = 1) -> str:
    status, dep = request(
        live.url,
        "POST",
        "/api/v1/deployments",
        {"model_id": model_id, "engine": "onnxruntime-cpu", "workers": workers},
        live.admin,
        timeout=300,
    )
    assert status == 201, dep
    return str(dep["id"])


@pytest.fixture(scope="module")
def classifier(live: Live) -> Iterator[str]:
    rec = _preset(live, {"preset": "tiny_cnn", "name": "predict-e2e"})
    dep_id = _deploy(live, rec["id"])
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


@pytest.mark.parametrize("role", ["viewer", "engineer", "admin"])
def test_every_role_gets_predictions(live: Live, classifier: str, role: str) -> None:
    status, body = _predict(live, classifier, _jpeg(), token=live.token_for(role), query="?top_k=3")
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 3  # top_k respected (tiny_cnn has 10 classes)
    for p in preds:
        assert set(p) == {"class_id", "label", "score"}
        assert 0 <= p["class_id"] < 10 and isinstance(p["label"], str) and p["label"]
        assert 0.0 <= p["score"] <= 1.0
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)


def test_png_is_accepted_and_top_k_bounds(live: Live, classifier: str) -> None:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_jpeg())).save(buf, format="PNG")
    status, body = _predict(live, classifier, buf.getvalue(), "image/png", query="?top_k=1")
    assert status == 200, body
    assert len(body["predictions"]) == 1
    status, body = _predict(live, classifier, _jpeg(), query="?top_k=0")
    assert status == 400, body  # a bad query parameter
    assert body["error"]["details"] == {"parameter": "top_k"}


def test_wrong_content_type_is_415(live: Live, classifier: str) -> None:
    status, body = _predict(live, classifier, b'{"x": 1}', "application/json")
    assert status == 415, body
    assert body["error"]["code"] == "unsupported_media_type"


def test_garbage_bytes_are_422(live: Live, classifier: str) -> None:
    status, body = _predict(live, classifier, b"this is not an image at all" * 10)
    assert status == 422, body
    assert body["error"]["code"] == "validation_failed"


def test_truncated_jpeg_is_422(live: Live, classifier: str) -> None:
    jpeg = _jpeg(320, 240, seed=3)
    status, body = _predict(live, classifier, jpeg[: len(jpeg) // 2])
    assert status == 422, body
    assert body["error"]["code"] == "validation_failed"


def test_empty_body_is_422(live: Live, classifier: str) -> None:
    status, body = _predict(live, classifier, b"")
    assert status == 422, body


def test_oversize_body_is_413_before_it_is_sent(live: Live, classifier: str) -> None:
    """A Content-Length over CVOPS_MAX_PREDICT_BYTES (64 MiB) is refused from the headers alone."""
    u = urlparse(live.url)
    head = (
        f"POST /api/v1/deployments/{classifier}/predict HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Authorization: Bearer {live.viewer}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {65 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head + b"\xff\xd8" + b"\0" * 1024)
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_unknown_deployment_is_404(live: Live) -> None:
    status, body = _predict(live, "0123456789abcdef", _jpeg())
    assert status == 404, body
    assert body["error"]["code"] == "not_found"


def test_viewer_and_engineer_cannot_create_deployments(live: Live, classifier: str) -> None:
    status, dep = request(live.url, "GET", f"/api/v1/deployments/{classifier}", token=live.admin)
    assert status == 200, dep
    for role in ("viewer", "engineer"):
        status, body = request(
            live.url,
            "POST",
            "/api/v1/deployments",
            {"model_id": dep["model_id"], "engine": "onnxruntime-cpu"},
            live.token_for(role),
        )
        assert status == 403, (role, body)


def test_metrics_count_the_deployment(live: Live, classifier: str) -> None:
    status, _ = _predict(live, classifier, _jpeg())
    assert status == 200
    status, text = request(live.url, "GET", "/metrics", token=live.viewer)  # ids need a token
    assert status == 200
    page = text.decode() if isinstance(text, bytes) else str(text)
    lines = [
        ln
        for ln in page.splitlines()
        if ln.startswith("cvops_inference_requests_total{") and f'deployment="{classifier}"' in ln
    ]
    ok = [ln for ln in lines if 'status="200"' in ln]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1, lines


def test_deleted_deployment_is_404(live: Live) -> None:
    rec = _preset(live, {"preset": "tiny_cnn", "name": "predict-e2e-delete"})
    dep_id = _deploy(live, rec["id"])
    status, _ = _predict(live, dep_id, _jpeg())
    assert status == 200
    status, body = request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.viewer)
    assert status == 403, body
    status, body = request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)
    assert status == 204, body
    status, body = _predict(live, dep_id, _jpeg())
    assert status == 404, body
    status, body = request(live.url, "GET", f"/api/v1/deployments/{dep_id}", token=live.admin)
    assert status == 404, body


# ------------------------------------------------------------------------------------------ detection


def _fake_detector_onnx() -> bytes:
    """A YOLOv8-shaped detector on a 64x64 letterboxed input whose head is fixed: anchor 0 is a
    16x16 box of class 0 (score 0.9) at the input's centre, anchor 1 a 30x30 box of class 1 (0.8)
    hanging over the top-right edge, anchor 2 is below the confidence threshold."""
    import torch

    class FakeYolo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            head = torch.tensor(
                [
                    [32.0, 60.0, 10.0],  # cx
                    [32.0, 4.0, 10.0],  # cy
                    [16.0, 30.0, 8.0],  # w
                    [16.0, 30.0, 8.0],  # h
                    [0.9, 0.05, 0.1],  # class 0
                    [0.1, 0.8, 0.1],  # class 1
                ]
            )
            self.head: torch.Tensor
            self.register_buffer("head", head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            zero = (x.mean(dim=(1, 2, 3)) * 0.0)[:, None, None]
            return self.head[None].expand(x.shape[0], -1, -1) + zero

    buf = io.BytesIO()
    torch.onnx.export(
        FakeYolo().eval(),
        (torch.zeros(1, 3, 64, 64),),
        buf,  # type: ignore[arg-type]
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )
    return buf.getvalue()


def _upload(live: Live, data: bytes, fields: dict[str, str], filename: str) -> dict[str, Any]:
    boundary = "cvopsboundary7f3a"
    parts: list[bytes] = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, rec = request(
        live.url,
        "POST",
        "/api/v1/models?wait=true",
        raw=b"".join(parts),
        token=live.admin,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    assert status in (200, 201, 202), rec
    assert rec["status"] == "ready", rec
    return rec


@pytest.fixture(scope="module")
def fake_detector(live: Live) -> Iterator[str]:
    rec = _upload(
        live,
        _fake_detector_onnx(),
        {"name": "fake-yolo", "task": "detection", "labels": "cat,dog", "input_shape": "[1,3,64,64]"},
        "fake_yolo.onnx",
    )
    dep_id = _deploy(live, rec["id"])
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


def test_detections_are_mapped_back_and_clipped_to_the_image(live: Live, fake_detector: str) -> None:
    width, height = 200, 150  # letterboxed into 64x64: scale 0.32, 8 px of padding top and bottom
    status, body = _predict(live, fake_detector, _jpeg(width, height, seed=5))
    assert status == 200, body
    dets = sorted(body["detections"], key=lambda d: d["class_id"])
    assert [(d["class_id"], d["label"]) for d in dets] == [(0, "cat"), (1, "dog")]
    assert dets[0]["score"] == pytest.approx(0.9) and dets[1]["score"] == pytest.approx(0.8)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, d
    x0, y0, x1, y1 = dets[0]["box"]  # the centre box: 16 input px = 50 original px, centred
    assert (x0 + x1) / 2 == pytest.approx(width / 2, abs=1) and (y0 + y1) / 2 == pytest.approx(
        height / 2, abs=1
    )
    assert x1 - x0 == pytest.approx(50, abs=1)
    assert dets[1]["box"][1] == 0 and dets[1]["box"][2] == width  # the overhanging box is clipped


def test_mp4_frames_get_detections_in_frame_coordinates(live: Live, fake_detector: str) -> None:
    status, body = _predict(live, fake_detector, _mp4(frames=5), "video/mp4")
    assert status == 200, body
    assert [f["index"] for f in body["frames"]] == list(range(5))
    assert body["width"] == 128 and body["height"] == 96 and body["fps"] == pytest.approx(10)
    for f in body["frames"]:
        assert len(f["detections"]) == 2
        for d in f["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96, d
    status, body = _predict(live, fake_detector, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200, "video/mp4")
    assert status == 422, body


def test_mp4_frames_spread_over_workers_give_the_same_answer(live: Live, fake_detector: str) -> None:
    """A deployment of 2 workers decodes the video once in the gateway and spreads its frames over the
    workers (issue 14); the answer is the one a single worker gives, frame for frame, in order."""
    model_id = request(live.url, "GET", f"/api/v1/deployments/{fake_detector}", token=live.admin)[1][
        "model_id"
    ]
    two = _deploy(live, model_id, workers=2)
    try:
        video = _mp4(frames=12)
        s1, one_worker = _predict(live, fake_detector, video, "video/mp4")
        s2, two_workers = _predict(live, two, video, "video/mp4")
        assert s1 == s2 == 200, (one_worker, two_workers)
        assert [f["index"] for f in two_workers["frames"]] == list(range(12))
        assert two_workers == one_worker
        router = request(live.url, "GET", f"/api/v1/deployments/{two}", token=live.admin)[1]["router"]
        assert router["requests"] >= 12  # one routed item per frame: the frames went through the queue
        status, body = _predict(live, two, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200, "video/mp4")
        assert status == 422, body
        status, body = _predict(live, two, b"raw frame bytes", "application/x-cvops-frame; w=1; h=1")
        assert status == 415, body  # the internal frame type is never taken over HTTP
    finally:
        request(live.url, "DELETE", f"/api/v1/deployments/{two}", token=live.admin)


def _mp4(frames: int = 6, width: int = 128, height: int = 96) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            arr = np.zeros((height, width, 3), np.uint8)
            arr[:, :, 0] = 40
            arr[10 + i * 4 : 50 + i * 4, 20:70] = (220, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def detector(live: Live) -> Iterator[str]:
    rec = _preset(live, {"preset": "yolov8n", "name": "predict-e2e-det", "image_size": 160})
    assert rec["task"] == "detection"
    dep_id = _deploy(live, rec["id"])
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


@pytest.mark.slow
def test_detection_boxes_lie_inside_the_image(live: Live, detector: str) -> None:
    width, height = 200, 150
    status, body = _predict(live, detector, _jpeg(width, height, seed=5))
    assert status == 200, body
    dets = body["detections"]
    assert isinstance(dets, list)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, d
        assert 0.0 <= d["score"] <= 1.0 and isinstance(d["label"], str)
    # bytes that FFmpeg cannot read as a video: 422, never a 500
    status, body = _predict(live, detector, b"not a video" * 100, "video/mp4")
    assert status == 422, body


@pytest.mark.slow
def test_mp4_to_a_detector_returns_frames(live: Live, detector: str) -> None:
    status, body = _predict(live, detector, _mp4(frames=6), "video/mp4")
    assert status == 200, body
    frames = body["frames"]
    assert [f["index"] for f in frames] == list(range(6))
    assert body["width"] == 128 and body["height"] == 96 and body["fps"] > 0
    for f in frames:
        for d in f["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
