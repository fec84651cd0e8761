"""Loading uploaded model files safely: formats, refusals of code-carrying files, input shapes."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cvops.errors import UnsupportedMediaType, ValidationFailed
from cvops.ml import formats
from cvops.ml.convert import convert
from cvops.ml.presets import TinyCNN, build_preset, preset_names

torch.set_num_threads(1)


class Evil:
    """Unpickling this creates ``marker`` — proof that foreign code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture()
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN(num_classes=5).eval()


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _export_pt2(module: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    ep = torch.export.export(module, (torch.randn(2, 3, 32, 32),), dynamic_shapes=shapes)
    torch.export.save(ep, str(path))
    return path


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip, replacing members whose name ends with a key."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info, data)
    return dst


def _model_json(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("models/model.json"))
        return json.loads(z.read(name))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------- detection


def test_detect_format_by_content(tmp_path: Path, tiny: torch.nn.Module) -> None:
    ts = tmp_path / "m.ts"
    torch.jit.trace(tiny, torch.randn(1, 3, 32, 32)).save(str(ts))
    with pytest.raises(ValidationFailed, match="TorchScript is not accepted"):  # content beats the name
        formats.detect_format(ts, "upload.pt")

    pt2 = _export_pt2(tiny, tmp_path / "m.pt2")
    assert formats.detect_format(pt2, "m.pt2") == formats.TORCH_EXPORT

    sd = tmp_path / "w.pth"
    torch.save(tiny.state_dict(), sd)
    assert formats.detect_format(sd, "w.pth") == formats.STATE_DICT

    legacy = tmp_path / "legacy.bin"
    torch.save(tiny.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert formats.detect_format(legacy, "legacy.bin") == formats.STATE_DICT
    reloaded = formats.load_torch_model(legacy, formats.STATE_DICT, arch="tiny_cnn")
    assert torch.equal(reloaded.state_dict()["fc.weight"], tiny.state_dict()["fc.weight"])

    pickled = tmp_path / "model.onnx"  # a pickle pretending to be ONNX
    pickled.write_bytes(pickle.dumps({"a": 1}))
    assert formats.detect_format(pickled, "model.onnx") == formats.STATE_DICT

    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(tiny, (torch.randn(1, 3, 32, 32),), str(onnx_path), dynamo=False)
    assert formats.detect_format(onnx_path, "noext") == formats.ONNX

    h5 = tmp_path / "k.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    assert formats.detect_format(h5, "k.h5") == formats.TENSORFLOW
    keras = tmp_path / "k.keras"
    with zipfile.ZipFile(keras, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", b"")
    assert formats.detect_format(keras, "k.keras") == formats.TENSORFLOW


def test_detect_format_rejects_unknown_and_empty(tmp_path: Path) -> None:
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"\xff\xfe random bytes " * 10)
    with pytest.raises(UnsupportedMediaType):
        formats.detect_format(junk, "junk.xyz")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValidationFailed, match="empty"):
        formats.detect_format(empty, "empty.onnx")
    odd_zip = tmp_path / "odd.zip"
    with zipfile.ZipFile(odd_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedMediaType):
        formats.detect_format(odd_zip, "odd.zip")


# ------------------------------------------------------------------------------------ torch formats


def test_torchscript_is_refused_by_every_loader(tmp_path: Path, tiny: torch.nn.Module) -> None:
    ts = tmp_path / "m.ts"
    torch.jit.trace(tiny, torch.randn(1, 3, 32, 32)).save(str(ts))
    with pytest.raises(ValidationFailed, match="TorchScript is not accepted"):
        formats.load_torch_model(ts, formats.TORCHSCRIPT)
    with pytest.raises(ValidationFailed):
        convert(ts, formats.TORCHSCRIPT, task="classification", out_path=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_torch_export_pt2_converts_dynamic_and_static(tmp_path: Path, tiny: torch.nn.Module) -> None:
    pt2 = _export_pt2(tiny, tmp_path / "dyn.pt2", dynamic=True)
    res = convert(pt2, formats.TORCH_EXPORT, task="classification", out_path=tmp_path / "dyn.onnx")
    assert res.parity.passed and res.exporter == "dynamo" and res.opset >= 18
    assert res.inputs[0].shape == ["batch", 3, 32, 32] and res.outputs[0].shape == ["batch", 5]

    pt2s = _export_pt2(tiny, tmp_path / "static.pt2", dynamic=False)
    res2 = convert(pt2s, formats.TORCH_EXPORT, task="classification", out_path=tmp_path / "static.onnx")
    assert res2.parity.passed and res2.inputs[0].shape == [2, 3, 32, 32]

    with pytest.raises(ValidationFailed, match="input_shape"):
        convert(
            pt2,
            formats.TORCH_EXPORT,
            task="classification",
            input_shape=[1, 3, 64, 64],
            out_path=tmp_path / "x.onnx",
        )


def test_state_dict_with_arch_infers_classes(tmp_path: Path) -> None:
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    sd = tmp_path / "r18.pth"
    torch.save(m.state_dict(), sd)
    loaded = formats.load_torch_model(sd, formats.STATE_DICT, arch="resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    res = convert(
        sd, formats.STATE_DICT, task="classification", arch="resnet18", input_shape=[1, 3, 64, 64],
        labels=[f"l{i}" for i in range(7)], out_path=tmp_path / "r18.onnx",
    )  # fmt: skip
    assert res.parity.passed and res.num_classes == 7 and res.labels[0] == "l0"


def test_state_dict_of_a_preset_and_wrapped_checkpoint(tmp_path: Path, tiny: torch.nn.Module) -> None:
    sd = tmp_path / "ckpt.pt"
    torch.save({"state_dict": tiny.state_dict(), "epoch": 3}, sd)
    module = formats.load_torch_model(sd, formats.STATE_DICT, arch="tiny_cnn")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module(x), tiny(x))


def test_yolov8n_state_dict_infers_classes(tmp_path: Path) -> None:
    built = build_preset("yolov8n", num_classes=3)
    assert formats.infer_num_classes("yolov8n", built.module.state_dict()) == 3
    sd = tmp_path / "y.pt"
    torch.save(built.module.state_dict(), sd)
    module = formats.load_torch_model(sd, formats.STATE_DICT, arch="yolov8n")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(module(x), built.module(x))


def test_garbage_pt_file_is_422(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(ValidationFailed, match="not a readable torch state_dict"):
        formats.load_torch_model(junk, formats.STATE_DICT, arch="tiny_cnn")


def test_state_dict_without_arch_is_422(tmp_path: Path, tiny: torch.nn.Module) -> None:
    sd = tmp_path / "w.pt"
    torch.save(tiny.state_dict(), sd)
    with pytest.raises(ValidationFailed, match="needs arch") as ei:
        convert(sd, formats.STATE_DICT, task="classification", out_path=tmp_path / "o.onnx")
    assert ei.value.status == 422 and "resnet18" in ei.value.details["known_archs"]
    with pytest.raises(ValidationFailed, match="unknown arch"):
        formats.load_torch_model(sd, formats.STATE_DICT, arch="os.system")
    with pytest.raises(ValidationFailed, match="do not fit"):
        formats.load_torch_model(sd, formats.STATE_DICT, arch="resnet18", num_classes=5)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save", "legacy_torch_save", "full_module"])
def test_pickle_payload_never_runs(tmp_path: Path, marker: Path, how: str) -> None:
    path = tmp_path / "evil.pt"
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(Evil(marker)))
    elif how == "torch_save":
        torch.save({"weight": torch.zeros(1), "x": Evil(marker)}, path)
    elif how == "legacy_torch_save":
        torch.save(Evil(marker), path, _use_new_zipfile_serialization=False)
    else:
        torch.save(TinyCNN(3), path)  # a whole pickled nn.Module (class reference + state)
    assert not marker.exists()
    fmt = formats.detect_format(path, "evil.pt")
    assert fmt == formats.STATE_DICT
    with pytest.raises(ValidationFailed, match="pickled Python objects are refused") as ei:
        convert(path, fmt, task="classification", arch="tiny_cnn", out_path=tmp_path / "o.onnx")
    assert ei.value.status == 422
    assert not marker.exists(), "the pickle payload ran"
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------------------- hostile .pt2


def test_pt2_with_pickled_sample_inputs_is_refused(
    tmp_path: Path, tiny: torch.nn.Module, marker: Path
) -> None:
    pt2 = _export_pt2(tiny, tmp_path / "ok.pt2")
    import io

    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    bad = _rewrite_zip(pt2, tmp_path / "bad.pt2", {"data/sample_inputs/model.pt": buf.getvalue()})
    with pytest.raises(ValidationFailed, match="pickled Python objects"):
        formats.load_torch_model(bad, formats.TORCH_EXPORT)
    assert not marker.exists()


def test_pt2_with_code_in_expressions_or_guards_is_refused(
    tmp_path: Path, tiny: torch.nn.Module, marker: Path
) -> None:
    pt2 = _export_pt2(tiny, tmp_path / "ok.pt2")
    doc = _model_json(pt2)
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    text = json.dumps(doc)
    assert "Symbol(" in text
    evil_expr = text.replace("Symbol(", payload.replace('"', '\\"') + " or Symbol(", 1)
    bad1 = _rewrite_zip(pt2, tmp_path / "expr.pt2", {"models/model.json": evil_expr.encode()})
    with pytest.raises(ValidationFailed, match="not plain arithmetic"):
        formats.load_torch_model(bad1, formats.TORCH_EXPORT)

    doc2 = dict(doc, guards_code=[payload])
    bad2 = _rewrite_zip(pt2, tmp_path / "guard.pt2", {"models/model.json": json.dumps(doc2).encode()})
    with pytest.raises(ValidationFailed, match="not plain arithmetic"):
        formats.load_torch_model(bad2, formats.TORCH_EXPORT)

    evil_target = text.replace("torch.ops.aten.relu", "builtins.exec", 1)
    bad3 = _rewrite_zip(pt2, tmp_path / "target.pt2", {"models/model.json": evil_target.encode()})
    with pytest.raises(ValidationFailed, match="torch operator"):
        formats.load_torch_model(bad3, formats.TORCH_EXPORT)

    sneaky = text.replace('"torch.ops.aten.relu_.default"', '"torch.ops.import_module"', 1)
    assert sneaky != text
    bad4 = _rewrite_zip(pt2, tmp_path / "sneaky.pt2", {"models/model.json": sneaky.encode()})
    with pytest.raises(ValidationFailed):
        formats.load_torch_model(bad4, formats.TORCH_EXPORT)
    assert not marker.exists()


def test_pt2_with_compiled_code_or_unknown_members_is_refused(tmp_path: Path, tiny: torch.nn.Module) -> None:
    pt2 = _export_pt2(tiny, tmp_path / "ok.pt2")
    with zipfile.ZipFile(pt2) as z:
        root = z.namelist()[0].split("/", 1)[0]
    bad = tmp_path / "aoti.pt2"
    bad.write_bytes(pt2.read_bytes())
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(ValidationFailed, match="unexpected member"):
        formats.load_torch_model(bad, formats.TORCH_EXPORT)
    with pytest.raises(ValidationFailed):
        formats.check_torch_export_archive(tmp_path / "missing.pt2")


# -------------------------------------------------------------------------------------------- ONNX


def _onnx(tmp_path: Path, tiny: torch.nn.Module) -> Path:
    p = tmp_path / "tiny.onnx"
    torch.onnx.export(
        tiny, (torch.randn(1, 3, 32, 32),), str(p), dynamo=False, input_names=["input"],
        output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )  # fmt: skip
    return p


def test_onnx_upload_converts_with_ort_parity(tmp_path: Path, tiny: torch.nn.Module) -> None:
    src = _onnx(tmp_path, tiny)
    out = tmp_path / "out.onnx"
    res = convert(src, formats.ONNX, task="classification", out_path=out)
    assert out.read_bytes() == src.read_bytes()
    assert res.parity.passed and res.parity.samples == 4 and res.exporter == "none"
    assert res.num_classes == 5 and res.inputs[0].shape == ["batch", 3, 32, 32]
    assert res.parameter_count > 20_000
    with pytest.raises(ValidationFailed, match="labels"):
        convert(src, formats.ONNX, task="classification", labels=["a", "b"], out_path=tmp_path / "o2.onnx")
    assert not (tmp_path / "o2.onnx").exists()
    with pytest.raises(ValidationFailed, match="detection"):
        convert(src, formats.ONNX, task="detection", out_path=tmp_path / "o3.onnx")


def _pool_model(path: Path, elem: int, hw: list[Any]) -> Path:
    import onnx
    from onnx import helper

    g = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"], axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", elem, ["N", 3, *hw])],
        [helper.make_tensor_value_info("y", elem, ["N", 3])],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_float16_and_dynamic_hw(tmp_path: Path) -> None:
    from onnx import TensorProto

    half = _pool_model(tmp_path / "half.onnx", TensorProto.FLOAT16, [16, 16])
    res = convert(half, formats.ONNX, task="classification", out_path=tmp_path / "h_out.onnx")
    assert res.parity.passed and res.inputs[0].dtype == "float16" and res.parity.tolerance >= 1e-2
    assert res.preprocessing.image_size == [16, 16]

    dyn = _pool_model(tmp_path / "dyn.onnx", TensorProto.FLOAT, ["H", "W"])
    with pytest.raises(ValidationFailed, match="pass input_shape"):
        convert(dyn, formats.ONNX, task="classification", out_path=tmp_path / "d_out.onnx")
    res2 = convert(
        dyn, formats.ONNX, task="classification", input_shape=[1, 3, 24, 32], out_path=tmp_path / "d_out.onnx"
    )
    assert res2.parity.passed and res2.preprocessing.image_size == [24, 32] and res2.parameter_count == 0


