"""What every reader and writer needs from an event log, with no I/O of its own.

:class:`Store` is the async protocol that the SQLite :class:`~cvops.events.log.EventLog`, the in-memory
log and the EventLog actor's facade all satisfy; :class:`SyncStore` is its blocking twin for code that
runs in a worker thread.  :func:`subscribe` is the one catch-up subscription over any Store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from cvops.events.schema import Envelope, Event


class Store(Protocol):
    """The async event store: append, read, the version of a stream, and a long-poll on the head."""

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
        """Append atomically; the envelopes written, once durably committed."""
        ...

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]: ...

    async def stream_version(self, stream: str) -> int: ...

    async def wait_for(self, after: int, timeout: float) -> int:
        """The head seq as soon as it is greater than ``after``, or at ``timeout`` (0: at once)."""
        ...


class SyncStore(Protocol):
    """Blocking access to an event store, for code running in a worker thread."""

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[Envelope]: ...

    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]: ...

    def wait_for(self, after: int, timeout: float) -> int: ...


def matches(
    env: Envelope, stream: str | None = None, prefix: str | None = None, types: Sequence[str] | None = None
) -> bool:
    """Whether ``env`` passes the stream / prefix / types filters of a read (as ``log.build_query``):
    ``stream`` exact, ``prefix`` a literal stream-name prefix ('' or None: any), ``types`` any of
    (None: any; empty: none)."""
    if stream is not None and env.stream != stream:
        return False
    if prefix and not env.stream.startswith(prefix):
        return False
    return types is None or env.type in types


# what a remote writer sends back for an append: (first seq, first version, commit ts); the caller
# rebuilds the envelopes from the items it sent (see :func:`appended_envelopes`), no payload travels back
Appended = tuple[int, int, float]


def appended_head(envs: Sequence[Envelope]) -> Appended:
    """The :data:`Appended` triple of a non-empty append's envelopes ((0, 0, 0.0) for none)."""
    return (envs[0].seq, envs[0].version, envs[0].ts) if envs else (0, 0, 0.0)


def appended_envelopes(
    stream: str,
    items: Sequence[tuple[str, bytes]],
    head: Appended,
    *,
    user: str = "",
    correlation_id: str = "",
    causation_id: str = "",
) -> list[Envelope]:
    """The envelopes an append of encoded ``items`` wrote, from its :data:`Appended` triple: the events
    of one append get consecutive seqs and versions and one commit timestamp."""
    seq, version, ts = head
    return [
        Envelope(
            seq=seq + i,
            stream=stream,
            version=version + i,
            type=type_,
            ts=ts,
            data=data,
            user=user,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        for i, (type_, data) in enumerate(items)
    ]


async def subscribe(
    store: Store,
    after: int = 0,
    *,
    stream: str | None = None,
    prefix: str | None = None,
    types: Sequence[str] | None = None,
    batch: int = 1000,
    poll_s: float = 5.0,
) -> AsyncIterator[Envelope]:
    """Catch-up subscription over any Store: everything after ``after``, then live.

    No gap and no duplicate: each round learns the log head ``h`` first and then reads exactly the
    range (pos, h], so the cursor only moves over seqs that were actually scanned.
    """
    pos = after
    while True:
        head = await store.wait_for(pos, poll_s)
        if head <= pos:
            continue
        envs = await store.read(
            after=pos, limit=batch, stream=stream, prefix=prefix, types=types, until_seq=head
        )
        for env in envs:
            yield env
        pos = envs[-1].seq if len(envs) == batch else head


class Reader(Protocol):
    """The read half of a :class:`Store` (what a read-only reader of the file offers)."""

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]: ...


class ForwardingStore:
    """A :class:`Store` that hands each call to another: appends, versions and waits to
    :meth:`_writer`, reads to :meth:`_reader` (the same store unless a subclass splits them)."""

    def _writer(self) -> Store:
        raise NotImplementedError

    def _reader(self) -> Reader:
        return self._writer()

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
        return await self._writer().append(
            stream,
            events,
            expected_version,
            user=user,
            correlation_id=correlation_id,
            causation_id=causation_id,
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
        return await self._reader().read(
            after=after, limit=limit, stream=stream, prefix=prefix, types=types, until_seq=until_seq
        )

    async def stream_version(self, stream: str) -> int:
        return await self._writer().stream_version(stream)

    async def wait_for(self, after: int, timeout: float) -> int:
        return await self._writer().wait_for(after, timeout)

    def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
    ) -> AsyncIterator[Envelope]:
        return subscribe(self, after, stream=stream, prefix=prefix, types=types)
