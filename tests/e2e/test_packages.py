"""Packages over HTTP: admin builds one for a ready model, downloads it, and it verifies."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Live
from tests.e2e.server import request


def test_package_build_download_verify(live: Live, tmp_path: Path) -> None:
    status, model = request(
        live.url,
        "POST",
        "/api/v1/models/presets?wait=true",
        {"preset": "tiny_cnn", "name": "pkg"},
        live.admin,
    )
    assert status == 200, model
    for role in ("engineer", "viewer"):
        assert (
            request(live.url, "POST", "/api/v1/packages", {"model_id": model["id"]}, live.token_for(role))[0]
            == 403
        )
    assert (
        request(
            live.url, "POST", "/api/v1/packages", {"model_id": model["id"], "engine": "nope"}, live.admin
        )[0]
        == 422
    )
    assert (
        request(live.url, "POST", "/api/v1/packages", {"model_id": "0123456789abcdef"}, live.admin)[0] == 404
    )
    status, pkg = request(
        live.url, "POST", "/api/v1/packages", {"model_id": model["id"], "engine": "torch-cpu"}, live.admin
    )
    assert status == 201, pkg
    assert set(pkg["manifest"]) == {"model.onnx", "weights.pt", "metadata.json"}
    status, data = request(live.url, "GET", f"/api/v1/packages/{pkg['id']}/download", token=live.admin)
    assert status == 200 and hashlib.sha256(data).hexdigest() == pkg["sha256"]
    path = tmp_path / "p.tar.gz"
    path.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-m", "cvops", "package", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    status, listing = request(live.url, "GET", "/api/v1/packages", token=live.admin)
    assert status == 200 and pkg["id"] in {p["id"] for p in listing["packages"]}
    assert request(live.url, "GET", "/api/v1/packages/0123456789abcdef/download", token=live.admin)[0] == 404
