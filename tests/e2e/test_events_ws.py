"""The event log over HTTP: pages, and the websocket's catch-up-then-live with concurrent appends
(no gap, no duplicate), auth by header or query token, slow-consumer disconnect."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.e2e.conftest import Live
from tests.e2e.server import request


def test_events_page_and_filters(live: Live) -> None:
    status, page = request(live.url, "GET", "/api/v1/events?after=0&limit=2", token=live.admin)
    assert status == 200 and len(page["events"]) == 2
    assert [e["seq"] for e in page["events"]] == [1, 2]
    assert page["next_after"] == 2
    status, page = request(live.url, "GET", "/api/v1/events?stream=user-admin", token=live.admin)
    assert status == 200 and page["events"] and all(e["stream"] == "user-admin" for e in page["events"])
    assert page["events"][0]["data"]["password_hash"] == "***"
    # user streams are for admins (tests/security/test_visibility.py)
    assert request(live.url, "GET", "/api/v1/events?stream=user-admin", token=live.engineer)[0] == 403
    status, page = request(live.url, "GET", "/api/v1/events?type=UserCreated&limit=1000", token=live.admin)
    assert status == 200 and {e["type"] for e in page["events"]} == {"UserCreated"}
    assert request(live.url, "GET", "/api/v1/events", token=live.viewer)[0] == 403


async def _create_users(url: str, token: str, names: list[str]) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def one(name: str) -> None:
            async with http.post(
                f"{url}/api/v1/users", json={"username": name, "password": "password-123", "role": "viewer"}
            ) as r:
                assert r.status == 201, await r.text()

        await asyncio.gather(*(one(n) for n in names))


@pytest.mark.asyncio
async def test_ws_catch_up_then_live_no_gap_no_duplicate(live: Live) -> None:
    names = [f"wsuser{i:02d}" for i in range(20)]
    first = names[:10]
    await _create_users(live.url, live.admin, first)
    seen: list[int] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{live.url}/api/v1/events/ws?after=0", headers={"Authorization": f"Bearer {live.admin}"}
        ) as ws:
            # appends race the switch from history to live
            writer = asyncio.create_task(_create_users(live.url, live.admin, names[10:]))
            wanted = set(names)
            got: set[str] = set()
            async with asyncio.timeout(60):
                while got != wanted:
                    msg = await ws.receive()
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    data = json.loads(msg.data)
                    if data.get("type") == "heartbeat":
                        continue
                    seen.append(data["seq"])
                    if data["type"] == "UserCreated" and data["data"]["username"] in wanted:
                        got.add(data["data"]["username"])
            await writer
    assert seen == sorted(seen) and len(seen) == len(set(seen)), "duplicate or out-of-order events"
    assert seen == list(range(1, seen[-1] + 1)), "a gap in the sequence"


@pytest.mark.asyncio
async def test_ws_auth(live: Live) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{live.url}/api/v1/events/ws?after=0&token={live.admin}") as ws:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert json.loads(msg.data)["seq"] == 1
        async with http.ws_connect(f"{live.url}/api/v1/events/ws?after=0&token={live.engineer}") as ws:
            assert not ws.closed  # the engineer's token is accepted too (it sees no user-* events)
        for bad in ("", "&token=garbage", f"&token={live.viewer}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with http.ws_connect(f"{live.url}/api/v1/events/ws?after=0{bad}"):
                    pass
            assert info.value.status in (401, 403)
