"""cvops.ml.datasets: hostile zips, ImageFolder / YOLO validation, the torch Dataset."""

from __future__ import annotations

import io
import random
import stat
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cvops.errors import ValidationFailed
from cvops.events.schema import DatasetValidated, decode_event, encode_event
from cvops.ml.datasets import ImageFolderDataset, safe_extract, validate_dataset, yolo_label_path
from cvops.ml.synthetic import draw_shapes_dataset, yolo_shapes_dataset, zip_folder

LIMIT = 50 * 1024 * 1024


def _png_bytes(colour: tuple[int, int, int] = (200, 10, 10), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _assert_rejected(tmp_path: Path, zip_path: Path, match: str, **limits: int | float) -> ValidationFailed:
    before = _tree(tmp_path)
    dest = tmp_path / "out"
    kwargs: dict[str, int | float] = {"max_total_bytes": LIMIT, **limits}
    with pytest.raises(ValidationFailed, match=match) as exc:
        safe_extract(zip_path, dest, **kwargs)  # type: ignore[arg-type]
    assert not dest.exists(), "a rejected archive must leave no partial folder"
    assert _tree(tmp_path) == before, "nothing may be written anywhere"
    assert not (tmp_path.parent / "evil.txt").exists()
    assert exc.value.status == 422
    return exc.value


# ------------------------------------------------------------------------------------ safe_extract


def test_extracts_a_normal_zip(tmp_path: Path) -> None:
    src = draw_shapes_dataset(tmp_path / "src", n_per_class=3, size=16)
    zp = zip_folder(src, tmp_path / "d.zip")
    report = safe_extract(zp, tmp_path / "out", max_total_bytes=LIMIT)
    assert report.files == len([p for p in src.rglob("*") if p.is_file()]) == 3 * 3 + 3 * 2
    assert report.bytes_written == report.declared_bytes > 0
    assert (tmp_path / "out" / "train" / "circle" / "0000.png").read_bytes() == (
        src / "train" / "circle" / "0000.png"
    ).read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "a/../../evil.txt",
        "/tmp/evil.txt",
        "C:/evil.txt",
        "C:\\evil.txt",
        "..\\evil.txt",
        "//server/share/evil.txt",
    ],
)
def test_rejects_entries_escaping_the_folder(tmp_path: Path, name: str) -> None:
    zp = tmp_path / "evil.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("train/ok.txt", b"fine")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # bypass ZipInfo's own clean-up, as a hand-made archive would
        zf.writestr(info, b"evil")
    err = _assert_rejected(tmp_path, zp, "escapes|absolute|drive|NUL")
    assert err.details["entry"] == name


def test_rejects_symlink_entries(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("train/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zp = _zip(tmp_path / "link.zip", [("train/a.txt", b"x"), (info, b"/etc/passwd")])
    _assert_rejected(tmp_path, zp, "symbolic link")


def test_rejects_high_ratio_bomb(tmp_path: Path) -> None:
    zp = _zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * (8 * 1024 * 1024))])
    err = _assert_rejected(tmp_path, zp, "ratio")
    assert err.details["ratio"] > 200


def test_rejects_declared_total_over_the_limit(tmp_path: Path) -> None:
    rnd = random.Random(0)
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        (f"f{i}.bin", rnd.randbytes(2000)) for i in range(3)
    ]
    zp = _zip(tmp_path / "big.zip", entries)
    err = _assert_rejected(tmp_path, zp, "over the limit", max_total_bytes=5000)
    assert err.details["max_total_bytes"] == 5000


def _patch_central_directory(zp: Path, *, flag_or: int = 0, file_size: int | None = None) -> None:
    """Rewrite the central directory record of every entry (flags, declared uncompressed size)."""
    raw = bytearray(zp.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        (flags,) = struct.unpack_from("<H", raw, pos + 8)
        struct.pack_into("<H", raw, pos + 8, flags | flag_or)
        if file_size is not None:
            struct.pack_into("<I", raw, pos + 24, file_size)
        pos = raw.find(b"PK\x01\x02", pos + 4)
    zp.write_bytes(bytes(raw))


def test_rejects_a_header_that_lies_about_its_size(tmp_path: Path) -> None:
    """Declared sizes pass the header checks; the bytes actually produced do not match them."""
    rnd = random.Random(1)
    zp = _zip(tmp_path / "liar.zip", [("a.bin", rnd.randbytes(100_000))])
    _patch_central_directory(zp, file_size=10)
    assert zipfile.ZipFile(zp).infolist()[0].file_size == 10
    _assert_rejected(tmp_path, zp, "corrupt|larger|ratio")


def test_rejects_encrypted_entries(tmp_path: Path) -> None:
    zp = _zip(tmp_path / "enc.zip", [("train/a.txt", b"secret")])
    _patch_central_directory(zp, flag_or=0x1)
    _assert_rejected(tmp_path, zp, "encrypted")


def test_rejects_too_many_entries(tmp_path: Path) -> None:
    zp = _zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(11)])
    err = _assert_rejected(tmp_path, zp, "too many entries", max_entries=10)
    assert err.details["entries"] == 11


