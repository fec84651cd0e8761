"""Issue 10, the gateway under hostile users (auth): login throttling, websockets that outlive their
user or token, the per-user websocket quota, and `cvops tui` passwords kept off the command line.

Everything runs against the session's real `cvops serve` (`live`).  Loopback is a whole /8, so the
tests that trip a per-client limit connect from their own source address (127.0.0.2, ...) and leave
the other tests' logins from 127.0.0.1 alone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from cvops.cli import build_parser
from cvops.config import load_settings
from cvops.errors import TooManyRequests, ValidationFailed
from cvops.platform.auth import LoginThrottle
from tests.e2e.conftest import Live
from tests.e2e.server import ADMIN_PASSWORD, request

API = "/api/v1"
CLOSE_WAIT_S = 10.0  # below the server's 15 s heartbeat: a close within it was caused by the event


def _client(source: str = "127.0.0.1") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=0))


async def _login(http: aiohttp.ClientSession, url: str, username: str, password: str) -> tuple[int, Any, str]:
    async with http.post(f"{url}{API}/auth/token", json={"username": username, "password": password}) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After", "")


def _user(live: Live, role: str = "engineer") -> tuple[str, str]:
    name = f"sec-{uuid.uuid4().hex[:10]}"
    password = f"{name}-password"
    status, body = request(
        live.url, "POST", f"{API}/users", {"username": name, "password": password, "role": role}, live.admin
    )
    assert status == 201, body
    return name, password


def _head(live: Live) -> int:
    status, page = request(live.url, "GET", f"{API}/events?limit=1", token=live.admin)
    assert status == 200, page
    return int(page["last_seq"])


# ------------------------------------------------------------------------------------------- login


async def test_concurrent_wrong_passwords_verify_at_most_max_failures(live: Live) -> None:
    """40 concurrent wrong guesses for one user: at most login_max_failures (5) are verified (401),
    the rest are refused up front with 429 and Retry-After.  (Before: 40 x 401, no 429.)"""
    name, _ = _user(live)
    limit = load_settings({}).login_max_failures
    async with _client("127.0.0.2") as http:
        answers = await asyncio.gather(*(_login(http, live.url, name, f"wrong-guess-{i}") for i in range(40)))
    statuses = [s for s, _, _ in answers]
    assert statuses.count(401) <= limit, statuses
    assert statuses.count(429) >= 40 - limit, statuses
    assert set(statuses) <= {401, 429}, statuses
    for status, body, retry in answers:
        if status == 429:
            assert int(retry) >= 1 and body["error"]["code"] == "too_many_requests"


async def test_malformed_username_is_refused_before_throttle_and_argon2(live: Live) -> None:
    """A name that breaks the user-name rule is a 422 at once: it costs no argon2 and counts against
    neither the name nor the client, so the same client still logs in afterwards."""
    bad = ["../x", "A" * 5000, "Admin", "admin\n", "x", "", "a b", "é" * 10]
    async with _client("127.0.0.3") as http:
        for _ in range(10):  # 80 attempts: far over every throttle if they were counted
            for name in bad:
                status, body, _ = await _login(http, live.url, name, "whatever-password")
                assert status == 422, (name[:20], status, body)
                assert body["error"]["details"]["field"] == "username"
        status, body, _ = await _login(http, live.url, "admin", ADMIN_PASSWORD)
        assert status == 200, body


async def test_one_client_spraying_many_names_is_limited(live: Live) -> None:
    """Per-client limit: one address guessing across many user names gets 429 after
    login_max_failures_per_client failures, while other clients still log in."""
    limit = load_settings({}).login_max_failures_per_client
    names = [f"spray-{i:03d}" for i in range(limit + 20)]
    async with _client("127.0.0.4") as http:
        answers = await asyncio.gather(*(_login(http, live.url, n, "wrong-password") for n in names))
        statuses = [s for s, _, _ in answers]
        assert statuses.count(401) <= limit, statuses
        assert statuses.count(429) >= 20, statuses
        assert all(int(r) >= 1 for s, _, r in answers if s == 429)
        # even a right password is not tried from that address until the window passes
        status, _, _ = await _login(http, live.url, "admin", ADMIN_PASSWORD)
        assert status == 429
    async with _client("127.0.0.5") as other:
        status, body, _ = await _login(other, live.url, "admin", ADMIN_PASSWORD)
        assert status == 200, body


def test_throttle_memory_is_bounded_lru() -> None:
    t = LoginThrottle(max_failures=3, window_s=60, max_names=100)
    for i in range(3):
        t.attempt("target", now=10.0 + i)
    with pytest.raises(TooManyRequests):
        t.attempt("target", now=13.0)
    for i in range(5000):  # a username spray
        t.attempt(f"spray-{i}", now=20.0)
        assert t.tracked() <= 100
        if i % 50 == 0:  # the target stays recent, so the spray cannot evict its record
            with pytest.raises(TooManyRequests):
                t.attempt("target", now=20.0)
    t.succeeded("spray-4999")
    t.attempt("spray-4999", now=21.0)  # success forgot the pre-counted attempts


def test_throttle_counts_before_verifying() -> None:
    """attempt() counts the attempt as it admits it: max_failures admitted, the next refused."""
    t = LoginThrottle(max_failures=5, window_s=60, max_names=10_000, max_per_client=100)
    for _ in range(5):
        t.attempt("bob", client="10.0.0.1", now=1.0)
    with pytest.raises(TooManyRequests) as info:
        t.attempt("bob", client="10.0.0.1", now=2.0)
    assert 55 <= info.value.retry_after <= 60
    t2 = LoginThrottle(max_failures=5, window_s=60, max_names=10_000, max_per_client=3)
    for i in range(3):
        t2.attempt(f"u{i}", client="10.0.0.9", now=1.0)
    with pytest.raises(TooManyRequests):
        t2.attempt("u9", client="10.0.0.9", now=1.0)
    with pytest.raises(TooManyRequests):
        t2.check_client("10.0.0.9", now=2.0)  # the gateway asks this before reading the body
    t2.check_client("10.0.0.9", now=62.0)  # the window passed
    t2.attempt("u9", client="10.0.0.8", now=1.0)


# -------------------------------------------------------------------------------------- websockets


async def _closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> aiohttp.WSMessage | None:
    """Read (and drop) messages until the server closes; None if it did not within ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            return None
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return msg
    return None


