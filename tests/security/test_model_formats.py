"""Issue 10, "Model formats: accept data, never code": an uploaded file is never executed.

Each test here failed on the code before the fix (TorchScript was loaded with ``torch.jit.load``, which
runs the archive's ``__setstate__``; the upload itself was kept and loaded again as the torch form;
Ultralytics checkpoints were refused outright; conversions had no wall-clock limit).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.ml import convert, formats
from tests.e2e.helpers import API, blob_path, upload_model
from tests.e2e.server import request
from tests.security.conftest import Live

ROOT = Path(__file__).resolve().parents[2]


class _FileReader(nn.Module):
    """A TorchScript module whose ``__setstate__`` maps a file of the server's (``torch.from_file``):
    with ``shared=True`` it creates the file when it is missing, so the marker proves it ran."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = torch.zeros(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, :2] + self.w[:2]

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.w = torch.from_file(state[0], shared=True, size=4)
        self.training = state[2]


def _evil_torchscript(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_FileReader(str(marker))), buf)
    marker.unlink(missing_ok=True)  # scripting may not touch it, but make sure the test starts clean
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ TorchScript


def test_torchscript_is_refused_before_it_is_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-setstate"
    path = tmp_path / "model.pt"
    path.write_bytes(_evil_torchscript(marker))
    for name in ("model.pt", "model.torchscript", "model.onnx"):  # content wins over the name
        with pytest.raises(ValidationFailed) as info:
            formats.detect_format(path, name)
        assert "TorchScript is not accepted" in info.value.message
        assert "torch.export" in info.value.message and "ONNX" in info.value.message
    with pytest.raises(ValidationFailed):
        formats.load_torch_source(path, formats.TORCHSCRIPT)
    assert not marker.exists(), "the archive's __setstate__ ran"


