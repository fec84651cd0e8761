"""A dying inference worker: its in-flight batch is retried once on another worker, Ray restarts it,
and the router sends work to it again."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import aiohttp
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.e2e.conftest import Live
from tests.e2e.server import request


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _workers(live: Live) -> set[int]:
    """pids of this server's inference worker processes (never another server's)."""
    out = set()
    for p in live.server.descendants():
        try:
            if "InferenceWorker" in p.name() or "InferenceWorker" in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.slow
async def test_killed_worker_is_retried_and_replaced(live: Live) -> None:
    status, model = request(
        live.url,
        "POST",
        "/api/v1/models/presets?wait=true",
        {"preset": "tiny_cnn", "name": "death"},
        live.admin,
    )
    assert status == 200, model
    existing = _workers(live)
    status, dep = request(
        live.url,
        "POST",
        "/api/v1/deployments",
        {"model_id": model["id"], "engine": "onnxruntime-cpu", "workers": 2},
        live.admin,
    )
    assert status == 201, dep
    await asyncio.sleep(1)
    before = _workers(live) - existing
    assert len(before) == 2, (before, existing)
    body = _jpeg()
    statuses: list[int] = []
    stop = asyncio.Event()

    async def user(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with http.post(
                f"{live.url}/api/v1/deployments/{dep['id']}/predict",
                data=body,
                headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {live.viewer}"},
            ) as r:
                statuses.append(r.status)
                await r.read()

    async with aiohttp.ClientSession() as http:
        users = [asyncio.create_task(user(http)) for _ in range(8)]
        await asyncio.sleep(2)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(8)
        stop.set()
        await asyncio.gather(*users)
    assert statuses and all(s == 200 for s in statuses), {s: statuses.count(s) for s in set(statuses)}
    # Ray brought a new process up, and the router uses both workers again
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, view = request(live.url, "GET", f"/api/v1/deployments/{dep['id']}", token=live.admin)
        if view["router"]["workers_alive"] == 2:
            break
        await asyncio.sleep(1)
    assert view["router"]["workers_alive"] == 2, view["router"]
    assert view["router"]["worker_deaths"] >= 1
    assert request(live.url, "DELETE", f"/api/v1/deployments/{dep['id']}", token=live.admin)[0] == 204
