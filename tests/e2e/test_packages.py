"""Packages over HTTP: admin builds one for a ready model, downloads it, and it verifies; served on
its own by `cvops serve-package`, it answers what the platform's deployment of the model answers."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.conftest import Live
from tests.e2e.helpers import png_bytes, predict_png
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
    assert set(pkg["manifest"]) == {"model.onnx", "weights.pt", "metadata.json", "README.md", "Dockerfile"}
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


def test_a_package_serves_what_its_deployment_answers(live: Live, tmp_path: Path) -> None:
    status, model = request(
        live.url,
        "POST",
        "/api/v1/models/presets?wait=true",
        {"preset": "tiny_cnn", "name": "pkg-serve"},
        live.admin,
    )
    assert status == 200, model
    status, dep = request(
        live.url,
        "POST",
        "/api/v1/deployments",
        {"model_id": model["id"], "engine": "onnxruntime-cpu", "workers": 1},
        live.admin,
        timeout=300,
    )
    assert status == 201, dep
    try:
        platform_answer = predict_png(live.server, live.admin, dep["id"])
    finally:
        request(live.url, "DELETE", f"/api/v1/deployments/{dep['id']}", token=live.admin)
    status, pkg = request(
        live.url,
        "POST",
        "/api/v1/packages",
        {"model_id": model["id"], "engine": "onnxruntime-cpu"},
        live.admin,
    )
    assert status == 201, pkg
    status, data = request(live.url, "GET", f"/api/v1/packages/{pkg['id']}/download", token=live.admin)
    assert status == 200
    path = tmp_path / "p.tar.gz"
    path.write_bytes(data)
    status, key = request(live.url, "GET", "/api/v1/packages/public-key", token=live.admin)
    assert status == 200, key
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(key))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cvops",
            "serve-package",
            str(path),
            "--port",
            str(port),
            "--key",
            str(key_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "serve-package never became ready"
            time.sleep(0.3)
        req = urllib.request.Request(
            f"{base}/predict", data=png_bytes(), headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            package_answer = json.loads(r.read())
        assert package_answer == platform_answer
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
