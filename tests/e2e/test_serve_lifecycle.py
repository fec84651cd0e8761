"""`cvops serve` as users run it: boots, answers, stops on SIGTERM within 30 s leaving no Ray process,
and after a `kill -9` the next start rebuilds everything from the log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.server import Server, request


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def test_sigterm_stops_within_30s_and_leaves_no_ray_process(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    status, body = request(server.url, "GET", "/ready")
    assert status == 200 and body["ready"] is True
    status, metrics = request(server.url, "GET", "/metrics")
    assert status == 200 and b"cvops_http_requests_total" in metrics
    children = server.descendants()
    assert any("raylet" in " ".join(p.cmdline()) for p in children), "Ray should run under cvops serve"
    took = server.stop(signal.SIGTERM)
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    assert took < 30.0
    deadline = time.monotonic() + 15
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _alive(children)
    assert not left, [" ".join(p.cmdline())[:120] for p in left]
    assert "cvops gateway: http://127.0.0.1:" in server.log()
    assert "Ray dashboard: http://" in server.log()


@pytest.mark.slow
def test_kill9_then_restart_rebuilds_from_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Server(data).start()
    token = first.token()
    status, _ = request(
        first.url,
        "POST",
        "/api/v1/users",
        {"username": "carol", "password": "carol-password", "role": "engineer"},
        token,
    )
    assert status == 201
    children = first.descendants()
    first.stop(signal.SIGKILL)
    # the reaper stops the orphaned Ray processes so the next start finds the database free
    deadline = time.monotonic() + 30
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(children)
    second = Server(data).start()
    try:
        assert (
            request(
                second.url, "POST", "/api/v1/auth/token", {"username": "carol", "password": "carol-password"}
            )[0]
            == 200
        )
        token = second.token()
        status, users = request(second.url, "GET", "/api/v1/users", token=token)
        assert {u["username"] for u in users["users"]} == {"admin", "carol"}
    finally:
        second.stop()
    out = subprocess.run(
        [sys.executable, "-m", "cvops", "replay", "verify", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
