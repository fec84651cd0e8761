"""The in-memory event log: the EventLog's contract with no file, for tests and tools.

* :class:`LogCore` is the pure, synchronous core — a list of envelopes and the stream versions, with the
  append rules of the SQLite log (global gapless ``seq`` from 1, per-stream ``version``,
  ``expected_version`` None = no check, 0 = new stream, N = the stream must be at N, else
  :class:`ConcurrencyError` and nothing written) and the same read filters.  The scheduler's pure tests
  drive it directly (``scheduling.commit``).
* :class:`InMemoryLog` is the async :class:`~cvops.events.store.Store` over a core: the same contract
  tests as :class:`~cvops.events.log.EventLog` and the EventLog actor (``tests/contracts.py``), with
  ``wait_for`` woken by each append and the shared catch-up :func:`~cvops.events.store.subscribe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

from cvops.errors import ConcurrencyError, ValidationFailed
from cvops.events.schema import Envelope, Event, encode_event, type_of
from cvops.events.store import matches, subscribe


class LogCore:
    """The pure synchronous in-memory log (see the module docstring).

    ``clock`` gives each append's timestamp (one per append, like one commit); without it an append's
    timestamp is its first seq, so runs are deterministic.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._envelopes: list[Envelope] = []
        self._versions: dict[str, int] = {}
        self._clock = clock

    @property
    def envelopes(self) -> list[Envelope]:
        return list(self._envelopes)

    @property
    def last_seq(self) -> int:
        return len(self._envelopes)

    def version(self, stream: str) -> int:
        return self._versions.get(stream, 0)

    def read(
        self,
        after: int = 0,
        limit: int | None = None,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
        *,
        since_ts: float | None = None,
        until_ts: float | None = None,
    ) -> list[Envelope]:
        """Envelopes with ``seq > after`` matching the filters (those of ``log.build_query``), oldest
        first, at most ``limit`` (None: all)."""
        if limit is not None and limit < 0:
            raise ValidationFailed(f"limit must be >= 0, got {limit}")
        end = len(self._envelopes) if until_seq is None else max(0, min(until_seq, len(self._envelopes)))
        out: list[Envelope] = []
        for env in self._envelopes[max(after, 0) : end]:
            if limit is not None and len(out) >= limit:
                break
            if not matches(env, stream, prefix, types):
                continue
            if (since_ts is not None and env.ts < since_ts) or (until_ts is not None and env.ts > until_ts):
                continue
            out.append(env)
        return out

    def append(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        user: str = "",
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        """Append ``events`` to ``stream`` atomically; returns the envelopes written."""
        if not stream:
            raise ValidationFailed("an event stream name must not be empty")
        if not events:
            raise ValidationFailed("an append needs at least one event", {"stream": stream})
        if expected_version is not None and expected_version < 0:
            raise ValidationFailed(
                f"expected_version must be >= 0, got {expected_version}", {"stream": stream}
            )
        cur = self.version(stream)
        if expected_version is not None and expected_version != cur:
            raise ConcurrencyError(
                f"stream {stream!r} is at version {cur}, not {expected_version}",
                {"stream": stream, "expected": expected_version, "actual": cur},
            )
        first = len(self._envelopes) + 1
        ts = self._clock() if self._clock is not None else float(first)
        out = [
            Envelope(
                seq=first + i,
                stream=stream,
                version=cur + 1 + i,
                type=type_of(ev),
                ts=ts,
                data=encode_event(ev),
                user=user,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
            for i, ev in enumerate(events)
        ]  # every payload is encoded before anything is written
        self._envelopes.extend(out)
        self._versions[stream] = cur + len(events)
        return out


class InMemoryLog:
    """The async :class:`~cvops.events.store.Store` over a :class:`LogCore` (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] | None = time.time) -> None:
        self.core = LogCore(clock)
        self._changed = asyncio.Event()  # replaced and set on every append (wakes wait_for)

    @property
    def last_seq(self) -> int:
        return self.core.last_seq

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
        envs = self.core.append(
            stream,
            events,
            expected_version,
            user=user,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return envs

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
        *,
        since_ts: float | None = None,
        until_ts: float | None = None,
    ) -> list[Envelope]:
        return self.core.read(
            after, limit, stream, prefix, types, until_seq, since_ts=since_ts, until_ts=until_ts
        )

    async def stream_version(self, stream: str) -> int:
        return self.core.version(stream)

    async def wait_for(self, after: int, timeout: float) -> int:
        """The head seq as soon as it is greater than ``after``, or at ``timeout`` (0: at once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.core.last_seq <= after:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return self.core.last_seq

    def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
    ) -> AsyncIterator[Envelope]:
        return subscribe(self, after, stream=stream, prefix=prefix, types=types)

    async def close(self) -> None:
        """Nothing to release; here so an InMemoryLog stands in wherever a store is closed."""
