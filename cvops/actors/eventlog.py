"""The EventLog actor (the only writer of the database file) and its public facade, EventStore.

Like ``ray.util.queue.Queue``: a small public class over a private actor class.  Events travel between
processes as msgpack bytes, never as pickled objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ray

from cvops.actors.common import NAMESPACE, call, call_sync
from cvops.events import log as sqlite_log
from cvops.events.schema import Envelope, Event, decode_envelopes, encode_envelopes, encode_event, type_of
from cvops.events.store import Appended, appended_envelopes, appended_head, subscribe

ACTOR_NAME = "cvops-eventlog"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class EventLog:
    """The actor around the SQLite :class:`cvops.events.log.EventLog`; Ray lists it by this class name."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._log: sqlite_log.EventLog | None = None
        self._opening: asyncio.Lock | None = None

    async def _get(self) -> sqlite_log.EventLog:
        if self._log is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._log is None:
                    self._log = await sqlite_log.EventLog.open(self._path)
        return self._log

    async def ping(self) -> int:
        return (await self._get()).last_seq

    async def append(
        self,
        stream: str,
        items: list[tuple[str, bytes]],
        expected_version: int | None,
        user: str,
        correlation_id: str,
        causation_id: str,
    ) -> Appended:
        """Only (first seq, first version, ts) travel back: the caller has the rest (appended_envelopes)."""
        log = await self._get()
        envs = await log.append_encoded(
            stream,
            items,
            expected_version,
            user=user,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        return appended_head(envs)

    async def read(
        self,
        after: int,
        limit: int,
        stream: str | None,
        prefix: str | None,
        types: list[str] | None,
        until_seq: int | None = None,
    ) -> bytes:
        log = await self._get()
        envs = await log.read(
            after=after, limit=limit, stream=stream, prefix=prefix, types=types, until_seq=until_seq
        )
        return encode_envelopes(envs)

    async def stream_version(self, stream: str) -> int:
        return await (await self._get()).stream_version(stream)

    async def wait_for(self, after: int, timeout: float) -> int:
        return await (await self._get()).wait_for(after, timeout)

    async def close(self) -> None:
        if self._log is not None:
            await self._log.close()
            self._log = None


class EventStore:
    """Public facade over the EventLog actor; the same API as :class:`cvops.events.log.EventLog`."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @classmethod
    def start(cls, db_path: str, name: str = ACTOR_NAME) -> EventStore:
        """Start (or reconnect to) the named actor, pinned to the node that calls this (the head)."""
        node = ray.get_runtime_context().get_node_id()
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        handle = EventLog.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            max_concurrency=10_000,
            scheduling_strategy=strategy,
        ).remote(db_path)
        return cls(handle)

    @classmethod
    def connect(cls) -> EventStore:
        return cls(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE))

    @property
    def handle(self) -> Any:
        return self._h

    async def ping(self) -> int:
        return await call(self._h.ping.remote())  # type: ignore[no-any-return]

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        user: str = "",
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        items = [(type_of(e), encode_event(e)) for e in events]
        meta = (user, correlation_id, causation_id)
        head: Appended = await call(self._h.append.remote(stream, items, expected_version, *meta))
        return appended_envelopes(
            stream, items, head, user=user, correlation_id=correlation_id, causation_id=causation_id
        )

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]:
        return decode_envelopes(await call(self._read(after, limit, stream, prefix, types, until_seq)))

    def _read(
        self,
        after: int,
        limit: int,
        stream: str | None,
        prefix: str | None,
        types: Sequence[str] | None,
        until_seq: int | None,
    ) -> Any:
        return self._h.read.remote(
            after, limit, stream, prefix, list(types) if types is not None else None, until_seq
        )

    # -- blocking twins, for code in a worker thread (a job body): see :meth:`sync_view`
    def append_sync(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[Envelope]:
        items = [(type_of(e), encode_event(e)) for e in events]
        head: Appended = call_sync(self._h.append.remote(stream, items, expected_version, "", "", ""))
        return appended_envelopes(stream, items, head)

    def read_sync(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]:
        return decode_envelopes(call_sync(self._read(after, limit, stream, prefix, types, until_seq)))

    def wait_for_sync(self, after: int, timeout: float) -> int:
        return int(call_sync(self._h.wait_for.remote(after, timeout)))

    def stream_version_sync(self, stream: str) -> int:
        return int(call_sync(self._h.stream_version.remote(stream)))

    def sync_view(self) -> SyncEventStore:
        """This store as a :class:`cvops.events.store.SyncStore` (what a SyncProjection reads)."""
        return SyncEventStore(self)

    async def stream_version(self, stream: str) -> int:
        return await call(self._h.stream_version.remote(stream))  # type: ignore[no-any-return]

    async def wait_for(self, after: int, timeout: float) -> int:
        return await call(self._h.wait_for.remote(after, timeout))  # type: ignore[no-any-return]

    async def close(self) -> None:
        await call(self._h.close.remote())

    def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
    ) -> AsyncIterator[Envelope]:
        return subscribe(self, after, stream=stream, prefix=prefix, types=types)


class SyncEventStore:
    """:class:`EventStore`'s blocking methods under the :class:`cvops.events.store.SyncStore` names."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.append = store.append_sync
        self.read = store.read_sync
        self.wait_for = store.wait_for_sync
        self.stream_version = store.stream_version_sync
