"""Pre/post-processing for serving: decode, letterbox + box mapping, NMS, top-k, video, Predictor."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvops.errors import UnsupportedMediaType, ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.inference import (
    Engine,
    Predictor,
    Transform,
    cpu_engine,
    decode_image,
    decode_image_sized,
    decode_video,
    nms,
    postprocess_classification,
    postprocess_detection,
    predict_video_frames,
    preprocess,
)

DET_PRE = Preprocessing(image_size=[64, 64], mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], resize="letterbox")


def _encode(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2).astype(
        np.uint8
    )


# ------------------------------------------------------------------------------------------ decode


def test_decode_png_exact_and_jpeg_close() -> None:
    img = _gradient(30, 40)
    png = decode_image(_encode(img, "PNG"), "image/png")
    assert png.shape == (30, 40, 3) and png.dtype == np.uint8
    assert np.array_equal(png, img)
    jpg = decode_image(_encode(img, "JPEG", quality=95), "Image/JPEG; charset=binary")
    assert jpg.shape == (30, 40, 3)
    assert np.abs(jpg.astype(int) - img.astype(int)).mean() < 6


def test_decode_converts_gray_and_rgba_to_rgb() -> None:
    gray = np.full((8, 9), 77, np.uint8)
    out = decode_image(_encode(gray, "PNG"), "image/png")
    assert out.shape == (8, 9, 3) and (out == 77).all()
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    out = decode_image(_encode(rgba, "PNG"), "image/png")
    assert out.shape == (5, 5, 3) and (out[..., 0] == 200).all()


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType) as ei:
        decode_image(_encode(_gradient(4, 4), "PNG"), "text/plain")
    assert ei.value.status == 415


@pytest.mark.parametrize("body", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage"])
def test_garbage_is_422(body: bytes) -> None:
    with pytest.raises(ValidationFailed) as ei:
        decode_image(body, "image/png")
    assert ei.value.status == 422


def test_truncated_jpeg_is_422() -> None:
    data = _encode(_gradient(64, 64), "JPEG")
    with pytest.raises(ValidationFailed):
        decode_image(data[: len(data) // 2], "image/jpeg")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_decompression_bomb_header_is_422() -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    body = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValidationFailed) as ei:
        decode_image(body, "image/png")
    assert "pixels" in ei.value.message


def test_jpeg_draft_decodes_smaller_and_reports_original_size() -> None:
    data = _encode(_gradient(600, 800), "JPEG")
    arr, orig = decode_image_sized(data, "image/jpeg", (100, 100), keep_ratio=True)
    assert orig == (600, 800)
    assert arr.shape[0] < 600 and arr.shape[1] < 800  # DCT-scaled decode
    assert arr.shape[0] >= 75 and arr.shape[1] >= 100  # still covers the letterboxed size
    png_arr, png_orig = decode_image_sized(_encode(_gradient(60, 80), "PNG"), "image/png", (10, 10))
    assert png_arr.shape == (60, 80, 3) and png_orig == (60, 80)  # PNG has no draft mode


# -------------------------------------------------------------------------------------- preprocess


def test_resize_normalises_to_nchw() -> None:
    pre = Preprocessing(image_size=[16, 24], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    img = np.full((10, 10, 3), 255, np.uint8)
    x, t = preprocess(img, pre)
    assert x.shape == (3, 16, 24) and x.dtype == np.float32
    assert np.allclose(x, 1.0)
    assert (t.ratio_x, t.ratio_y, t.pad_x, t.pad_y) == (2.4, 1.6, 0.0, 0.0)
    nhwc = Preprocessing(image_size=[16, 24], layout="NHWC")
    assert preprocess(img, nhwc)[0].shape == (16, 24, 3)


def test_letterbox_keeps_ratio_pads_114_and_offsets() -> None:
    img = np.zeros((100, 200, 3), np.uint8)  # h=100, w=200
    x, t = preprocess(img, DET_PRE)
    assert x.shape == (3, 64, 64)
    assert (t.ratio_x, t.ratio_y) == (64 / 200, 32 / 100)
    assert (t.pad_x, t.pad_y) == (0.0, 16.0)
    assert np.allclose(x[:, :16, :], 114 / 255) and np.allclose(x[:, 48:, :], 114 / 255)
    assert np.allclose(x[:, 16:48, :], 0.0)


def _head_with_boxes(
    boxes_in: np.ndarray, classes: list[int], scores: list[float], nc: int = 3, anchors: int = 50
) -> np.ndarray:
    raw = np.zeros((4 + nc, anchors), np.float32)
    raw[4:, :] = 0.01
    for a, (b, c, s) in enumerate(zip(boxes_in, classes, scores, strict=True)):
        x1, y1, x2, y2 = b
        raw[0:4, a] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        raw[4 + c, a] = s
    return raw


def test_box_maps_back_to_original_within_1px() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    _, t = preprocess(img, DET_PRE)
    orig_box = np.array([[20.0, 10.0, 120.0, 60.0]])
    raw = _head_with_boxes(t.boxes_to_input(orig_box), [1], [0.9])
    dets = postprocess_detection(raw, ["a", "b", "c"], t)
    assert len(dets) == 1
    assert dets[0]["class_id"] == 1 and dets[0]["label"] == "b" and dets[0]["score"] == pytest.approx(0.9)
    assert np.abs(np.array(dets[0]["box"]) - orig_box[0]).max() <= 1.0


def test_boxes_are_clipped_to_the_image() -> None:
    t = Transform(1.0, 1.0, 0.0, 0.0, 50, 40, 64, 64)
    raw = _head_with_boxes(np.array([[-10.0, -5.0, 60.0, 64.0]]), [0], [0.8])
    (det,) = postprocess_detection(raw, [], t)
    assert det["box"] == [0.0, 0.0, 50.0, 40.0] and det["label"] == "0"


# --------------------------------------------------------------------------------------------- NMS


def test_nms_suppresses_overlaps_keeps_other_classes_and_distinct_boxes() -> None:
    t = Transform(1.0, 1.0, 0.0, 0.0, 640, 640, 640, 640)
    boxes = np.array(
        [
            [10, 10, 110, 110],  # class 0, best
            [12, 12, 112, 112],  # class 0, overlaps → suppressed
            [11, 11, 111, 111],  # class 2, same place, other class → kept
            [300, 300, 400, 400],  # class 0, far away → kept
            [500, 500, 520, 520],  # below conf → dropped
        ],
        np.float32,
    )
    raw = _head_with_boxes(boxes, [0, 0, 2, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.2])
    dets = postprocess_detection(raw, ["x", "y", "z"], t, conf=0.25, iou=0.45)
    assert [(d["class_id"], d["score"]) for d in dets] == [(0, 0.9), (2, 0.7), (0, 0.6)]
    assert dets[0]["box"] == [10.0, 10.0, 110.0, 110.0]
    assert postprocess_detection(raw, ["x", "y", "z"], t, max_det=1) == dets[:1]
    assert postprocess_detection(raw, [], t, conf=0.95) == []


def test_nms_is_deterministic_on_ties() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.45, 10).tolist() == [0]
    assert nms(boxes, scores, 0.99, 10).tolist() == [0, 1]  # exact duplicate (iou 1) suppressed


# ------------------------------------------------------------------------------------ classification


def test_top_k_softmax_and_deterministic_ties() -> None:
    logits = np.array([1.0, 3.0, 3.0, 0.0], np.float32)
    out = postprocess_classification(logits, ["a", "b", "c", "d"], top_k=3)
    assert [p["class_id"] for p in out] == [1, 2, 0]
    assert [p["label"] for p in out] == ["b", "c", "a"]
    assert out[0]["score"] == out[1]["score"]
    full = postprocess_classification(logits, [], top_k=99)
    assert len(full) == 4 and sum(p["score"] for p in full) == pytest.approx(1.0, abs=1e-5)
    assert full[3]["label"] == "3"
    assert postprocess_classification(logits[None, :], ["a", "b", "c", "d"], 3) == out


# ------------------------------------------------------------------------------------------- video


def _make_mp4(frames: int = 6, w: int = 64, h: int = 48, fps: int = 12) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            x = 4 + i * 8
            img[16:32, x : x + 12] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return _make_mp4()


def test_decode_video_frames_fps_and_motion(mp4: bytes) -> None:
    video = decode_video(mp4)
    assert video.fps == pytest.approx(12.0)
    assert (video.width, video.height) == (64, 48)
    frames = list(video)
    assert [i for i, _ in frames] == list(range(6))
    assert frames[0][1].shape == (48, 64, 3)
    centroids = [np.nonzero(f[:, :, 0] > 128)[1].mean() for _, f in frames]
    assert all(b > a for a, b in zip(centroids, centroids[1:], strict=False))  # the square moves right


def test_decode_video_stride_max_frames_and_fit(mp4: bytes) -> None:
    assert [i for i, _ in decode_video(mp4, stride=2)] == [0, 2, 4]
    assert len(list(decode_video(mp4, max_frames=2))) == 2
    small = list(decode_video(mp4, fit=(24, 24)))
    assert small[0][1].shape == (18, 24, 3)


def test_decode_video_garbage_and_truncated_is_422(mp4: bytes) -> None:
    for body in (b"this is no mp4", b"", mp4[: len(mp4) // 3], mp4[: len(mp4) * 2 // 3]):
        with pytest.raises(ValidationFailed):
            list(decode_video(body))


def test_predict_video_frames_batches() -> None:
    calls: list[int] = []

    def run(batch: list[np.ndarray]) -> list[int]:
        calls.append(len(batch))
        return [int(f[0, 0, 0]) for f in batch]

    frames = [(i, np.full((2, 2, 3), i, np.uint8)) for i in range(7)]
    assert list(predict_video_frames(frames, run, 3)) == [(i, i) for i in range(7)]
    assert calls == [3, 3, 1]


# --------------------------------------------------------------------------------------- predictor


def _tiny_cnn_onnx(path: Path, nc: int = 5, size: int = 32) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (nc, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (nc,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", nc])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class CountingRunner:
    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.batches.append(batch.shape[0])
        return self.inner.run(batch)


def test_predictor_classification_batch_with_bad_items(tmp_path: Path) -> None:
    onnx_path = _tiny_cnn_onnx(tmp_path / "tiny.onnx")
    runner = CountingRunner(cpu_engine(onnx_path, threads=1))
    labels = ["a", "b", "c", "d", "e"]
    pre = Preprocessing(image_size=[32, 32])
    pred = Predictor(runner, "classification", labels, pre)
    rng = np.random.default_rng(1)
    good_jpg = _encode(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "JPEG")
    good_png = _encode(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "PNG")
    items = [
        (good_jpg, "image/jpeg", 3),
        (b"hello", "text/plain", 3),
        (b"\x89PNG broken", "image/png", 3),
        (good_png, "image/png", 5),
    ]
    results = pred.predict_images(items)
    assert runner.batches == [2]  # the two good items went through the engine in ONE call
    assert len(results[0]["predictions"]) == 3 and len(results[3]["predictions"]) == 5
    assert {p["label"] for p in results[3]["predictions"]} == set(labels)
    assert results[1]["error"]["code"] == "unsupported_media_type"
    assert results[2]["error"]["code"] == "validation_failed"
    # batching does not change an item's answer
    alone = Predictor(onnx_path, "classification", labels, pre).predict_images([items[0]])
    assert [p["class_id"] for p in alone[0]["predictions"]] == [
        p["class_id"] for p in results[0]["predictions"]
    ]
    assert alone[0]["predictions"][0]["score"] == pytest.approx(
        results[0]["predictions"][0]["score"], abs=1e-5
    )
    assert pred.predict_images([]) == []


class FakeHead:
    """A detection 'engine' that reports one fixed box (input pixels) for every image."""

    def __init__(self, box_in: list[float], cls: int = 0, nc: int = 2) -> None:
        self.head = _head_with_boxes(np.array([box_in], np.float32), [cls], [0.9], nc=nc, anchors=20)
        self.batches: list[int] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape[0])
        return np.repeat(self.head[None], batch.shape[0], axis=0)


def test_predictor_detection_maps_boxes_through_draft_and_letterbox() -> None:
    pre = Preprocessing(image_size=[160, 160], mean=[0, 0, 0], std=[1, 1, 1], resize="letterbox")
    # a 640x480 JPEG: r = 0.25 → 160x120 content, 20 px padding on top; the decode is DCT-scaled
    engine = FakeHead([25.0, 40.0, 75.0, 80.0], cls=1)
    pred = Predictor(engine, "detection", ["cat", "dog"], pre)
    data = _encode(_gradient(480, 640), "JPEG")
    (res,) = pred.predict_images([(data, "image/jpeg", 5)])
    (det,) = res["detections"]
    assert det["label"] == "dog"
    assert np.abs(np.array(det["box"]) - [100.0, 80.0, 300.0, 240.0]).max() <= 1.0


def test_predictor_video(mp4: bytes) -> None:
    engine = FakeHead([8.0, 16.0, 24.0, 40.0])
    pre = Preprocessing(image_size=[64, 64], mean=[0, 0, 0], std=[1, 1, 1], resize="letterbox")
    pred = Predictor(engine, "detection", ["sq"], pre, video_batch=4)
    out = pred.predict_video(mp4)
    assert out["fps"] == pytest.approx(12.0)
    assert [f["index"] for f in out["frames"]] == list(range(6))
    assert engine.batches == [4, 2]
    # 64x48 letterboxed into 64x64: pad_y = 8, so input y 16..40 → original 8..32
    assert np.abs(np.array(out["frames"][0]["detections"][0]["box"]) - [8, 8, 24, 32]).max() <= 1.0
    # a video item in a predict_images batch is answered per frame; a bad one is an error item
    res = pred.predict_images([(mp4, "video/mp4", 5), (b"junk", "video/mp4", 5)])
    assert len(res[0]["frames"]) == 6 and res[1]["error"]["code"] == "validation_failed"
    assert float(Fraction(12, 1)) == out["fps"]


def test_exif_orientation_is_applied_and_sizes_follow() -> None:
    img = Image.fromarray(_gradient(200, 400))  # stored 400 wide, 200 high
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    arr, orig = decode_image_sized(buf.getvalue(), "image/jpeg", (50, 50), keep_ratio=True)
    assert orig == (400, 200)  # as displayed: 200 wide, 400 high
    assert arr.shape[0] > arr.shape[1]
    assert decode_image(buf.getvalue(), "image/jpeg").shape == (400, 200, 3)


def test_frame_items_round_trip_and_refuse_wrong_sizes() -> None:
    from cvops.ml.video import frame_image, frame_item

    frame = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    body, ctype = frame_item(frame, (60, 100))
    img, orig = frame_image(body, ctype)
    assert orig == (60, 100) and np.array_equal(np.asarray(img), frame)
    with pytest.raises(ValidationFailed):
        frame_image(body[:-1], ctype)
    with pytest.raises(ValidationFailed):
        frame_image(body, "application/x-cvops-frame; w=10")


async def test_fan_out_decodes_once_keeps_order_and_bounds_in_flight(mp4: bytes) -> None:
    import asyncio

    from cvops.ml.video import fan_out_frames, frame_image

    in_flight, peak, seen = 0, 0, []

    async def submit(body: bytes, ctype: str) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        img, orig = frame_image(body, ctype)
        await asyncio.sleep(0.01 * (len(seen) % 3))  # answers come back out of order
        seen.append(orig)
        in_flight -= 1
        return int(np.asarray(img).sum())

    video = decode_video(mp4)
    got = await fan_out_frames(video, submit, in_flight=2)
    want = [(i, int(f.sum())) for i, f in decode_video(mp4)]
    assert got == want and peak == 2
    assert set(seen) == {(video.height, video.width)}
