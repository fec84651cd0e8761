"""The bodies of the Open Inference Protocol (KServe v2 / Triton HTTP/REST), encoded and decoded.

Pure: no aiohttp, no Ray.  A request is JSON, or JSON followed by the binary tensor extension's raw
bytes (the JSON's length in the ``Inference-Header-Content-Length`` header; each binary input says its
``binary_data_size``).  ``FP32`` tensors travel little-endian; ``BYTES`` elements each as a 4-byte
little-endian length and the bytes (in JSON: strings).  Every malformed body is a
:class:`~cvops.errors.BadRequest` (400).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from cvops.errors import BadRequest

#: The protocol's element types that this server reads and writes, with their numpy dtype.
DTYPES: dict[str, str] = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "FP16": "<f2"}
MAX_ELEMENTS = 64_000_000  # one tensor; far above any image batch the body limit lets in


class OipTensorIn(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    data: Any = None


class OipOutputIn(msgspec.Struct, kw_only=True):
    name: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class OipInferRequest(msgspec.Struct, kw_only=True):
    inputs: list[OipTensorIn]
    id: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    outputs: list[OipOutputIn] | None = None


class OipTensorOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    data: Any = None


class OipInferResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    outputs: list[OipTensorOut]
    model_version: str | None = None
    id: str | None = None


class OipError(msgspec.Struct):
    """The protocol's error body."""

    error: str


@dataclass(frozen=True)
class Tensor:
    """One decoded input or output: ``array`` for numeric types, ``items`` for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    items: tuple[bytes, ...] | None = None


def _count(shape: Sequence[int], name: str) -> int:
    if any(int(d) < 0 for d in shape):
        raise BadRequest(f"input {name!r}: negative dimension in shape {list(shape)}")
    n = math.prod(int(d) for d in shape)  # Python ints: no overflow on a made-up shape
    if n > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: {n} elements is over the limit of {MAX_ELEMENTS}")
    return n


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def split_bytes(raw: bytes, name: str = "") -> list[bytes]:
    """A BYTES tensor's binary form → its elements."""
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"input {name!r}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"input {name!r}: BYTES element of {n} bytes runs past the data")
        items.append(raw[pos : pos + n])
        pos += n
    return items


