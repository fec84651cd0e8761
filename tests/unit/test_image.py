"""The platform image: the Dockerfile and .dockerignore as written (fast), and the metadata of an image
built by scripts/build_image.sh (slow; `podman image inspect`, skipped when no image was built)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("CVOPS_IMAGE", "cvops:latest")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _runtime_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(starts) >= 2, "a builder stage and a runtime stage"
    assert "AS builder" in ins[starts[0]][1] and "AS runtime" in ins[starts[-1]][1]
    return ins[starts[-1] :]


def test_dockerfile_runtime_stage() -> None:
    stage = _runtime_stage()
    last = {w: a for w, a in stage}  # the last of each instruction is the one that counts
    assert last["USER"] == "cvops"
    assert "ARG BASE_IMAGE=python:3.11-slim" in [f"{w} {a}" for w, a in _instructions()]
    assert last["FROM"].startswith("${BASE_IMAGE}")
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(last["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    assert json.loads(last["CMD"]) == ["cvops", "serve"]  # exec form: cvops gets the signal
    assert json.loads(last["VOLUME"]) == ["/data"]
    assert "/ready" in last["HEALTHCHECK"] and "urllib" in last["HEALTHCHECK"]
    assert "curl" not in last["HEALTHCHECK"]
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "CVOPS_DATA_DIR=/data" in env
    assert "DASHBOARD" not in env  # the Ray dashboard stays on 127.0.0.1 unless the operator says
    runs = " ".join(a for w, a in stage if w == "RUN")
    assert "--require-hashes" in runs and "--no-index" in runs and "tini" in runs


def test_builder_stage_uses_the_hashed_lock() -> None:
    ins = _instructions()
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    runs = " ".join(a for w, a in ins[starts[0] : starts[1]] if w == "RUN")
    assert "pip wheel --require-hashes" in runs and "requirements/runtime.lock" in runs


def test_dockerignore_keeps_the_context_to_source() -> None:
    ignored = {
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if not ln.startswith("#")
    }
    for must in (".git", ".cvops", ".venv", ".carry", "**/__pycache__", "**/*.onnx", ".mypy_cache"):
        assert must in ignored, must
    # what the Dockerfile copies is not ignored
    copied = " ".join(a for w, a in _instructions() if w == "COPY" and "--from" not in a)
    for path in ("cvops", "pyproject.toml", "README.md", "requirements/runtime.lock"):
        assert path in copied and path not in ignored, path


def _inspect() -> dict:  # type: ignore[type-arg]
    if shutil.which("podman") is None:
        pytest.skip("no podman: scripts/build_image.sh installs it and builds the image")
    out = subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no image {IMAGE} has been built here: run scripts/build_image.sh")
    return json.loads(out.stdout)[0]


@pytest.mark.slow
def test_built_image_metadata() -> None:
    meta = _inspect()
    cfg = meta["Config"]
    assert cfg["User"] == "cvops"
    assert cfg["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert cfg["Cmd"] == ["cvops", "serve"]
    assert cfg["StopSignal"] == "SIGTERM"
    assert set(cfg["ExposedPorts"]) == {"8080/tcp"}
    assert set(cfg["Volumes"]) == {"/data"}
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["CVOPS_DATA_DIR"] == "/data" and env["CVOPS_HOST"] == "0.0.0.0"
    assert "CVOPS_DASHBOARD_HOST" not in env
    assert "DEBIAN_FRONTEND" not in env  # a build-time ARG only
    # docker inspects it under Config, podman beside Config
    hc = cfg.get("Healthcheck") or meta.get("Healthcheck") or meta.get("HealthCheck")
    assert hc, "no HEALTHCHECK: was the image built with --format docker?"
    assert hc["Test"][0] == "CMD" and "/ready" in " ".join(hc["Test"]) and "urllib" in " ".join(hc["Test"])
    assert hc["Interval"] == 30 * 10**9 and hc["Timeout"] == 5 * 10**9 and hc["StartPeriod"] == 120 * 10**9
