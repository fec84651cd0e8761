"""cvops.ml.spec (torch-free model facts) agrees with the modules that build and fetch; the
onnxruntime-cpu engine serves a float16 model and reports a fixed batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvops.errors import ValidationFailed
from cvops.ml import engines, presets, pretrained, spec


def test_every_spec_has_a_builder_in_the_same_order() -> None:
    assert tuple(presets.PRESETS) == spec.PRESET_NAMES == tuple(spec.SPECS)
    assert presets.SPECS is spec.SPECS


def test_check_published_refuses_presets_without_weights() -> None:
    with pytest.raises(ValidationFailed) as err:
        spec.check_published("tiny_cnn")
    assert err.value.details["presets_with_weights"] == list(spec.PUBLISHED_PRESETS)
    for name in spec.PUBLISHED_PRESETS:
        spec.check_published(name)
        assert pretrained.published(name).file  # every published preset has a publisher
    with pytest.raises(ValidationFailed, match="no published pre-trained weights"):
        pretrained.published("tiny_cnn")


def test_engine_names_are_the_engines() -> None:
    assert engines.ENGINE_NAMES is spec.ENGINE_NAMES
    assert [i.name for i in engines.list_engines()] == list(spec.ENGINE_NAMES)


def _fp16_relu(path: Path, batch: int | str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [batch, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ort_engine_casts_to_a_float16_input_and_reports_a_fixed_batch(tmp_path: Path) -> None:
    eng = engines.get_engine("onnxruntime-cpu")
    eng.load(_fp16_relu(tmp_path / "fixed.onnx", 2), threads=1)
    (y,) = eng.run(np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.0, 0.5, 2.0], [3.0, 0.0, 0.0]])
    assert getattr(eng, "max_batch", None) == 2
    dyn = engines.get_engine("onnxruntime-cpu")
    dyn.load(_fp16_relu(tmp_path / "dynamic.onnx", "N"), threads=1)
    assert getattr(dyn, "max_batch", "unset") is None
