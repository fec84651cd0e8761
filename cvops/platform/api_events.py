"""The event log over HTTP: pages, and a catch-up-then-live websocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from aiohttp import WSCloseCode, web

from cvops.actors.eventlog import subscribe
from cvops.errors import CvopsError
from cvops.events.schema import Envelope
from cvops.platform.bodies import EventOut, EventPage, json_response
from cvops.platform.context import query_int
from cvops.platform.keys import METRICS, SERVICES, WEBSOCKETS
from cvops.platform.routes import STAFF, Route

log = logging.getLogger(__name__)

SEND_BUFFER = 1000  # events buffered per websocket client (memory stays bounded)
SLOW_AFTER_S = 10.0  # a client whose buffer stays full this long is closed as a slow consumer
HEARTBEAT_S = 15.0
MAX_SEQ = 2**62

_json = msgspec.json.Encoder()


def event_out(env: Envelope) -> EventOut:
    data = msgspec.to_builtins(env.event())
    data.pop("type", None)
    if "password_hash" in data:
        data["password_hash"] = "***"
    return EventOut(
        seq=env.seq,
        stream=env.stream,
        version=env.version,
        type=env.type,
        ts=env.ts,
        data=data,
        user=env.user,
        correlation_id=env.correlation_id,
        causation_id=env.causation_id,
    )


def _filters(request: web.Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stream = request.query.get("stream")
    if stream:
        if stream.endswith("*") or stream.endswith("-"):
            out["prefix"] = stream.rstrip("*")
        else:
            out["stream"] = stream
    types = request.query.getall("type", [])
    if types:
        out["types"] = [t for raw in types for t in raw.split(",") if t]
    return out


async def list_events(request: web.Request) -> web.StreamResponse:
    store = request.app[SERVICES].need("store")
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", 100, 1, 1000)
    envs = await store.read(after=after, limit=limit, **_filters(request))
    head = await store.wait_for(MAX_SEQ, 0)  # the log head: returns at once
    events = [event_out(e) for e in envs]
    return json_response(EventPage(events=events, last_seq=head, next_after=envs[-1].seq if envs else after))


async def events_ws(request: web.Request) -> web.StreamResponse:
    """``WS /events/ws?after=N``: history after N then live, as JSON text messages.

    Auth: ``Authorization: Bearer`` or ``?token=`` (browsers cannot set headers on websockets);
    checked by the auth middleware before the upgrade.  At most SEND_BUFFER events wait per client; a
    client that keeps that buffer full for SLOW_AFTER_S (it stopped reading) is closed with 1008
    "slow consumer"; server shutdown closes with 1001.
    """
    store = request.app[SERVICES].need("store")
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    filters = _filters(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    sockets = request.app[WEBSOCKETS]
    sockets.add(ws)
    metrics = request.app[METRICS]
    metrics.websockets.inc()
    queue: asyncio.Queue[Envelope] = asyncio.Queue(SEND_BUFFER)
    slow = asyncio.Event()

    async def produce() -> None:
        async for env in subscribe(store, after, **filters):
            try:
                await asyncio.wait_for(queue.put(env), SLOW_AFTER_S)
            except TimeoutError:
                slow.set()  # the client read nothing for SLOW_AFTER_S with a full buffer
                return

    async def consume() -> None:
        while True:
            try:
                env = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await ws.send_str('{"type":"heartbeat"}')
                continue
            await ws.send_str(_json.encode(event_out(env)).decode())

    async def receive() -> None:
        async for _msg in ws:  # clients send nothing we need; this notices their close
            pass

    tasks = [asyncio.create_task(produce()), asyncio.create_task(consume()), asyncio.create_task(receive())]
    slow_wait = asyncio.create_task(slow.wait())
    try:
        done, _ = await asyncio.wait([*tasks, slow_wait], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not slow_wait and not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                if isinstance(exc, ConnectionResetError | CvopsError):
                    log.info("websocket ended: %s", exc)
                elif exc is not None:
                    log.warning("websocket task failed: %r", exc)
    finally:
        # stop sending first (a frame is either wholly in the transport buffer or not sent), then close;
        # the reading task stays until the close handshake is done, since close() relies on it
        senders = [tasks[0], tasks[1], slow_wait]
        for t in senders:
            t.cancel()
        for t in senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if not ws.closed:
            if slow.is_set():
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
            else:
                await ws.close()
        tasks[2].cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await tasks[2]
        sockets.discard(ws)
        metrics.websockets.dec()
    return ws


ROUTES = [
    Route(
        "GET",
        "/events",
        list_events,
        STAFF,
        "Page through the event log",
        response=EventPage,
        query={"after": "integer", "limit": "integer", "stream": "string", "type": "string"},
        tag="events",
    ),
    Route(
        "GET",
        "/events/ws",
        events_ws,
        STAFF,
        "WebSocket: events after `after`, then live",
        query={"after": "integer", "token": "string", "stream": "string", "type": "string"},
        tag="events",
        status=101,
    ),
]
