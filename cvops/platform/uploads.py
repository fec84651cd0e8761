"""Streaming multipart uploads into the blob store: never the whole body in memory, 413 as soon as
the limit is crossed (partial file removed), hashing and writing in an executor."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cvops.blobs import BlobRef, BlobStore
from cvops.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

FIELD_LIMIT = 64 * 1024
NAME = re.compile(r"[\w .:+-]{1,128}")


def default_name(filename: str, fallback: str) -> str:
    """A display name from an upload's file name, when the form gave none."""
    return re.sub(r"[^\w .:+-]", "_", filename)[:128] or fallback


def check_name(name: str) -> str:
    """Display names of models and datasets: 1-128 letters, digits, spaces or ``._:+-``."""
    from cvops.errors import ValidationFailed

    if not NAME.fullmatch(name):
        raise ValidationFailed("name must be 1-128 letters, digits, spaces or ._:+-", {"field": "name"})
    return name


CHUNK = 1024 * 1024


@dataclass
class Upload:
    blob: BlobRef | None = None
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)


async def read_multipart(
    request: web.Request, blobs: BlobStore, limit: int, file_field: str = "file"
) -> Upload:
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType(f"expected multipart/form-data, got {request.content_type or 'nothing'}")
    if request.content_length is not None and request.content_length > limit + 1024 * 1024:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes", {"limit": limit})
    loop = asyncio.get_running_loop()
    up = Upload()
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, "name", None) or ""
            if name == file_field:
                if up.blob is not None:
                    raise BadRequest(f"more than one {file_field!r} part")
                up.filename = getattr(part, "filename", None) or ""
                writer = await loop.run_in_executor(None, blobs.writer, limit)
                try:
                    while True:
                        chunk = await part.read_chunk(CHUNK)  # type: ignore[union-attr]
                        if not chunk:
                            break
                        await loop.run_in_executor(None, writer.write, chunk)
                    up.blob = await loop.run_in_executor(None, writer.commit)
                except BaseException:
                    await loop.run_in_executor(None, writer.abort)
                    raise
            else:
                data = bytearray()
                while True:
                    chunk = await part.read_chunk(8192)  # type: ignore[union-attr]
                    if not chunk:
                        break
                    data.extend(chunk)
                    if len(data) > FIELD_LIMIT:
                        raise PayloadTooLarge(f"form field {name!r} is over {FIELD_LIMIT} bytes")
                try:
                    up.fields[name] = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BadRequest(f"form field {name!r} is not UTF-8") from exc
    except (ValueError, AssertionError, HttpProcessingError) as exc:  # e.g. control chars in a part header
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    if up.blob is None:
        raise BadRequest(f"multipart body has no {file_field!r} part")
    return up


async def record_rejection(store: object, kind: str, exc: BaseException, user: str) -> None:
    """An upload refused before it became a record leaves one UploadRejected event, nothing else."""
    from cvops.errors import CvopsError
    from cvops.events.schema import UploadRejected

    if isinstance(exc, CvopsError):
        await store.append(  # type: ignore[attr-defined]
            "rejections",
            [UploadRejected(kind=kind, reason=exc.message, details={"code": exc.code, **exc.details})],
            user=user,
        )
