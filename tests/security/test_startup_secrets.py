"""Start-up secrets and file modes (issue 10): a short CVOPS_JWT_SECRET or a weak CVOPS_ADMIN_PASSWORD
stops `cvops serve` with one line and a non-zero status; the data dir is private (0700, umask 077), so
events.db (it holds the password hashes), jwt_secret and blobs/ are not readable by group or others."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Live
from tests.e2e.server import ADMIN_PASSWORD, Server


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvops", "serve"],
        env=Server(tmp_path / "data", **env).env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_short_jwt_secret_stops_the_start(tmp_path: Path) -> None:
    proc = serve(tmp_path, CVOPS_JWT_SECRET="s" * 31)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvops: CVOPS_JWT_SECRET is 31 bytes, fewer than 32"), (
        proc.stderr
    )
    assert "cvops gateway" not in proc.stdout


@pytest.mark.parametrize("password", ["short-pw1", "abcdefghijklmnop", "Password1234"])
def test_weak_admin_password_stops_the_start(tmp_path: Path, password: str) -> None:
    proc = serve(tmp_path, CVOPS_ADMIN_PASSWORD=password)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvops: CVOPS_ADMIN_PASSWORD is too weak: "), proc.stderr
    assert password not in proc.stderr  # never echo the secret
    assert "cvops gateway" not in proc.stdout


def test_password_rules() -> None:
    from cvops.platform.runtime import password_weakness

    assert password_weakness(ADMIN_PASSWORD) is None  # what the e2e servers use still starts
    assert password_weakness("correct-horse-battery-1") is None
    assert "fewer than 12" in (password_weakness("Ab1!Ab1!Ab1") or "")
    assert "one kind" in (password_weakness("ABCDEFGHIJKLMN") or "")
    assert "one kind" in (password_weakness("123456789012345") or "")
    assert "one kind" in (password_weakness("!@#$%^&*()_+-=") or "")
    assert "common" in (password_weakness("QWERTY123456") or "")
    assert "common" in (password_weakness("abababababab1") or "")  # repetitive


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_data_dir_files_are_private(live: Live) -> None:
    data = live.server.data_dir  # created 0755 by the test harness before the server started
    assert _private(data), oct(data.stat().st_mode)
    for name in ("events.db", "events.db-wal", "jwt_secret", "blobs", "blobs/sha256", "events.db.lock"):
        path = data / name
        if name == "events.db-wal" and not path.exists():
            continue
        assert path.exists(), name
        assert _private(path), f"{name}: {oct(path.stat().st_mode)}"
