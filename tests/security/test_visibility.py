"""Issue 10, the gateway under hostile users (visibility): who sees what.

- ``user-*`` streams (user names, password-hash events) are for admins only, in GET /events and
  in the websocket;
- ``?token=`` is accepted on ``/events/ws`` alone, everywhere else only the Authorization header;
- anonymous ``/metrics`` carries no deployment ids (aggregate series only);
- anonymous ``/ready`` carries no exception text.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cvops.config import load_settings
from cvops.events.log import EventLog
from cvops.platform.app import make_app
from cvops.platform.auth import Authenticator
from cvops.platform.services import Services
from tests.conftest import free_port
from tests.e2e.conftest import Live
from tests.e2e.helpers import upload_model
from tests.e2e.server import request

API = "/api/v1"


def _rejection(live: Live) -> int:
    """Cause one non-user event (an UploadRejected) and return its seq."""
    status, body = upload_model(
        live.url, live.engineer, b"this is not a model", "bad.onnx", task="bogus", wait=False
    )
    assert 400 <= status < 500, body
    status, page = request(
        live.url, "GET", f"{API}/events?stream=rejections&after=0&limit=1000", token=live.admin
    )
    assert status == 200 and page["events"], page
    while len(page["events"]) == 1000:
        status, page = request(
            live.url,
            "GET",
            f"{API}/events?stream=rejections&after={page['next_after']}&limit=1000",
            token=live.admin,
        )
    return int(page["events"][-1]["seq"])


def test_engineer_cannot_read_user_streams(live: Live) -> None:
    for stream in ("user-admin", "user-*", "user-"):
        status, body = request(live.url, "GET", f"{API}/events?stream={stream}", token=live.engineer)
        assert status == 403, (stream, status, body)
        assert body["error"]["code"] == "forbidden"
    status, page = request(live.url, "GET", f"{API}/events?after=0&limit=1000", token=live.engineer)
    assert status == 200
    assert not [e for e in page["events"] if e["stream"].startswith("user-")]
    for query in ("type=UserCreated", "stream=u*", "type=PasswordChanged,UserCreated&stream=*"):
        status, page = request(live.url, "GET", f"{API}/events?after=0&{query}", token=live.engineer)
        assert status == 200 and page["events"] == [], (query, page)
    # the admin still sees them (password hashes masked)
    status, page = request(live.url, "GET", f"{API}/events?stream=user-admin", token=live.admin)
    assert status == 200 and page["events"][0]["stream"] == "user-admin"
    assert page["events"][0]["data"]["password_hash"] == "***"


def test_engineer_paging_skips_user_events_without_a_short_page(live: Live) -> None:
    """Filtering user events does not shorten pages: a page shorter than ``limit`` still means the
    end of the log, and next_after moves past what was skipped."""
    names = [f"page-{uuid.uuid4().hex[:8]}-{i}" for i in range(6)]
    for name in names:
        status, body = request(
            live.url,
            "POST",
            f"{API}/users",
            {"username": name, "password": "password-123", "role": "viewer"},
            live.admin,
        )
        assert status == 201, body
    status, created = request(live.url, "GET", f"{API}/events?stream=user-{names[0]}", token=live.admin)
    start = created["events"][0]["seq"] - 1
    first = _rejection(live)
    second = _rejection(live)
    status, page = request(live.url, "GET", f"{API}/events?after={start}&limit=2", token=live.engineer)
    assert status == 200
    assert [e["seq"] for e in page["events"]] == [first, second], page
    assert page["next_after"] == second


async def test_engineer_websocket_gets_no_user_events(live: Live) -> None:
    name = f"wsvis-{uuid.uuid4().hex[:8]}"
    status, body = request(
        live.url,
        "POST",
        f"{API}/users",
        {"username": name, "password": "password-123", "role": "viewer"},
        live.admin,
    )
    assert status == 201, body
    marker = _rejection(live)
    seen: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{live.url}{API}/events/ws?after=0", headers={"Authorization": f"Bearer {live.engineer}"}
        ) as ws:
            async with asyncio.timeout(60):
                while not seen or seen[-1]["seq"] < marker:
                    msg = await ws.receive()
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    data = json.loads(msg.data)
                    if data.get("type") != "heartbeat":
                        seen.append(data)
        assert not [e["stream"] for e in seen if e["stream"].startswith("user-")]
        assert seen[-1]["seq"] == marker
        for stream in ("user-admin", "user-*"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with http.ws_connect(
                    f"{live.url}{API}/events/ws?after=0&stream={stream}",
                    headers={"Authorization": f"Bearer {live.engineer}"},
                ):
                    pass
            assert info.value.status == 403
        # the admin's socket does carry user events
        async with http.ws_connect(
            f"{live.url}{API}/events/ws?after=0&stream=user-{name}",
            headers={"Authorization": f"Bearer {live.admin}"},
        ) as ws:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert json.loads(msg.data)["stream"] == f"user-{name}"


async def test_query_token_is_accepted_on_events_ws_alone(live: Live) -> None:
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    async with aiohttp.ClientSession() as http:
        for path in ("/me", "/users", "/config", "/events"):
            for headers in ({}, upgrade):
                async with http.get(f"{live.url}{API}{path}?token={live.admin}", headers=headers) as r:
                    assert r.status == 401, (path, headers, r.status, await r.text())
        async with http.ws_connect(f"{live.url}{API}/events/ws?after=0&token={live.admin}") as ws:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT


# -------------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def deployment(live: Live) -> Iterator[str]:
    status, rec = request(
        live.url,
        "POST",
        f"{API}/models/presets?wait=true",
        {"preset": "tiny_cnn", "name": "sec-metrics"},
        live.admin,
        timeout=600,
    )
    assert status in (200, 201, 202) and rec["status"] == "ready", rec
    status, dep = request(
        live.url,
        "POST",
        f"{API}/deployments",
        {"model_id": rec["id"], "engine": "onnxruntime-cpu", "workers": 1},
        live.admin,
        timeout=300,
    )
    assert status == 201, dep
    yield str(dep["id"])
    request(live.url, "DELETE", f"{API}/deployments/{dep['id']}", token=live.admin)


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_anonymous_metrics_carry_no_deployment_ids(live: Live, deployment: str) -> None:
    status, body = request(
        live.url,
        "POST",
        f"{API}/deployments/{deployment}/predict",
        raw=_png(),
        token=live.viewer,
        headers={"Content-Type": "image/png"},
    )
    assert status == 200, body
    status, text = request(live.url, "GET", "/metrics")
    assert status == 200
    page = text.decode() if isinstance(text, bytes) else str(text)
    assert deployment not in page
    assert 'deployment="' not in page
    ok = [ln for ln in page.splitlines() if ln.startswith('cvops_inference_requests_total{status="200"}')]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1, page  # the aggregate is still there
    status, text = request(live.url, "GET", "/metrics", token=live.viewer)
    assert status == 200 and deployment in text.decode()
    status, text = request(live.url, "GET", "/metrics", token="not-a-token")  # public: never a 401
    assert status == 200 and deployment not in text.decode()


# ---------------------------------------------------------------------------------------------- ready


@pytest.fixture
async def not_ready(tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """The real gateway app over a real EventLog whose actor boot failed with an exception text."""
    settings = load_settings(
        {}, data_dir=str(tmp_path), admin_password="admin-password-1", jwt_secret="s" * 40
    )
    log = await EventLog.open(tmp_path / "events.db")
    auth = Authenticator(log, settings, "s" * 40)  # type: ignore[arg-type]
    await auth.bootstrap_admin()
    await auth.create("viewer1", "password-123", "viewer", "admin")
    services = Services(
        store=log,  # type: ignore[arg-type]
        auth=auth,
        ready=False,
        boot_error="RuntimeError: cannot open /srv/secret-path/ray.sock (errno 13)",
    )
    runner = web.AppRunner(make_app(settings, services))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    admin, _ = await auth.login("admin", "admin-password-1")
    viewer, _ = await auth.login("viewer1", "password-123")
    try:
        yield f"http://127.0.0.1:{port}", admin, viewer
    finally:
        await runner.cleanup()
        await log.close()


async def test_ready_gives_no_exception_text_without_a_token(not_ready: tuple[str, str, str]) -> None:
    url, admin, viewer = not_ready
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/ready") as r:
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "unavailable"
            assert "secret-path" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
        async with http.get(f"{url}/ready", headers={"Authorization": f"Bearer {viewer}"}) as r:
            assert r.status == 503 and "secret-path" not in await r.text()
        async with http.get(f"{url}/ready", headers={"Authorization": f"Bearer {admin}"}) as r:
            body = await r.json()
            assert r.status == 503 and "secret-path" in body["error"]["details"]["boot_error"]
