"""ONNX conversion with parity for every preset, the detection layout, parity failures, memory limits."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from cvops.errors import ValidationFailed
from cvops.events.schema import ConvertedForm, ModelConverted, decode_event, encode_event, type_of
from cvops.ml.conversion import run_conversion
from cvops.ml.convert import (
    ATOL,
    ConversionResult,
    compare_outputs,
    convert_module,
    convert_preset,
    ort_session,
)
from cvops.ml.converted import ConversionRequest
from cvops.ml.presets import SPECS, build_preset

torch.set_num_threads(1)


def _check_common(res: ConversionResult, out: Path, task: str, num_classes: int) -> None:
    assert out.is_file() and out.stat().st_size > 1000
    assert res.parity.passed and res.parity.samples == 4
    assert res.parity.max_abs_diff <= res.parity.tolerance
    assert res.opset >= 17 and res.task == task and res.num_classes == num_classes
    assert (
        res.inputs[0].name == "input"
        and res.inputs[0].shape[0] == "batch"
        and res.inputs[0].dtype == "float32"
    )
    assert res.outputs[0].shape[0] == "batch"
    assert res.labels == [f"class_{i}" for i in range(num_classes)]
    assert res.parameter_count > 0


@pytest.mark.parametrize(
    ("preset", "size", "classes"),
    [("tiny_cnn", 32, 4), ("resnet18", 64, 10), ("mobilenet_v3_small", 64, 10)],
)
def test_quick_classification_presets(tmp_path: Path, preset: str, size: int, classes: int) -> None:
    out = tmp_path / f"{preset}.onnx"
    res = convert_preset(preset, out, num_classes=classes, image_size=size)
    _check_common(res, out, "classification", classes)
    assert res.parity.max_abs_diff <= ATOL and res.parity.top1_agreement == 1.0
    assert res.inputs[0].shape == ["batch", 3, size, size] and res.outputs[0].shape == ["batch", classes]
    assert res.preprocessing.image_size == [size, size] and res.preprocessing.resize == "resize"
    # the batch axis really is dynamic
    sess = ort_session(out)
    y = sess.run(None, {"input": np.zeros((3, 3, size, size), np.float32)})[0]
    assert y.shape == (3, classes)


@pytest.mark.parametrize("preset", ["resnet50", "efficientnet_b0"])
def test_default_size_classification_presets(tmp_path: Path, preset: str) -> None:
    out = tmp_path / f"{preset}.onnx"
    res = convert_preset(preset, out)
    _check_common(res, out, "classification", 1000)
    assert res.inputs[0].shape == ["batch", 3, 224, 224]
    assert res.parity.max_abs_diff <= 1e-4, res.parity
    assert res.max_rel_diff < 1e-4


def test_yolov8n_default_size_detection_layout(tmp_path: Path) -> None:
    out = tmp_path / "yolo.onnx"
    res = convert_preset("yolov8n", out)
    _check_common(res, out, "detection", 80)
    assert res.inputs[0].shape == ["batch", 3, 640, 640]
    assert res.outputs[0].shape == ["batch", 84, 8400]  # (N, 4 + nc, anchors)
    assert res.preprocessing.resize == "letterbox" and res.preprocessing.mean == [0.0, 0.0, 0.0]
    assert res.preprocessing.std == [1.0, 1.0, 1.0] and res.preprocessing.image_size == [640, 640]


def test_yolov8n_small_output_decodes(tmp_path: Path) -> None:
    built = build_preset("yolov8n", num_classes=3, image_size=128)
    assert built.task == "detection" and built.input_shape == [1, 3, 128, 128]
    out = tmp_path / "y.onnx"
    res = convert_module(built.module, built.task, built.input_shape, out, preprocessing=built.preprocessing)
    assert res.outputs[0].shape == ["batch", 7, 336]  # 16² + 8² + 4² anchors at strides 8/16/32
    y = ort_session(out).run(None, {"input": np.random.default_rng(0).random((1, 3, 128, 128), np.float32)})[
        0
    ]
    boxes, scores = y[0, :4], y[0, 4:]
    assert (scores >= 0).all() and (scores <= 1).all()  # after sigmoid
    assert (boxes[2:] >= 0).all()  # w, h
    assert 0 <= np.median(boxes[0]) <= 128 and 0 <= np.median(boxes[1]) <= 128  # cx, cy in input pixels


def test_ultralytics_import_restores_patches() -> None:
    from PIL import Image

    from cvops.ml.presets import import_ultralytics_tasks

    before_open, before_save = Image.open, torch.save
    import_ultralytics_tasks()
    assert Image.open is before_open and torch.save is before_save
    assert Image.open.__module__.startswith("PIL")


def test_every_preset_has_a_spec() -> None:
    assert set(SPECS) == {
        "resnet50",
        "efficientnet_b0",
        "yolov8n",
        "resnet18",
        "mobilenet_v3_small",
        "tiny_cnn",
    }
    assert SPECS["yolov8n"].task == "detection" and SPECS["yolov8n"].default_image_size == 640


def test_labels_and_event(tmp_path: Path) -> None:
    res = convert_preset("tiny_cnn", tmp_path / "t.onnx", labels=["cat", "dog"])
    assert res.labels == ["cat", "dog"] and res.num_classes == 2
    ev = res.to_event("m-1", "a" * 64, 1234)
    assert isinstance(ev, ModelConverted) and ev.labels == ["cat", "dog"] and ev.parity == res.parity
    assert decode_event(type_of(ev), encode_event(ev)) == ev
    assert msgspec.json.decode(msgspec.json.encode(res), type=ConversionResult) == res
    # the event's fields are the result's (declared once, in ConvertedForm), model id and blob added
    for name in ConvertedForm.__struct_fields__:
        if name not in ("model_id", "onnx_sha256", "onnx_bytes"):
            assert getattr(ev, name) == getattr(res, name), name
    assert (ev.model_id, ev.onnx_sha256, ev.onnx_bytes) == ("m-1", "a" * 64, 1234)


def test_presets_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_preset("tiny_cnn", seed=7)
    assert torch.equal(torch.rand(3), expected)
    b = build_preset("tiny_cnn", seed=7)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.module.state_dict().values(), b.module.state_dict().values(), strict=True)
    )


def test_weights_path_is_loaded(tmp_path: Path) -> None:
    a = build_preset("tiny_cnn", num_classes=3)
    w = tmp_path / "w.pt"
    torch.save(a.module.state_dict(), w)
    b = build_preset("tiny_cnn", num_classes=3, weights_path=w, seed=1)  # other random init, then loaded
    c = build_preset("tiny_cnn", num_classes=3, seed=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x))
        assert not torch.equal(a.module(x), c.module(x))
    with pytest.raises(ValidationFailed, match="do not fit"):
        build_preset("tiny_cnn", num_classes=5, weights_path=w)


def test_compare_outputs_tolerance_and_decisive_top1() -> None:
    ref = np.array([[1.0, 0.99999, 0.0], [0.0, 0.0, 5.0]])  # row 0 is a near-tie, row 1 is decisive
    flipped_tie = np.array([[0.99999, 1.0, 0.0], [0.0, 0.0, 5.0]])
    p, _ = compare_outputs([ref], [flipped_tie], "classification", samples=2)
    assert p.passed and p.top1_agreement == 1.0 and p.max_abs_diff == pytest.approx(1e-5)
    wrong = np.array([[1.0, 0.99999, 0.0], [0.0, 6.0, 5.0]])
    p2, _ = compare_outputs([ref], [wrong], "classification", samples=2)
    assert not p2.passed and p2.top1_agreement == 0.0 and p2.tolerance == pytest.approx(1e-4 + 5e-5)
    # detection: boxes may differ by rtol * 640, scores only by atol
    det = np.zeros((1, 6, 3))
    det[0, :4] = 640.0
    det[0, 4:] = 0.5
    boxes_off = det.copy()
    boxes_off[0, 0] += 1e-3
    assert compare_outputs([det], [boxes_off], "detection", samples=1)[0].passed
    scores_off = det.copy()
    scores_off[0, 4] += 1e-3
    assert not compare_outputs([det], [scores_off], "detection", samples=1)[0].passed
    with pytest.raises(ValidationFailed, match="NaN"):
        compare_outputs([ref], [ref * np.nan], "classification", samples=2)


class _TraceDiffers(torch.nn.Module):
    """Computes something else while being traced: the ONNX graph disagrees with eager torch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.mean((2, 3)))
        return y + 1.0 if torch.jit.is_tracing() else y


