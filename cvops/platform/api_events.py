"""The event log over HTTP: pages, and a catch-up-then-live websocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

import msgspec
from aiohttp import WSCloseCode, web

from cvops.errors import CvopsError, Forbidden, TooManyRequests
from cvops.events.schema import Envelope
from cvops.events.store import subscribe
from cvops.platform.bodies import EventOut, EventPage, json_response
from cvops.platform.context import principal, query_int
from cvops.platform.keys import METRICS, SERVICES, SETTINGS, WEBSOCKETS
from cvops.platform.middleware import TOKEN
from cvops.platform.routes import STAFF, Route

log = logging.getLogger(__name__)

SEND_BUFFER = 1000  # events buffered per websocket client (memory stays bounded)
SLOW_AFTER_S = 10.0  # a client whose buffer stays full this long is closed as a slow consumer
HEARTBEAT_S = 15.0
RECHECK_S = 60.0  # an open socket re-checks its caller at least this often (and at each user change)
PAGE_SCANS = 20  # reads one GET /events may do to fill a page past hidden events
USER_STREAMS = "user-"
_OWNERS: weakref.WeakKeyDictionary[web.WebSocketResponse, str] = weakref.WeakKeyDictionary()
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


def _hides_users(request: web.Request, filters: dict[str, Any]) -> bool:
    """``user-*`` streams (user names, password events) are for admins.  For anyone else: asking for
    one by name or prefix is a 403, and unfiltered reads skip them (True)."""
    if principal(request).role == "admin":
        return False
    asked = filters.get("stream") or filters.get("prefix") or ""
    if asked.startswith(USER_STREAMS):
        raise Forbidden("user streams are visible to admins only", {"stream": asked})
    return True


def _visible(env: Envelope, hide_users: bool) -> bool:
    return not (hide_users and env.stream.startswith(USER_STREAMS))


async def list_events(request: web.Request) -> web.StreamResponse:
    store = request.app[SERVICES].need_store()
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", 100, 1, 1000)
    filters = _filters(request)
    hide_users = _hides_users(request, filters)
    # skipping hidden events must not shorten a page (clients stop at a short page): read on, a
    # bounded number of times, and move next_after over what was skipped
    events: list[EventOut] = []
    pos = after
    for _ in range(PAGE_SCANS):
        envs = await store.read(after=pos, limit=limit, **filters)
        for env in envs:
            pos = env.seq
            if _visible(env, hide_users):
                events.append(event_out(env))
                if len(events) == limit:
                    break
        if len(events) == limit or len(envs) < limit:
            break
    head = await store.wait_for(MAX_SEQ, 0)  # the log head: returns at once
    return json_response(EventPage(events=events, last_seq=head, next_after=pos))


async def events_ws(request: web.Request) -> web.StreamResponse:
    """``WS /events/ws?after=N``: history after N then live, as JSON text messages.

    Auth: ``Authorization: Bearer`` or ``?token=`` (browsers cannot set headers on websockets; this
    is the one route that takes a query token), checked by the auth middleware before the upgrade.
    A user has at most ``max_websockets_per_user`` open (the next is a 429 before the upgrade).
    While open, the caller is checked again at every user change and when the token expires: a
    disabled, deleted or re-roled user, or an expired token, gets close 1008 with the reason.
    At most SEND_BUFFER events wait per client; a client that keeps that buffer full for
    SLOW_AFTER_S (it stopped reading) is closed with 1008 "slow consumer"; server shutdown closes
    with 1001.  Non-admins never get ``user-*`` events.
    """
    services = request.app[SERVICES]
    store = services.need_store()
    auth = services.need_auth()
    caller = principal(request)
    token = request[TOKEN]
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    filters = _filters(request)
    hide_users = _hides_users(request, filters)
    sockets = request.app[WEBSOCKETS]
    quota = request.app[SETTINGS].max_websockets_per_user
    if sum(1 for s in sockets if _OWNERS.get(s) == caller.username) >= quota:
        raise TooManyRequests(
            f"at most {quota} event websockets per user are open at once", {"limit": quota}, 5.0
        )
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    _OWNERS[ws] = caller.username
    sockets.add(ws)  # before the upgrade's await: the quota counts it at once
    try:
        await ws.prepare(request)
    except BaseException:
        sockets.discard(ws)
        raise
    metrics = request.app[METRICS]
    metrics.websockets.inc()
    queue: asyncio.Queue[Envelope] = asyncio.Queue(SEND_BUFFER)
    slow = asyncio.Event()
    revoked: list[str] = []  # why the caller may no longer listen

    async def produce() -> None:
        async for env in subscribe(store, after, **filters):
            if not _visible(env, hide_users):
                continue
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

    def refusal() -> str | None:
        """Why the caller may no longer listen (its user changed, or its token expired), or None."""
        try:
            current = auth.authenticate(token)
            if current.role not in STAFF:
                raise Forbidden(f"role {current.role!r} may not read events")
        except CvopsError as exc:
            return exc.message
        return None

    async def guard() -> None:
        """Re-check the caller at each user change and at the token's expiry."""
        while True:
            reason = refusal()
            if reason is None:
                try:
                    left = auth.expires_at(token) - time.time()
                except CvopsError as exc:
                    reason = exc.message
            if reason is not None:
                revoked.append(reason)
                return
            timeout = min(max(left, 0.0) + 0.05, RECHECK_S)
            await auth.users.wait_until(lambda _: refusal() is not None, timeout)

    tasks = [
        asyncio.create_task(produce()),
        asyncio.create_task(consume()),
        asyncio.create_task(receive()),
        asyncio.create_task(guard()),
    ]
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
        senders = [tasks[0], tasks[1], tasks[3], slow_wait]
        for t in senders:
            t.cancel()
        for t in senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if not ws.closed:
            if slow.is_set():
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
            elif revoked:
                reason = revoked[0].encode()[:120]  # a close reason fits in 123 bytes
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason)
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
