"""`cvops serve` start-up as users meet it: a busy port or a failed actor start ends the process at once
with one line naming the cause (and a non-zero status), a second server on the machine takes the next
free dashboard port, the printed dashboard URL works as printed, and the log lines carry their fields
(``key=value`` after the message, or one JSON object per line with CVOPS_LOG_FORMAT=json)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.server import Server, request

SERVE = [sys.executable, "-m", "cvops", "serve"]


class Run:
    """One ``cvops serve`` with stdout and stderr kept apart (the lifecycle lines vs the log)."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.out_path, self.err_path = tmp / "serve.out", tmp / "serve.err"
        self._files: list[IO[bytes]] = [open(self.out_path, "wb"), open(self.err_path, "wb")]  # noqa: SIM115
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            SERVE, env=env, stdout=self._files[0], stderr=self._files[1], start_new_session=True
        )

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_line(self, prefix: str, timeout: float = 180.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.out.splitlines():
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} line; rc={self.proc.poll()}\n{self.out}\n{self.err}")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"cvops serve still running after {timeout} s:\n{self.out}\n{self.err}"
            ) from None
        finally:
            for f in self._files:
                f.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def serve_env(data_dir: Path, **env: str) -> dict[str, str]:
    return Server(data_dir, **env).env


@contextlib.contextmanager
def occupied(port: int = 0) -> Iterator[socket.socket | None]:
    """A listening socket on 127.0.0.1:``port`` (None if someone else holds that port already)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        yield None
        return
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def test_busy_gateway_port_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with occupied() as busy:
        assert busy is not None
        port = busy.getsockname()[1]
        run = Run(serve_env(tmp_path / "data", CVOPS_PORT=str(port)), tmp_path)
        rc = run.wait(60)  # before the fix: Ray booted, the bind error went to Ray's hook, it never ended
        took = time.monotonic() - run.t0
    assert rc != 0
    assert run.err.strip().splitlines() == [
        f"cvops: cannot listen on 127.0.0.1:{port}: address in use (set CVOPS_PORT or --port)"
    ], run.err
    assert took < 30, took  # no Ray was started: only the interpreter's start-up
    assert "cvops gateway" not in run.out


def test_busy_explicit_dashboard_port_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with occupied() as busy:
        assert busy is not None
        port = busy.getsockname()[1]
        run = Run(serve_env(tmp_path / "data", CVOPS_DASHBOARD_PORT=str(port)), tmp_path)
        rc = run.wait(60)
    assert rc != 0
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"cvops: cannot start the Ray dashboard on 127.0.0.1:{port}: address in use (set CVOPS_DASHBOARD_PORT"
    ), run.err


def test_failed_actor_start_exits_nonzero_with_one_json_line(tmp_path: Path) -> None:
    """Another writer holds the event log: the EventLog actor cannot start.  Before the fix the traceback
    was printed and the process exited 0.  Also: JSON logs, and a 503 during boot logged with its
    path, code and error."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "events.db.lock", "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = Run(serve_env(data, CVOPS_LOG_FORMAT="json"), tmp_path)
        try:
            url = run.wait_line("cvops gateway: ").split(": ", 1)[1]
            status, body = request(url, "GET", "/api/v1/me", token="x")
            assert status == 503 and body["error"]["code"] == "unavailable", body
        except BaseException:
            run.kill()
            raise
        rc = run.wait(180)
    assert rc == 1, (run.out, run.err)
    assert "Traceback" not in run.err + run.out
    records = [json.loads(line) for line in run.err.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    failed = [r for r in records if r.get("event") == "startup_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR", records
    assert failed[0]["message"].startswith("cvops: cannot start: ")
    assert "already open by another writer" in failed[0]["message"]
    req = [r for r in records if r["message"] == "request failed"]
    assert req and req[0]["path"] == "/api/v1/me" and req[0]["code"] == "unavailable", records
    assert req[0]["error"] == "cvops is starting; try again shortly" and req[0]["logger"] == (
        "cvops.platform.middleware"
    )
    assert any(r["message"] == "gateway listening" and isinstance(r["port"], int) for r in records)
    assert run.out.splitlines()[-1] == "cvops stopped"


# --------------------------------------------------------------------- a second server on the machine


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server started the way a user starts a second one: no CVOPS_DASHBOARD_PORT (8265 is held, as
    a first server would), no RAY_AUTH_MODE, text logs.  A request during boot is answered 503."""
    tmp = tmp_path_factory.mktemp("second")
    env = serve_env(tmp / "data")
    for name in ("CVOPS_DASHBOARD_PORT", "RAY_AUTH_MODE", "CVOPS_LOG_FORMAT"):
        env.pop(name, None)
    with occupied(8265) as held:
        run = Run(env, tmp)
        try:
            url = run.wait_line("cvops gateway: ").split(": ", 1)[1]
            early = request(url, "GET", "/api/v1/me", token="x")
            run.wait_line("cvops ready")
        except BaseException:
            run.kill()
            raise
    try:
        yield {"run": run, "url": url, "early": early, "held_8265": held is not None}
    finally:
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0


def test_second_server_takes_the_next_free_dashboard_port(second: dict[str, Any]) -> None:
    run = second["run"]
    m = re.search(r"^Ray dashboard: http://127\.0\.0\.1:(\d+)$", run.out, re.MULTILINE)
    assert m, run.out
    if second["held_8265"]:
        assert int(m.group(1)) > 8265


def test_printed_dashboard_url_works_as_printed(second: dict[str, Any]) -> None:
    url = re.search(r"^Ray dashboard: (\S+)$", second["run"].out, re.MULTILINE).group(1)  # type: ignore[union-attr]
    end = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=10) as resp:
                assert resp.status == 200
                assert "ray_version" in json.loads(resp.read())
                break
        except urllib.error.HTTPError as exc:
            assert exc.code != 401, "the dashboard wants Ray's token: the printed URL does not work"
            if time.monotonic() > end:
                raise
        except urllib.error.URLError:
            if time.monotonic() > end:
                raise
        time.sleep(0.5)
    # ... while Ray itself keeps its token auth on (its GCS and raylets listen on every interface)
    with urllib.request.urlopen(url + "/api/authentication_mode", timeout=10) as resp:
        assert json.loads(resp.read()) == {"authentication_mode": "token"}
    with urllib.request.urlopen(url + "/", timeout=10) as resp:  # the web UI itself comes through
        assert resp.status == 200 and b"<html" in resp.read().lower()


def test_text_log_lines_carry_their_fields(second: dict[str, Any]) -> None:
    status, body = second["early"]
    assert status == 503, body
    err = second["run"].err
    line = next(x for x in err.splitlines() if " request failed" in x)
    assert re.search(
        r" WARNING cvops\.platform\.middleware request failed path=/api/v1/me code=unavailable "
        r'error="cvops is starting; try again shortly"$',
        line,
    ), line
    assert re.search(r" INFO cvops gateway listening host=127\.0\.0\.1 port=\d+ data_dir=\S+", err), err
