"""cvops.client against an in-process fake gateway: the error shape rebuilt into cvops.errors classes,
bearer auth, query parameters, and the events websocket (heartbeats skipped, duplicates dropped,
reconnect from the last seq, handshake refusal).  The same client against a real `cvops serve` is in
tests/e2e/test_tui.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cvops import errors as E
from cvops.client import AsyncClient, Client, error_from_response

TOKEN = "tok-123"


def _err(status: int, code: str, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "details": details}}, status=status)


@dataclass
class Fake:
    server: TestServer
    ws_after: list[int] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


def _event(seq: int) -> str:
    return json.dumps(
        {"seq": seq, "stream": "s", "version": seq, "type": "UserCreated", "ts": 0.0, "data": {}}
    )


def _app(fake_ref: list[Fake]) -> web.Application:
    def authed(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def token(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("password") != "good":
            return _err(401, "unauthorized", "bad username or password")
        return web.json_response(
            {"access_token": TOKEN, "token_type": "bearer", "expires_in": 60, "role": "admin"}
        )

    async def models(request: web.Request) -> web.Response:
        if not authed(request):
            return _err(401, "unauthorized", "missing or bad token")
        return web.json_response({"models": [{"id": "m1", "name": "tiny", "task": "classification"}]})

    async def model(request: web.Request) -> web.Response:
        return _err(
            404, "not_found", f"no model {request.match_info['id']}", model_id=request.match_info["id"]
        )

    async def presets(request: web.Request) -> web.Response:
        fake_ref[0].requests.append(("POST", request.path, dict(request.query)))
        body = await request.json()
        if body.get("preset") == "nope":
            return _err(422, "model_rejected", "rejected", field="preset")
        return web.json_response({"id": "m2", "status": "ready", "body": body}, status=200)

    async def jobs(request: web.Request) -> web.Response:
        return _err(429, "too_many_requests", "slow down", retry_after=2.5)

    async def cancel(request: web.Request) -> web.Response:
        return _err(409, "version_conflict", "stream moved on", stream="job-x")

    async def scheduler(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway upstream")

    async def deployments(request: web.Request) -> web.Response:
        return _err(403, "forbidden", "role viewer may not", required=["admin", "engineer"])

    async def predict(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response(
            {"ctype": request.content_type, "n": len(data), "top_k": int(request.query["top_k"])}
        )

    async def delete_user(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def events_ws(request: web.Request) -> web.StreamResponse:
        if request.query.get("token") != TOKEN:
            return _err(401, "unauthorized", "missing or bad token")
        fake = fake_ref[0]
        after = int(request.query.get("after", "0"))
        fake.ws_after.append(after)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if len(fake.ws_after) == 1:
            # history, a heartbeat in between, a duplicate, then the server drops the connection
            for msg in (_event(after + 1), '{"type":"heartbeat"}', _event(after + 2), _event(after + 3)):
                await ws.send_str(msg)
            await ws.send_str(_event(after + 2))
            await ws.close()
            return ws
        await ws.send_str(_event(after + 1))
        await asyncio.sleep(1.5)  # longer than the client's total request timeout
        await ws.send_str(_event(after + 2))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_post("/api/v1/auth/token", token)
    app.router.add_get("/api/v1/models", models)
    app.router.add_get("/api/v1/models/{id}", model)
    app.router.add_post("/api/v1/models/presets", presets)
    app.router.add_get("/api/v1/jobs", jobs)
    app.router.add_post("/api/v1/jobs/{id}/cancel", cancel)
    app.router.add_get("/api/v1/scheduler", scheduler)
    app.router.add_get("/api/v1/deployments", deployments)
    app.router.add_post("/api/v1/deployments/{id}/predict", predict)
    app.router.add_delete("/api/v1/users/{name}", delete_user)
    app.router.add_get("/api/v1/events/ws", events_ws)
    return app


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    ref: list[Fake] = []
    server = TestServer(_app(ref), host="127.0.0.1")
    await server.start_server()
    ref.append(Fake(server))
    try:
        yield ref[0]
    finally:
        await server.close()


async def test_login_keeps_token_and_calls_carry_it(fake: Fake) -> None:
    async with AsyncClient(fake.url) as api:
        with pytest.raises(E.Unauthorized):
            await api.models()  # no token yet
        with pytest.raises(E.Unauthorized) as info:
            await api.login("admin", "wrong")
        assert info.value.message == "bad username or password" and api.token is None
        answer = await api.login("admin", "good")
        assert answer["role"] == "admin" and api.token == TOKEN and api.role == "admin"
        assert [m["id"] for m in await api.models()] == ["m1"]
        assert await api.delete_user("x") is None  # 204, empty body


async def test_errors_are_rebuilt_by_code(fake: Fake) -> None:
    async with AsyncClient(fake.url, TOKEN) as api:
        with pytest.raises(E.NotFound) as nf:
            await api.model("abc")
        assert nf.value.details == {"model_id": "abc"} and nf.value.message == "no model abc"
        with pytest.raises(E.TooManyRequests) as tm:
            await api.jobs()
        assert tm.value.retry_after == 2.5
        with pytest.raises(E.ConcurrencyError) as ce:  # a Conflict subclass, by its own code
            await api.cancel_job("x")
        assert isinstance(ce.value, E.Conflict) and ce.value.details["stream"] == "job-x"
        with pytest.raises(E.Forbidden) as fb:
            await api.deployments()
        assert fb.value.details["required"] == ["admin", "engineer"]
        # a code without a class of its own falls back by status, keeping the remote code
        with pytest.raises(E.ValidationFailed) as vf:
            await api.create_preset("nope")
        assert vf.value.details["remote"] == {"code": "model_rejected", "status": 422}
        # not the error shape, a status with no class: the base class, the text as message
        with pytest.raises(E.CvopsError) as ce2:
            await api.scheduler()
        assert type(ce2.value) is E.CvopsError and ce2.value.message == "bad gateway upstream"


def test_error_from_response_unknown_and_garbage() -> None:
    err = error_from_response(418, b'{"error": {"code": "teapot", "message": "short and stout"}}')
    assert type(err) is E.CvopsError and err.message == "short and stout"
    assert err.details["remote"] == {"code": "teapot", "status": 418}
    err = error_from_response(400, b"not json")
    assert isinstance(err, E.BadRequest) and err.message == "not json"
    err = error_from_response(429, b"", retry_after="7")
    assert isinstance(err, E.TooManyRequests) and err.retry_after == 7.0
    assert isinstance(
        error_from_response(422, b'{"error":{"code":"engine_unavailable"}}'), E.EngineUnavailable
    )


async def test_query_and_body_parameters(fake: Fake) -> None:
    async with AsyncClient(fake.url, TOKEN) as api:
        out = await api.create_preset("tiny_cnn", wait=True, num_classes=3, name=None)
        assert out["body"] == {"preset": "tiny_cnn", "num_classes": 3}
        assert fake.requests[-1][2] == {"wait": "true"}
        res = await api.predict("d1", b"\x89PNG....", "image/png", top_k=2)
        assert res == {"ctype": "image/png", "n": 8, "top_k": 2}


async def test_subscribe_skips_heartbeats_drops_duplicates_and_reconnects(fake: Fake) -> None:
    # timeout=1: the websocket must outlive the client's per-request timeout (server waits 1.5 s)
    async with AsyncClient(fake.url, TOKEN, timeout=1.0) as api:
        seqs: list[int] = []
        async with asyncio.timeout(20):
            async for event in api.subscribe(after=10, retry_s=0.05):
                seqs.append(event["seq"])
                if len(seqs) == 5:
                    break
    assert seqs == [11, 12, 13, 14, 15]
    assert fake.ws_after == [10, 13], "reconnect must resume after the last seq seen, once"


async def test_subscribe_refused_raises(fake: Fake) -> None:
    async with AsyncClient(fake.url, "bad-token") as api:
        with pytest.raises(E.Unauthorized):
            async with asyncio.timeout(10):
                async for _ in api.subscribe():
                    pass


async def test_subscribe_ends_when_client_closed(fake: Fake) -> None:
    api = AsyncClient(fake.url, TOKEN)
    got: list[int] = []

    async def reader() -> None:
        async for event in api.subscribe(after=0, retry_s=0.05):
            got.append(event["seq"])
            if event["seq"] == 3:
                await api.close()

    await asyncio.wait_for(reader(), 10)
    assert got == [1, 2, 3] and api.closed
    with pytest.raises(RuntimeError):
        await api.models()


async def test_sync_client(fake: Fake) -> None:
    def work() -> tuple[list[str], list[int], str]:
        with Client(fake.url) as api:
            api.login("admin", "good")
            ids = [m["id"] for m in api.models()]
            try:
                api.model("zzz")
            except E.NotFound as exc:
                message = exc.message
            else:
                raise AssertionError("NotFound expected")
            seqs: list[int] = []
            for event in api.subscribe(after=0, retry_s=0.05):
                seqs.append(event["seq"])
                if len(seqs) == 4:
                    break
            return ids, seqs, message

    ids, seqs, message = await asyncio.to_thread(work)
    assert ids == ["m1"] and seqs == [1, 2, 3, 4] and message == "no model zzz"
