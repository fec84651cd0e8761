"""scripts/loadtest.py: closed-loop users against a tiny local aiohttp server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cvops_loadtest", ROOT / "scripts" / "loadtest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cvops_loadtest"] = mod
    spec.loader.exec_module(mod)
    return mod


async def test_run_load_counts_statuses_and_latency() -> None:
    loadtest = _load()
    seen: list[tuple[str, str, int]] = []

    async def predict(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.headers["Authorization"], request.content_type, len(body)))
        if len(seen) % 4 == 0:
            return web.json_response({"error": {"code": "too_many_requests"}}, status=429)
        return web.json_response({"predictions": []})

    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        res = await loadtest.run_load(
            f"http://127.0.0.1:{port}/predict",
            b"x" * 100,
            {"Content-Type": "image/jpeg", "Authorization": "Bearer t"},
            users=4,
            duration=0.3,
            think_ms=1,
        )
    finally:
        await runner.cleanup()
    assert res.requests == len(seen) > 8
    assert res.status_counts["429"] == len(seen) // 4
    assert res.status_counts["200"] == res.ok == len(seen) - len(seen) // 4
    assert 0 < res.p50_ms <= res.p95_ms <= res.p99_ms <= res.max_ms
    assert res.throughput_rps > 0 and res.ok_rps < res.throughput_rps
    assert seen[0] == ("Bearer t", "image/jpeg", 100)
    assert "throughput" in res.table()


async def test_run_load_reports_connection_errors() -> None:
    loadtest = _load()
    res = await loadtest.run_load("http://127.0.0.1:9/nothing", b"", {}, users=2, duration=0.1, think_ms=0)
    assert res.ok == 0 and any(k.startswith("error:") for k in res.status_counts)
