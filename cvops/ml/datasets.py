"""Dataset uploads: validation, and a torch Dataset for classification.

Everything here is pure (no Ray, no HTTP): the ModelRegistry actor calls
:func:`cvops.ml.archives.safe_extract` on an uploaded zip, then :func:`validate_dataset` on the
extracted folder, and turns the returned :class:`DatasetInfo` into a ``DatasetValidated`` event with :meth:`DatasetInfo.to_event`.

Layouts accepted (optionally wrapped in one top folder, as when a folder is zipped):

* classification / ``imagefolder``: ``train/<class>/*`` and optionally ``val/<class>/*``; without a
  ``val`` split a seeded, stratified one is carved from ``train`` and recorded in
  :attr:`DatasetInfo.splits` (no file is moved).
* detection / ``yolo``: ``data.yaml`` (``names``, ``train``, ``val``), ``images/{train,val}``,
  ``labels/{train,val}`` with ``class cx cy w h`` lines normalised to [0, 1].
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import torch
from PIL import Image
from torch.utils.data import Dataset

from cvops.errors import ValidationFailed
from cvops.events.schema import DatasetValidated
from cvops.ml.archives import ExtractReport as ExtractReport
from cvops.ml.archives import safe_extract as safe_extract  # the registry extracts, then validates

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_ERRORS = 200  # errors kept verbatim in DatasetInfo (the total is in error_count)
MAX_YAML_BYTES = 1024 * 1024
MAX_CLASSES = 10_000

_DRIVE = re.compile(r"^[A-Za-z]:")
_IGNORED_DIRS = frozenset({"__MACOSX"})


# ---------------------------------------------------------------------------------------- validate


class DatasetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What validation found; maps onto the ``DatasetValidated`` event (see :meth:`to_event`)."""

    task: str  # classification | detection
    format: str  # imagefolder | yolo
    classes: list[str]  # sorted (classification) / in data.yaml order (detection)
    counts: dict[str, dict[str, int]]  # split -> class -> images (classification) or boxes (detection)
    images: dict[str, int]  # split -> usable images
    image_stats: dict[str, float]
    errors: list[str]  # the first MAX_ERRORS problems, one line each
    error_count: int
    splits: dict[str, list[str]]  # split -> image paths relative to the validated root
    subdir: str = ""  # the single top folder descended into ("" if none)
    val_carved: bool = False  # True when val was split off train (seeded, stratified)
    seed: int = 0
    val_fraction: float = 0.2

    def to_event(self, dataset_id: str, path: str = "") -> DatasetValidated:
        return DatasetValidated(
            dataset_id=dataset_id,
            classes=list(self.classes),
            counts={s: dict(c) for s, c in self.counts.items()},
            image_stats=dict(self.image_stats),
            errors=list(self.errors),
            path=path,
        )

    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append(message)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _IGNORED_DIRS


def _children(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if _visible(p)), key=lambda p: p.name)


def _find_root(root: Path, marker: Callable[[Path], bool]) -> Path:
    """``root`` or the single top folder below it (up to 3 levels) that holds the dataset."""
    current = root
    for _ in range(3):
        if marker(current):
            return current
        kids = _children(current)
        dirs = [k for k in kids if k.is_dir() and not k.is_symlink()]
        if len(dirs) != 1 or any(k.is_file() for k in kids):
            break
        current = dirs[0]
    return current if marker(current) else root


def _check_image(path: Path, full_decode: bool) -> tuple[int, int] | str:
    """(width, height) of a readable image, else the reason it is not one."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()
            if full_decode:
                with Image.open(path) as im:
                    im.load()
                    return im.size
            with Image.open(path) as im:
                return im.size
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return f"corrupt image: {exc}"
    except Image.DecompressionBombWarning as exc:
        return f"image too large: {exc}"


def _size_stats(sizes: Iterable[tuple[int, int]]) -> dict[str, float]:
    ws: list[int] = []
    hs: list[int] = []
    for w, h in sizes:
        ws.append(w)
        hs.append(h)
    if not ws:
        return {"images": 0.0}
    return {
        "images": float(len(ws)),
        "min_width": float(min(ws)),
        "max_width": float(max(ws)),
        "mean_width": round(sum(ws) / len(ws), 3),
        "min_height": float(min(hs)),
        "max_height": float(max(hs)),
        "mean_height": round(sum(hs) / len(hs), 3),
    }


def _carve(
    by_class: dict[str, list[str]], *, seed: int, val_fraction: float
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Seeded, stratified train/val split: per class (sorted), the files (sorted) are shuffled."""
    rng = random.Random(seed)
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    for cls in sorted(by_class):
        files = sorted(by_class[cls])
        rng.shuffle(files)
        n_val = 0
        if len(files) >= 2:
            n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
        val[cls] = sorted(files[:n_val])
        train[cls] = sorted(files[n_val:])
    return train, val