def test_no_module_of_cvops_calls_torch_jit_load() -> None:
    """No code path (worker, job, package, conversion retry) can execute a TorchScript archive."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "cvops").rglob("*.py")
        if re.search(r"jit\s*\.\s*load\b|_load_for_lite_interpreter", p.read_text())
    ]
    assert offenders == []


def test_torchscript_upload_gets_422_and_never_runs(live: Live, tmp_path: Path) -> None:
    marker = live.server.data_dir / "created-by-an-upload"
    data = _evil_torchscript(marker)
    status, body = upload_model(live.url, live.engineer, data, "model.pt", name="ts-evil")
    assert status == 422, body
    assert "TorchScript is not accepted" in body["error"]["message"]
    assert not marker.exists(), "the upload's __setstate__ ran on the server"
    assert not blob_path(live.server.data_dir, data).exists(), "the refused upload was kept"
    status, listing = request(live.url, "GET", f"{API}/models", token=live.admin)
    assert not [m for m in listing["models"] if m["name"] == "ts-evil"]


# --------------------------------------------------------------------------------- torch.export


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _pt2(module: nn.Module) -> bytes:
    ep = torch.export.export(module.eval(), (torch.randn(1, 3, 32, 32),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def _rewrite_member(data: bytes, member_suffix: str, edit: Any) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename.endswith(member_suffix):
                raw = edit(raw)
            dst.writestr(info, raw)
    return out.getvalue()


@pytest.mark.parametrize("op", ["torch.ops.aten.from_file.default", "torch.ops.aten.save.default"])
def test_pt2_whose_graph_names_a_file_op_is_refused(tmp_path: Path, op: str) -> None:
    data = _pt2(_Small())
    evil = _rewrite_member(
        data, "models/model.json", lambda raw: raw.replace(b"torch.ops.aten.relu.default", op.encode())
    )
    assert evil != data
    path = tmp_path / "evil.pt2"
    path.write_bytes(evil)
    assert formats.detect_format(path, "evil.pt2") == formats.TORCH_EXPORT
    with pytest.raises(ValidationFailed) as info:
        formats.load_exported_program(path)
    assert "refused" in info.value.message or "cannot load" in info.value.message


def test_pt2_upload_keeps_only_what_cvops_wrote(live: Live) -> None:
    """The verified program is re-saved by cvops as the torch form; the upload itself is dropped."""
    data = _pt2(_Small())
    status, rec = upload_model(live.url, live.engineer, data, "small.pt2", name="pt2-small")
    assert status == 200, rec
    assert rec["status"] == "ready" and rec["source_format"] == "torch_export"
    onnx = rec["onnx"]
    assert onnx["torch_format"] == "torch_export"
    assert onnx["torch_sha256"] and onnx["torch_sha256"] != _sha(data)
    assert not blob_path(live.server.data_dir, data).exists(), "the user's archive is kept after conversion"
    torch_form = _blob(live, onnx["torch_sha256"])
    ep = torch.export.load(io.BytesIO(torch_form.read_bytes()))  # cvops's own file, in the checked form
    formats.check_graph_targets(ep)


def _blob(live: Live, sha: str) -> Path:
    from cvops.blobs import BlobStore

    path = BlobStore(live.server.data_dir / "blobs").path(sha)
    assert path.is_file(), f"no blob {sha}"
    return path


def test_state_dict_upload_torch_form_is_written_by_cvops(live: Live) -> None:
    from cvops.ml.presets import build_preset

    buf = io.BytesIO()
    torch.save({"state_dict": build_preset("tiny_cnn", num_classes=3).module.state_dict()}, buf)
    data = buf.getvalue()
    status, rec = upload_model(live.url, live.engineer, data, "w.pth", name="sd-form", arch="tiny_cnn")
    assert status == 200, rec
    onnx = rec["onnx"]
    assert onnx["torch_format"] == "state_dict" and onnx["torch_sha256"] != _sha(data)
    assert not blob_path(live.server.data_dir, data).exists()
    state = torch.load(_blob(live, onnx["torch_sha256"]), weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


# ----------------------------------------------------------------------- Ultralytics checkpoints


def _ultralytics_checkpoint(path: Path, nc: int = 3) -> None:
    """A checkpoint exactly as ``ultralytics`` saves one, built offline from yolov8n.yaml (random weights)."""
    code = (
        "import sys; from ultralytics import YOLO; m = YOLO('yolov8n.yaml');"
        f"m.model.names = {{i: f'thing{{i}}' for i in range({nc})}};"
        "m.save(sys.argv[1])"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(path.parent / "ycfg")}
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def yolo_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("yolo") / "yolov8n.pt"
    _ultralytics_checkpoint(path)
    return path


def test_ultralytics_checkpoint_is_read_through_the_allow_list(yolo_ckpt: Path, tmp_path: Path) -> None:
    assert formats.detect_format(yolo_ckpt, "yolov8n.pt") == formats.ULTRALYTICS
    ck = formats.read_ultralytics_checkpoint(yolo_ckpt)
    assert ck.num_classes == 80  # names were set after building: the head has yolov8n.yaml's 80 classes
    assert len(ck.labels) == 80
    out = tmp_path / "y.onnx"
    res = convert.convert(
        yolo_ckpt, formats.ULTRALYTICS, task="detection", out_path=out, torch_out=tmp_path / "y.pt"
    )
    assert res.parity.passed and out.exists()
    assert (
        res.torch_format == "state_dict" and res.arch == "yolov8n"
    )  # the torch form's arch (ModelConverted.arch)
    state = torch.load(tmp_path / "y.pt", weights_only=True)  # plain tensors: no allow-list needed
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_tampered_ultralytics_checkpoint_names_the_refused_class(yolo_ckpt: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    _tamper_simple(yolo_ckpt, evil)
    with pytest.raises(ValidationFailed) as info:
        formats.read_ultralytics_checkpoint(evil)
    assert "os.system" in info.value.message or "os.system" in str(info.value.details)


def _tamper_simple(path: Path, out: Path) -> None:
    """The same checkpoint whose pickle names ``os.system`` where it named ultralytics' SPPF class.

    torch.save writes pickle protocol 2, where a class is a GLOBAL opcode: ``c<module>\\n<name>\\n``.
    """
    z = zipfile.ZipFile(path)
    with zipfile.ZipFile(out, "w") as dst:
        for info in z.infolist():
            raw = z.read(info)
            if info.filename.endswith("data.pkl"):
                old = b"cultralytics.nn.modules.block\nSPPF\n"
                assert old in raw
                raw = raw.replace(old, b"cos\nsystem\n")
            dst.writestr(info, raw)


def test_ultralytics_upload_over_http(live: Live, yolo_ckpt: Path, tmp_path: Path) -> None:
    data = yolo_ckpt.read_bytes()
    status, rec = upload_model(
        live.url, live.engineer, data, "yolov8n.pt", name="yolo-ckpt", task="detection"
    )
    assert status == 200, rec
    assert rec["status"] == "ready" and rec["source_format"] == "ultralytics"
    assert rec["onnx"]["torch_format"] == "state_dict" and rec["onnx"]["torch_arch"] == "yolov8n"
    assert not blob_path(live.server.data_dir, data).exists()
    evil = tmp_path / "evil.pt"
    _tamper_simple(yolo_ckpt, evil)
    status, body = upload_model(
        live.url, live.engineer, evil.read_bytes(), "evil.pt", name="yolo-evil", task="detection"
    )
    assert status == 422, body
    assert "os.system" in body["error"]["message"]


# ------------------------------------------------------------------------------ conversion limits


def test_conversion_memory_cap_is_sized_from_the_machine() -> None:
    import psutil

    from cvops.actors.conversion import conversion_memory_bytes
    from cvops.config import load_settings

    total = psutil.virtual_memory().total
    assert conversion_memory_bytes(load_settings({})) == total // 2
    assert conversion_memory_bytes(load_settings({"CVOPS_MAX_CONVERSIONS": "4"})) == total // 4


@pytest.mark.slow
def test_conversion_past_its_wall_clock_limit_is_stopped_and_rejected(tmp_path: Path) -> None:
    from tests.e2e.server import Server

    server = Server(tmp_path / "data", CVOPS_CONVERSION_TIMEOUT_S="0.5").start()
    try:
        token = server.token()
        status, body = request(
            server.url, "POST", f"{API}/models/presets?wait=true",
            {"preset": "resnet18", "name": "slow"}, token, timeout=300,
        )  # fmt: skip
        assert status == 422, body
        assert "CVOPS_CONVERSION_TIMEOUT_S" in body["error"]["message"]
        rec = body["error"]["details"]["model"]
        assert rec["status"] == "failed" and rec["attempts"] == 1
        # the server is still healthy and converts what fits in the limit's place
        status, _ = request(server.url, "GET", "/ready")
        assert status == 200
    finally:
        server.stop()
