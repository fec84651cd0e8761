"""Packages that deploy: a package carries its serving config, a README and a Dockerfile, `sha256sum -c`
accepts its SHA256SUMS, and `cvops serve-package` serves it with the platform's predict answer."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml.inference import Predictor
from cvops.package_server import ThreadWorker, load_predictor, make_app, open_package
from cvops.packaging import ROOT, ServingConfig, build_package, public_key_pem, serving_texts
from tests.unit.tiny_models import export_tiny

KEY = Ed25519PrivateKey.generate()
LABELS = ["a", "b", "c", "d", "e"]
PRE = Preprocessing(image_size=[16, 16])


def _metadata() -> dict[str, Any]:
    return {
        "engine": "onnxruntime-cpu",
        "model": {
            "id": "m1",
            "task": "classification",
            "labels": LABELS,
            "onnx": {"preprocessing": msgspec.to_builtins(PRE)},
        },
        "serving": msgspec.to_builtins(ServingConfig(max_batch=4, queue_limit=8)),
    }


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pkg")
    onnx = export_tiny(d / "tiny.onnx")
    meta = _metadata()
    build_package(d / "p.tar.gz", {"model.onnx": onnx}, meta, KEY, serving_texts(meta))
    return d / "p.tar.gz"


def _deployment_predictor(package: Path) -> Predictor:
    """What an InferenceWorker actor holds for this model: the engine loaded on the same ONNX."""
    from cvops.ml.engines import get_engine

    engine = get_engine("onnxruntime-cpu")
    engine.load(package.parent / "tiny.onnx", torch_module_factory=None, threads=1, max_batch=4)
    return Predictor(engine, "classification", LABELS, PRE)


def _jpeg(seed: int = 0) -> bytes:
    img = Image.new("RGB", (40, 30), (seed * 40 % 255, 120, 200 - seed))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_package_holds_serving_config_readme_and_dockerfile(package: Path, tmp_path: Path) -> None:
    with tarfile.open(package) as tar:
        names = {Path(m.name).name for m in tar.getmembers()}
        tar.extractall(tmp_path, filter="data")
    assert {"model.onnx", "metadata.json", "README.md", "Dockerfile", "SHA256SUMS"} <= names
    pkg = open_package(package, tmp_path / "open", KEY.public_key())
    assert pkg.serving == ServingConfig(max_batch=4, queue_limit=8)
    readme = (tmp_path / "open" / "README.md").read_text()
    assert "cvops serve-package" in readme and "sha256sum -c SHA256SUMS" in readme
    dockerfile = (tmp_path / "open" / "Dockerfile").read_text()
    assert 'CMD ["cvops", "serve-package"' in dockerfile and "HEALTHCHECK" in dockerfile
    if shutil.which("sha256sum"):
        out = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "README.md: OK" in out.stdout and "model.onnx: OK" in out.stdout


def test_a_changed_package_is_refused(package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(package) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith("model.onnx"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(ValidationFailed) as info:
        open_package(bad, tmp_path / "x")
    assert any("model.onnx" in p for p in info.value.details["problems"])
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValidationFailed):
        open_package(package, tmp_path / "y", other)


def test_the_package_predicts_what_the_deployment_predicts(package: Path, tmp_path: Path) -> None:
    pkg = open_package(package, tmp_path, KEY.public_key())
    items = [(_jpeg(i), "image/jpeg", 3) for i in range(3)]
    ours = load_predictor(pkg).predict_images(items)
    # the InferenceWorker's pipeline on the same ONNX
    theirs = _deployment_predictor(package).predict_images(items)
    assert ours == theirs and len(ours[0]["predictions"]) == 3


async def test_the_app_serves_ready_predict_and_errors(package: Path, tmp_path: Path) -> None:
    pkg = open_package(package, tmp_path)
    predictor = load_predictor(pkg)
    client = TestClient(TestServer(make_app(pkg, [ThreadWorker(predictor)])))
    await client.start_server()
    try:
        assert (await client.get("/health")).status == 200
        for _ in range(100):
            r = await client.get("/ready")
            if r.status == 200:
                break
            await __import__("asyncio").sleep(0.05)
        assert r.status == 200 and (await r.json())["model_id"] == "m1"
        jpeg = _jpeg(1)
        r = await client.post("/predict?top_k=2", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert r.status == 200, await r.text()
        assert await r.json() == predictor.predict_images([(jpeg, "image/jpeg", 2)])[0]
        r = await client.post("/predict", data=b"garbage", headers={"Content-Type": "image/jpeg"})
        assert r.status == 422 and "error" in await r.json()
        r = await client.post("/predict?top_k=0", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert r.status == 422
    finally:
        await client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cvops_serve_package_in_a_subprocess(package: Path, tmp_path: Path) -> None:
    """The CLI: verified with --key, worker processes, /ready, a predict, SIGTERM ends it."""
    key_file = tmp_path / "key.pem"
    key_file.write_text(public_key_pem(KEY.public_key()))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cvops",
            "serve-package",
            str(package),
            "--port",
            str(port),
            "--key",
            str(key_file),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
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
        jpeg = _jpeg(2)
        req = urllib.request.Request(
            f"{base}/predict?top_k=3", data=jpeg, headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            got = msgspec.json.decode(r.read())
        want = _deployment_predictor(package).predict_images([(jpeg, "image/jpeg", 3)])
        assert got == msgspec.json.decode(msgspec.json.encode(want[0]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
