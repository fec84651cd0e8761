"""Video bodies: an in-memory mp4 decoded frame by frame (allow-listed codecs only), and frames grouped
into batches.  Imports neither ray nor aiohttp; PyAV is imported only when a video is opened."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from fractions import Fraction
from typing import TypeVar

import numpy as np
from PIL import Image

from cvops.errors import GatewayTimeout, ValidationFailed

R = TypeVar("R")

VIDEO_TYPES = frozenset({"video/mp4", "video/quicktime", "video/x-m4v"})
VIDEO_MAX_FRAMES = 300  # frames of one video that are run (the rest are not decoded)

#: A decoded video frame travelling from the gateway to an inference worker (never accepted over HTTP:
#: the predict handler takes image/jpeg, image/png and video/mp4 only).  Parameters: the frame's
#: ``w``/``h`` and the video's original ``ow``/``oh``, which boxes refer to.
FRAME_TYPE = "application/x-cvops-frame"

#: Largest image or frame (pixels) decoded; bigger ones are refused as decompression bombs.  Pillow
#: itself raises ``DecompressionBombError`` above twice this (cvops.ml.inference sets its limit to it).
MAX_PIXELS = 50_000_000
#: The one FFmpeg demuxer a video body is opened with (``mp4`` names the mov/mp4 demuxer, which also
#: reads the QuickTime and m4v types above).  Never FFmpeg's format probe: it would pick any of its
#: few hundred demuxers from the bytes, whatever the Content-Type said.
VIDEO_FORMAT = "mp4"
#: Codecs decoded from it (FFmpeg codec descriptor names, so ``av1`` covers libdav1d): what mp4s from
#: cameras, phones, browsers and encoders carry — H.264 and HEVC above all, AV1 and VP9 from web
#: pipelines, MPEG-4 Part 2 from older cameras and FFmpeg's built-in encoder.  Their decoders are the
#: most used and most fuzzed; everything else FFmpeg would decode from an mp4 (mjpeg, ffv1, png,
#: prores, mpeg2video, qtrle, rawvideo, ...) is refused with 422: extra decoders are attack surface.
VIDEO_CODECS = ("h264", "hevc", "mpeg4", "av1", "vp9")


class VideoFrames(Iterator[tuple[int, np.ndarray]]):
    """Frames of an in-memory video as ``(index, HWC uint8 RGB)``; ``fps`` etc. read from the stream.

    ``index`` counts every decoded frame (so with ``stride`` 2 the indices are 0, 2, 4, ...).
    With ``fit`` (height, width) frames are scaled on decode to fit inside that box (ratio kept);
    ``height``/``width`` stay the original size, which is what boxes refer to.

    The body is opened as an mp4 only (:data:`VIDEO_FORMAT`) and its first video stream decoded only
    with a codec of :data:`VIDEO_CODECS` (else 422).  ``deadline`` (a :func:`time.monotonic` time) is
    checked before each frame is decoded; past it the video is closed and :class:`GatewayTimeout`
    (504) raised, so a slow video stops instead of running on after its request has been answered.
    """

    def __init__(
        self,
        data: bytes,
        *,
        max_frames: int = 300,
        stride: int = 1,
        fit: tuple[int, int] | None = None,
        max_pixels: int = MAX_PIXELS,
        deadline: float | None = None,
    ) -> None:
        import av  # local: only video needs it

        self._av = av
        self._deadline = deadline
        if stride < 1 or max_frames < 1:
            raise ValidationFailed("stride and max_frames must be >= 1")
        if not data:
            raise ValidationFailed("empty video body")
        try:
            self._container = av.open(
                io.BytesIO(data), mode="r", format=VIDEO_FORMAT, options={"enable_drefs": "0"}
            )
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            raise ValidationFailed(f"cannot decode video: not a readable mp4 ({e})") from e
        if not self._container.streams.video:
            self._container.close()
            raise ValidationFailed("the file has no video stream")
        stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # e.g. a truncated file whose codec parameters are missing
            self._container.close()
            raise ValidationFailed("cannot decode video: the video stream has no usable codec")
        try:
            codec = str(ctx.codec.canonical_name or ctx.name or "unknown")
        except (self._av.FFmpegError, AttributeError, ValueError):  # no decoder for the codec id
            codec = "unknown"
        if codec not in VIDEO_CODECS:
            self._container.close()
            raise ValidationFailed(
                f"video codec {codec!r} is not accepted; send {', '.join(VIDEO_CODECS)} in an mp4",
                {"codec": codec, "allowed": list(VIDEO_CODECS)},
            )
        stream.thread_type = "AUTO"
        self._stream = stream
        self.width = int(ctx.width or 0)
        self.height = int(ctx.height or 0)
        if self.width <= 0 or self.height <= 0 or self.width * self.height > max_pixels:
            self._container.close()
            raise ValidationFailed(
                f"video frame size {self.width}x{self.height} not accepted",
                {"max_pixels": max_pixels},
            )
        rate: Fraction | None = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.frames_declared = int(stream.frames or 0)
        self.max_frames = max_frames
        self.stride = stride
        self._fit_size: tuple[int, int] | None = None
        if fit is not None:
            r = min(fit[0] / self.height, fit[1] / self.width)
            if r < 1.0:
                self._fit_size = (max(2, round(self.width * r)), max(2, round(self.height * r)))
        self._frames = self._container.decode(stream)
        self._index = -1
        self._yielded = 0
        self._closed = False

    def __iter__(self) -> VideoFrames:
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        if self._closed:
            raise StopIteration
        if self._yielded >= self.max_frames:
            self.close()
            raise StopIteration
        while True:
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.close()
                raise GatewayTimeout(
                    "video decoding did not finish before its deadline",
                    {"stage": "video_decode", "frames_decoded": self._index + 1},
                )
            try:
                frame = next(self._frames)
            except StopIteration:
                self.close()
                raise
            except (self._av.FFmpegError, OSError, ValueError, EOFError) as e:
                self.close()
                raise ValidationFailed(f"cannot decode video frame {self._index + 1}: {e}") from e
            self._index += 1
            if self._index % self.stride:
                continue
            if self._fit_size is not None:
                w, h = self._fit_size
                arr = frame.to_ndarray(format="rgb24", width=w, height=h)
            else:
                arr = frame.to_ndarray(format="rgb24")
            self._yielded += 1
            return self._index, arr

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


def decode_video(
    data: bytes,
    max_frames: int = 300,
    stride: int = 1,
    fit: tuple[int, int] | None = None,
    deadline: float | None = None,
) -> VideoFrames:
    """Open an in-memory mp4 (allow-listed codecs only); raises ValidationFailed if it is anything
    else or does not decode, GatewayTimeout once ``deadline`` (monotonic) has passed."""
    return VideoFrames(data, max_frames=max_frames, stride=stride, fit=fit, deadline=deadline)


def predict_video_frames(
    frames: Iterable[tuple[int, np.ndarray]],
    predict_batch: Callable[[list[np.ndarray]], list[R]],
    batch_size: int = 8,
) -> Iterator[tuple[int, R]]:
    """Group frames into batches of ``batch_size``, run ``predict_batch`` on each, yield per frame."""
    idx: list[int] = []
    buf: list[np.ndarray] = []
    for i, frame in frames:
        idx.append(i)
        buf.append(frame)
        if len(buf) >= batch_size:
            yield from zip(idx, predict_batch(buf), strict=True)
            idx, buf = [], []
    if buf:
        yield from zip(idx, predict_batch(buf), strict=True)


def media_type(content_type: str) -> str:
    """``"Image/JPEG; charset=x"`` → ``"image/jpeg"``."""
    return content_type.split(";", 1)[0].strip().lower()


def frame_item(frame: np.ndarray, original_hw: tuple[int, int]) -> tuple[bytes, str]:
    """An HWC uint8 RGB frame as ``(body, content type)`` for a worker (see :data:`FRAME_TYPE`)."""
    h, w = int(frame.shape[0]), int(frame.shape[1])
    oh, ow = original_hw
    return np.ascontiguousarray(
        frame, dtype=np.uint8
    ).tobytes(), f"{FRAME_TYPE}; w={w}; h={h}; ow={ow}; oh={oh}"


def frame_image(data: bytes, content_type: str) -> tuple[Image.Image, tuple[int, int]]:
    """The inverse of :func:`frame_item`: ``(RGB image, (original height, original width))``."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    try:
        w, h, ow, oh = (int(params[k]) for k in ("w", "h", "ow", "oh"))
    except (KeyError, ValueError) as e:
        raise ValidationFailed(f"bad frame item {content_type!r}") from e
    if w <= 0 or h <= 0 or len(data) != w * h * 3 or w * h > MAX_PIXELS:
        raise ValidationFailed(f"frame item of {len(data)} bytes is not {w}x{h} RGB")
    return Image.frombuffer("RGB", (w, h), data, "raw", "RGB", 0, 1), (oh, ow)


