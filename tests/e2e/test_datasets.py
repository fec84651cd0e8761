"""Datasets over real HTTP: ImageFolder and YOLO zips, hostile archives, roles."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Live
from tests.e2e.helpers import (
    API,
    blob_path,
    shapes_zip,
    shared_small_server,
    stop_shared_small_server,
    upload_dataset,
)
from tests.e2e.server import Server, request


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_imagefolder_zip_is_ready_with_classes_and_counts(live: Live, tmp_path: Path) -> None:
    data = shapes_zip(tmp_path, n_per_class=6, size=24)
    status, rec = upload_dataset(live.url, live.engineer, data, name="shapes-ds")
    assert status == 200, rec
    assert rec["status"] == "ready" and rec["task"] == "classification" and rec["format"] == "imagefolder"
    assert rec["classes"] == ["circle", "square", "triangle"]
    assert rec["counts"]["train"] == {"circle": 6, "square": 6, "triangle": 6}, rec["counts"]
    assert rec["counts"]["val"] == {"circle": 2, "square": 2, "triangle": 2}, rec["counts"]
    assert (live.server.data_dir / rec["path"]).is_dir()
    status, again = request(live.url, "GET", f"{API}/datasets/{rec['id']}", token=live.admin)
    assert status == 200 and again["classes"] == rec["classes"]
    status, listing = request(live.url, "GET", f"{API}/datasets", token=live.admin)
    assert rec["id"] in {d["id"] for d in listing["datasets"]}


def test_zip_slip_is_rejected_and_writes_nothing_outside(live: Live) -> None:
    data = _zip(
        {
            "train/a/0.png": _png(),
            "train/b/0.png": _png(),
            "../evil.txt": b"escaped",
            "train/../../../evil2.txt": b"escaped",
        }
    )
    status, body = upload_dataset(live.url, live.admin, data, name="slip")
    assert 400 <= status < 500, body
    assert "escape" in body["error"]["message"].lower(), body
    data_dir = live.server.data_dir
    for root in (data_dir, data_dir.parent, data_dir.parent.parent):
        assert not (root / "evil.txt").exists() and not (root / "evil2.txt").exists()
    assert not list(data_dir.rglob("evil*.txt"))
    assert not blob_path(data_dir, data).exists(), "a rejected archive must not stay in the blob store"
    rec = body["error"]["details"].get("dataset")
    if rec is not None:
        assert rec["status"] == "failed" and rec["error"]
        assert not (data_dir / "datasets" / rec["id"]).exists()


def test_non_zip_body_is_422(live: Live) -> None:
    data = b"this is not a zip archive at all" * 10
    status, body = upload_dataset(live.url, live.admin, data, filename="notes.zip", name="notzip")
    assert status == 422 and body["error"]["details"].get("field") == "file", body
    assert not blob_path(live.server.data_dir, data).exists()


def test_corrupt_and_wrong_layout_archives_are_rejected(live: Live) -> None:
    broken = _zip({"train/a/0.png": b"not an image", "train/b/0.png": b"\x89PNG broken"})
    status, body = upload_dataset(live.url, live.admin, broken, name="broken")
    assert 400 <= status < 500, body
    assert body["error"]["message"]
    one_class = _zip({"train/a/0.png": _png()})
    status, body = upload_dataset(live.url, live.admin, one_class, name="oneclass")
    assert 400 <= status < 500, body
    status, body = upload_dataset(live.url, live.admin, one_class, name="badfmt", format="coco")
    assert status == 422 and body["error"]["details"]["field"] == "format", body


def test_yolo_dataset_is_ready(live: Live, tmp_path: Path) -> None:
    from cvops.ml.synthetic import yolo_shapes_dataset, zip_folder

    root = yolo_shapes_dataset(tmp_path / "yolo", n=6, size=64)
    data = zip_folder(root, tmp_path / "yolo.zip").read_bytes()
    status, rec = upload_dataset(live.url, live.admin, data, name="yolo-ds", task="detection")
    assert status == 200, rec
    assert rec["status"] == "ready" and rec["format"] == "yolo" and rec["task"] == "detection"
    assert rec["classes"] == ["rectangle", "ellipse"]


def test_viewer_cannot_upload_or_read(live: Live, tmp_path: Path) -> None:
    data = _zip({"train/a/0.png": _png(), "train/b/0.png": _png()})
    status, body = upload_dataset(live.url, live.viewer, data, name="viewer")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    assert not blob_path(live.server.data_dir, data).exists()
    status, _ = request(live.url, "GET", f"{API}/datasets", token=live.viewer)
    assert status == 403


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield shared_small_server(tmp_path_factory)
    stop_shared_small_server()


@pytest.mark.slow
def test_zip_bomb_is_rejected(small: Server) -> None:
    token = small.token()
    # one entry of 2 MiB of zeros (the limit is 64 KiB) that compresses to about 2 KiB
    bomb = _zip({"train/a/0.png": _png(), "train/b/bomb.png": b"\0" * (2 * 2**20)})
    assert len(bomb) < 65536
    status, body = upload_dataset(small.url, token, bomb, name="bomb")
    assert 400 <= status < 500 and status != 413, body
    message = body["error"]["message"].lower()
    assert any(word in message for word in ("bomb", "ratio", "limit", "exceed")), body
    extracted = small.data_dir / "datasets"
    assert not extracted.exists() or not list(extracted.rglob("bomb.png"))
    assert not blob_path(small.data_dir, bomb).exists()
    # a small ordinary archive still passes on the same server
    ok = _zip(
        {"train/a/0.png": _png(), "train/b/0.png": _png(), "val/a/0.png": _png(), "val/b/0.png": _png()}
    )
    status, rec = upload_dataset(small.url, token, ok, name="small-ok")
    assert status == 200 and rec["status"] == "ready", rec
