"""Content-addressed blob store (DESIGN.md §2): ``root/sha256/ab/cdef...``.

Every file is written to ``root/tmp/`` first, fsynced, renamed into place and its folder fsynced, so a
blob that exists is complete and durable *before* the event that references it is appended.  A blob's
name is the sha256 of its bytes: putting the same bytes twice stores them once.

All functions block (hashing, fsync); async callers run them in an executor.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import msgspec

from cvops.errors import NotFound, PayloadTooLarge, ValidationFailed

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class BlobRef(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise ValidationFailed("not a sha256 hex digest", {"sha256": str(sha)[:80]})
    return sha


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class BlobStore:
    """Blobs under ``root``; temp files under ``root/tmp``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.sha_dir = self.root / "sha256"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.sha_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------ reading

    def path(self, sha: str) -> Path:
        check_sha(sha)
        return self.sha_dir / sha[:2] / sha[2:]

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def size(self, sha: str) -> int:
        p = self.path(sha)
        if not p.is_file():
            raise NotFound(f"blob {sha} not found", {"sha256": sha})
        return p.stat().st_size

    def open(self, sha: str) -> BinaryIO:
        p = self.path(sha)
        if not p.is_file():
            raise NotFound(f"blob {sha} not found", {"sha256": sha})
        return open(p, "rb")

    def read_bytes(self, sha: str) -> bytes:
        with self.open(sha) as f:
            return f.read()

    def verify(self, sha: str) -> bool:
        """True when the stored bytes still hash to their name."""
        return sha256_file(self.path(sha))[0] == sha

    # ------------------------------------------------------------------------------------ writing

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path under ``root/tmp`` (not created) for callers that produce a file themselves."""
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}.part"

    def put_bytes(self, data: bytes) -> BlobRef:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def put_file(self, path: Path | str, move: bool = True) -> BlobRef:
        """Store a file.  ``move=True`` renames it into place (same filesystem) instead of copying."""
        src = Path(path)
        if not src.is_file():
            raise NotFound(f"no such file: {src.name}")
        sha, size = sha256_file(src)
        dest = self.path(sha)
        if dest.is_file():
            if move:
                src.unlink()
            return BlobRef(sha256=sha, bytes=size)
        if move:
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            try:
                self._place(src, dest)
                return BlobRef(sha256=sha, bytes=size)
            except OSError as exc:  # another filesystem: fall back to copying
                if exc.errno != errno.EXDEV:
                    raise
        tmp = self.temp_path()
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
            self._place(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        if move:
            src.unlink(missing_ok=True)
        return BlobRef(sha256=sha, bytes=size)

    def writer(self, limit: int | None = None) -> BlobWriter:
        return BlobWriter(self, limit=limit)

    def delete(self, sha: str) -> bool:
        p = self.path(sha)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        return True

    def clean_tmp(self) -> int:
        """Delete leftover temp files (e.g. after a crash); returns how many."""
        n = 0
        for p in self.tmp_dir.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        return n

    def _place(self, src: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)  # atomic; identical content if a concurrent writer won
        _fsync_dir(dest.parent)
        log.debug("blob stored %s", dest.name)


class BlobWriter:
    """Streams bytes into a temp file, hashing as it goes; ``commit()`` moves it into place.

    ``write`` raises :class:`PayloadTooLarge` as soon as more than ``limit`` bytes arrive and deletes the
    partial file.  As a context manager, any exception (or leaving without ``commit``) aborts.
    """

    def __init__(self, store: BlobStore, limit: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.bytes = 0
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, suffix=".part")
        self.tmp_path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._ref: BlobRef | None = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise ValueError("the blob writer is closed")
        n = len(chunk)
        if self.limit is not None and self.bytes + n > self.limit:
            total = self.bytes + n
            self.abort()
            raise PayloadTooLarge(
                f"upload exceeds the limit of {self.limit} bytes", {"limit": self.limit, "received": total}
            )
        self._file.write(chunk)
        self._hash.update(chunk)
        self.bytes += n
        return n

    def commit(self) -> BlobRef:
        if self._ref is not None:
            return self._ref
        if self._file is None:
            raise ValueError("the blob writer was aborted")
        f, self._file = self._file, None
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        sha = self._hash.hexdigest()
        dest = self.store.path(sha)
        try:
            if dest.is_file():
                self.tmp_path.unlink(missing_ok=True)
            else:
                self.store._place(self.tmp_path, dest)
        except BaseException:
            self.tmp_path.unlink(missing_ok=True)
            raise
        self._ref = BlobRef(sha256=sha, bytes=self.bytes)
        return self._ref

    def abort(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
        if self._ref is None:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or self._ref is None:
            self.abort()