def test_truncated_onnx_is_rejected(tmp_path: Path, tiny: torch.nn.Module) -> None:
    src = _onnx(tmp_path, tiny)
    data = src.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationFailed, match="ONNX") as ei:
        convert(cut, formats.ONNX, task="classification", out_path=tmp_path / "o.onnx")
    assert ei.value.status == 422
    assert not (tmp_path / "o.onnx").exists()


def test_random_bytes_onnx_is_rejected(tmp_path: Path) -> None:
    rnd = tmp_path / "rnd.onnx"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValidationFailed, match="ONNX"):
        formats.check_onnx(rnd)
    proto_like = tmp_path / "p.onnx"
    proto_like.write_bytes(b"\x08\x07" + b"\x00" * 64)
    with pytest.raises(ValidationFailed, match="ONNX"):
        formats.check_onnx(proto_like)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../../etc/passwd", "escapes"),
        ("/etc/passwd", "escapes"),
        ("..\\..\\x", "escapes"),
        ("w.bin", "self-contained"),
    ],
)
def test_onnx_external_data_is_rejected(tmp_path: Path, location: str, message: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "4")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [w],
    )  # fmt: skip
    p = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph), str(p))
    with pytest.raises(ValidationFailed, match=message):
        formats.check_onnx(p)
    with pytest.raises(ValidationFailed, match=message):
        convert(p, formats.ONNX, task="classification", out_path=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_onnx_external_data_in_a_subgraph_is_rejected(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def branch(name: str, location: str | None) -> Any:
        t = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        if location is not None:
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", location
        node = helper.make_node("Constant", [], [f"{name}_out"], value=t)
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])]
        )

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["c"], ["y"], then_branch=branch("a", "../../etc/passwd"), else_branch=branch("b", None)
            )
        ],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    p = tmp_path / "sub.onnx"
    onnx.save(helper.make_model(graph), str(p))
    with pytest.raises(ValidationFailed, match="escapes"):
        formats.check_onnx(p)


