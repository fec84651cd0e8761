"""Small synthetic datasets drawn on the spot (tests, e2e runs and benchmarks; nothing is downloaded)."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
YOLO_NAMES = ("rectangle", "ellipse")


def _colour(rng: random.Random, avoid: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    while True:
        c = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if avoid is None or sum(abs(a - b) for a, b in zip(c, avoid, strict=True)) > 150:
            return c


def draw_shape(shape: str, size: int, rng: random.Random) -> Image.Image:
    """One RGB ``size``x``size`` image with one ``shape`` of random colour, position and size."""
    bg = _colour(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    extent = rng.uniform(0.35, 0.8) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    fill = _colour(rng, avoid=bg)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def draw_shapes_dataset(
    root: str | os.PathLike[str], n_per_class: int = 40, size: int = 64, seed: int = 0, with_val: bool = True
) -> Path:
    """ImageFolder dataset of circles / squares / triangles: ``train/<shape>/NNNN.png`` (``n_per_class``
    each) and, with ``with_val``, ``val/<shape>/`` (``max(2, n_per_class // 4)`` each)."""
    out = Path(root)
    rng = random.Random(seed)
    splits = [("train", n_per_class)] + ([("val", max(2, n_per_class // 4))] if with_val else [])
    for split, n in splits:
        for shape in SHAPES:
            folder = out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(shape, size, rng).save(folder / f"{i:04d}.png")
    return out


def digits_dataset(
    root: str | os.PathLike[str],
    *,
    size: int = 32,
    n_per_class: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """scikit-learn's 8x8 digits (shipped with the package) as an ImageFolder of ``size``-px RGB PNGs,
    classes ``"0"``..``"9"``, with a seeded val split.  Raises ModuleNotFoundError without sklearn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(root)
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(digits.target):
        by_class.setdefault(int(t), []).append(i)
    for cls, idx in sorted(by_class.items()):
        rng.shuffle(idx)
        if n_per_class is not None:
            idx = idx[:n_per_class]
        n_val = max(1, round(len(idx) * val_fraction))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = out / split / str(cls)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
                img.convert("RGB").save(folder / f"{i:04d}.png")
    return out


def yolo_shapes_dataset(root: str | os.PathLike[str], n: int = 16, size: int = 128, seed: int = 0) -> Path:
    """YOLO detection dataset of drawn rectangles and ellipses: ``data.yaml``, ``images/{train,val}``,
    ``labels/{train,val}``; ``n`` training images and ``max(2, n // 4)`` val images, 1-3 objects each."""
    out = Path(root)
    rng = random.Random(seed)
    for split, count in (("train", n), ("val", max(2, n // 4))):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            bg = _colour(rng)
            img = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(img)
            lines = []
            for _ in range(rng.randint(1, 3)):
                cls = rng.randrange(len(YOLO_NAMES))
                w = rng.uniform(0.15, 0.45) * size
                h = rng.uniform(0.15, 0.45) * size
                x0 = rng.uniform(0, size - w)
                y0 = rng.uniform(0, size - h)
                box = (x0, y0, x0 + w, y0 + h)
                fill = _colour(rng, avoid=bg)
                if cls == 0:
                    draw.rectangle(box, fill=fill)
                else:
                    draw.ellipse(box, fill=fill)
                cx, cy = (x0 + w / 2) / size, (y0 + h / 2) / size
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
            img.save(out / "images" / split / f"{i:04d}.png")
            (out / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(YOLO_NAMES))
    (out / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{names}\n")
    return out


def zip_folder(
    folder: str | os.PathLike[str], zip_path: str | os.PathLike[str], *, include_root: bool = False
) -> Path:
    """Zip ``folder``'s files (paths relative to it, or under its own name with ``include_root``)."""
    src = Path(folder)
    dst = Path(zip_path)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                rel = path.relative_to(src.parent if include_root else src)
                zf.write(path, rel.as_posix())
    return dst
