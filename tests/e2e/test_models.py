"""Models over real HTTP: presets, uploads in every accepted format, hostile and broken files, roles,
deletion, upload limits, and a catalogue that survives a restart."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.e2e.conftest import Live
from tests.e2e.helpers import (
    API,
    blob_path,
    post_multipart,
    preset,
    shared_small_server,
    state_hash,
    stop_shared_small_server,
    upload_model,
)
from tests.e2e.server import Server, request

torch.set_num_threads(1)

ONNX_KEYS = {"inputs", "outputs", "opset", "parameter_count", "preprocessing"}


def assert_ready_with_parity(rec: dict[str, Any]) -> None:
    assert rec["status"] == "ready", rec
    parity = rec["parity"]
    assert parity["passed"] is True, parity
    assert 0.0 <= parity["max_abs_diff"] <= 1e-4, parity
    assert parity["samples"] >= 1
    onnx = rec["onnx"]
    assert ONNX_KEYS <= set(onnx), onnx
    assert onnx["opset"] >= 11 and onnx["parameter_count"] > 0
    assert onnx["inputs"] and onnx["outputs"]
    assert {"image_size", "mean", "std"} <= set(onnx["preprocessing"]), onnx["preprocessing"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _Evil(nn.Module):
    """A module whose unpickling would run a shell command (it must never be unpickled)."""

    marker = ""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny(live: Live) -> dict[str, Any]:
    status, rec = preset(live.url, live.admin, "tiny_cnn", name="tiny-models", num_classes=3)
    assert status == 200, rec
    return rec  # type: ignore[no-any-return]


def test_tiny_cnn_preset_is_ready_with_parity_and_metadata(live: Live, tiny: dict[str, Any]) -> None:
    assert_ready_with_parity(tiny)
    assert tiny["task"] == "classification" and tiny["onnx"]["preprocessing"]["image_size"] == [32, 32]
    assert tiny["onnx"]["torch_format"] == "state_dict" and tiny["onnx"]["torch_sha256"]
    status, again = request(live.url, "GET", f"{API}/models/{tiny['id']}", token=live.engineer)
    assert status == 200 and again["parity"] == tiny["parity"]
    status, listing = request(live.url, "GET", f"{API}/models", token=live.admin)
    assert status == 200 and tiny["id"] in {m["id"] for m in listing["models"]}


@pytest.mark.slow
def test_resnet18_preset_at_64(live: Live) -> None:
    status, rec = preset(live.url, live.admin, "resnet18", name="r18", image_size=64, num_classes=5)
    assert status == 200, rec
    assert_ready_with_parity(rec)
    assert rec["onnx"]["preprocessing"]["image_size"] == [64, 64]
    assert rec["onnx"]["parameter_count"] > 10_000_000


def test_onnx_download_loads_and_uploads_back(live: Live, tiny: dict[str, Any]) -> None:
    import numpy as np
    import onnxruntime as ort

    status, data = request(live.url, "GET", f"{API}/models/{tiny['id']}/onnx", token=live.engineer)
    assert status == 200 and isinstance(data, bytes) and len(data) == tiny["onnx"]["bytes"]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})
    assert out[0].shape == (1, 3)
    # an engineer may upload: the downloaded ONNX comes back as a new ready model
    status, rec = upload_model(live.url, live.engineer, data, "tiny.onnx", name="tiny-back")
    assert status == 200, rec
    assert rec["source_format"] == "onnx" and rec["id"] != tiny["id"]
    assert_ready_with_parity(rec)
    assert rec["onnx"]["inputs"][0]["shape"][1:] == tiny["onnx"]["inputs"][0]["shape"][1:]
    assert rec["onnx"]["outputs"][0]["shape"][1:] == [3]
    assert 0 < rec["onnx"]["parameter_count"] <= tiny["onnx"]["parameter_count"]  # BN may be folded
    assert rec["onnx"]["torch_format"] == ""  # an ONNX upload has no torch form


def test_torchscript_upload_is_refused_with_what_to_send(live: Live) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Net().eval()), buf)
    status, body = upload_model(
        live.url, live.admin, buf.getvalue(), "net.pt", name="ts-net", input_shape="1,3,32,32"
    )
    assert status == 422, body
    message = body["error"]["message"]
    assert "TorchScript is not accepted" in message and "torch.export" in message and "arch" in message


def _state_dict_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def test_state_dict_with_arch_tiny_cnn(live: Live) -> None:
    from cvops.ml.presets import build_preset

    data = _state_dict_bytes(build_preset("tiny_cnn", num_classes=3).module)
    status, rec = upload_model(live.url, live.admin, data, "w.pth", name="sd-tiny", arch="tiny_cnn",
                               labels="a,b,c")  # fmt: skip
    assert status == 200, rec
    assert rec["source_format"] == "state_dict"
    assert_ready_with_parity(rec)
    assert rec["labels"] == ["a", "b", "c"]


@pytest.mark.slow
def test_state_dict_with_arch_resnet18(live: Live) -> None:
    import torchvision

    data = _state_dict_bytes(torchvision.models.resnet18(weights=None, num_classes=4))
    status, rec = upload_model(live.url, live.admin, data, "r18.pth", name="sd-r18", arch="resnet18",
                               labels="a,b,c,d")  # fmt: skip
    assert status == 200, rec
    assert_ready_with_parity(rec)


def _assert_rejected(status: int, body: Any) -> str:
    """A refusal is a 4xx with a reason; returns the reason."""
    assert 400 <= status < 500, (status, body)
    reason = body["error"]["message"]
    assert isinstance(reason, str) and len(reason) > 5, body
    return reason


def test_state_dict_without_arch_is_refused_with_a_reason(live: Live) -> None:
    data = _state_dict_bytes(_Net())
    status, body = upload_model(live.url, live.admin, data, "w.pt", name="sd-noarch")
    reason = _assert_rejected(status, body)
    assert "arch" in reason.lower(), reason
    if "model" in body["error"]["details"]:  # recorded, then rejected: the record says why
        rec = body["error"]["details"]["model"]
        assert rec["status"] == "failed" and rec["error"] == reason


def test_pickled_module_never_runs_and_leaves_no_blob(live: Live, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    for payload, name in ((evil, "evil.pt"), ({"model": evil}, "evil2.pth")):
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        status, body = upload_model(live.url, live.admin, data, name, name="evil", arch="tiny_cnn")
        _assert_rejected(status, body)
        assert not blob_path(live.server.data_dir, data).exists(), "the rejected source must be deleted"
    assert not marker.exists(), "a pickle in a .pt upload was executed"
    status, listing = request(live.url, "GET", f"{API}/models", token=live.admin)
    failed = [m for m in listing["models"] if m["name"] == "evil"]
    assert all(m["status"] == "failed" and m["error"] for m in failed)


def test_truncated_onnx_and_random_bytes_are_refused(live: Live, tiny: dict[str, Any]) -> None:
    status, data = request(live.url, "GET", f"{API}/models/{tiny['id']}/onnx", token=live.admin)
    assert status == 200
    cut = data[: len(data) // 2]
    status, body = upload_model(live.url, live.admin, cut, "cut.onnx", name="cut")
    _assert_rejected(status, body)
    assert not blob_path(live.server.data_dir, cut).exists()
    noise = os.urandom(3000)
    status, body = upload_model(live.url, live.admin, noise, "noise.bin", name="noise")
    _assert_rejected(status, body)
    assert not blob_path(live.server.data_dir, noise).exists()
    status, body = upload_model(live.url, live.admin, b"", "empty.onnx", name="empty")
    _assert_rejected(status, body)


def test_bad_preset_requests_are_422(live: Live) -> None:
    status, body = preset(live.url, live.admin, "no_such_net")
    assert status == 422 and body["error"]["details"]["field"] == "preset", body
    assert "tiny_cnn" in body["error"]["details"]["known"]
    status, body = preset(live.url, live.admin, "tiny_cnn", image_size=3)
    assert status == 422 and body["error"]["details"]["field"] == "image_size", body
    status, body = preset(live.url, live.admin, "tiny_cnn", num_classes=0)
    assert status == 422 and body["error"]["details"]["field"] == "num_classes", body


def test_bad_upload_fields_are_422(live: Live) -> None:
    data = b"\x08\x07" + os.urandom(64)
    for shape in ("1,3,2,2", "[1,3,32]", "a,b,c,d", "1,7,32,32"):
        status, body = upload_model(live.url, live.admin, data, "m.onnx", name="bad-shape", input_shape=shape)
        assert status == 422 and body["error"]["details"]["field"] == "input_shape", (shape, body)
        assert not blob_path(live.server.data_dir, data).exists()
    status, body = upload_model(live.url, live.admin, data, "m.onnx", name="bad-task", task="segmentation")
    assert status == 422 and body["error"]["details"]["field"] == "task", body
    status, body = upload_model(live.url, live.admin, data, "m.onnx", name="../../etc/passwd")
    assert status == 422 and body["error"]["details"]["field"] == "name", body
    # not multipart at all
    status, body = request(
        live.url, "POST", f"{API}/models", raw=data, token=live.admin,
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 415, body


def test_roles_for_models(live: Live, tiny: dict[str, Any]) -> None:
    data = b"\x08\x07" + os.urandom(64)
    status, body = upload_model(live.url, live.viewer, data, "m.onnx", name="viewer-up")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    assert not blob_path(live.server.data_dir, data).exists()
    status, body = preset(live.url, live.viewer, "tiny_cnn")
    assert status == 403, body
    status, _ = request(live.url, "GET", f"{API}/models/{tiny['id']}", token=live.viewer)
    assert status == 403


def test_delete_model(live: Live) -> None:
    status, rec = preset(live.url, live.engineer, "tiny_cnn", name="to-delete", wait=False)
    assert status == 202 and rec["status"] in ("pending", "converting", "ready"), rec
    mid = rec["id"]
    status, body = request(live.url, "DELETE", f"{API}/models/{mid}", token=live.engineer)
    assert status == 403, body
    status, body = request(live.url, "DELETE", f"{API}/models/{mid}", token=live.admin)
    assert status == 204, body
    status, body = request(live.url, "GET", f"{API}/models/{mid}", token=live.admin)
    assert status == 404, body
    status, listing = request(live.url, "GET", f"{API}/models", token=live.admin)
    assert mid not in {m["id"] for m in listing["models"]}
    status, body = request(live.url, "DELETE", f"{API}/models/{mid}", token=live.admin)
    assert status == 404, body


# ----------------------------------------------------------------------------- small-limit server


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield shared_small_server(tmp_path_factory)
    stop_shared_small_server()


def _tmp_files(data_dir: Path) -> list[Path]:
    tmp = data_dir / "blobs" / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


@pytest.mark.slow
def test_upload_limits_are_413_and_leave_nothing(small: Server) -> None:
    token = small.token()
    data = b"\x08\x07" + os.urandom(4095)  # 4097 bytes: one over the model limit
    status, body = upload_model(small.url, token, data, "big.onnx", name="big")
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert _tmp_files(small.data_dir) == []
    assert not blob_path(small.data_dir, data).exists()
    ok = data[:4096]  # at the limit: accepted by the reader (then refused as not a real ONNX)
    status, body = upload_model(small.url, token, ok, "edge.onnx", name="edge")
    assert status != 413 and 400 <= status < 500, body
    big = os.urandom(65537)
    status, body = post_multipart(small.url, f"{API}/datasets", token, {"name": "big"}, big, "big.zip")
    assert status == 413, body
    assert _tmp_files(small.data_dir) == []
    # far over the limit (rejected from Content-Length, before reading the body)
    status, body = post_multipart(small.url, f"{API}/datasets", token, {}, os.urandom(3 * 2**20), "x.zip")
    assert status == 413, body
    assert _tmp_files(small.data_dir) == []
    status, page = request(small.url, "GET", f"{API}/events?stream=rejections", token=token)
    assert status == 200 and sum(e["type"] == "UploadRejected" for e in page["events"]) >= 3


@pytest.mark.slow
def test_catalogue_survives_a_restart(small: Server) -> None:
    token = small.token()
    status, rec = preset(small.url, token, "tiny_cnn", name="persist", num_classes=2)
    assert status == 200, rec
    status, body = upload_model(small.url, token, b"nonsense-model", "x.onnx", name="refused")
    assert 400 <= status < 500
    status, before = request(small.url, "GET", f"{API}/models", token=token)
    assert status == 200 and rec["id"] in {m["id"] for m in before["models"]}
    small.stop(signal.SIGTERM)
    hash_before = state_hash(small.data_dir)
    small.start()
    token = small.token()
    status, after = request(small.url, "GET", f"{API}/models", token=token)
    assert status == 200
    assert after == before
    hash_after = state_hash(small.data_dir)
    assert hash_after == hash_before
    status, data = request(small.url, "GET", f"{API}/models/{rec['id']}/onnx", token=token)
    assert status == 200 and len(data) == rec["onnx"]["bytes"]
