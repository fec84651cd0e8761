"""Engines behind one interface: CPU engines run a tiny exported CNN; others report why they cannot."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cvops.errors import EngineUnavailable, ValidationFailed
from cvops.ml.engines import ENGINE_NAMES, NO_TORCH_SOURCE, get_engine, list_engines, to_float32_outputs
from tests.unit.tiny_models import export_tiny, make_tiny


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 16, 16)).astype(np.float32)


def run_engine(
    name: str, path: Path, x: np.ndarray, factory: Callable[[], torch.nn.Module] | None = None
) -> list[np.ndarray]:
    eng = get_engine(name)
    try:
        eng.load(path, torch_module_factory=factory, threads=1)
        assert eng.build_time_s is not None and eng.build_time_s >= 0
        return eng.run(x)
    finally:
        eng.close()


def test_cpu_engines_agree(tiny_onnx: Path) -> None:
    x = batch(3)
    with torch.inference_mode():
        expected = make_tiny()(torch.from_numpy(x)).numpy()
    ort = run_engine("onnxruntime-cpu", tiny_onnx, x)
    int8 = run_engine("onnxruntime-cpu-int8", tiny_onnx, x)
    tch = run_engine("torch-cpu", tiny_onnx, x, make_tiny)
    for out in (ort, int8, tch):
        assert len(out) == 1 and out[0].shape == (3, 5) and out[0].dtype == np.float32
    np.testing.assert_allclose(ort[0], expected, atol=1e-5)
    np.testing.assert_allclose(tch[0], expected, atol=1e-6)
    diff = float(np.abs(int8[0] - expected).max())
    assert 0 < diff < 0.05  # quantised: close, but not bit-identical


def test_int8_temp_file_is_removed(tiny_onnx: Path) -> None:
    eng = get_engine("onnxruntime-cpu-int8")
    eng.load(tiny_onnx, threads=1)
    made = [p for p in tiny_onnx.parent.iterdir() if p.name.startswith(".cvops-int8-")]
    assert len(made) == 1 and any(made[0].glob("*.int8.onnx"))
    eng.close()
    eng.close()  # idempotent
    assert not made[0].exists()


def test_dynamic_batch_sizes(tiny_onnx: Path) -> None:
    eng = get_engine("onnxruntime-cpu")
    eng.load(tiny_onnx, threads=1)
    try:
        assert eng.run(batch(1))[0].shape == (1, 5)
        assert eng.run(batch(8))[0].shape == (8, 5)
    finally:
        eng.close()


def test_torch_engine_needs_source_and_restores_threads(tiny_onnx: Path) -> None:
    eng = get_engine("torch-cpu")
    with pytest.raises(EngineUnavailable, match=NO_TORCH_SOURCE):
        eng.load(tiny_onnx)
    before = torch.get_num_threads()
    eng.load(tiny_onnx, torch_module_factory=make_tiny, threads=2)
    assert torch.get_num_threads() == 2
    eng.close()
    assert torch.get_num_threads() == before
    with pytest.raises(ValidationFailed):
        eng.load(tiny_onnx, torch_module_factory=lambda: "not a module")  # type: ignore[arg-type,return-value]


def test_run_before_load_and_bad_files(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable):
        get_engine("onnxruntime-cpu").run(batch(1))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_onnx.read_bytes()[:100])  # truncated ONNX
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        get_engine("onnxruntime-cpu").load(broken)
    with pytest.raises(ValidationFailed):
        get_engine("onnxruntime-cpu").load(tiny_onnx, threads=0)


def test_get_engine_unknown() -> None:
    with pytest.raises(ValidationFailed) as err:
        get_engine("onnxruntime-quantum")
    assert err.value.details["known"] == list(ENGINE_NAMES)


def test_list_engines_reports_every_engine() -> None:
    infos = list_engines()
    assert [i.name for i in infos] == list(ENGINE_NAMES)
    by_name = {i.name: i for i in infos}
    assert by_name["onnxruntime-cpu"].available and by_name["torch-cpu"].available
    assert by_name["torch-cpu"].needs_torch_source
    for info in infos:
        assert info.available or info.reason  # unavailable always says why
    if not torch.cuda.is_available():
        for name in ("torch-cuda", "torch-cuda-fp16", "torch-cuda-compiled"):
            assert not by_name[name].available and "CUDA" in by_name[name].reason
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert by_name["onnxruntime-cuda"].reason == "onnxruntime-gpu not installed"
        assert by_name["onnxruntime-cuda-fp16"].reason == "onnxruntime-gpu not installed"
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        assert by_name["onnxruntime-tensorrt"].reason == "TensorRT execution provider not available"
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in by_name["tensorrt-fp16"].reason


def test_unavailable_engine_refuses_to_load(tiny_onnx: Path) -> None:
    for info in list_engines():
        if not info.available:
            with pytest.raises(EngineUnavailable):
                get_engine(info.name).load(tiny_onnx, torch_module_factory=make_tiny)


def test_available_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = get_engine("onnxruntime-cpu")

    def boom() -> tuple[bool, str]:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(eng, "_available", boom)
    assert eng.available() == (False, "RuntimeError: driver exploded")


def test_to_float32_outputs_flattens() -> None:
    out = to_float32_outputs(
        {"b": torch.ones(2, dtype=torch.float16), "a": (np.zeros(1, np.float64), [np.ones(3)])}
    )
    assert [o.shape for o in out] == [(1,), (3,), (2,)] and all(o.dtype == np.float32 for o in out)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-fp16", "torch-cuda-compiled"])
def test_torch_cuda_engines(tiny_onnx: Path, name: str) -> None:
    ref = run_engine("onnxruntime-cpu", tiny_onnx, batch(4))
    eng = get_engine(name)
    eng.load(tiny_onnx, torch_module_factory=make_tiny, input_shape=[3, 16, 16], batch_sizes=[1, 4])
    try:
        first = eng.run(batch(4))
        again = eng.run(batch(4) * 0)  # buffers are reused: the earlier result must not change
        eng.run(batch(1))
        out = eng.run(batch(4))
    finally:
        eng.close()
    tol = 1e-3 if name == "torch-cuda" else 2e-2
    np.testing.assert_allclose(first[0], ref[0], atol=tol)
    np.testing.assert_allclose(out[0], ref[0], atol=tol)
    assert not np.allclose(first[0], again[0])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-cuda-fp16"])
def test_onnxruntime_cuda(tiny_onnx: Path, name: str) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    x = batch(2)
    np.testing.assert_allclose(
        run_engine(name, tiny_onnx, x)[0],
        run_engine("onnxruntime-cpu", tiny_onnx, x)[0],
        atol=1e-3 if name == "onnxruntime-cuda" else 2e-2,
    )


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("name", ["tensorrt-fp16", "onnxruntime-tensorrt"])
def test_tensorrt_engines(tiny_onnx: Path, name: str) -> None:
    if not get_engine(name).available()[0]:
        pytest.skip(get_engine(name).available()[1])
    for n in (1, 8):
        x = batch(n)
        out = run_engine(name, tiny_onnx, x)
        np.testing.assert_allclose(out[0], run_engine("onnxruntime-cpu", tiny_onnx, x)[0], atol=2e-2)


def test_float16_conversion_keeps_float32_io(tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx

    from cvops.ml.engines_ort import convert_to_float16

    dst = tmp_path / "half.onnx"
    convert_to_float16(tiny_onnx, dst)
    model = onnx.load(str(dst))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {f32}
    assert model.graph.initializer and {t.data_type for t in model.graph.initializer} == {f16}