# -------------------------------------------------------------------------------------- input shape


@pytest.mark.parametrize(
    "shape",
    [[1, 3, 224], [1, 3, 224, 224, 1], [1, 5, 224, 224], [1, 3, 4, 224], [1, 3, 224, 5000], [0, 3, 32, 32],
     [1, 3, 32.0, 32], [1, True, 32, 32], "1,3,32,32", None],
)  # fmt: skip
def test_wrong_input_shape_is_rejected(shape: Any) -> None:
    with pytest.raises(ValidationFailed, match="input_shape"):
        formats.validate_input_shape(shape)


def test_valid_input_shapes() -> None:
    assert formats.validate_input_shape([-1, 3, 224, 224]) == [-1, 3, 224, 224]
    assert formats.validate_input_shape((1, 1, 8, 4096)) == [1, 1, 8, 4096]


def test_wrong_input_shape_in_convert(tmp_path: Path) -> None:
    from cvops.ml.presets import build_preset

    ts = tmp_path / "m.pt"
    torch.save(build_preset("tiny_cnn", num_classes=5).module.state_dict(), ts)
    with pytest.raises(ValidationFailed, match="input_shape"):
        convert(
            ts,
            formats.STATE_DICT,
            arch="tiny_cnn",
            task="classification",
            input_shape=[1, 3, 32],
            out_path=tmp_path / "o.onnx",
        )
    with pytest.raises(ValidationFailed, match="declared shape"):  # 1 channel into a 3-channel conv
        convert(
            ts,
            formats.STATE_DICT,
            arch="tiny_cnn",
            task="classification",
            input_shape=[1, 1, 32, 32],
            out_path=tmp_path / "o.onnx",
        )
    with pytest.raises(ValidationFailed, match="task"):
        convert(ts, formats.STATE_DICT, arch="tiny_cnn", task="segmentation", out_path=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValidationFailed, match="unknown preset") as ei:
        build_preset("resnet9000")
    assert ei.value.details["known"] == preset_names()
    assert {"resnet50", "efficientnet_b0", "yolov8n", "resnet18", "mobilenet_v3_small", "tiny_cnn"} <= set(
        ei.value.details["known"]
    )
    with pytest.raises(ValidationFailed, match="image_size"):
        build_preset("yolov8n", image_size=100)  # not a multiple of 32
    with pytest.raises(ValidationFailed, match="num_classes"):
        build_preset("tiny_cnn", num_classes=0)


