"""A projection: a state folded from the log, the position it has read up to, and the ways to keep it
current — the one replacement for every hand-written catch-up loop.

``Projection[S]`` (async, over a :class:`~cvops.events.store.Store`) and ``SyncProjection[S]`` (blocking,
over a :class:`~cvops.events.store.SyncStore`, for worker threads) share one cursor:

* :meth:`catch_up` reads every matching event after :attr:`position` up to the log head and folds it;
  the position then stands at the head (not at the last matching event), so a wait that follows waits
  for new events only;
* :meth:`wait_until` catches up, and while ``predicate(state)`` is false waits on the log's long-poll
  ``wait_for`` (no sleep loop) until the predicate holds or the timeout passes;
* :meth:`fold_appended` folds the envelopes the owner just appended without reading them back, when
  they follow the position directly (otherwise it catches up, which reads them with the rest).

The fold ``apply(state, envelope) -> state`` is pure; a projection never writes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from cvops.events.schema import Envelope
from cvops.events.store import Store, SyncStore, matches

S = TypeVar("S")
St = TypeVar("St", Store, SyncStore)  # the store a cursor reads: async or blocking

PAGE = 5000


class _Cursor(Generic[St, S]):
    """The store it reads, state + position + filters; the pure part both projections share."""

    def __init__(
        self,
        store: St,
        apply: Callable[[S, Envelope], S],
        initial: S,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        page: int = PAGE,
    ) -> None:
        self.store: St = store
        self.apply = apply
        self.state = initial
        self.position = 0  # every matching event with seq <= position has been folded
        self.stream = stream
        self.prefix = prefix
        self.types = sorted(types) if types is not None else None
        self.page = page

    def _matches(self, env: Envelope) -> bool:
        return matches(env, self.stream, self.prefix, self.types)

    def _take(self, envs: list[Envelope], head: int) -> bool:
        """Fold one page read up to ``head``; True when the page reached the head."""
        for env in envs:
            self.state = self.apply(self.state, env)
        if len(envs) == self.page:
            self.position = envs[-1].seq
            return False
        self.position = max(self.position, head)
        return True

    def _take_appended(self, envs: Sequence[Envelope]) -> bool:
        """Fold envelopes just appended if they follow the position directly; False if a gap is left."""
        if not envs:
            return True
        if envs[0].seq != self.position + 1:
            return envs[-1].seq <= self.position  # already folded, or a gap to read first
        for env in envs:
            if self._matches(env):
                self.state = self.apply(self.state, env)
        self.position = envs[-1].seq
        return True


class Projection(_Cursor[Store, S]):
    """An async projection over a :class:`Store`; ``lock`` serialises its folds."""

    @functools.cached_property
    def lock(self) -> asyncio.Lock:
        return asyncio.Lock()  # made on first use (one event loop runs a projection: no race)

    async def catch_up(self) -> S:
        """Fold everything committed up to the current head; returns the state."""
        async with self.lock:
            head = await self.store.wait_for(self.position, 0)
            while head > self.position:
                envs = await self.store.read(
                    after=self.position,
                    limit=self.page,
                    stream=self.stream,
                    prefix=self.prefix,
                    types=self.types,
                    until_seq=head,
                )
                if self._take(envs, head):
                    break
        return self.state

    async def fold_appended(self, envs: Sequence[Envelope]) -> S:
        """Fold the owner's own append (see the module docstring)."""
        async with self.lock:
            done = self._take_appended(envs)
        return self.state if done else await self.catch_up()

    async def wait_until(self, predicate: Callable[[S], bool], timeout: float) -> bool:
        """Catch up until ``predicate(state)`` holds (True) or ``timeout`` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if predicate(await self.catch_up()):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.store.wait_for(self.position, remaining)


class SyncProjection(_Cursor[SyncStore, S]):
    """The blocking twin of :class:`Projection`, for code in a worker thread (one thread per instance)."""

    def catch_up(self) -> S:
        head = self.store.wait_for(self.position, 0)
        while head > self.position:
            envs = self.store.read(
                after=self.position,
                limit=self.page,
                stream=self.stream,
                prefix=self.prefix,
                types=self.types,
                until_seq=head,
            )
            if self._take(envs, head):
                break
        return self.state

    def fold_appended(self, envs: Sequence[Envelope]) -> S:
        return self.state if self._take_appended(envs) else self.catch_up()

    def wait_until(self, predicate: Callable[[S], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.catch_up()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.store.wait_for(self.position, remaining)