def _next_frame(video: VideoFrames) -> tuple[int, np.ndarray] | None:
    return next(video, None)


async def fan_out_frames(
    video: VideoFrames, submit: Callable[[bytes, str], Awaitable[R]], in_flight: int
) -> list[tuple[int, R]]:
    """Decode ``video`` once (in a thread, frame by frame) and hand each frame to ``submit`` as soon as
    it is decoded, with at most ``in_flight`` frames submitted and unanswered; returns ``(index,
    result)`` in frame order.  Decoding overlaps the frames' inference, and the frames spread over
    whatever ``submit`` routes to (a deployment's workers).  Closes the video; on an error the frames
    still in flight are cancelled and the error raised."""
    orig = (video.height, video.width)
    slots = asyncio.Semaphore(max(1, in_flight))
    tasks: list[tuple[int, asyncio.Future[R]]] = []
    try:
        while (got := await asyncio.to_thread(_next_frame, video)) is not None:
            index, frame = got
            await slots.acquire()
            task = asyncio.ensure_future(submit(*frame_item(frame, orig)))
            task.add_done_callback(lambda _t: slots.release())
            tasks.append((index, task))
        return [(i, await t) for i, t in tasks]
    except BaseException:
        for _, pending in tasks:
            pending.cancel()
        raise
    finally:
        video.close()
