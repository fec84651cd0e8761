"""Streaming multipart uploads into the blob store: never the whole body in memory, 413 as soon as
the limit is crossed (partial file removed), hashing and writing in an executor.

Admission (DESIGN.md §5): only the route's known form fields are accepted (422 naming an unknown one,
before its bytes are read), the non-file fields of one upload share :data:`FIELDS_LIMIT` bytes (413),
and each user's stored upload bytes stay under ``CVOPS_MAX_STORED_BYTES_PER_USER`` (413): checked from
``Content-Length`` before the body is read and again as the file streams in.  The count of stored bytes
is a fold of the event log (:func:`apply_storage`: who uploaded which record, of what size), so it
survives a restart; uploads in progress hold their bytes in memory until their record is in the log.
The file is committed to the blob store only once the whole body has been read and accepted, so a
refused upload leaves nothing stored (its rejection event aside).

Models and datasets share one accept / reject / ``?wait`` path, :func:`handle_upload`; an
:class:`UploadKind` says what differs (form fields, byte limit, how to wait for the record)."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cvops.blobs import BlobRef, BlobStore, BlobWriter
from cvops.config import Settings
from cvops.errors import BadRequest, CvopsError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from cvops.events.projection import Projection
from cvops.events.projections import DatasetRecord, ModelRecord
from cvops.events.schema import Envelope, UploadRejected
from cvops.events.store import Store
from cvops.platform.bodies import json_response
from cvops.platform.context import principal, query_bool
from cvops.platform.keys import SERVICES, SETTINGS

if TYPE_CHECKING:
    from cvops.actors.registry import Registry

FIELD_LIMIT = 64 * 1024  # one non-file field
FIELDS_LIMIT = 64 * 1024  # all the non-file fields of one upload together
MODEL_FIELDS = frozenset({"file", "name", "task", "input_shape", "labels", "arch"})
DATASET_FIELDS = frozenset({"file", "name", "task", "format"})
HOLD_TTL_S = 600.0  # a stored upload whose record never shows up stops counting after this
QUOTA_SETTING = "CVOPS_MAX_STORED_BYTES_PER_USER"
NAME = re.compile(r"[\w .:+-]{1,128}")


def default_name(filename: str, fallback: str) -> str:
    """A display name from an upload's file name, when the form gave none."""
    return re.sub(r"[^\w .:+-]", "_", filename)[:128] or fallback


def check_name(name: str) -> str:
    """Display names of models and datasets: 1-128 letters, digits, spaces or ``._:+-``."""
    if not NAME.fullmatch(name):
        raise ValidationFailed("name must be 1-128 letters, digits, spaces or ._:+-", {"field": "name"})
    return name


CHUNK = 1024 * 1024


# ------------------------------------------------------------------------ stored bytes per user (fold)

STORAGE_TYPES = ("ModelUploaded", "ModelRejected", "ModelDeleted", "DatasetUploaded", "DatasetRejected")


class StoredUpload(msgspec.Struct, frozen=True):
    user: str
    bytes: int
    sha256: str


class StorageState(msgspec.Struct, kw_only=True):
    """Upload records that still hold their bytes (``model-<id>`` / ``dataset-<id>`` → who, size) and
    the sum per user.  A rejected or deleted record stops counting (the registry releases its bytes)."""

    records: dict[str, StoredUpload] = msgspec.field(default_factory=dict)
    per_user: dict[str, int] = msgspec.field(default_factory=dict)
    seq: int = 0


def apply_storage(state: StorageState, env: Envelope) -> StorageState:
    """Pure fold step over the log (events of other types are ignored)."""
    state.seq = max(state.seq, env.seq)
    if env.type not in STORAGE_TYPES:
        return state
    ev = env.event()
    if env.type in ("ModelUploaded", "DatasetUploaded"):
        size = int(getattr(ev, "source_bytes", 0) or getattr(ev, "bytes", 0) or 0)
        sha = str(getattr(ev, "source_sha256", "") or getattr(ev, "sha256", "") or "")
        if size > 0 and env.user:
            _drop(state, env.stream)
            state.records[env.stream] = StoredUpload(env.user, size, sha)
            state.per_user[env.user] = state.per_user.get(env.user, 0) + size
    else:
        _drop(state, env.stream)
    return state


def _drop(state: StorageState, stream: str) -> None:
    rec = state.records.pop(stream, None)
    if rec is not None:
        left = state.per_user.get(rec.user, 0) - rec.bytes
        if left > 0:
            state.per_user[rec.user] = left
        else:
            state.per_user.pop(rec.user, None)


