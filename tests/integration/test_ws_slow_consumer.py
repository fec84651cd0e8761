"""The gateway app in-process over a real EventLog: a websocket client that stops reading is closed
with 1008 "slow consumer" and the server's memory stays bounded; shutdown closes sockets with 1001."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cvops.config import load_settings
from cvops.events.log import EventLog
from cvops.events.schema import UploadRejected
from cvops.platform import api_events
from cvops.platform.app import make_app
from cvops.platform.auth import Authenticator
from cvops.platform.services import Services
from tests.conftest import free_port


async def _start(tmp_path: Path) -> tuple[web.AppRunner, EventLog, str, str]:
    settings = load_settings(
        {}, data_dir=str(tmp_path), admin_password="admin-password-1", jwt_secret="x" * 40
    )
    log = await EventLog.open(tmp_path / "events.db")
    auth = Authenticator(log, settings, "x" * 40)  # type: ignore[arg-type]
    await auth.bootstrap_admin()
    services = Services(store=log, auth=auth, ready=True)  # type: ignore[arg-type]
    app = make_app(settings, services)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    token, _ = await auth.login("admin", "admin-password-1")
    return runner, log, f"http://127.0.0.1:{port}", token


async def test_slow_consumer_is_closed_with_1008(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_events, "SEND_BUFFER", 50)
    monkeypatch.setattr(api_events, "SLOW_AFTER_S", 2.0)
    runner, log, url, token = await _start(tmp_path)
    try:
        big = {"blob": "x" * 2000}
        for _ in range(20):  # 20k events of ~2 KB: far more than the socket buffers hold
            await log.append("rejections", [UploadRejected(kind="model", reason="test", details=big)] * 1000)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{url}/api/v1/events/ws?after=0&token={token}") as ws:
                await asyncio.sleep(6)  # read nothing while the server pushes
                received = 0
                async with asyncio.timeout(60):
                    while True:
                        msg = await ws.receive()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        received += 1
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                assert msg.data == 1008 and msg.extra == "slow consumer"
                assert 0 < received < 20_000  # it got what was buffered, then the close
    finally:
        await runner.cleanup()
        await log.close()


async def test_shutdown_closes_sockets_with_1001(tmp_path: Path) -> None:
    runner, log, url, token = await _start(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(
                f"{url}/api/v1/events/ws?after=0", headers={"Authorization": f"Bearer {token}"}
            ) as ws:
                first = await asyncio.wait_for(ws.receive_json(), 10)
                assert first["type"] == "UserCreated"
                await runner.shutdown()
                async with asyncio.timeout(20):
                    async for _msg in ws:
                        pass
                assert ws.close_code == 1001
    finally:
        await runner.cleanup()
        await log.close()
