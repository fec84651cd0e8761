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
import os
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from cvops import errors as E

log = logging.getLogger(__name__)

T = TypeVar("T")

API = "/api/v1"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MODEL_SETTLED = frozenset({"ready", "failed"})
HEAD_PROBE = 2**62  # `GET /events?after=` this: no events, and `last_seq` is the log's head


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
    cls = E.class_for(code, status)
    if code and (code != cls.code or status != cls.status):
        details.setdefault("remote", {"code": code, "status": status})
    elif not code and status != cls.status:
        details.setdefault("remote", {"status": status})
    if issubclass(cls, E.TooManyRequests) and not details.get("retry_after") and retry_after:
        details["retry_after"] = retry_after
    return E.from_dict({"code": cls.code, "message": message, "details": details})


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> E.CvopsError:
    cls = E.class_for(None, exc.status)
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

    def _url(self, path: str) -> str:
        return self.base_url + (path if path.startswith(("/health", "/ready", "/metrics")) else API + path)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | aiohttp.FormData | None = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One call; ``path`` is relative to ``/api/v1`` unless it starts with ``/`` outside it
        (``/health``).  Returns the decoded JSON (``None`` for an empty body, text for non-JSON).
        ``data`` may be an :class:`aiohttp.FormData` (multipart; file parts are streamed)."""
        headers = self._headers({"Content-Type": content_type} if content_type else None)
        async with self._http().request(
            method, self._url(path), json=json_body, data=data, params=params, headers=headers
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise error_from_response(resp.status, body, resp.headers.get("Retry-After"))
            if not body:
                return None
            if "json" in resp.headers.get("Content-Type", ""):
                return json.loads(body)
            return body.decode("utf-8", "replace")

    async def request_bytes(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> tuple[bytes, str]:
        """One call answered with raw bytes: ``(body, content type)`` (reports, small downloads)."""
        async with self._http().request(
            method, self._url(path), params=params, headers=self._headers()
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise error_from_response(resp.status, body, resp.headers.get("Retry-After"))
            return body, resp.headers.get("Content-Type", "")

    async def download(self, path: str, dest: str | os.PathLike[str], chunk: int = 1 << 20) -> int:
        """``GET path`` streamed into ``dest`` (written next to it, then renamed); returns the bytes."""
        target = Path(dest)
        part = target.with_name(target.name + ".part")
        total = 0
        async with self._http().get(self._url(path), headers=self._headers()) as resp:
            if resp.status >= 400:
                raise error_from_response(resp.status, await resp.read(), resp.headers.get("Retry-After"))
            try:
                with open(part, "wb") as fh:
                    async for block in resp.content.iter_chunked(chunk):
                        fh.write(block)
                        total += len(block)
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
        return total

    async def _upload(
        self, path: str, file: str | os.PathLike[str], fields: dict[str, str], wait: bool
    ) -> dict[str, Any]:
        src = Path(file)
        with open(src, "rb") as fh:  # aiohttp streams a file part in chunks: never read whole
            form = aiohttp.FormData()
            for key, value in fields.items():
                form.add_field(key, value)
            form.add_field("file", fh, filename=src.name, content_type="application/octet-stream")
            out: dict[str, Any] = await self.request(
                "POST", path, data=form, params={"wait": "true"} if wait else None
            )
        return out

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

    async def update_user(self, username: str, **changes: Any) -> dict[str, Any]:
        """``PATCH /users/{name}`` with any of ``role``, ``password``, ``disabled``."""
        body = {k: v for k, v in changes.items() if v is not None}
        out: dict[str, Any] = await self.request("PATCH", f"/users/{username}", json_body=body)
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

    async def wait_model(
        self, model_id: str, poll_s: float = 0.5, timeout: float | None = None
    ) -> dict[str, Any]:
        """Poll ``GET /models/{id}`` until the model settles (``ready`` or ``failed``): a trained model
        is registered when its train job ends and converts to ONNX after that."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            rec = await self.model(model_id)
            if rec.get("status") in MODEL_SETTLED:
                return rec
            if end is not None and loop.time() > end:
                raise E.GatewayTimeout(f"model {model_id} still {rec.get('status')} after {timeout} s")
            await asyncio.sleep(poll_s)

    async def create_preset(self, preset: str, *, wait: bool = False, **kw: Any) -> dict[str, Any]:
        """``POST /models/presets``; ``kw`` are the other body fields (name, num_classes,
        image_size, labels).  ``wait=True`` returns once the model is ready (or raises when rejected)."""
        body = {"preset": preset, **{k: v for k, v in kw.items() if v is not None}}
        out: dict[str, Any] = await self.request(
            "POST", "/models/presets", json_body=body, params={"wait": "true"} if wait else None
        )
        return out

    async def upload_model(
        self,
        file: str | os.PathLike[str],
        *,
        task: str,
        name: str | None = None,
        arch: str | None = None,
        labels: str | list[str] | None = None,
        input_shape: str | list[int] | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """``POST /models`` (multipart, the file streamed from disk); ``wait=True`` waits for the
        conversion (a rejected model raises :class:`cvops.errors.ValidationFailed`)."""
        fields = {"task": task, "name": name or Path(file).name}
        if arch:
            fields["arch"] = arch
        if labels is not None:
            fields["labels"] = labels if isinstance(labels, str) else json.dumps(list(labels))
        if input_shape is not None:
            fields["input_shape"] = (
                input_shape if isinstance(input_shape, str) else json.dumps(list(input_shape))
            )
        return await self._upload("/models", file, fields, wait)

    async def delete_model(self, model_id: str) -> None:
        await self.request("DELETE", f"/models/{model_id}")

    async def download_onnx(self, model_id: str, dest: str | os.PathLike[str]) -> int:
        return await self.download(f"/models/{model_id}/onnx", dest)

    # ------------------------------------------------------------------ datasets

    async def upload_dataset(
        self,
        file: str | os.PathLike[str],
        *,
        task: str = "classification",
        name: str | None = None,
        fmt: str | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """``POST /datasets`` (multipart zip, streamed from disk)."""
        fields = {"task": task, "name": name or Path(file).stem}
        if fmt:
            fields["format"] = fmt
        return await self._upload("/datasets", file, fields, wait)

    async def datasets(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/datasets")
        return list(out["datasets"])

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", f"/datasets/{dataset_id}")
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

    async def wait_job(
        self, job_id: str, poll_s: float = 1.0, timeout: float | None = None
    ) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until the job ends (succeeded, failed or cancelled)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            job = await self.job(job_id)
            if job.get("status") in TERMINAL:
                return job
            if end is not None and loop.time() > end:
                raise E.GatewayTimeout(f"job {job_id} still {job.get('status')} after {timeout} s")
            await asyncio.sleep(poll_s)

    async def report(self, job_id: str, view: str = "simple", fmt: str = "md") -> bytes:
        """``GET /jobs/{id}/report``: the report's exact bytes (json, md or html)."""
        body, _ = await self.request_bytes(
            "GET", f"/jobs/{job_id}/report", params={"view": view, "format": fmt}
        )
        return body

    async def scheduler(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", "/scheduler")
        return out

    # ------------------------------------------------------------------ deployments

    async def deployments(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/deployments")
        return list(out["deployments"])

    async def deployment(self, dep_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", f"/deployments/{dep_id}")
        return out

    async def create_deployment(
        self, model_id: str, engine: str = "auto", workers: int | None = None, **kw: Any
    ) -> dict[str, Any]:
        """``POST /deployments`` (answers once every worker loaded the engine); ``kw``: max_batch,
        max_wait_ms."""
        body = {"model_id": model_id, "engine": engine, "workers": workers, **kw}
        out: dict[str, Any] = await self.request(
            "POST", "/deployments", json_body={k: v for k, v in body.items() if v is not None}
        )
        return out

    async def delete_deployment(self, dep_id: str) -> None:
        await self.request("DELETE", f"/deployments/{dep_id}")

    async def predict(self, dep_id: str, data: bytes, content_type: str, top_k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = await self.request(
            "POST",
            f"/deployments/{dep_id}/predict",
            data=data,
            content_type=content_type,
            params={"top_k": str(top_k)},
        )
        return out

    # ------------------------------------------------------------------ packages

    async def create_package(self, model_id: str, engine: str = "onnxruntime-cpu") -> dict[str, Any]:
        out: dict[str, Any] = await self.request(
            "POST", "/packages", json_body={"model_id": model_id, "engine": engine}
        )
        return out

    async def packages(self) -> list[dict[str, Any]]:
        out = await self.request("GET", "/packages")
        return list(out["packages"])

    async def package(self, package_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", f"/packages/{package_id}")
        return out

    async def download_package(self, package_id: str, dest: str | os.PathLike[str]) -> int:
        """``GET /packages/{id}/download`` streamed into ``dest``; returns the bytes written."""
        return await self.download(f"/packages/{package_id}/download", dest)

    async def public_key(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.request("GET", "/packages/public-key")
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

    def update_user(self, username: str, **changes: Any) -> dict[str, Any]:
        return self._call(self._async.update_user(username, **changes))

    def delete_user(self, username: str) -> None:
        self._call(self._async.delete_user(username))

    def upload_model(self, file: str | os.PathLike[str], **kw: Any) -> dict[str, Any]:
        return self._call(self._async.upload_model(file, **kw))

    def delete_model(self, model_id: str) -> None:
        self._call(self._async.delete_model(model_id))

    def download_onnx(self, model_id: str, dest: str | os.PathLike[str]) -> int:
        return self._call(self._async.download_onnx(model_id, dest))

    def upload_dataset(self, file: str | os.PathLike[str], **kw: Any) -> dict[str, Any]:
        return self._call(self._async.upload_dataset(file, **kw))

    def datasets(self) -> list[dict[str, Any]]:
        return self._call(self._async.datasets())

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._call(self._async.dataset(dataset_id))

    def wait_job(self, job_id: str, poll_s: float = 1.0, timeout: float | None = None) -> dict[str, Any]:
        return self._call(self._async.wait_job(job_id, poll_s, timeout))

    def report(self, job_id: str, view: str = "simple", fmt: str = "md") -> bytes:
        return self._call(self._async.report(job_id, view, fmt))

    def deployment(self, dep_id: str) -> dict[str, Any]:
        return self._call(self._async.deployment(dep_id))

    def create_deployment(
        self, model_id: str, engine: str = "auto", workers: int | None = None, **kw: Any
    ) -> dict[str, Any]:
        return self._call(self._async.create_deployment(model_id, engine, workers, **kw))

    def delete_deployment(self, dep_id: str) -> None:
        self._call(self._async.delete_deployment(dep_id))

    def create_package(self, model_id: str, engine: str = "onnxruntime-cpu") -> dict[str, Any]:
        return self._call(self._async.create_package(model_id, engine))

    def packages(self) -> list[dict[str, Any]]:
        return self._call(self._async.packages())

    def package(self, package_id: str) -> dict[str, Any]:
        return self._call(self._async.package(package_id))

    def download_package(self, package_id: str, dest: str | os.PathLike[str]) -> int:
        return self._call(self._async.download_package(package_id, dest))

    def public_key(self) -> dict[str, Any]:
        return self._call(self._async.public_key())

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