def test_rejects_non_zip_and_non_empty_dest(tmp_path: Path) -> None:
    bad = tmp_path / "not.zip"
    bad.write_bytes(b"this is not a zip")
    _assert_rejected(tmp_path, bad, "not a zip")
    good = _zip(tmp_path / "ok.zip", [("a.txt", b"x")])
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ValidationFailed, match="empty"):
        safe_extract(good, dest, max_total_bytes=LIMIT)
    assert (dest / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ imagefolder validate


def test_imagefolder_with_val_counts_and_stats(tmp_path: Path) -> None:
    root = draw_shapes_dataset(tmp_path / "ds", n_per_class=4, size=20)
    info = validate_dataset(root, "classification", "imagefolder")
    assert info.classes == ["circle", "square", "triangle"]
    assert info.counts == {"train": dict.fromkeys(info.classes, 4), "val": dict.fromkeys(info.classes, 2)}
    assert not info.val_carved and info.errors == [] and info.error_count == 0
    assert info.image_stats["min_width"] == info.image_stats["max_height"] == 20.0
    assert info.image_stats["images"] == 18.0
    event = info.to_event("ds-1", path="datasets/ds-1")
    assert decode_event("DatasetValidated", encode_event(event)) == event
    assert isinstance(event, DatasetValidated) and event.counts["val"]["circle"] == 2


def test_corrupt_and_non_image_files_are_reported_and_excluded(tmp_path: Path) -> None:
    root = draw_shapes_dataset(tmp_path / "ds", n_per_class=4, size=16)
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (root / "train" / "square" / "0000.png").read_bytes()
    (root / "train" / "square" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "square" / "notes.txt").write_text("hello")
    (root / "train" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    info = validate_dataset(root, "classification", "imagefolder")
    assert info.error_count == 3
    joined = "\n".join(info.errors)
    assert "broken.png: corrupt image" in joined
    assert "truncated.png: corrupt image" in joined
    assert "notes.txt: not an image file" in joined
    assert info.counts["train"] == dict.fromkeys(info.classes, 4)
    assert not any("broken" in f or "truncated" in f for f in info.splits["train"])


def test_missing_val_is_carved_seeded_and_stratified(tmp_path: Path) -> None:
    root = draw_shapes_dataset(tmp_path / "ds", n_per_class=10, size=16, with_val=False)
    a = validate_dataset(root, "classification", "imagefolder", seed=7)
    b = validate_dataset(root, "classification", "imagefolder", seed=7)
    c = validate_dataset(root, "classification", "imagefolder", seed=8)
    assert a.val_carved and a.splits == b.splits
    assert a.splits["val"] != c.splits["val"]
    assert a.counts["val"] == dict.fromkeys(a.classes, 2) and a.counts["train"] == dict.fromkeys(a.classes, 8)
    assert not set(a.splits["val"]) & set(a.splits["train"])
    assert len(a.splits["val"]) + len(a.splits["train"]) == 30
    assert all(f.startswith("train/") for f in a.splits["val"])  # nothing was moved
    assert not (root / "val").exists()


def test_single_top_folder_inside_the_zip(tmp_path: Path) -> None:
    src = draw_shapes_dataset(tmp_path / "my_shapes", n_per_class=3, size=16)
    zp = zip_folder(src, tmp_path / "d.zip", include_root=True)
    out = tmp_path / "out"
    safe_extract(zp, out, max_total_bytes=LIMIT)
    info = validate_dataset(out, "classification", "imagefolder")
    assert info.subdir == "my_shapes"
    assert info.counts["train"]["triangle"] == 3
    ds = ImageFolderDataset(out, info, "val")
    x, y = ds[len(ds) - 1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16) and y == 2
    assert ds.targets == [0, 0, 1, 1, 2, 2]


def test_imagefolder_rejections(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationFailed, match="train"):
        validate_dataset(tmp_path / "empty", "classification", "imagefolder")
    one = tmp_path / "one" / "train" / "cat"
    one.mkdir(parents=True)
    (one / "a.png").write_bytes(_png_bytes())
    with pytest.raises(ValidationFailed, match="at least 2 classes"):
        validate_dataset(tmp_path / "one", "classification", "imagefolder")
    junk = tmp_path / "junk" / "train"
    for cls in ("a", "b"):
        (junk / cls).mkdir(parents=True)
        (junk / cls / "x.png").write_bytes(b"not really")
    with pytest.raises(ValidationFailed, match="at least 2 classes") as exc:
        validate_dataset(tmp_path / "junk", "classification", "imagefolder")
    assert any("corrupt image" in e for e in exc.value.details["errors"])
    with pytest.raises(ValidationFailed, match="unsupported"):
        validate_dataset(tmp_path / "one", "classification", "yolo")


def test_dataset_applies_the_transform(tmp_path: Path) -> None:
    root = draw_shapes_dataset(tmp_path / "ds", n_per_class=2, size=16)
    info = validate_dataset(root, "classification", "imagefolder")
    ds = ImageFolderDataset(root, info, "train", transform=lambda im: im.size)
    assert len(ds) == 6 and ds[0] == ((16, 16), 0)
    with pytest.raises(ValidationFailed):
        ImageFolderDataset(root, info, "test")


# -------------------------------------------------------------------------------------------- yolo


def test_yolo_dataset_validates(tmp_path: Path) -> None:
    root = yolo_shapes_dataset(tmp_path / "y", n=8, size=64)
    info = validate_dataset(root, "detection", "yolo")
    assert info.classes == ["rectangle", "ellipse"]
    assert info.images == {"train": 8, "val": 2}
    assert info.errors == []
    boxes = sum(
        len((root / "labels" / s).joinpath(f).read_text().splitlines())
        for s in ("train", "val")
        for f in [p.name for p in (root / "labels" / s).iterdir()]
    )
    assert sum(sum(c.values()) for c in info.counts.values()) == boxes == info.image_stats["boxes"]
    assert yolo_label_path(root / info.splits["train"][0]).is_file()


def test_yolo_label_errors_are_listed(tmp_path: Path) -> None:
    root = yolo_shapes_dataset(tmp_path / "y", n=8, size=64)
    labels = root / "labels" / "train"
    (labels / "0000.txt").write_text("5 0.5 0.5 0.1 0.1\n")  # class id outside 0..1
    (labels / "0001.txt").write_text("0 1.5 0.5 0.1 0.1\n")  # outside [0, 1]
    (labels / "0002.txt").write_text("0 0.5 0.5 0.1\n")  # 4 fields
    (labels / "0003.txt").write_text("x 0.5 0.5 0.1 0.1\n")
    (labels / "0004.txt").unlink()  # missing: kept as background, but reported
    info = validate_dataset(root, "detection", "yolo")
    joined = "\n".join(info.errors)
    assert "0000.txt: line 1: class id 5 outside 0..1" in joined
    assert "0001.txt: line 1: coordinates outside [0, 1]" in joined
    assert "0002.txt: line 1: expected 5 fields" in joined
    assert "0003.txt: line 1: not numbers" in joined
    assert "0004.png: missing label file" in joined
    assert info.error_count == 5
    assert info.images["train"] == 4  # 0000-0003 dropped, 0004 kept as background
    assert info.image_stats["background_images"] == 1.0


def test_yolo_rejections_and_carving(tmp_path: Path) -> None:
    root = yolo_shapes_dataset(tmp_path / "y", n=8, size=64)
    (root / "data.yaml").write_text("names: [a, a]\n")
    with pytest.raises(ValidationFailed, match="unique"):
        validate_dataset(root, "detection", "yolo")
    (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(ValidationFailed, match="names"):
        validate_dataset(root, "detection", "yolo")
    (root / "data.yaml").write_text("names: {0: rectangle, 1: ellipse}\nnc: 3\n")
    with pytest.raises(ValidationFailed, match="nc"):
        validate_dataset(root, "detection", "yolo")
    (root / "data.yaml").write_text("names: [rectangle, ellipse]\ntrain: ../../../../etc\nval: /etc\n")
    for p in (root / "images" / "val").iterdir():
        p.unlink()
    info = validate_dataset(root, "detection", "yolo", seed=3)  # paths outside: conventional folders used
    assert info.val_carved and info.images == {"train": 6, "val": 2}
    assert info.splits == validate_dataset(root, "detection", "yolo", seed=3).splits
    (tmp_path / "noyaml").mkdir()
    with pytest.raises(ValidationFailed, match="data.yaml"):
        validate_dataset(tmp_path / "noyaml", "detection", "yolo")