def test_parity_failure_raises_with_figures(tmp_path: Path) -> None:
    out = tmp_path / "bad.onnx"
    with pytest.raises(ValidationFailed, match="parity") as ei:
        convert_module(_TraceDiffers(), "classification", [1, 3, 16, 16], out, exporter="torchscript")
    d = ei.value.details
    assert d["passed"] is False and d["max_abs_diff"] == pytest.approx(1.0, abs=1e-4)
    assert d["tolerance"] < 0.01 and d["samples"] == 4
    assert not out.exists()


class _TwoOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean((2, 3)), x.amax((2, 3))


def test_bad_modules_are_422(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="one tensor"):
        convert_module(_TwoOutputs(), "classification", [1, 3, 16, 16], tmp_path / "o.onnx")
    with pytest.raises(ValidationFailed, match="detection model must output"):
        convert_module(build_preset("tiny_cnn").module, "detection", [1, 3, 32, 32], tmp_path / "o.onnx")
    with pytest.raises(ValidationFailed, match="exporter"):
        convert_module(
            build_preset("tiny_cnn").module,
            "classification",
            [1, 3, 32, 32],
            tmp_path / "o.onnx",
            exporter="x",
        )
    assert not (tmp_path / "o.onnx").exists()


def test_dynamo_exporter_on_a_module(tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    res = convert_module(
        build_preset("tiny_cnn", num_classes=3).module,
        "classification",
        [1, 3, 32, 32],
        out,
        exporter="dynamo",
    )
    assert res.exporter == "dynamo" and res.parity.passed and res.inputs[0].shape == ["batch", 3, 32, 32]


# ----------------------------------------------------------------------------------- memory limit


def _child_convert(extra_bytes: int | None, root: str, image_size: int) -> Any:
    """Runs in a spawned child: limit = current data segment + extra_bytes."""
    from cvops.blobs import BlobStore

    limit = None
    if extra_bytes is not None:
        with open("/proc/self/status") as f:
            vmdata = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
        limit = vmdata + extra_bytes
    try:
        req = ConversionRequest(
            source_format="preset",
            task="classification",
            preset="tiny_cnn",
            image_size=image_size,
            model_id="m1",
        )
        res = run_conversion(req, BlobStore(root), memory_limit_bytes=limit, threads=1)
    except ValidationFailed as exc:
        return ("error", exc.message)
    # the pipeline's answer is the event itself, for the requested model, naming the blobs it wrote
    blobs = BlobStore(root)
    ok = isinstance(res, ModelConverted) and res.model_id == "m1" and res.torch_format == "state_dict"
    return (
        "ok",
        ok and res.parity.passed and blobs.exists(res.onnx_sha256) and blobs.exists(res.torch_sha256),
    )


def test_run_conversion_in_a_memory_capped_child(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        ok = pool.submit(_child_convert, 2 * 1024**3, str(tmp_path / "ok"), 32).result(timeout=300)
        assert ok == ("ok", True)
        # 2 x 2 x 3 x 4096² float32 parity inputs alone need ~800 MB: far beyond +64 MB
        oom = pool.submit(_child_convert, 64 * 1024**2, str(tmp_path / "oom"), 4096).result(timeout=300)
    assert oom[0] == "error" and "memory limit" in oom[1]
    root = tmp_path / "oom"
    leftovers = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.parts[0] == "tmp"], leftovers  # the work dir went with the error
