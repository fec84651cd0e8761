"""Shared helpers for the e2e tests: multipart bodies, uploads, presets, polling jobs, the replay CLI."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.server import Server, request

API = "/api/v1"


def multipart(fields: dict[str, str], file: bytes, filename: str = "upload.bin") -> tuple[bytes, str]:
    """A multipart/form-data body with the text ``fields`` and one ``file`` part."""
    boundary = "cvops" + uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    out.write(file + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_multipart(
    base: str, path: str, token: str | None, fields: dict[str, str], file: bytes, filename: str
) -> tuple[int, Any]:
    body, ctype = multipart(fields, file, filename)
    return request(base, "POST", path, raw=body, token=token, headers={"Content-Type": ctype}, timeout=600)


def upload_model(
    base: str,
    token: str,
    data: bytes,
    filename: str,
    name: str = "uploaded",
    task: str = "classification",
    wait: bool = True,
    **extra: str,
) -> tuple[int, Any]:
    fields = {"name": name, "task": task, **extra}
    return post_multipart(
        base, f"{API}/models" + ("?wait=true" if wait else ""), token, fields, data, filename
    )


def upload_dataset(
    base: str,
    token: str,
    data: bytes,
    filename: str = "data.zip",
    wait: bool = True,
    **fields: str,
) -> tuple[int, Any]:
    return post_multipart(
        base, f"{API}/datasets" + ("?wait=true" if wait else ""), token, fields, data, filename
    )


def preset(base: str, token: str, preset_name: str, wait: bool = True, **body: Any) -> tuple[int, Any]:
    return request(
        base,
        "POST",
        f"{API}/models/presets" + ("?wait=true" if wait else ""),
        {"preset": preset_name, **body},
        token,
        timeout=600,
    )


def blob_path(data_dir: Path, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / "sha256" / sha[:2] / sha[2:]


def get_job(base: str, token: str, job_id: str) -> dict[str, Any]:
    status, body = request(base, "GET", f"{API}/jobs/{job_id}", token=token)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_job(
    base: str,
    token: str,
    job_id: str,
    timeout: float = 300.0,
    until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        job = get_job(base, token, job_id)
        if job["status"] in until:
            return job
        if time.monotonic() > end:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.5)


def wait_model(base: str, token: str, model_id: str, timeout: float = 300.0) -> dict[str, Any]:
    """The model's record once its conversion settled (``ready`` or ``failed``): a train job ends when
    its model is registered, and the model converts to ONNX on its own after that."""
    end = time.monotonic() + timeout
    while True:
        status, rec = request(base, "GET", f"{API}/models/{model_id}", token=token)
        assert status == 200, rec
        if rec["status"] in ("ready", "failed"):
            return rec  # type: ignore[no-any-return]
        if time.monotonic() > end:
            raise TimeoutError(f"model {model_id} still {rec['status']} after {timeout} s")
        time.sleep(0.3)


def events(base: str, token: str, stream: str, limit: int = 1000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = request(
            base, "GET", f"{API}/events?stream={stream}&after={after}&limit={limit}", token=token
        )
        assert status == 200, page
        out.extend(page["events"])
        if len(page["events"]) < limit:
            return out
        after = page["next_after"]


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cvops replay ARGS`` (reads the SQLite file; the server may be running)."""
    return subprocess.run(
        [sys.executable, "-m", "cvops", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def state_hash(data_dir: Path) -> str:
    proc = replay("rebuild", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        if line.startswith("state hash:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no state hash in {proc.stdout!r}")


def shapes_zip(tmp: Path, n_per_class: int = 40, size: int = 32, seed: int = 0) -> bytes:
    from cvops.ml.synthetic import draw_shapes_dataset, zip_folder

    root = draw_shapes_dataset(tmp / f"shapes-{n_per_class}-{size}-{seed}", n_per_class, size, seed)
    return zip_folder(root, tmp / f"shapes-{n_per_class}-{size}-{seed}.zip").read_bytes()


# One server with small upload limits, shared by the modules that need it (started on first use).
SMALL_LIMITS = {"CVOPS_MAX_MODEL_BYTES": "4096", "CVOPS_MAX_DATASET_BYTES": "65536"}
_SMALL: list[Server] = []


def shared_small_server(tmp_path_factory: Any) -> Server:
    if not _SMALL:
        _SMALL.append(Server(tmp_path_factory.mktemp("small") / "data", **SMALL_LIMITS).start())
    return _SMALL[0]


def stop_shared_small_server() -> None:
    while _SMALL:
        server = _SMALL.pop()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def get_bytes(base: str, path: str, token: str) -> tuple[int, bytes, str]:
    """GET returning the raw body and its Content-Type (no JSON decoding)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def scheduler(base: str, token: str) -> dict[str, Any]:
    status, view = request(base, "GET", f"{API}/scheduler", token=token)
    assert status == 200, view
    return view  # type: ignore[no-any-return]


def wait_idle(base: str, token: str, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until no job holds a token and none is queued."""
    end = time.monotonic() + timeout
    while True:
        view = scheduler(base, token)
        if view["in_use"] == 0 and not view["queue"]:
            return view
        if time.monotonic() > end:
            raise TimeoutError(f"scheduler still busy: {view}")
        time.sleep(0.3)


def png_bytes(size: int = 32) -> bytes:
    """A small drawn PNG (a yellow disc on blue)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (20, 20, 200))
    ImageDraw.Draw(img).ellipse((6, 6, 26, 26), fill=(250, 250, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def predict_png(server: Server, token: str, dep_id: str) -> dict[str, Any]:
    """POST the drawn PNG to a deployment; asserts 200 and returns the answer."""
    status, body = request(
        server.url,
        "POST",
        f"{API}/deployments/{dep_id}/predict",
        raw=png_bytes(),
        token=token,
        headers={"Content-Type": "image/png"},
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]
