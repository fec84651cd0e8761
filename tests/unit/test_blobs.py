from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cvops.blobs import BlobRef, BlobStore
from cvops.errors import NotFound, PayloadTooLarge, ValidationFailed


@pytest.fixture()
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _tmp_files(store: BlobStore) -> list[Path]:
    return [p for p in store.tmp_dir.iterdir()]


def test_put_bytes_is_content_addressed(store: BlobStore) -> None:
    data = b"hello cvops"
    ref = store.put_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert ref == BlobRef(sha256=sha, bytes=len(data))
    path = store.path(sha)
    assert path == store.root / "sha256" / sha[:2] / sha[2:]
    assert path.read_bytes() == data
    assert store.exists(sha) and store.verify(sha)
    assert store.read_bytes(sha) == data
    assert _tmp_files(store) == []


def test_put_is_idempotent(store: BlobStore) -> None:
    a = store.put_bytes(b"x" * 10)
    b = store.put_bytes(b"x" * 10)
    assert a == b
    files = [p for p in (store.root / "sha256").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert _tmp_files(store) == []


def test_put_file_move_and_copy(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(b"abc" * 1000)
    ref = store.put_file(src, move=True)
    assert not src.exists()
    assert store.read_bytes(ref.sha256) == b"abc" * 1000 and ref.bytes == 3000

    src2 = tmp_path / "copy.bin"
    src2.write_bytes(b"other")
    ref2 = store.put_file(src2, move=False)
    assert src2.exists() and store.read_bytes(ref2.sha256) == b"other"

    # the same content again (move): stored once, source removed
    src3 = tmp_path / "again.bin"
    src3.write_bytes(b"other")
    assert store.put_file(src3) == ref2 and not src3.exists()


def test_streaming_writer_at_limit_and_one_byte_over(store: BlobStore) -> None:
    with store.writer(limit=10) as w:
        w.write(b"12345")
        w.write(b"67890")  # exactly the limit
        ref = w.commit()
    assert ref.bytes == 10 and store.read_bytes(ref.sha256) == b"1234567890"

    w2 = store.writer(limit=10)
    w2.write(b"1234567890")
    with pytest.raises(PayloadTooLarge) as ei:
        w2.write(b"x")
    assert ei.value.status == 413 and ei.value.details == {"limit": 10, "received": 11}
    assert not w2.tmp_path.exists()
    assert _tmp_files(store) == []
    with pytest.raises(ValueError):
        w2.write(b"more")


def test_writer_context_aborts_on_error(store: BlobStore) -> None:
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"partial")
        tmp = w.tmp_path
        assert tmp.exists()
        raise RuntimeError("client went away")
    assert not tmp.exists()
    assert _tmp_files(store) == []
    assert list((store.root / "sha256").rglob("*")) == []


def test_writer_without_commit_leaves_nothing(store: BlobStore) -> None:
    with store.writer() as w:
        w.write(b"never committed")
    assert _tmp_files(store) == [] and w.closed


def test_streaming_hash_matches_whole(store: BlobStore) -> None:
    chunks = [bytes([i]) * 4096 for i in range(50)]
    with store.writer(limit=1 << 20) as w:
        for c in chunks:
            w.write(memoryview(c))
        ref = w.commit()
    whole = b"".join(chunks)
    assert ref.sha256 == hashlib.sha256(whole).hexdigest() and ref.bytes == len(whole)
    assert w.commit() == ref  # idempotent


def test_bad_sha_and_missing_blob(store: BlobStore) -> None:
    with pytest.raises(ValidationFailed):
        store.path("../../etc/passwd")
    with pytest.raises(ValidationFailed):
        store.path("A" * 64)  # upper case is not our spelling
    with pytest.raises(NotFound):
        store.read_bytes("0" * 64)
    assert not store.exists("0" * 64)


def test_delete_and_clean_tmp(store: BlobStore) -> None:
    ref = store.put_bytes(b"gone")
    assert store.delete(ref.sha256) and not store.exists(ref.sha256)
    assert not store.delete(ref.sha256)
    store.temp_path().write_bytes(b"crash leftover")
    assert store.clean_tmp() == 1 and _tmp_files(store) == []
