"""Pre- and post-processing for serving: decode, resize/letterbox, normalise, softmax/top-k, YOLO NMS.

Runs inside inference worker processes; imports neither ray nor aiohttp.  Every user-caused failure is a
:class:`cvops.errors.CvopsError` (415 for a media type we do not take, 422 for bytes that do not decode).

Coordinates: a :class:`Transform` maps boxes from network-input pixels back to the pixels of the
original image as the user sent it (after EXIF orientation), whatever reduced-size JPEG decoding
(``Image.draft``) or letterboxing happened on the way.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image, ImageOps

from cvops.errors import CvopsError, GatewayTimeout, UnsupportedMediaType, ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.oip_items import TENSOR_TYPE, output_mode, raw_result, tensor_row
from cvops.ml.video import FRAME_TYPE, VIDEO_MAX_FRAMES, decode_video, frame_image, predict_video_frames
from cvops.ml.video import MAX_PIXELS as MAX_PIXELS
from cvops.ml.video import VIDEO_CODECS as VIDEO_CODECS
from cvops.ml.video import VIDEO_FORMAT as VIDEO_FORMAT
from cvops.ml.video import VIDEO_TYPES as VIDEO_TYPES
from cvops.ml.video import VideoFrames as VideoFrames
from cvops.ml.video import media_type as media_type

log = logging.getLogger(__name__)
R = TypeVar("R")

#: Largest image (pixels) we decode; bigger ones are refused as decompression bombs.  Pillow itself
#: raises ``DecompressionBombError`` above twice this.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_TYPES: dict[str, list[str]] = {
    "image/jpeg": ["JPEG", "PNG"],
    "image/jpg": ["JPEG", "PNG"],
    "image/pjpeg": ["JPEG", "PNG"],
    "image/png": ["PNG", "JPEG"],
}
LETTERBOX_PAD = 114
_MAX_WH = 7680.0  # class offset for class-aware NMS (bigger than any input side)
_MAX_NMS = 30_000  # candidates kept for NMS, best first


# ------------------------------------------------------------------------------------------- decode


def decode_image(data: bytes, content_type: str) -> np.ndarray:
    """Decode a JPEG/PNG into an HWC uint8 RGB array at full size."""
    img, _ = decode_image_sized(data, content_type)
    return img


def decode_image_sized(
    data: bytes,
    content_type: str,
    target: tuple[int, int] | None = None,
    *,
    keep_ratio: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode; returns ``(HWC uint8 RGB, (orig_height, orig_width))``.

    With ``target`` (height, width) a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    still covers the size the image will be resized to (``keep_ratio``: letterbox fit, else the
    target itself), so the array may be smaller than the original; the original size is returned
    so :func:`preprocess` can map coordinates back.
    """
    pil, orig_hw = _open_image(data, content_type, target, keep_ratio=keep_ratio)
    return np.asarray(pil), orig_hw


