"""GPU JPEG decoding for CUDA deployments: which images take it (CPU), and parity with the CPU path (GPU)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvops.events.schema import Preprocessing
from cvops.ml.gpu_preprocess import goes_to_gpu

CLS = Preprocessing(image_size=[64, 64], resize="resize")
DET = Preprocessing(image_size=[64, 64], mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], resize="letterbox")


def photo(w: int, h: int, seed: int = 0, mode: str = "RGB", fmt: str = "JPEG", **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), (xx + yy) * 127 // max(w + h, 1)], -1)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, fmt, **save)
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return photo(40, 30, exif=exif.tobytes())


def test_which_images_take_the_gpu_path() -> None:
    assert goes_to_gpu(photo(80, 60), "image/jpeg", CLS)
    assert goes_to_gpu(photo(80, 60, mode="L"), "image/jpeg; charset=x", DET)
    assert not goes_to_gpu(photo(80, 60, fmt="PNG"), "image/png", CLS)  # PNG: the CPU
    assert not goes_to_gpu(photo(80, 60, fmt="PNG"), "image/jpeg", CLS)  # a PNG sent as JPEG: the CPU
    assert not goes_to_gpu(photo(80, 60, mode="CMYK"), "image/jpeg", CLS)
    assert not goes_to_gpu(rotated_jpeg(), "image/jpeg", CLS)  # EXIF rotation: the CPU applies it
    assert not goes_to_gpu(b"\xff\xd8 not a jpeg", "image/jpeg", CLS)
    assert not goes_to_gpu(photo(80, 60), "image/jpeg", Preprocessing(layout="NHWC"))


# ----------------------------------------------------------------------------------------------- GPU


def tiny_model() -> object:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("pre", [CLS, DET], ids=["resize", "letterbox"])
def test_gpu_preprocessing_matches_the_cpu_path(pre: Preprocessing) -> None:
    from cvops.ml.gpu_preprocess import GpuPreprocessor
    from cvops.ml.inference import Predictor

    images = [photo(640, 480, 1), photo(64, 64, 2), photo(37, 101, 3), photo(300, 200, 4, mode="L")]
    cpu = Predictor(object(), "classification", [], pre)  # type: ignore[arg-type]  # prepare() only
    gpu = GpuPreprocessor(pre)
    x, transforms = gpu.prepare(images)
    got = x.cpu().numpy()
    for i, data in enumerate(images):
        want, t = cpu.prepare(data, "image/jpeg")
        assert transforms[i] == t
        diff = np.abs(got[i] - want)
        # nvjpeg vs libjpeg and torch's antialiased bilinear vs PIL's: close, in normalised units
        assert float(diff.mean()) < 0.03 and float(np.percentile(diff, 99)) < 0.3, (i, diff.mean())


@pytest.mark.gpu
@pytest.mark.parametrize("engine_name", ["torch-cuda", "torch-cuda-fp16"])
def test_predictor_decodes_jpegs_on_the_gpu_and_keeps_order(engine_name: str, tmp_path: Path) -> None:
    from cvops.ml.engines import get_engine
    from cvops.ml.gpu_preprocess import GpuPreprocessor
    from cvops.ml.inference import Predictor

    engine = get_engine(engine_name)
    engine.load(tmp_path / "unused.onnx", torch_module_factory=tiny_model, input_shape=[3, 64, 64])
    labels = [f"c{i}" for i in range(10)]
    items = [
        (photo(640, 480, 1), "image/jpeg", 3),
        (photo(50, 70, 2, fmt="PNG"), "image/png", 3),  # the CPU way, in the same batch
        (b"\xff\xd8 broken", "image/jpeg", 3),  # a 422 for this one only
        (photo(120, 90, 3), "image/jpeg", 3),
    ]
    gpu = GpuPreprocessor(CLS)
    calls: list[int] = []
    prepare = gpu.prepare
    gpu.prepare = lambda datas: (calls.append(len(datas)), prepare(datas))[1]  # type: ignore[method-assign]
    try:
        on_gpu = Predictor(engine, "classification", labels, CLS, gpu=gpu).predict_images(items)
        on_cpu = Predictor(engine, "classification", labels, CLS).predict_images(items)
    finally:
        engine.close()
    assert calls == [2]  # the two plain JPEGs, in one nvjpeg call
    assert on_gpu[2]["error"]["code"] == on_cpu[2]["error"]["code"] == "validation_failed"
    for a, b in zip(on_gpu, on_cpu, strict=True):
        if "error" in a:
            continue
        assert [p["class_id"] for p in a["predictions"]][:1] == [p["class_id"] for p in b["predictions"]][:1]
        np.testing.assert_allclose(
            [p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=0.02
        )
