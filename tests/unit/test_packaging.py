"""Packages: deterministic archives whose signed sha256 manifest `cvops package verify` checks."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cvops.errors import ValidationFailed
from cvops.events.projections import ModelRecord, OnnxInfo
from cvops.events.schema import Preprocessing
from cvops.packaging import ROOT, build_package, package_files, verify_package

KEY = Ed25519PrivateKey.generate()


def _files(tmp_path: Path) -> dict[str, Path]:
    a = tmp_path / "a.onnx"
    a.write_bytes(b"onnx-bytes" * 100)
    b = tmp_path / "w.pt"
    b.write_bytes(b"weights")
    return {"model.onnx": a, "weights.pt": b}


def test_build_verify_and_determinism(tmp_path: Path) -> None:
    files = _files(tmp_path)
    m1 = build_package(tmp_path / "p1.tar.gz", files, {"engine": "torch-cpu", "model": {"id": "x"}}, KEY)
    m2 = build_package(tmp_path / "p2.tar.gz", files, {"engine": "torch-cpu", "model": {"id": "x"}}, KEY)
    assert m1 == m2 and set(m1) == {"model.onnx", "weights.pt", "metadata.json"}
    assert (tmp_path / "p1.tar.gz").read_bytes() == (tmp_path / "p2.tar.gz").read_bytes()
    assert verify_package(tmp_path / "p1.tar.gz") == []
    assert verify_package(tmp_path / "p1.tar.gz", KEY.public_key()) == []
    out = subprocess.run(
        [sys.executable, "-m", "cvops", "package", "verify", str(tmp_path / "p1.tar.gz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "checksums verify" in out.stdout and "NOT checked" in out.stdout


def _rewrite(
    src: Path, dst: Path, change: dict[str, bytes | None], extra: dict[str, bytes] | None = None
) -> None:
    with (
        tarfile.open(src, "r:gz") as tin,
        gzip.open(dst, "wb") as gz,
        tarfile.open(fileobj=gz, mode="w") as tout,
    ):
        for m in tin.getmembers():
            name = m.name.split("/", 1)[1]
            data = tin.extractfile(m).read()  # type: ignore[union-attr]
            if name in change:
                if change[name] is None:
                    continue
                data = change[name]  # type: ignore[assignment]
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        for name, data in (extra or {}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tout.addfile(ti, io.BytesIO(data))


def test_tampering_is_caught(tmp_path: Path) -> None:
    good = tmp_path / "p.tar.gz"
    build_package(good, _files(tmp_path), {"engine": "onnxruntime-cpu"}, KEY)
    cases: dict[str, tuple[dict[str, bytes | None], dict[str, bytes] | None, str]] = {
        "changed": ({"model.onnx": b"evil"}, None, "does not match"),
        "missing": ({"weights.pt": None}, None, "missing"),
        "unlisted": ({}, {f"{ROOT}/extra.bin": b"x"}, "not listed"),
        "escape": ({}, {"../../etc/evil": b"x"}, "unsafe"),
        "no manifest": ({"manifest.json": None}, None, "manifest.json is missing"),
        "bad manifest": ({"manifest.json": b"[]"}, None, "malformed"),
        "bad sums": ({"SHA256SUMS": b"0" * 64 + b"  model.onnx\n"}, None, "SHA256SUMS does not match"),
        "twice": ({}, {f"{ROOT}/model.onnx": b"evil"}, "more than once"),
    }
    for name, (change, extra, expected) in cases.items():
        bad = tmp_path / f"{name}.tar.gz"
        _rewrite(good, bad, change, extra)
        problems = verify_package(bad)
        assert any(expected in p for p in problems), (name, problems)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    assert verify_package(junk) and "readable" in verify_package(junk)[0]
    out = subprocess.run(
        [sys.executable, "-m", "cvops", "package", "verify", str(junk)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "FAIL" in out.stdout


def test_package_files_rules(tmp_path: Path) -> None:
    onnx = OnnxInfo(
        sha256="a" * 64,
        bytes=1,
        opset=17,
        inputs=[],
        outputs=[],
        parameter_count=1,
        preprocessing=Preprocessing(),
    )
    model = ModelRecord(id="m", name="m", task="classification", status="ready", onnx=onnx)
    assert set(package_files(model, "onnxruntime-cpu", lambda s: tmp_path / s)) == {"model.onnx"}
    with pytest.raises(ValidationFailed):
        package_files(model, "torch-cpu", lambda s: tmp_path / s)
    with pytest.raises(ValidationFailed):
        package_files(
            msgspec.structs.replace(model, status="pending"), "onnxruntime-cpu", lambda s: tmp_path / s
        )