class Hold:
    """The bytes of one upload in progress (or stored, its record not yet in the log)."""

    __slots__ = ("quota", "user", "bytes", "sha256", "expires")

    def __init__(self, quota: UploadQuota, user: str, nbytes: int) -> None:
        self.quota = quota
        self.user = user
        self.bytes = nbytes
        self.sha256 = ""
        self.expires = float("inf")

    def hold(self, nbytes: int) -> None:
        """Hold at least ``nbytes`` (413 naming the setting when the user's total would pass it)."""
        if nbytes > self.bytes:
            self.quota.check(self.user, nbytes - self.bytes)
            self.bytes = nbytes

    def stored(self, blob: BlobRef) -> None:
        """The file is in the blob store: hold its real size until its record is in the log."""
        self.bytes, self.sha256 = blob.bytes, blob.sha256
        self.expires = time.monotonic() + HOLD_TTL_S

    def release(self) -> None:
        self.quota.holds.discard(self)


class UploadQuota(Projection[StorageState]):
    """Per-user stored upload bytes: the fold of the log plus the holds of uploads in progress.  The
    gateway keeps one under :data:`UPLOAD_QUOTA`."""

    def __init__(self, store: Store, limit: int, blob_root: Path) -> None:
        super().__init__(store, apply_storage, StorageState(), types=STORAGE_TYPES)
        self.limit = limit
        self.blob_root = blob_root
        self.holds: set[Hold] = set()

    @functools.cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.blob_root)

    async def catch_up(self) -> StorageState:
        state = await super().catch_up()
        now = time.monotonic()
        for h in list(self.holds):
            if h.sha256 and (h.expires < now or self._recorded(h) or not self.blobs.exists(h.sha256)):
                self.holds.discard(h)  # its record is counted, or it was refused and its file removed
        return state

    def _recorded(self, h: Hold) -> bool:
        return any(r.user == h.user and r.sha256 == h.sha256 for r in self.state.records.values())

    def used(self, user: str) -> int:
        return self.state.per_user.get(user, 0) + sum(h.bytes for h in self.holds if h.user == user)

    def check(self, user: str, extra: int) -> None:
        used = self.used(user)
        if used + extra > self.limit:
            raise PayloadTooLarge(
                f"{user} stores {used} bytes of uploads; {extra} more would pass the limit of "
                f"{self.limit} bytes per user ({QUOTA_SETTING})",
                {"used": used, "requested": extra, "limit": self.limit, "setting": QUOTA_SETTING},
            )

    def reserve(self, user: str, nbytes: int) -> Hold:
        self.check(user, nbytes)
        h = Hold(self, user, nbytes)
        self.holds.add(h)
        return h


UPLOAD_QUOTA = web.AppKey("cvops.upload_quota", UploadQuota)


HOLD_KEY = "cvops.upload_hold"


def release_upload(request: web.Request) -> None:
    """Stop holding the request's upload bytes once its record is in the log (or it was refused);
    call in a ``finally`` after ``register``.  Holds left over expire on their own."""
    hold = request.get(HOLD_KEY)
    if isinstance(hold, Hold):
        hold.release()


def known_fields(request: web.Request, file_field: str) -> frozenset[str]:
    """The form fields a route accepts, for callers that do not pass them."""
    path = request.path.rstrip("/")
    if path.endswith("/models"):
        return MODEL_FIELDS
    if path.endswith("/datasets"):
        return DATASET_FIELDS
    return frozenset({file_field})


# ------------------------------------------------------------------------------------------ multipart


@dataclass
class Upload:
    blob: BlobRef | None = None
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    hold: Hold | None = None


