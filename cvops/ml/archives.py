"""Hostile-zip-proof extraction (torch-free): the one way cvops unpacks an uploaded archive.

:func:`safe_extract` checks every header before the first byte is written (traversal, absolute paths,
drive letters, NUL bytes, symbolic links, encryption, entry count, declared size, compression ratio),
then counts the bytes actually written while streaming.  Datasets and zipped TensorFlow SavedModels
both go through it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from cvops.errors import ValidationFailed

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class ExtractReport(msgspec.Struct, frozen=True, kw_only=True):
    dest: str
    entries: int  # entries in the archive (files and folders)
    files: int  # files written
    bytes_written: int  # bytes actually written (counted while extracting)
    declared_bytes: int  # sum of the uncompressed sizes the headers declare


def _reject(reason: str, **details: Any) -> ValidationFailed:
    return ValidationFailed(f"dataset archive rejected: {reason}", {"reason": reason, **details})


def _safe_member_path(name: str) -> PurePosixPath:
    """The relative path of a zip member, or ValidationFailed if it could escape the folder."""
    if "\x00" in name:
        raise _reject("entry name contains a NUL byte", entry=name)
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise _reject("entry has an absolute path", entry=name)
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _reject("entry escapes the folder", entry=name)
    if any(_DRIVE.match(p) for p in parts):
        raise _reject("entry has a drive letter", entry=name)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0xFFFF
    return stat.S_ISLNK(mode)


def _check_headers(
    infos: list[zipfile.ZipInfo], *, max_total_bytes: int, max_ratio: float, max_entries: int
) -> tuple[list[tuple[zipfile.ZipInfo, PurePosixPath]], int]:
    if len(infos) > max_entries:
        raise _reject("too many entries", entries=len(infos), max_entries=max_entries)
    declared = 0
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in infos:
        rel = _safe_member_path(info.filename)
        if _is_symlink(info):
            raise _reject("entry is a symbolic link", entry=info.filename)
        if info.flag_bits & 0x1:
            raise _reject("entry is encrypted", entry=info.filename)
        if info.file_size < 0 or info.compress_size < 0:
            raise _reject("entry declares a negative size", entry=info.filename)
        declared += info.file_size
        if declared > max_total_bytes:
            raise _reject(
                "uncompressed size over the limit", declared_bytes=declared, max_total_bytes=max_total_bytes
            )
        if not info.is_dir() and info.file_size > 0:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise _reject(
                    "compression ratio over the limit (zip bomb)",
                    entry=info.filename,
                    ratio=round(ratio, 1),
                    max_ratio=max_ratio,
                )
        members.append((info, rel))
    return members, declared


def safe_extract(
    zip_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_total_bytes: int,
    max_ratio: float = 200,
    max_entries: int = 200_000,
) -> ExtractReport:
    """Extract ``zip_path`` into ``dest`` (which must not exist or be empty), refusing hostile archives.

    Rejected with :class:`ValidationFailed` (and ``dest`` removed, or emptied if it existed before):
    entries that escape the folder (``..``, absolute paths, drive letters, NUL bytes), symbolic links,
    encrypted entries, more than ``max_entries`` entries, a declared uncompressed total over
    ``max_total_bytes``, an entry whose compression ratio exceeds ``max_ratio``, and an archive whose
    actual output (counted while streaming, never trusted from the header) exceeds the declared sizes
    or ``max_total_bytes``.  Every check on the headers runs before the first byte is written.
    """
    dest_path = Path(dest)
    existed = dest_path.exists()
    if existed and (not dest_path.is_dir() or any(dest_path.iterdir())):
        raise ValidationFailed("extraction folder must be empty", {"dest": str(dest_path)})
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _reject("not a zip archive", error=str(exc)) from exc
    with zf:
        members, declared = _check_headers(
            zf.infolist(), max_total_bytes=max_total_bytes, max_ratio=max_ratio, max_entries=max_entries
        )
        dest_path.mkdir(parents=True, exist_ok=True)
        root = dest_path.resolve()
        try:
            files, written = _extract_members(zf, members, root, max_total_bytes, max_ratio)
        except BaseException:
            _remove_extracted(dest_path, existed)
            raise
    log.info("extracted %d files (%d bytes) into %s", files, written, dest_path)
    return ExtractReport(
        dest=str(dest_path), entries=len(members), files=files, bytes_written=written, declared_bytes=declared
    )


def _extract_members(
    zf: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    root: Path,
    max_total_bytes: int,
    max_ratio: float,
) -> tuple[int, int]:
    written = 0
    files = 0
    for info, rel in members:
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise _reject("entry escapes the folder", entry=info.filename)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target == root:
            raise _reject("entry has an empty name", entry=info.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        entry_written = 0
        limit_entry = info.file_size
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    entry_written += len(chunk)
                    written += len(chunk)
                    if entry_written > limit_entry:
                        raise _reject("entry larger than its header declares", entry=info.filename)
                    if written > max_total_bytes:
                        raise _reject(
                            "uncompressed size over the limit",
                            bytes_written=written,
                            max_total_bytes=max_total_bytes,
                        )
                    if entry_written / max(info.compress_size, 1) > max_ratio:
                        raise _reject("compression ratio over the limit (zip bomb)", entry=info.filename)
                    out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
            raise _reject("corrupt or unsupported entry", entry=info.filename, error=str(exc)) from exc
        except RuntimeError as exc:  # zipfile raises RuntimeError for encrypted entries
            raise _reject("unreadable entry", entry=info.filename, error=str(exc)) from exc
        files += 1
    return files, written


def _remove_extracted(dest: Path, existed: bool) -> None:
    if not dest.exists():
        return
    if not existed:
        shutil.rmtree(dest)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