def join_bytes(items: Sequence[bytes]) -> bytes:
    """The binary form of a BYTES tensor."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _decode_input(t: OipTensorIn, binary: bytes | None) -> Tensor:
    shape = tuple(int(d) for d in t.shape)
    n = _count(shape, t.name)
    if t.datatype == "BYTES":
        if binary is not None:
            items = split_bytes(binary, t.name)
        else:
            flat = _flatten(t.data)
            if not all(isinstance(v, str) for v in flat):
                raise BadRequest(f"input {t.name!r}: BYTES data must be strings in JSON")
            items = [v.encode() for v in flat]
        if len(items) != n:
            raise BadRequest(f"input {t.name!r}: {len(items)} BYTES elements for shape {list(shape)}")
        return Tensor(t.name, t.datatype, shape, items=tuple(items))
    dtype = DTYPES.get(t.datatype)
    if dtype is None:
        raise BadRequest(f"input {t.name!r}: unsupported datatype {t.datatype!r}")
    if binary is not None:
        if len(binary) != n * np.dtype(dtype).itemsize:
            raise BadRequest(
                f"input {t.name!r}: {len(binary)} bytes of binary data for {t.datatype} {list(shape)}"
            )
        arr = np.frombuffer(binary, dtype=dtype)
    else:
        flat = _flatten(t.data)
        if len(flat) != n:
            raise BadRequest(f"input {t.name!r}: {len(flat)} values for shape {list(shape)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise BadRequest(f"input {t.name!r}: {t.datatype} data must be numbers")
        arr = np.asarray(flat, dtype=dtype)
    return Tensor(t.name, t.datatype, shape, array=arr.reshape(shape))


def decode_request(body: bytes, header_length: int | None) -> tuple[OipInferRequest, list[Tensor]]:
    """An infer request body → the request and its decoded inputs (in the request's order)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} is outside the body")
    head = body if header_length is None else body[:header_length]
    try:
        req = msgspec.json.decode(head, type=OipInferRequest)
    except msgspec.DecodeError as e:
        raise BadRequest(f"bad inference request: {e}") from None
    if not req.inputs:
        raise BadRequest("the request has no inputs")
    pos = header_length or 0
    tensors: list[Tensor] = []
    for t in req.inputs:
        size = t.parameters.get("binary_data_size")
        binary: bytes | None = None
        if size is not None:
            if header_length is None:
                raise BadRequest(
                    f"input {t.name!r} has binary_data_size but no Inference-Header-Content-Length"
                )
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(body):
                raise BadRequest(f"input {t.name!r}: binary_data_size {size!r} runs past the body")
            binary, pos = body[pos : pos + size], pos + size
        elif t.data is None:
            raise BadRequest(f"input {t.name!r} has neither data nor binary_data_size")
        tensors.append(_decode_input(t, binary))
    if header_length is not None and pos != len(body):
        raise BadRequest(f"{len(body) - pos} bytes of binary data belong to no input")
    return req, tensors


def wants_binary(req: OipInferRequest, name: str) -> bool:
    """Whether output ``name`` goes back as binary data (its own ``binary_data`` parameter, else the
    request's ``binary_data_output``)."""
    for o in req.outputs or []:
        if o.name == name and "binary_data" in o.parameters:
            return bool(o.parameters["binary_data"])
    return bool(req.parameters.get("binary_data_output", False))


def encode_response(
    model_name: str, req: OipInferRequest, outputs: Sequence[Tensor], model_version: str | None = None
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length."""
    heads: list[OipTensorOut] = []
    blobs: list[bytes] = []
    for t in outputs:
        if t.items is not None:
            raw = join_bytes(t.items)
            json_data: Any = [b.decode("utf-8", "replace") for b in t.items]
        else:
            assert t.array is not None
            a = np.ascontiguousarray(t.array, dtype=DTYPES[t.datatype])
            raw = a.tobytes()
            json_data = a.reshape(-1).tolist()
        out = OipTensorOut(name=t.name, datatype=t.datatype, shape=list(t.shape))
        if wants_binary(req, t.name):
            out.parameters = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out.data = json_data
        heads.append(out)
    head = msgspec.json.encode(
        OipInferResponse(model_name=model_name, model_version=model_version, id=req.id, outputs=heads)
    )
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def classification_strings(rows: np.ndarray, k: int, labels: Sequence[str]) -> list[list[bytes]]:
    """The classification extension, as Triton does it: per row the ``k`` largest values of the
    output, best first (ties to the lower index), each as ``b"score:index:label"`` (``score:index``
    when the class has no label)."""
    out: list[list[bytes]] = []
    for row in np.asarray(rows, dtype=np.float32).reshape(rows.shape[0], -1):
        order = np.argsort(-row, kind="stable")[: max(1, min(int(k), row.size))]
        out.append(
            [
                (f"{row[i]:f}:{int(i)}" + (f":{labels[i]}" if 0 <= i < len(labels) else "")).encode()
                for i in order
            ]
        )
    return out


def boxes_tensor(per_image: Sequence[Sequence[dict[str, Any]]]) -> np.ndarray:
    """Detections of N images → ``[N, K, 6]`` float32 (x0, y0, x1, y1, score, class), K the most any
    image has; shorter lists padded with rows of zeros and class -1."""
    k = max((len(d) for d in per_image), default=0)
    out = np.zeros((len(per_image), k, 6), dtype=np.float32)
    out[:, :, 5] = -1
    for i, dets in enumerate(per_image):
        for j, d in enumerate(dets):
            out[i, j, :4] = d["box"]
            out[i, j, 4] = d["score"]
            out[i, j, 5] = d["class_id"]
    return out
