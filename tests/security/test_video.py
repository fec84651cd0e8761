"""Video bodies (issue 10, "Video"): opened as the declared container only (mp4, never FFmpeg's format
probe), decoded only with an allow-listed codec (h264, hevc, mpeg4, av1, vp9), and under a deadline
inside the request's, so a slow video stops with 504 instead of holding its worker."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvops.events.schema import Preprocessing
from cvops.ml import inference
from tests.e2e.conftest import Live
from tests.e2e.server import Server, request
from tests.unit.test_inference import _tiny_cnn_onnx


def _video(
    fmt: str = "mp4",
    codec: str = "mpeg4",
    frames: int = 6,
    width: int = 128,
    height: int = 96,
    pix_fmt: str = "yuv420p",
) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=10)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            arr = np.zeros((height, width, 3), np.uint8)
            arr[:, :, 0] = 40
            y = (i * 4) % max(1, height - 40)
            arr[y : y + 40, 20:70] = (220, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


OTHER_CONTAINERS = {"matroska": "mpeg4", "avi": "mpeg4"}  # FFmpeg's probe would read these
REFUSED_CODECS = {"mjpeg": "yuvj420p", "ffv1": "yuv420p"}  # FFmpeg decodes these from an mp4
LONG = {"frames": 300, "width": 320, "height": 240}  # 300 frames: the most a request decodes


def _predictor(tmp_path: Path, **kw: Any) -> inference.Predictor:
    onnx_path = _tiny_cnn_onnx(tmp_path / "tiny.onnx")
    return inference.Predictor(
        onnx_path, "classification", list("abcde"), Preprocessing(image_size=[32, 32]), **kw
    )


# ------------------------------------------------------------------ the decoder, in the worker's code


def test_decoder_opens_mp4_only_and_allow_listed_codecs_only(tmp_path: Path) -> None:
    pred = _predictor(tmp_path)
    for fmt, codec in OTHER_CONTAINERS.items():
        (res,) = pred.predict_images([(_video(fmt, codec), "video/mp4", 5)])
        assert res.get("error", {}).get("status") == 422, (fmt, res)
        assert "mp4" in res["error"]["message"], res
    for codec, pix in REFUSED_CODECS.items():
        (res,) = pred.predict_images([(_video("mp4", codec, pix_fmt=pix), "video/mp4", 5)])
        assert res.get("error", {}).get("status") == 422, (codec, res)
        assert codec in res["error"]["message"], res
        assert res["error"]["details"]["codec"] == codec, res
    for codec in ("mpeg4", "libx264"):  # allowed: answered per frame
        (res,) = pred.predict_images([(_video("mp4", codec), "video/mp4", 5)])
        assert len(res["frames"]) == 6, (codec, res)


@pytest.fixture(scope="module")
def long_video() -> bytes:
    return _video(**LONG)  # type: ignore[arg-type]


def test_decode_deadline_stops_a_slow_video(tmp_path: Path, long_video: bytes) -> None:
    t0 = time.monotonic()
    (full,) = _predictor(tmp_path).predict_images([(long_video, "video/mp4", 5)])
    full_s = time.monotonic() - t0
    assert len(full["frames"]) == 300, full
    pred = _predictor(tmp_path, video_timeout_s=min(0.05, full_s / 10))
    (res,) = pred.predict_images([(long_video, "video/mp4", 5)])
    assert res.get("error", {}).get("code") == "timeout" and res["error"]["status"] == 504, res
    assert res["error"]["details"]["stage"] == "video_decode", res
    # the videos of one batch share one deadline: three of them stop after about one budget, not three
    pred = _predictor(tmp_path, video_timeout_s=full_s * 0.3)
    t0 = time.monotonic()
    results = pred.predict_images([(long_video, "video/mp4", 5)] * 3)
    took = time.monotonic() - t0
    assert [r.get("error", {}).get("code") for r in results] == ["timeout"] * 3, results
    assert took < full_s * 0.6, (took, full_s)


# --------------------------------------------------------------------------------- through the gateway


def _deploy_tiny(url: str, token: str, name: str) -> str:
    status, model = request(
        url, "POST", "/api/v1/models/presets?wait=true", {"preset": "tiny_cnn", "name": name}, token
    )
    assert status == 200, model
    status, dep = request(
        url,
        "POST",
        "/api/v1/deployments",
        {"model_id": model["id"], "engine": "onnxruntime-cpu", "workers": 1},
        token,
        timeout=300,
    )
    assert status == 201, dep
    return str(dep["id"])


def _predict(url: str, token: str, dep_id: str, data: bytes, ctype: str = "video/mp4") -> tuple[int, Any]:
    return request(
        url,
        "POST",
        f"/api/v1/deployments/{dep_id}/predict",
        raw=data,
        token=token,
        headers={"Content-Type": ctype},
    )


@pytest.fixture(scope="module")
def deployment(live: Live) -> Iterator[str]:
    dep_id = _deploy_tiny(live.url, live.admin, "sec-video")
    yield dep_id
    request(live.url, "DELETE", f"/api/v1/deployments/{dep_id}", token=live.admin)


def test_other_container_posted_as_mp4_is_422(live: Live, deployment: str) -> None:
    for fmt, codec in OTHER_CONTAINERS.items():
        status, body = _predict(live.url, live.viewer, deployment, _video(fmt, codec))
        assert status == 422, (fmt, body)
        assert body["error"]["code"] == "validation_failed", body


def test_codec_outside_the_allow_list_is_422_naming_it(live: Live, deployment: str) -> None:
    for codec, pix in REFUSED_CODECS.items():
        status, body = _predict(live.url, live.viewer, deployment, _video("mp4", codec, pix_fmt=pix))
        assert status == 422, (codec, body)
        assert codec in body["error"]["message"] and body["error"]["details"]["codec"] == codec, body
        assert set(body["error"]["details"]["allowed"]) == {"h264", "hevc", "mpeg4", "av1", "vp9"}, body
    status, body = _predict(live.url, live.viewer, deployment, _video("mp4", "libx264"))
    assert status == 200 and len(body["frames"]) == 6, body


@pytest.mark.slow
def test_slow_video_answers_504_and_frees_its_worker(
    tmp_path_factory: pytest.TempPathFactory, long_video: bytes
) -> None:
    server = Server(
        tmp_path_factory.mktemp("video-deadline") / "data",
        CVOPS_VIDEO_TIMEOUT_S="0.05",
        CVOPS_INFERENCE_TIMEOUT_S="60",
    ).start()
    try:
        admin = server.token()
        dep_id = _deploy_tiny(server.url, admin, "deadline")
        t0 = time.monotonic()
        status, body = _predict(server.url, admin, dep_id, long_video)
        took = time.monotonic() - t0
        assert status == 504, body
        assert body["error"]["code"] == "timeout" and body["error"]["details"]["stage"] == "video_decode", (
            body
        )
        assert took < 30, took
        # the deployment's only worker stopped decoding: the next request is answered at once
        from tests.e2e.test_predict import _jpeg

        t0 = time.monotonic()
        status, body = _predict(server.url, admin, dep_id, _jpeg(), "image/jpeg")
        assert status == 200 and body["predictions"], body
        assert time.monotonic() - t0 < 10
    finally:
        server.stop()