def validate_dataset(
    root: str | os.PathLike[str],
    task: str,
    fmt: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    full_decode: bool = True,
) -> DatasetInfo:
    """Validate an extracted dataset; problems with single files are listed in ``errors`` and the
    files excluded; a dataset with nothing usable left raises :class:`ValidationFailed`.

    ``full_decode`` also decodes every image after PIL's ``verify()`` (catches truncated JPEGs)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValidationFailed("val_fraction must be in (0, 1)", {"field": "val_fraction"})
    base = Path(root)
    if not base.is_dir():
        raise ValidationFailed("dataset folder does not exist", {"path": str(base)})
    if (task, fmt) == ("classification", "imagefolder"):
        return _validate_imagefolder(base, seed=seed, val_fraction=val_fraction, full_decode=full_decode)
    if (task, fmt) == ("detection", "yolo"):
        return _validate_yolo(base, seed=seed, val_fraction=val_fraction, full_decode=full_decode)
    raise ValidationFailed(
        f"unsupported task/format {task!r}/{fmt!r}: use classification/imagefolder or detection/yolo",
        {"task": task, "format": fmt},
    )


def _files(folder: Path, base: Path, errors: _Errors) -> Iterator[tuple[Path, str]]:
    """The visible files below ``folder`` (none hidden, none under a hidden folder), in name order, each
    with its path relative to ``base``; a symbolic link is reported to ``errors`` and left out."""
    for path in sorted(folder.rglob("*")):
        if (
            path.is_dir()
            or not _visible(path)
            or any(not _visible(p) for p in path.relative_to(folder).parents)
        ):
            continue
        rel = _rel(path, base)
        if path.is_symlink():
            errors.add(f"{rel}: symbolic link ignored")
            continue
        yield path, rel


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _validate_imagefolder(base: Path, *, seed: int, val_fraction: float, full_decode: bool) -> DatasetInfo:
    root = _find_root(base, lambda p: (p / "train").is_dir())
    if not (root / "train").is_dir():
        raise ValidationFailed(
            "not an ImageFolder dataset: expected train/<class>/<images> (and optionally val/<class>/...)",
            {"reason": "missing train folder"},
        )
    errors = _Errors()
    sizes: list[tuple[int, int]] = []

    def scan(split_dir: Path) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for entry in _children(split_dir):
            if entry.is_symlink():
                errors.add(f"{_rel(entry, base)}: symbolic link ignored")
                continue
            if not entry.is_dir():
                errors.add(f"{_rel(entry, base)}: file outside a class folder ignored")
                continue
            files: list[str] = []
            for path, rel in _files(entry, base, errors):
                res = _check_image(path, full_decode)
                if isinstance(res, str):
                    errors.add(f"{rel}: {res}")
                    continue
                sizes.append(res)
                files.append(rel)
            if files:
                found[entry.name] = files
            else:
                errors.add(f"{_rel(entry, base)}: class folder has no valid images")
        return found

    train = scan(root / "train")
    val_dir = next((root / n for n in ("val", "valid", "validation") if (root / n).is_dir()), None)
    val = scan(val_dir) if val_dir is not None else {}
    classes = sorted(train)
    if len(classes) < 2:
        raise ValidationFailed(
            "classification needs at least 2 classes with valid images in train/",
            {"classes": classes, "errors": errors.items[:20]},
        )
    for cls in sorted(set(val) - set(train)):
        errors.add(f"val/{cls}: class not in train, ignored")
        del val[cls]
    carved = not any(val.values())
    if carved:
        train, val = _carve(train, seed=seed, val_fraction=val_fraction)
    counts = {
        "train": {c: len(train.get(c, [])) for c in classes},
        "val": {c: len(val.get(c, [])) for c in classes},
    }
    splits = {
        "train": [f for c in classes for f in train.get(c, [])],
        "val": [f for c in classes for f in val.get(c, [])],
    }
    return DatasetInfo(
        task="classification",
        format="imagefolder",
        classes=classes,
        counts=counts,
        images={s: len(v) for s, v in splits.items()},
        image_stats=_size_stats(sizes),
        errors=errors.items,
        error_count=errors.count,
        splits=splits,
        subdir=_rel(root, base) if root != base else "",
        val_carved=carved,
        seed=seed,
        val_fraction=val_fraction,
    )


# --------------------------------------------------------------------------------------------- yolo


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValidationFailed("data.yaml is too large", {"bytes": path.stat().st_size})
    import yaml  # PyYAML: a dependency of ray and ultralytics

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"data.yaml is not valid YAML: {exc}", {"reason": "bad data.yaml"}) from exc
    if not isinstance(data, dict):
        raise ValidationFailed("data.yaml must be a mapping", {"reason": "bad data.yaml"})
    return data


def _yolo_names(data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
            raise ValidationFailed("data.yaml names must map 0..n-1 to class names", {"field": "names"})
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValidationFailed("data.yaml needs a non-empty 'names' list", {"field": "names"})
    if len(names) > MAX_CLASSES:
        raise ValidationFailed("too many classes in data.yaml", {"field": "names", "count": len(names)})
    out = []
    for n in names:
        if not isinstance(n, str | int) or isinstance(n, bool) or len(str(n)) > 256:
            raise ValidationFailed("data.yaml class names must be short strings", {"field": "names"})
        out.append(str(n))
    if len(set(out)) != len(out):
        raise ValidationFailed("data.yaml class names must be unique", {"field": "names"})
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise ValidationFailed(f"data.yaml nc={nc!r} does not match {len(out)} names", {"field": "nc"})
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _yolo_images_dir(root: Path, data: dict[str, Any], split: str) -> Path | None:
    """The images folder of ``split``: data.yaml's entry if it resolves inside the dataset (leading
    ``../`` as written by common exporters tolerated), else ``images/<split>``."""
    candidates: list[Path] = []
    entry = data.get(split)
    if split == "val" and entry is None:
        entry = data.get("valid")
    base = root
    sub = data.get("path")
    if isinstance(sub, str) and sub and not os.path.isabs(sub) and _inside(root / sub, root):
        base = root / sub
    if isinstance(entry, str) and entry and not os.path.isabs(entry) and not _DRIVE.match(entry):
        candidates.append(base / entry)
        stripped = re.sub(r"^(\.\./)+", "", entry.replace("\\", "/"))
        candidates.append(root / stripped)
    names = ("val", "valid") if split == "val" else (split,)
    for n in names:
        candidates.append(root / "images" / n)
        candidates.append(root / n / "images")
    for c in candidates:
        if c.is_dir() and not c.is_symlink() and _inside(c, root):
            return c
    return None


def _labels_dir(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir.parent / "labels"


def _check_label_file(path: Path, nc: int) -> tuple[list[int], list[str]]:
    """Class ids of the boxes in a YOLO label file, and the problems found (one per bad line)."""
    problems: list[str] = []
    ids: list[int] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"unreadable label file: {exc}"]
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            problems.append(f"line {lineno}: expected 5 fields (class cx cy w h), got {len(fields)}")
            continue
        try:
            cls = int(fields[0])
            coords = [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(f"line {lineno}: not numbers")
            continue
        if not 0 <= cls < nc:
            problems.append(f"line {lineno}: class id {cls} outside 0..{nc - 1}")
            continue
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in coords):
            problems.append(f"line {lineno}: coordinates outside [0, 1]")
            continue
        if coords[2] <= 0.0 or coords[3] <= 0.0:
            problems.append(f"line {lineno}: box has zero width or height")
            continue
        ids.append(cls)
    return ids, problems


def _validate_yolo(base: Path, *, seed: int, val_fraction: float, full_decode: bool) -> DatasetInfo:
    def marker(p: Path) -> bool:
        return (p / "data.yaml").is_file() or (p / "data.yml").is_file()

    root = _find_root(base, marker)
    yaml_path = root / "data.yaml" if (root / "data.yaml").is_file() else root / "data.yml"
    if not yaml_path.is_file():
        raise ValidationFailed("not a YOLO dataset: data.yaml is missing", {"reason": "missing data.yaml"})
    data = _read_yaml(yaml_path)
    names = _yolo_names(data)
    errors = _Errors()
    sizes: list[tuple[int, int]] = []
    boxes: dict[str, dict[str, int]] = {}
    kept: dict[str, list[str]] = {}
    labelled: dict[str, int] = {}
    for split in ("train", "val"):
        images_dir = _yolo_images_dir(root, data, split)
        kept[split] = []
        counter = dict.fromkeys(names, 0)
        boxes[split] = counter
        if images_dir is None:
            continue
        labels_dir = _labels_dir(images_dir)
        for path, rel in _files(images_dir, base, errors):
            res = _check_image(path, full_decode)
            if isinstance(res, str):
                if path.suffix.lower() not in IMAGE_EXTENSIONS and path.suffix.lower() in {".txt", ".cache"}:
                    continue
                errors.add(f"{rel}: {res}")
                continue
            label = (labels_dir / path.relative_to(images_dir)).with_suffix(".txt")
            ids: list[int] = []
            if not label.is_file():
                errors.add(
                    f"{rel}: missing label file {_rel(label, base) if _inside(label, base) else label.name}"
                )
            else:
                ids, problems = _check_label_file(label, len(names))
                if problems:
                    for p in problems:
                        errors.add(f"{_rel(label, base)}: {p}")
                    continue  # like ultralytics: an image with a corrupt label file is dropped
            sizes.append(res)
            kept[split].append(rel)
            labelled[rel] = len(ids)
            for i in ids:
                counter[names[i]] += 1
    if not kept["train"]:
        raise ValidationFailed(
            "YOLO dataset has no usable training images (images/train with labels/train)",
            {"reason": "no training images", "errors": errors.items[:20]},
        )
    carved = not kept["val"]
    if carved:
        train_files, val_files = _carve({"all": kept["train"]}, seed=seed, val_fraction=val_fraction)
        kept = {"train": train_files["all"], "val": val_files["all"]}
        # box counts per split must follow the carved split
        boxes = {"train": dict.fromkeys(names, 0), "val": dict.fromkeys(names, 0)}
        for split in ("train", "val"):
            for rel in kept[split]:
                img = base / rel
                label = (_labels_dir(img.parent) / img.name).with_suffix(".txt")
                if label.is_file():
                    ids, _ = _check_label_file(label, len(names))
                    for i in ids:
                        boxes[split][names[i]] += 1
    stats = _size_stats(sizes)
    stats["boxes"] = float(sum(sum(c.values()) for c in boxes.values()))
    stats["background_images"] = float(sum(1 for v in labelled.values() if v == 0))
    return DatasetInfo(
        task="detection",
        format="yolo",
        classes=names,
        counts=boxes,
        images={s: len(v) for s, v in kept.items()},
        image_stats=stats,
        errors=errors.items,
        error_count=errors.count,
        splits=kept,
        subdir=_rel(root, base) if root != base else "",
        val_carved=carved,
        seed=seed,
        val_fraction=val_fraction,
    )


def yolo_label_path(image_path: Path) -> Path:
    """The label file ultralytics reads for ``image_path`` (last ``images`` folder → ``labels``)."""
    return (_labels_dir(image_path.parent) / image_path.name).with_suffix(".txt")


# ------------------------------------------------------------------------------------ torch dataset


def _default_transform() -> Callable[[Any], Any]:
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class ImageFolderDataset(Dataset[tuple[Any, int]]):
    """A map-style torch ``Dataset`` over the files :func:`validate_dataset` listed for ``split``.

    ``root`` is the folder that was validated; items are ``(transform(image), class_index)`` with the
    image an RGB PIL image (default transform: float tensor in [0, 1])."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        info: DatasetInfo,
        split: str,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if info.task != "classification":
            raise ValidationFailed("ImageFolderDataset needs a classification dataset", {"task": info.task})
        if split not in info.splits:
            raise ValidationFailed(f"unknown split {split!r}", {"splits": sorted(info.splits)})
        self.root = Path(root)
        self.classes = list(info.classes)
        index = info.class_to_idx()
        self.samples: list[tuple[str, int]] = []
        prefix = len(info.subdir.split("/")) if info.subdir else 0
        for rel in info.splits[split]:
            parts = PurePosixPath(rel).parts
            self.samples.append((rel, index[parts[prefix + 1]]))  # <subdir>/<split>/<class>/...
        self.targets = [t for _, t in self.samples]
        self.transform = transform if transform is not None else _default_transform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        rel, target = self.samples[i]
        with Image.open(self.root / rel) as im:
            img = im.convert("RGB")
        return self.transform(img), target
