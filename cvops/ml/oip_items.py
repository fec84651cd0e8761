"""Items of the Open Inference Protocol on their way from the gateway to an inference worker.

Like :data:`cvops.ml.video.FRAME_TYPE`, these are internal content types that only the gateway's
``/v2`` handler (:mod:`cvops.platform.api_oip`) makes; ``/predict`` accepts image and video types only,
and passes the media type without its parameters, so none of this can come in over it.

- :data:`TENSOR_TYPE` ``; shape=3,224,224``: a client's already preprocessed input row, float32 bytes.
- an ``out=raw`` (or ``out=raw+post``) parameter on any item type: the worker answers the raw output
  row (:func:`raw_result`) instead of (or beside) the postprocessed predictions.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from cvops.errors import ValidationFailed

TENSOR_TYPE = "application/x-cvops-tensor"
OutMode = Literal["raw", "raw+post"]
_MAX_TENSOR_ELEMENTS = 64_000_000


def _params(content_type: str) -> dict[str, str]:
    return dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)


def with_output(content_type: str, post: bool) -> str:
    """``content_type`` asking the worker for the raw output row (and the predictions when ``post``)."""
    return f"{content_type}; out={'raw+post' if post else 'raw'}"


def output_mode(content_type: str) -> OutMode | None:
    """What an item asks for: None (the predictions, as ``/predict``), ``raw`` or ``raw+post``."""
    if ";" not in content_type:
        return None
    out = _params(content_type).get("out")
    return out if out in ("raw", "raw+post") else None  # type: ignore[return-value]


def tensor_item(row: np.ndarray, post: bool = False) -> tuple[bytes, str]:
    """One preprocessed input row (no batch axis) as ``(body, content type)`` for a worker."""
    a = np.ascontiguousarray(row, dtype="<f4")
    shape = ",".join(str(int(d)) for d in a.shape)
    return a.tobytes(), with_output(f"{TENSOR_TYPE}; shape={shape}", post)


def tensor_row(data: bytes, content_type: str, expected: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`tensor_item`, checked against the model's input row shape ``expected``."""
    try:
        shape = tuple(int(d) for d in _params(content_type)["shape"].split(","))
    except (KeyError, ValueError) as e:
        raise ValidationFailed(f"bad tensor item {content_type!r}") from e
    n = math.prod(shape)
    if shape != tuple(expected) or n > _MAX_TENSOR_ELEMENTS or len(data) != 4 * n:
        raise ValidationFailed(
            f"tensor of shape {list(shape)} ({len(data)} bytes) is not the model's input {list(expected)}",
            {"shape": list(shape), "expected": list(expected)},
        )
    return np.frombuffer(data, dtype="<f4").reshape(shape)


def raw_result(out: np.ndarray, key: str, post: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A worker's answer for an ``out=raw`` item: the output row as float32 bytes and its shape, with
    the predictions under ``key`` ("predictions" | "detections") when they were asked for."""
    a = np.ascontiguousarray(out, dtype="<f4")
    result: dict[str, Any] = {"raw": a.tobytes(), "shape": [int(d) for d in a.shape]}
    if post is not None:
        result[key] = post
    return result