# -------------------------------------------------------------------------------------- TensorFlow


@pytest.mark.skipif(
    formats.tensorflow_available(), reason="TensorFlow is installed: the missing-extra path can't run"
)
def test_tensorflow_missing_gives_install_hint(tmp_path: Path) -> None:
    keras = tmp_path / "k.keras"
    with zipfile.ZipFile(keras, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    fmt = formats.detect_format(keras, "k.keras")
    with pytest.raises(ValidationFailed) as ei:
        convert(keras, fmt, task="classification", out_path=tmp_path / "o.onnx")
    assert ei.value.status == 422 and "pip install 'cvops[tensorflow]'" in ei.value.message


@pytest.mark.skipif(
    not formats.tensorflow_available(), reason="needs the optional extra: pip install 'cvops[tensorflow]'"
)
def test_tensorflow_keras_converts(tmp_path: Path) -> None:  # pragma: no cover - optional extra
    import tensorflow as tf

    model = tf.keras.Sequential(
        [tf.keras.Input((32, 32, 3)), tf.keras.layers.Conv2D(4, 3), tf.keras.layers.GlobalAveragePooling2D(),
         tf.keras.layers.Dense(3)]
    )  # fmt: skip
    p = tmp_path / "m.keras"
    model.save(p)
    res = convert(
        p, formats.TENSORFLOW, task="classification", input_shape=[1, 3, 32, 32], out_path=tmp_path / "o.onnx"
    )
    assert res.parity.passed and res.num_classes == 3


def test_no_stray_files(tmp_path: Path) -> None:
    assert os.listdir(tmp_path) == []
