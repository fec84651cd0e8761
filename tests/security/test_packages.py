"""Packages are signed (issue 10, "Packages").

Checksums alone prove nothing against someone who can rewrite the archive: they change a file and
recompute ``manifest.json`` and ``SHA256SUMS`` to match.  The server signs the manifest with an Ed25519
key made once in its data dir; ``GET /api/v1/packages/public-key`` gives its public half, and
``cvops package verify --key`` refuses a package whose manifest it did not sign.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cvops import packaging as P  # attributes, not names: against the old code each test fails on its own
from tests.e2e.conftest import Live
from tests.e2e.server import request


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _write(path: Path, members: dict[str, bytes]) -> None:
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(f"{P.ROOT}/{name}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def _tamper_and_recompute(src: Path, dst: Path, resign: Ed25519PrivateKey | None = None) -> None:
    """What an attacker with write access to the package does: swap the model, then recompute the
    manifest and SHA256SUMS so every checksum matches again (and, with ``resign``, sign with their own
    key and name it in the manifest)."""
    members = _members(src)
    members["model.onnx"] = b"evil model" * 50
    doc = json.loads(members["manifest.json"])
    doc["files"]["model.onnx"] = hashlib.sha256(members["model.onnx"]).hexdigest()
    if resign is not None:
        doc["signature"]["key_id"] = P.key_id(resign.public_key())
    members["manifest.json"] = json.dumps(doc, sort_keys=True, indent=2).encode()
    members["SHA256SUMS"] = "".join(f"{sha}  {n}\n" for n, sha in sorted(doc["files"].items())).encode()
    if resign is not None:
        members[P.SIGNATURE] = base64.b64encode(resign.sign(members["manifest.json"])) + b"\n"
    _write(dst, members)


def _verify(pkg: Path, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cvops", "package", "verify", str(pkg)]
    if key is not None:
        cmd += ["--key", str(key)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _package(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx-bytes" * 100)
    pkg = tmp_path / "p.tar.gz"
    P.build_package(pkg, {"model.onnx": model}, {"engine": "onnxruntime-cpu"}, key)
    return pkg


def test_recomputed_manifest_fails_verify_with_the_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pkg = _package(tmp_path, key)
    assert P.SIGNATURE in _members(pkg)
    assert P.verify_package(pkg, key.public_key()) == []
    bad = tmp_path / "bad.tar.gz"
    _tamper_and_recompute(pkg, bad)
    assert P.verify_package(bad) == []  # every checksum matches: checksums alone cannot tell
    problems = P.verify_package(bad, key.public_key())
    assert problems and "signature does not match" in problems[0], problems
    # the attacker signs with their own key: still not the server's
    resigned = tmp_path / "resigned.tar.gz"
    attacker = Ed25519PrivateKey.generate()
    _tamper_and_recompute(pkg, resigned, resign=attacker)
    assert P.verify_package(resigned, attacker.public_key()) == []
    problems = P.verify_package(resigned, key.public_key())
    assert problems and "not by the given key" in problems[0], problems
    # or drops the signature
    unsigned = tmp_path / "unsigned.tar.gz"
    members = _members(bad)
    del members[P.SIGNATURE]
    _write(unsigned, members)
    assert any("not signed" in p for p in P.verify_package(unsigned, key.public_key()))


def test_signing_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = P.load_or_create_signing_key(data)
    path = data / P.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = P.load_or_create_signing_key(data)  # a restart reads the same key back
    assert P.key_id(again.public_key()) == P.key_id(first.public_key())
    info = P.public_key_info(first)
    assert info["algorithm"] == "ed25519" and info["key_id"] == P.key_id(first.public_key())
    for form in (json.dumps(info), info["pem"], info["public_key"]):
        assert P.key_id(P.load_public_key(form)) == info["key_id"]
    path.chmod(0o644)  # loosened by hand: tightened again on the next start
    P.load_or_create_signing_key(data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_verify_key_rules(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pkg = _package(tmp_path, key)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(P.public_key_info(key)))
    out = _verify(pkg, key_file)
    assert out.returncode == 0 and "signature by key" in out.stdout, out.stdout + out.stderr
    out = _verify(pkg)  # no key: checksums only, and it says so
    assert out.returncode == 0 and "signature NOT checked" in out.stdout, out.stdout + out.stderr
    other = tmp_path / "other.pem"
    other.write_text(P.public_key_info(Ed25519PrivateKey.generate())["pem"])
    out = _verify(pkg, other)
    assert out.returncode == 1 and "not by the given key" in out.stdout, out.stdout + out.stderr
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    out = _verify(pkg, junk)
    assert out.returncode == 2 and "not an Ed25519 public key" in out.stdout, out.stdout + out.stderr
    out = _verify(pkg, tmp_path / "missing.pem")
    assert out.returncode == 2 and "cannot read key file" in out.stdout, out.stdout + out.stderr


def test_server_signs_packages_and_serves_its_public_key(live: Live, tmp_path: Path) -> None:
    status, model = request(
        live.url,
        "POST",
        "/api/v1/models/presets?wait=true",
        {"preset": "tiny_cnn", "name": "sec-pkg"},
        live.admin,
    )
    assert status == 200, model
    status, pkg = request(
        live.url,
        "POST",
        "/api/v1/packages",
        {"model_id": model["id"], "engine": "onnxruntime-cpu"},
        live.admin,
    )
    assert status == 201, pkg
    status, data = request(live.url, "GET", f"/api/v1/packages/{pkg['id']}/download", token=live.admin)
    assert status == 200, data
    path = tmp_path / "p.tar.gz"
    path.write_bytes(data)

    status, key = request(live.url, "GET", "/api/v1/packages/public-key", token=live.engineer)
    assert status == 200, key
    assert key["algorithm"] == "ed25519" and key["pem"].startswith("-----BEGIN PUBLIC KEY-----"), key
    assert request(live.url, "GET", "/api/v1/packages/public-key", token=live.admin) == (200, key)
    assert request(live.url, "GET", "/api/v1/packages/public-key", token=live.viewer)[0] == 403
    assert request(live.url, "GET", "/api/v1/packages/public-key")[0] == 401
    key_file = live.server.data_dir / P.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert P.key_id(P.load_or_create_signing_key(live.server.data_dir).public_key()) == key["key_id"]

    saved = tmp_path / "cvops-key.json"
    saved.write_text(json.dumps(key))
    pem = tmp_path / "cvops-key.pem"
    pem.write_text(key["pem"])
    for k in (saved, pem):
        out = _verify(path, k)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"signature by key {key['key_id']}" in out.stdout

    bad = tmp_path / "tampered.tar.gz"
    _tamper_and_recompute(path, bad)
    out = _verify(bad)  # checksums were recomputed, so they pass; the output says what was not checked
    assert out.returncode == 0 and "signature NOT checked" in out.stdout, out.stdout + out.stderr
    out = _verify(bad, saved)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL signature does not match" in out.stdout