def _open_image(
    data: bytes,
    content_type: str,
    target: tuple[int, int] | None,
    *,
    keep_ratio: bool,
) -> tuple[Image.Image, tuple[int, int]]:
    mt = media_type(content_type)
    if mt == FRAME_TYPE:
        return frame_image(data, content_type)
    formats = IMAGE_TYPES.get(mt)
    if formats is None:
        raise UnsupportedMediaType(
            f"unsupported content type {mt or '(none)'!r}; send image/jpeg or image/png",
            {"content_type": mt, "accepted": sorted({"image/jpeg", "image/png"})},
        )
    if not data:
        raise ValidationFailed("empty image body", {"content_type": mt})
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=formats)
        w0, h0 = img.size
        if w0 <= 0 or h0 <= 0 or w0 * h0 > MAX_PIXELS:
            raise ValidationFailed(
                f"image of {w0}x{h0} pixels exceeds the limit of {MAX_PIXELS} pixels",
                {"width": w0, "height": h0, "max_pixels": MAX_PIXELS},
            )
        orientation = int(img.getexif().get(0x0112, 1) or 1)
        if target is not None and img.format == "JPEG":
            th, tw = target
            if orientation in (5, 6, 7, 8):  # the stored image is transposed relative to what we show
                th, tw = tw, th
            if keep_ratio:
                r = min(th / h0, tw / w0)
                need = (max(1, math.ceil(w0 * r)), max(1, math.ceil(h0 * r)))
            else:
                need = (tw, th)
            img.draft("RGB", need)
        img.load()
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
            if orientation in (5, 6, 7, 8):
                w0, h0 = h0, w0
        if img.mode != "RGB":
            img = _to_rgb(img)
    except CvopsError:
        raise
    except Image.DecompressionBombError as e:
        raise ValidationFailed(f"image too large: {e}", {"max_pixels": MAX_PIXELS}) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's ways of saying "not an image"
        raise ValidationFailed(f"cannot decode image: {e}", {"content_type": mt}) from e
    return img, (h0, w0)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        arr8 = np.clip(arr * (255.0 / max(hi, 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


# -------------------------------------------------------------------------------------- preprocess


@dataclass(frozen=True, slots=True)
class Transform:
    """Input pixels ↔ original pixels: ``x_in = x_orig * ratio_x + pad_x``."""

    ratio_x: float
    ratio_y: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int
    input_w: int
    input_h: int

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy in input pixels → xyxy in original pixels, clipped to the image."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0] = (boxes[:, 0] - self.pad_x) / self.ratio_x
        out[:, 2] = (boxes[:, 2] - self.pad_x) / self.ratio_x
        out[:, 1] = (boxes[:, 1] - self.pad_y) / self.ratio_y
        out[:, 3] = (boxes[:, 3] - self.pad_y) / self.ratio_y
        np.clip(out[:, 0::2], 0, self.orig_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.orig_h, out=out[:, 1::2])
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy in original pixels → input pixels (the inverse, unclipped)."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[:, 0::2] = out[:, 0::2] * self.ratio_x + self.pad_x
        out[:, 1::2] = out[:, 1::2] * self.ratio_y + self.pad_y
        return out


def preprocess(
    img: np.ndarray, pre: Preprocessing, original_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Transform]:
    """HWC uint8 RGB → ``(3, H, W)`` float32 (``(H, W, 3)`` for layout NHWC) and its Transform.

    ``original_size`` (height, width) is the size the coordinates refer to when ``img`` was decoded
    at reduced size; it defaults to ``img``'s own size.
    """
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValidationFailed(f"expected an HWC uint8 RGB image, got {img.dtype} {img.shape}")
    if img.shape[2] == 4:
        img = img[:, :, :3]
    pil = Image.fromarray(np.ascontiguousarray(img), mode="RGB")
    return _preprocess_pil(pil, pre, original_size)


def _preprocess_pil(
    pil: Image.Image, pre: Preprocessing, original_size: tuple[int, int] | None
) -> tuple[np.ndarray, Transform]:
    th, tw = int(pre.image_size[0]), int(pre.image_size[-1])
    h0, w0 = original_size if original_size is not None else (pil.height, pil.width)
    if pre.resize == "letterbox":
        r = min(th / h0, tw / w0)
        nw, nh = max(1, min(tw, round(w0 * r))), max(1, min(th, round(h0 * r)))
        left = round((tw - nw) / 2 - 0.1)
        top = round((th - nh) / 2 - 0.1)
        canvas = np.full((th, tw, 3), LETTERBOX_PAD, dtype=np.uint8)
        resized = _resize(pil, nw, nh)
        canvas[top : top + nh, left : left + nw] = resized
        transform = Transform(nw / w0, nh / h0, float(left), float(top), w0, h0, tw, th)
    elif pre.resize == "resize":
        canvas = _resize(pil, tw, th)
        transform = Transform(tw / w0, th / h0, 0.0, 0.0, w0, h0, tw, th)
    else:
        raise ValidationFailed(f"unknown resize mode {pre.resize!r}", {"resize": pre.resize})
    return _normalise(canvas, pre), transform


def _resize(pil: Image.Image, w: int, h: int) -> np.ndarray:
    if pil.size != (w, h):
        pil = pil.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(pil)


def _normalise(hwc: np.ndarray, pre: Preprocessing) -> np.ndarray:
    std = np.asarray(pre.std, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    scale = 1.0 / (255.0 * std)
    offset = mean / std
    if pre.layout.upper() == "NHWC":
        return hwc.astype(np.float32) * scale - offset  # type: ignore[no-any-return]
    out = np.empty((3, hwc.shape[0], hwc.shape[1]), dtype=np.float32)
    for c in range(3):
        np.multiply(hwc[:, :, c], scale[c], out=out[c], casting="unsafe")
        out[c] -= offset[c]
    return out


# ------------------------------------------------------------------------------------- postprocess


def _label(labels: Sequence[str], i: int) -> str:
    return labels[i] if 0 <= i < len(labels) else str(i)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - np.max(z)
    e = np.exp(z)
    return e / e.sum()  # type: ignore[no-any-return]


def postprocess_classification(
    logits: np.ndarray, labels: Sequence[str], top_k: int = 5
) -> list[dict[str, Any]]:
    """Softmax over the classes, then the ``top_k`` best; ties go to the lower class id."""
    flat = np.asarray(logits).reshape(-1)
    if flat.size == 0:
        return []
    probs = softmax(flat)
    k = max(1, min(int(top_k), flat.size))
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {"class_id": int(i), "label": _label(labels, int(i)), "score": round(float(probs[i]), 6)}
        for i in order
    ]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy NMS (vectorised per kept box); ``boxes`` xyxy sorted by nothing in particular.

    Returns indices of kept boxes, best score first; equal scores keep the lower index first.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        ov = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ov <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess_detection(
    raw: np.ndarray,
    labels: Sequence[str],
    transform: Transform,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
) -> list[dict[str, Any]]:
    """YOLOv8 export head ``(4 + nc, anchors)`` (or with a leading batch of 1) → detections.

    Rows 0..3 are cx, cy, w, h in input pixels; rows 4.. are per-class scores (already sigmoid).
    One class per anchor (the best), class-aware NMS, boxes mapped to original pixels and clipped.
    """
    a = np.asarray(raw, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[0] < 5:
        raise ValidationFailed(f"detection head must be (4+nc, anchors), got {a.shape}")
    cls_scores = a[4:]
    cls = np.argmax(cls_scores, axis=0)
    score = cls_scores[cls, np.arange(a.shape[1])]
    mask = score > conf
    if not mask.any():
        return []
    idx = np.nonzero(mask)[0]
    score, cls = score[idx], cls[idx]
    if idx.size > _MAX_NMS:
        top = np.argsort(-score, kind="stable")[:_MAX_NMS]
        idx, score, cls = idx[top], score[top], cls[top]
    cx, cy, w, h = a[0, idx], a[1, idx], a[2, idx], a[3, idx]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    offset = cls.astype(np.float32)[:, None] * _MAX_WH
    keep = nms(boxes + offset, score, iou, max_det)
    mapped = transform.boxes_to_original(boxes[keep])
    out: list[dict[str, Any]] = []
    for j, k in enumerate(keep):
        c = int(cls[k])
        out.append(
            {
                "box": [round(float(v), 2) for v in mapped[j]],
                "class_id": c,
                "label": _label(labels, c),
                "score": round(float(score[k]), 6),
            }
        )
    return out


# ------------------------------------------------------------------------------------------ engine


class Engine(Protocol):
    def run(self, batch: np.ndarray) -> np.ndarray | list[np.ndarray]: ...


class GpuBatcher(Protocol):  # cvops.ml.gpu_preprocess.GpuPreprocessor
    def accepts(self, data: bytes, content_type: str) -> bool: ...

    def prepare(self, datas: Sequence[bytes]) -> tuple[Any, list[Transform]]: ...


def cpu_engine(onnx_path: str | Path, threads: int = 1) -> Engine:
    """The ``onnxruntime-cpu`` engine of :mod:`cvops.ml.engines`, loaded (what a Predictor given a
    path runs)."""
    from cvops.ml.engines import get_engine

    engine = get_engine("onnxruntime-cpu")
    engine.load(Path(onnx_path), threads=max(1, int(threads)))
    return engine


def _first_output(out: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out
    if isinstance(out, (list, tuple)) and out:
        return np.asarray(out[0])
    raise RuntimeError(f"engine returned no output ({type(out).__name__})")


# --------------------------------------------------------------------------------------- predictor

ImageItem = tuple[bytes, str, int]  # (body, content_type, top_k)


class Predictor:
    """Decode → preprocess → one batched engine call → postprocess, for one deployed model."""

    def __init__(
        self,
        engine: Engine | str | Path,
        task: str,
        labels: Sequence[str],
        preprocessing: Preprocessing,
        *,
        threads: int = 1,
        max_batch: int | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        video_max_frames: int = VIDEO_MAX_FRAMES,
        video_stride: int = 1,
        video_batch: int = 8,
        video_timeout_s: float | None = None,
        gpu: GpuBatcher | None = None,
    ) -> None:
        """``gpu``: decodes the JPEGs it accepts on the GPU (the engine then needs ``run_device``)."""
        if task not in ("classification", "detection"):
            raise ValidationFailed(f"unknown task {task!r}", {"task": task})
        self.engine: Engine = cpu_engine(engine, threads) if isinstance(engine, (str, Path)) else engine
        self.task = task
        self.labels = list(labels)
        self.pre = preprocessing
        self.max_batch = max_batch or getattr(self.engine, "max_batch", None)
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.video_max_frames, self.video_stride, self.video_batch = (
            video_max_frames,
            video_stride,
            video_batch,
        )
        self.video_timeout_s = video_timeout_s  # for all the videos of one predict_images call
        self._target = (int(preprocessing.image_size[0]), int(preprocessing.image_size[-1]))
        self._key = "detections" if task == "detection" else "predictions"
        self.gpu = gpu if gpu is not None and hasattr(self.engine, "run_device") else None

    # -- pieces
    def prepare(self, data: bytes, content_type: str) -> tuple[np.ndarray, Transform]:
        pil, orig_hw = _open_image(
            data, content_type, self._target, keep_ratio=self.pre.resize == "letterbox"
        )
        return _preprocess_pil(pil, self.pre, orig_hw)

    def run_batch(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """One engine call per ``max_batch`` chunk; returns one output row per input."""
        outs: list[np.ndarray] = []
        step = self.max_batch or len(tensors)
        for s in range(0, len(tensors), step):
            chunk = np.stack(tensors[s : s + step])
            out = _first_output(self.engine.run(chunk))
            if out.shape[0] != chunk.shape[0]:
                raise RuntimeError(f"engine returned batch {out.shape[0]} for input batch {chunk.shape[0]}")
            outs.extend(out[i] for i in range(out.shape[0]))
        return outs

    def _run_gpu(self, datas: list[bytes], transforms: list[Transform]) -> list[np.ndarray]:
        """Output rows of JPEGs decoded on the GPU ([] if nvjpeg refused them); extends ``transforms``."""
        if not datas or self.gpu is None:
            return []
        try:
            x, ts = self.gpu.prepare(datas)
        except Exception as exc:  # noqa: BLE001 - e.g. a JPEG nvjpeg cannot read: the CPU path decides
            log.info("GPU decoding refused a batch of %d (%s); decoding on the CPU", len(datas), exc)
            return []
        run_device = self.engine.run_device  # type: ignore[attr-defined]
        outs: list[np.ndarray] = []
        step = self.max_batch or len(datas)
        for s in range(0, len(datas), step):
            out = _first_output(run_device(x[s : s + step]))
            outs.extend(out[i] for i in range(out.shape[0]))
        transforms.extend(ts)
        return outs

    def postprocess(self, out: np.ndarray, transform: Transform, top_k: int = 5) -> list[dict[str, Any]]:
        if self.task == "detection":
            return postprocess_detection(out, self.labels, transform, self.conf, self.iou, self.max_det)
        return postprocess_classification(out, self.labels, top_k)

    def tensor(self, data: bytes, content_type: str) -> tuple[np.ndarray, Transform]:
        """A client's preprocessed input row (:data:`~cvops.ml.oip_items.TENSOR_TYPE`); its boxes stay
        in input pixels."""
        h, w = self._target
        x = tensor_row(data, content_type, (h, w, 3) if self.pre.layout.upper() == "NHWC" else (3, h, w))
        return x, Transform(1.0, 1.0, 0.0, 0.0, w, h, w, h)

    def _result(self, out: np.ndarray, t: Transform, item: ImageItem) -> dict[str, Any]:
        """The predictions, or the raw output row (and the predictions) for an ``out=raw`` item."""
        mode = output_mode(item[1])
        if mode is None:
            return {self._key: self.postprocess(out, t, item[2])}
        return raw_result(out, self._key, self.postprocess(out, t, item[2]) if mode == "raw+post" else None)

    # -- the worker's calls
    def predict_images(self, items: Sequence[ImageItem]) -> list[dict[str, Any]]:
        """Per item ``{"predictions"|"detections": [...]}`` or ``{"error": {...}}``; one engine batch.

        Items whose content type is a video are handled one by one with :meth:`predict_video`, all
        under one deadline, ``video_timeout_s`` from the start of the call.
        """
        deadline = None if self.video_timeout_s is None else time.monotonic() + self.video_timeout_s
        results: list[dict[str, Any] | None] = [None] * len(items)
        good: list[int] = []
        tensors: list[np.ndarray] = []
        transforms: list[Transform] = []
        gpu = self.gpu
        gpu_items = [i for i, (d, c, _k) in enumerate(items) if gpu is not None and gpu.accepts(d, c)]
        outs: list[np.ndarray] = self._run_gpu([items[i][0] for i in gpu_items], transforms)
        good.extend(gpu_items[: len(outs)])  # [] when the GPU could not decode them: the CPU way below
        for i, (data, ctype, _k) in enumerate(items):
            if i in good:
                continue
            try:
                mt = media_type(ctype)
                if mt in VIDEO_TYPES:
                    results[i] = self.predict_video(data, deadline)
                    continue
                x, t = self.tensor(data, ctype) if mt == TENSOR_TYPE else self.prepare(data, ctype)
            except CvopsError as e:
                results[i] = _error_dict(e)
                continue
            good.append(i)
            tensors.append(x)
            transforms.append(t)
        if tensors:
            outs += self.run_batch(tensors)
        if outs:
            for i, out, t in zip(good, outs, transforms, strict=True):
                try:
                    results[i] = self._result(out, t, items[i])
                except CvopsError as e:
                    results[i] = _error_dict(e)
        return [r if r is not None else _error_dict(CvopsError("no result")) for r in results]

    def predict_video(self, data: bytes, deadline: float | None = None) -> dict[str, Any]:
        """``{"frames": [{"index", "detections"|"predictions"}], "fps", "width", "height"}``.

        ``deadline`` (monotonic; default ``video_timeout_s`` from now): past it, GatewayTimeout."""
        if deadline is None and self.video_timeout_s is not None:
            deadline = time.monotonic() + self.video_timeout_s
        fit = self._target if self.pre.resize == "letterbox" else None
        video = decode_video(data, self.video_max_frames, self.video_stride, fit=fit, deadline=deadline)
        orig_hw = (video.height, video.width)

        def batch(frames: list[np.ndarray]) -> list[list[dict[str, Any]]]:
            pairs = [_preprocess_pil(Image.fromarray(f, mode="RGB"), self.pre, orig_hw) for f in frames]
            outs = self.run_batch([p[0] for p in pairs])
            return [self.postprocess(o, p[1]) for o, p in zip(outs, pairs, strict=True)]

        try:
            frames = [
                {"index": i, self._key: r}
                for i, r in predict_video_frames(video, batch, max(1, self.video_batch))
            ]
        except GatewayTimeout as e:
            if self.video_timeout_s is None:
                raise
            raise GatewayTimeout(
                f"video decoding did not finish within {self.video_timeout_s:g} s "
                f"(CVOPS_VIDEO_TIMEOUT_S); send a shorter or smaller video",
                {**e.details, "timeout_s": self.video_timeout_s},
            ) from None
        finally:
            video.close()
        if not frames:
            raise ValidationFailed("the video has no decodable frames")
        return {"frames": frames, "fps": video.fps, "width": video.width, "height": video.height}


def _error_dict(e: CvopsError) -> dict[str, Any]:
    return {"error": {"code": e.code, "message": e.message, "status": e.status, "details": e.details}}