@pytest.mark.parametrize("change", ["disable", "delete", "role"])
async def test_open_websocket_is_closed_when_its_user_changes(live: Live, change: str) -> None:
    name, password = _user(live)
    token = live.server.token(name, password)
    after = _head(live)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{live.url}{API}/events/ws?after={after}", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await asyncio.sleep(0.3)
            if change == "disable":
                args: tuple[str, Any] = ("PATCH", {"disabled": True})
            elif change == "role":
                args = ("PATCH", {"role": "admin"})
            else:
                args = ("DELETE", None)
            status, body = request(live.url, args[0], f"{API}/users/{name}", args[1], live.admin)
            assert status in (200, 204), body
            msg = await _closed_within(ws, CLOSE_WAIT_S)
            assert msg is not None, (
                f"socket still open {CLOSE_WAIT_S} s after the user was changed ({change})"
            )
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION, ws.close_code


async def test_open_websocket_is_closed_when_its_token_expires(live: Live) -> None:
    name, password = _user(live)
    good = jwt.decode(live.server.token(name, password), options={"verify_signature": False})
    secret = (live.server.data_dir / "jwt_secret").read_text().strip()
    now = int(time.time())
    short = jwt.encode(
        {**good, "iat": now, "exp": now + 3, "jti": uuid.uuid4().hex}, secret, algorithm="HS256"
    )
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{live.url}{API}/events/ws?after={_head(live)}", headers={"Authorization": f"Bearer {short}"}
        ) as ws:
            msg = await _closed_within(ws, 3 + CLOSE_WAIT_S)
            assert msg is not None, "socket outlived its token"
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert time.time() >= now + 3 - 1


async def test_websockets_per_user_quota(live: Live) -> None:
    """CVOPS_MAX_WEBSOCKETS_PER_USER (default 8): the next one is a 429 before the upgrade."""
    quota = load_settings({}).max_websockets_per_user
    name, password = _user(live)
    token = live.server.token(name, password)
    after = _head(live)
    url = f"{live.url}{API}/events/ws?after={after}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(url, headers=headers) for _ in range(quota)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, headers=headers)
            assert info.value.status == 429
            assert info.value.headers is not None and int(info.value.headers["Retry-After"]) >= 1
            # other users are not affected
            other = await http.ws_connect(url, headers={"Authorization": f"Bearer {live.engineer}"})
            await other.close()
            # closing one frees a slot
            await sockets.pop().close()
            end = time.monotonic() + 10
            while True:
                try:
                    sockets.append(await http.ws_connect(url, headers=headers))
                    break
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 429 and time.monotonic() < end
                    await asyncio.sleep(0.2)
        finally:
            for ws in sockets:
                await ws.close()


# -------------------------------------------------------------------------------------- cvops tui


def test_tui_refuses_a_password_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["tui", "--password", "s3cret-on-argv"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--password-file" in err and "CVOPS_PASSWORD" in err
    assert "s3cret-on-argv" not in err


def test_tui_password_from_file_env_or_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvops.tui import resolve_password

    pw_file = tmp_path / "pw"
    pw_file.write_text("from-the-file\n")
    pw_file.chmod(0o600)
    monkeypatch.setenv("CVOPS_PASSWORD", "from-the-env")
    args = build_parser().parse_args(["tui", "--password-file", str(pw_file)])
    assert resolve_password(args.password_file) == "from-the-file"  # the file wins over the env
    args = build_parser().parse_args(["tui"])
    assert resolve_password(args.password_file) == "from-the-env"
    monkeypatch.delenv("CVOPS_PASSWORD")
    assert resolve_password(None) is None  # None: the TUI asks in its masked login prompt
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationFailed):
        resolve_password(str(tmp_path / "empty"))
    with pytest.raises(ValidationFailed):
        resolve_password(str(tmp_path / "missing"))
