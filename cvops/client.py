"""A small Python client for the cvops gateway: REST under ``/api/v1`` and the events websocket.

:class:`AsyncClient` speaks aiohttp; :class:`Client` is its blocking twin (one private event-loop
thread per client).  A non-2xx answer raises the :mod:`cvops.errors` class named by the error body's
``code`` (``{"error": {"code", "message", "details"}}``), so callers handle remote errors exactly like
local ones::

    async with AsyncClient("http://127.0.0.1:8080") as api:
        await api.login("admin", password)
        model = await api.create_preset("tiny_cnn", wait=True)
        async for event in api.subscribe(after=0):
            ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from cvops import errors as E

log = logging.getLogger(__name__)

T = TypeVar("T")

API = "/api/v1"
HEAD_PROBE = 2**62  # `GET /events?after=` this: no events, and `last_seq` is the log's head

_BY_CODE: dict[str, type[E.CvopsError]] = {
    cls.code: cls
    for cls in vars(E).values()
    if isinstance(cls, type) and issubclass(cls, E.CvopsError) and cls is not E.CvopsError
}
# codes the server invents without a class of their own (e.g. "model_rejected", 422) fall back by status
_BY_STATUS: dict[int, type[E.CvopsError]] = {
    400: E.BadRequest,
    401: E.Unauthorized,
    403: E.Forbidden,
    404: E.NotFound,
    409: E.Conflict,
    413: E.PayloadTooLarge,
    415: E.UnsupportedMediaType,
    422: E.ValidationFailed,
    429: E.TooManyRequests,
    503: E.Unavailable,
    504: E.GatewayTimeout,
}


def error_from_response(status: int, body: bytes, retry_after: str | None = None) -> E.CvopsError:
    """Rebuild the :mod:`cvops.errors` exception that a non-2xx answer describes.

    The class is chosen by the body's ``error.code``; an unknown code (or a body that is not the
    error shape) falls back to the class of the HTTP status, then to :class:`CvopsError`.  The
    remote ``code`` and ``status`` are kept in ``details["remote"]`` when they differ from the class's.
    """
    code = ""
    message = ""
    details: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        code = str(err.get("code") or "")
        message = str(err.get("message") or "")
        raw_details = err.get("details")
        if isinstance(raw_details, dict):
            details = dict(raw_details)
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:300] or f"HTTP {status}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or E.CvopsError
    if code and (code != cls.code or status != cls.status):
        details.setdefault("remote", {"code": code, "status": status})
    elif not code and status != cls.status:
        details.setdefault("remote", {"status": status})
    if issubclass(cls, E.TooManyRequests):
        wait = details.pop("retry_after", None) or retry_after or 1.0
        try:
            seconds = float(wait)
        except (TypeError, ValueError):
            seconds = 1.0
        return cls(message, details, retry_after=seconds)
    return cls(message, details)


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> E.CvopsError:
    cls = _BY_STATUS.get(exc.status, E.CvopsError)
    return cls(f"events websocket refused: HTTP {exc.status} {exc.message}", {"status": exc.status})


class AsyncClient:
    """The gateway over aiohttp.  ``token`` is a JWT; :meth:`login` fetches and keeps one.

    ``timeout`` is the total seconds one request may take (``?wait=true`` builds can take a while).
    Use it as an async context manager, or call :meth:`close`.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.role: str | None = None
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("client is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One call; ``path`` is relative to ``/api/v1`` unless it starts with ``/`` outside it
        (``/health``).  Returns the decoded JSON (``None`` for an empty body, text for non-JSON)."""
        url = self.base_url + (path if path.startswith(("/health", "/ready", "/metrics")) else API + path)
        headers = self._headers({"Content-Type": content_type} if content_type else None)
        async with self._http().request(
            method, url, json=json_body, data=data, params=params, headers=headers
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise error_from_response(resp.status, body, resp.headers.get("Retry-After"))
            if not body:
                return None
            if "json" in resp.headers.get("Content-Type", ""):
                return json.loads(body)
            return body.decode("utf-8", "replace")

    # ------------------------------------------------------------------ auth and users

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """``POST /auth/token``; keeps the token for later calls.  Returns the token answer."""
        answer: dict[str, Any] = await self.request(
            "POST", "/auth/token", json_body={"username": username, "password": password}
        )
        self.token = str(answer["access_token"])
        self.role = str(answer.get("role") or "") or None
        return answer

    async def me(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", "/me")
        return out

    async def users(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/users")
        return list(out["users"])

    async def create_user(self, username: str, password: str, role: str = "viewer") -> dict[str, Any]:
        out: dict[str, Any] = await self.request(
            "POST", "/users", json_body={"username": username, "password": password, "role": role}
        )
        return out

    async def delete_user(self, username: str) -> None:
        await self.request("DELETE", f"/users/{username}")

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", "/health")
        return out

    # ------------------------------------------------------------------ models

    async def models(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/models")
        return list(out["models"])

    async def model(self, model_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", f"/models/{model_id}")
        return out

    async def create_preset(self, preset: str, *, wait: bool = False, **kw: Any) -> dict[str, Any]:
        """``POST /models/presets``; ``kw`` are the other body fields (name, num_classes,
        image_size, labels).  ``wait=True`` returns once the model is ready (or raises when rejected)."""
        body = {"preset": preset, **{k: v for k, v in kw.items() if v is not None}}
        out: dict[str, Any] = await self.request(
            "POST", "/models/presets", json_body=body, params={"wait": "true"} if wait else None
        )
        return out

    # ------------------------------------------------------------------ jobs and scheduler

    async def jobs(self, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("kind", kind), ("status", status)) if v}
        out = await self.request("GET", "/jobs", params=params or None)
        return list(out["jobs"])

    async def job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", f"/jobs/{job_id}")
        return out

    async def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("POST", "/jobs", json_body=spec)
        return out

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("POST", f"/jobs/{job_id}/cancel")
        return out

    async def scheduler(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", "/scheduler")
        return out

    # ------------------------------------------------------------------ deployments

    async def deployments(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/deployments")
        return list(out["deployments"])

    async def predict(self, dep_id: str, data: bytes, content_type: str, top_k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = await self.request(
            "POST",
            f"/deployments/{dep_id}/predict",
            data=data,
            content_type=content_type,
            params={"top_k": str(top_k)},
        )
        return out

    # ------------------------------------------------------------------ events

    async def events(
        self, after: int = 0, limit: int = 100, stream: str | None = None, types: str | None = None
    ) -> dict[str, Any]:
        """One page of ``GET /events``: ``{events, last_seq, next_after}``."""
        params = {"after": str(after), "limit": str(limit)}
        if stream:
            params["stream"] = stream
        if types:
            params["type"] = types
        out: dict[str, Any] = await self.request("GET", "/events", params=params)
        return out

    async def head(self) -> int:
        """The seq of the newest event in the log (0 when it is empty)."""
        page = await self.events(after=HEAD_PROBE, limit=1)
        return int(page["last_seq"])

    async def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        types: str | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Events after ``after``, then live, over ``WS /events/ws``.

        Heartbeats are skipped.  When the connection drops (server restart, slow-consumer close,
        network error) it reconnects from the last seq it yielded, with backoff, so the caller sees
        no gap and no duplicate.  It ends only when the caller stops iterating (``break``, task
        cancelled) or closes the client.  A refused handshake (401/403) raises the matching error.
        """
        last = after
        delay = retry_s
        while not self._closed:
            params = {"after": str(last)}
            if self.token:
                params["token"] = self.token
            if stream:
                params["stream"] = stream
            if types:
                params["type"] = types
            try:
                async with self._http().ws_connect(
                    self.base_url + API + "/events/ws",
                    params=params,
                    heartbeat=30.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    max_msg_size=0,
                ) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            if msg.type == aiohttp.WSMsgType.ERROR:
                                log.info("events websocket error: %s", ws.exception())
                                break
                            continue
                        event = json.loads(msg.data)
                        if not isinstance(event, dict) or event.get("type") == "heartbeat":
                            continue
                        seq = event.get("seq")
                        if isinstance(seq, int):
                            if seq <= last:
                                continue
                            last = seq
                        delay = retry_s
                        yield event
                    log.info(
                        "events websocket closed (code %s); reconnecting after seq %d", ws.close_code, last
                    )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403, 404):
                    raise _handshake_error(exc) from exc
                log.info("events websocket handshake failed (%s); retrying", exc.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self._closed:
                    return
                log.info("events websocket dropped: %r; retrying", exc)
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry_s)