async def read_multipart(
    request: web.Request,
    blobs: BlobStore,
    limit: int,
    file_field: str = "file",
    allowed: Collection[str] | None = None,
) -> Upload:
    """Admit, then stream one multipart upload: ``allowed`` names the accepted fields (default: the
    route's, :func:`known_fields`); the file is committed to ``blobs`` only when all of the body was
    read and accepted.  The user's stored bytes are held (:class:`Hold`, kept on the request) until
    :func:`release_upload`."""
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType(f"expected multipart/form-data, got {request.content_type or 'nothing'}")
    if request.content_length is not None and request.content_length > limit + 1024 * 1024:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes", {"limit": limit})
    known = frozenset(allowed) if allowed is not None else known_fields(request, file_field)
    quota = request.app[UPLOAD_QUOTA]
    await quota.catch_up()
    hold = quota.reserve(principal(request).username, request.content_length or 0)
    loop = asyncio.get_running_loop()
    up = Upload(hold=hold)
    writer: BlobWriter | None = None
    field_bytes = 0
    try:
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
                if name not in known:
                    raise ValidationFailed(
                        f"unknown form field {name!r}; known: {', '.join(sorted(known))}",
                        {"field": name, "known": sorted(known)},
                    )
                if name == file_field:
                    if writer is not None:
                        raise BadRequest(f"more than one {file_field!r} part")
                    up.filename = getattr(part, "filename", None) or ""
                    writer = await loop.run_in_executor(None, blobs.writer, limit)
                    while True:
                        chunk = await part.read_chunk(CHUNK)  # type: ignore[union-attr]
                        if not chunk:
                            break
                        await loop.run_in_executor(None, writer.write, chunk)
                        hold.hold(writer.bytes)
                else:
                    if name in up.fields:
                        raise ValidationFailed(f"form field {name!r} given twice", {"field": name})
                    data = bytearray()
                    while True:
                        chunk = await part.read_chunk(8192)  # type: ignore[union-attr]
                        if not chunk:
                            break
                        data.extend(chunk)
                        field_bytes += len(chunk)
                        if len(data) > FIELD_LIMIT:
                            raise PayloadTooLarge(
                                f"form field {name!r} is over {FIELD_LIMIT} bytes", {"field": name}
                            )
                        if field_bytes > FIELDS_LIMIT:
                            raise PayloadTooLarge(
                                f"the form fields are over {FIELDS_LIMIT} bytes together",
                                {"limit": FIELDS_LIMIT},
                            )
                    try:
                        up.fields[name] = data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise BadRequest(f"form field {name!r} is not UTF-8") from exc
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # e.g. control chars in a header
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        if writer is None:
            raise BadRequest(f"multipart body has no {file_field!r} part")
        up.blob = await loop.run_in_executor(None, writer.commit)
    except BaseException:
        hold.release()
        if writer is not None and up.blob is None:
            await loop.run_in_executor(None, writer.abort)
        raise
    hold.stored(up.blob)
    request[HOLD_KEY] = hold
    return up


async def record_rejection(store: Store, kind: str, exc: BaseException, user: str) -> None:
    """An upload refused before it became a record leaves one UploadRejected event, nothing else."""
    if isinstance(exc, CvopsError):
        await store.append(
            "rejections",
            [UploadRejected(kind=kind, reason=exc.message, details={"code": exc.code, **exc.details})],
            user=user,
        )


# ------------------------------------------------------------------ accept / reject / ?wait, shared

WAIT_S = 600.0
Record = ModelRecord | DatasetRecord


@dataclass(frozen=True)
class UploadKind:
    """What differs between a model and a dataset upload; :func:`handle_upload` does the rest."""

    kind: str  # "model" | "dataset": the UploadRejected kind, "<kind>_rejected", the details key
    fields: frozenset[str]  # the accepted form fields
    limit: Callable[[Settings], int]  # the settings' byte limit for the file
    wait: Callable[[Registry, str, float], Awaitable[Record]]  # (registry, id, timeout) -> record
    pending_status: int  # ?wait=true answered before the record is ready or failed (the wait ran out)


# (registry, upload, blobs, user) -> the new record
Accept = Callable[["Registry", Upload, BlobStore, str], Awaitable[Record]]


async def handle_upload(request: web.Request, kind: UploadKind, accept: Accept) -> web.StreamResponse:
    """One multipart upload: admitted before the body is read, streamed, then ``accept``-ed into a
    record.  A refusal at any step leaves one UploadRejected event and no stored file (unless another
    record holds the same bytes); ``?wait=true`` answers once the record is ready or failed."""
    services = request.app[SERVICES]
    registry = services.need_registry()
    who = principal(request)
    query_bool(request, "wait")  # a bad ?wait= is refused before anything is stored
    blobs = BlobStore(request.app[SETTINGS].blob_root)
    limit = kind.limit(request.app[SETTINGS])
    try:
        up = await read_multipart(request, blobs, limit, allowed=kind.fields)
    except Exception as exc:
        await record_rejection(services.need_store(), kind.kind, exc, who.username)
        raise
    assert up.blob is not None
    try:
        record = await accept(registry, up, blobs, who.username)
    except Exception as exc:
        await registry.release_blob(up.blob.sha256)  # unless another record uses the same bytes
        await record_rejection(services.need_store(), kind.kind, exc, who.username)
        raise
    finally:
        release_upload(request)  # the record (or the released file) now speaks for these bytes
    return await reply_record(request, kind, record)


async def reply_record(request: web.Request, kind: UploadKind, record: Record) -> web.StreamResponse:
    """202 with the new record; with ``?wait=true`` the record once ready (200) or failed (422)."""
    if not query_bool(request, "wait"):
        return json_response(record, status=202)
    record = await kind.wait(request.app[SERVICES].need_registry(), record.id, WAIT_S)
    if record.status == "failed":
        extra = record.error_details if isinstance(record, ModelRecord) else {}  # datasets keep none
        return json_response(
            {
                "error": {
                    "code": f"{kind.kind}_rejected",
                    "message": record.error or f"{kind.kind} rejected",
                    "details": {kind.kind: record, **extra},
                }
            },
            status=422,
        )
    return json_response(record, status=200 if record.status == "ready" else kind.pending_status)
