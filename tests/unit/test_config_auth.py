"""Settings from the environment, and the pure parts of auth."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cvops.config import load_settings, parse_size
from cvops.errors import TooManyRequests, ValidationFailed
from cvops.platform.auth import (
    LoginThrottle,
    check_password,
    check_role,
    check_username,
    hash_password,
    load_or_create_secret,
    verify_password,
)


def test_defaults_match_the_contract() -> None:
    s = load_settings({})
    assert (s.data_dir, s.host, s.port) == ("./.cvops", "127.0.0.1", 8080)
    assert (s.gpu_tokens, s.inference_workers, s.queue_limit, s.inference_timeout_s) == (2, 10, 1000, 30.0)
    assert s.max_model_bytes == 1024**3 and s.max_dataset_bytes == 10 * 1024**3
    assert s.gpu_memory_mb == 16384 and s.ray_address is None


def test_env_overrides_and_sizes() -> None:
    s = load_settings(
        {
            "CVOPS_PORT": "9000",
            "CVOPS_MAX_MODEL_BYTES": "2MiB",
            "CVOPS_GPU_TOKENS": "3",
            "RAY_ADDRESS": "ray://head:10001",
            "CVOPS_JWT_SECRET": "s3cret",
        }
    )
    assert s.port == 9000 and s.max_model_bytes == 2 * 1024**2 and s.gpu_tokens == 3
    assert s.ray_address == "ray://head:10001"
    assert s.event_reads == "sqlite" and load_settings({"CVOPS_EVENT_READS": "actor"}).event_reads == "actor"
    assert s.masked()["jwt_secret"] == "***"
    assert parse_size("1GiB") == 1024**3 and parse_size("10") == 10 and parse_size("1.5KB") == 1500


@pytest.mark.parametrize(
    "env",
    [
        {"CVOPS_PORT": "eighty"},
        {"CVOPS_MAX_MODEL_BYTES": "lots"},
        {"CVOPS_GPU_TOKENS": "0"},
        {"CVOPS_EVENT_READS": "postgres"},
    ],
)
def test_bad_env_is_a_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed):
        load_settings(env)


def test_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    s = load_settings({}, data_dir=str(tmp_path))
    first = load_or_create_secret(s)
    assert load_or_create_secret(s) == first and len(first) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "jwt_secret").st_mode) == 0o600
    assert load_or_create_secret(load_settings({}, data_dir=str(tmp_path), jwt_secret="given")) == "given"


def test_password_hashing() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2") and verify_password(h, "correct horse")
    assert not verify_password(h, "wrong") and not verify_password("not-a-hash", "x")


def test_throttle_window() -> None:
    t = LoginThrottle(max_failures=3, window_s=60)
    for i in range(3):
        t.check("bob", now=100.0 + i)
        t.failed("bob", now=100.0 + i)
    with pytest.raises(TooManyRequests) as info:
        t.check("bob", now=110.0)
    assert 40 <= info.value.retry_after <= 60
    t.check("alice", now=110.0)  # other users are not affected
    t.check("bob", now=200.0)  # the window passed
    t.succeeded("bob")


@pytest.mark.parametrize("name", ["a", "UPPER", "../x", "x" * 40, "-lead"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(ValidationFailed):
        check_username(name)


def test_roles_and_passwords() -> None:
    check_username("eve.smith")
    check_role("viewer")
    with pytest.raises(ValidationFailed):
        check_role("root")
    with pytest.raises(ValidationFailed):
        check_password("short")