async def _next(agen: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    return await agen.__anext__()


class Client:
    """Blocking twin of :class:`AsyncClient`: every call runs on a private event-loop thread."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 600.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cvops-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(base_url, token, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def token(self) -> str | None:
        return self._async.token

    @property
    def aio(self) -> AsyncClient:
        """The wrapped async client (use it only from this client's loop)."""
        return self._async

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def login(self, username: str, password: str) -> dict[str, Any]:
        return self._call(self._async.login(username, password))

    def me(self) -> dict[str, Any]:
        return self._call(self._async.me())

    def users(self) -> list[dict[str, Any]]:
        return self._call(self._async.users())

    def create_user(self, username: str, password: str, role: str = "viewer") -> dict[str, Any]:
        return self._call(self._async.create_user(username, password, role))

    def models(self) -> list[dict[str, Any]]:
        return self._call(self._async.models())

    def model(self, model_id: str) -> dict[str, Any]:
        return self._call(self._async.model(model_id))

    def create_preset(self, preset: str, *, wait: bool = False, **kw: Any) -> dict[str, Any]:
        return self._call(self._async.create_preset(preset, wait=wait, **kw))

    def jobs(self, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return self._call(self._async.jobs(kind, status))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call(self._async.job(job_id))

    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._async.submit_job(spec))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call(self._async.cancel_job(job_id))

    def scheduler(self) -> dict[str, Any]:
        return self._call(self._async.scheduler())

    def deployments(self) -> list[dict[str, Any]]:
        return self._call(self._async.deployments())

    def predict(self, dep_id: str, data: bytes, content_type: str, top_k: int = 5) -> dict[str, Any]:
        return self._call(self._async.predict(dep_id, data, content_type, top_k))

    def events(
        self, after: int = 0, limit: int = 100, stream: str | None = None, types: str | None = None
    ) -> dict[str, Any]:
        return self._call(self._async.events(after, limit, stream, types))

    def head(self) -> int:
        return self._call(self._async.head())

    def subscribe(self, after: int = 0, **kw: Any) -> Iterator[dict[str, Any]]:
        """Blocking iteration over :meth:`AsyncClient.subscribe`; closing the iterator (or leaving
        the ``for``) closes the websocket."""
        agen = self._async.subscribe(after, **kw)
        try:
            while True:
                future: concurrent.futures.Future[dict[str, Any]] = asyncio.run_coroutine_threadsafe(
                    _next(agen), self._loop
                )
                try:
                    yield future.result()
                except StopAsyncIteration:
                    return
                except concurrent.futures.CancelledError:
                    return
        finally:
            if not self._loop.is_closed():
                self._call(agen.aclose())
