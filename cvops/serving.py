"""The request path core of an inference deployment: bounded queue, dynamic batching, routing.

No Ray, no aiohttp: workers are anything with ``async call(items) -> results`` (the InferencePool wraps
Ray actor handles in that).  One dispatcher task per router forms batches:

* it waits for the first queued item, then up to ``max_wait_ms`` after that item's arrival (or until
  ``max_batch`` items are queued);
* it dispatches only when a worker slot is free (``max_inflight_per_worker`` batches per worker), so
  under load batches grow in the queue instead of piling up inside workers;
* the batch goes to the least-loaded live worker (fewest batches in flight; ties → round robin).

Admission: queued + in-flight + admitted items never exceed ``queue_limit``; the excess is refused at
once with :class:`~cvops.errors.TooManyRequests`.  A request takes its slot with :meth:`BatchingRouter.admit`
*before* its body is read (DESIGN.md §5), holding the body's bytes against an optional per-deployment cap
(:class:`Admission`), and passes the admission to :meth:`BatchingRouter.submit` once the body is in.  Every request has a deadline ``timeout_s`` after submission
(:class:`~cvops.errors.GatewayTimeout`; an item not yet dispatched is dropped from the queue).  A batch
whose worker raises :class:`WorkerDied` is retried once on another worker, then failed with
:class:`~cvops.errors.Unavailable`.  Bookkeeping is O(1) per request and nothing logs per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import msgspec
import numpy as np

from cvops.errors import CvopsError, GatewayTimeout, TooManyRequests, Unavailable
from cvops.events.schema import InferenceStats

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

LATENCY_RESERVOIR = 50_000  # latency samples kept per stats window (uniform reservoir)


class WorkerDied(Exception):
    """A worker is gone (the lead maps Ray's ActorDiedError to this); its batch may be retried."""


class WorkerHandle(Protocol[ItemT, ResultT]):
    async def call(self, items: list[ItemT]) -> list[ResultT]: ...


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """One stats window (drained once a minute into an InferenceStats event)."""

    window_start: float  # unix time
    window_end: float
    requests: int  # submissions, including the rejected ones
    completed: int  # answered (result or error), excluding timeouts and rejections
    errors: int  # failed calls plus item-level error results
    rejected: int  # refused by the queue limit
    timed_out: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float
    batches: int
    max_queue_depth: int
    batch_sizes: dict[int, int] = {}

    def to_event(self, deployment_id: str) -> InferenceStats:
        return InferenceStats(
            deployment_id=deployment_id,
            window_start=self.window_start,
            window_end=self.window_end,
            requests=self.requests,
            errors=self.errors,
            rejected=self.rejected,
            timed_out=self.timed_out,
            p50_ms=self.p50_ms,
            p95_ms=self.p95_ms,
            p99_ms=self.p99_ms,
            mean_batch=self.mean_batch,
        )


class RouterStats(msgspec.Struct, frozen=True, kw_only=True):
    """Totals since start plus the current window's latency percentiles."""

    requests: int
    completed: int
    rejected: int
    timed_out: int
    errors: int
    retries: int
    worker_deaths: int
    queued: int
    inflight: int
    workers: int
    workers_alive: int
    inflight_per_worker: list[int]
    batch_sizes: dict[int, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float


class Admission:
    """A queue slot, and the bytes of a body, taken before the body is read.

    :meth:`hold` raises the bytes held as the body arrives (429 past the router's byte cap);
    :meth:`BatchingRouter.submit` turns the slot into a queued item; :meth:`release` gives back whatever
    is still held (idempotent: call it in a ``finally`` once the reply is known)."""

    __slots__ = ("_router", "slot", "bytes", "max_bytes")

    def __init__(self, router: BatchingRouter[Any, Any], nbytes: int, max_bytes: int | None) -> None:
        self._router = router
        self.slot = True  # an admitted item not yet queued
        self.bytes = nbytes
        self.max_bytes = max_bytes

    def hold(self, nbytes: int) -> None:
        """Hold at least ``nbytes`` for this body (429 when the deployment's bodies would pass the cap)."""
        if nbytes > self.bytes:
            self._router._hold(self, nbytes)

    def release(self) -> None:
        self._router._release(self)


# ----------------------------------------------------------------------------------------- internals

_QUEUED, _DISPATCHED, _DROPPED = 0, 1, 2


class _Pending(Generic[ItemT, ResultT]):
    __slots__ = ("item", "fut", "t0", "deadline", "state", "timer")

    def __init__(self, item: ItemT, fut: asyncio.Future[ResultT], t0: float, deadline: float) -> None:
        self.item = item
        self.fut = fut
        self.t0 = t0
        self.deadline = deadline
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None


class _Slot(Generic[ItemT, ResultT]):
    """One worker position; replacing a worker makes a new slot so old batches cannot skew counts."""

    __slots__ = ("handle", "inflight", "dead")

    def __init__(self, handle: WorkerHandle[ItemT, ResultT]) -> None:
        self.handle = handle
        self.inflight = 0
        self.dead = False


class _Window:
    __slots__ = ("start", "requests", "completed", "errors", "rejected", "timed_out", "batches",
                 "batch_items", "batch_sizes", "max_depth", "lat", "seen")  # fmt: skip

    def __init__(self) -> None:
        self.start = time.time()
        self.requests = self.completed = self.errors = self.rejected = self.timed_out = 0
        self.batches = self.batch_items = self.max_depth = 0
        self.batch_sizes: dict[int, int] = {}
        self.lat: list[float] = []
        self.seen = 0


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    if not samples:
        return 0.0, 0.0, 0.0
    p = np.percentile(np.asarray(samples, dtype=np.float64), [50, 95, 99])
    return round(float(p[0]), 3), round(float(p[1]), 3), round(float(p[2]), 3)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("batch dispatcher stopped", exc_info=task.exception())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _default_is_error(result: object) -> bool:
    return isinstance(result, dict) and "error" in result


# -------------------------------------------------------------------------------------------- router


class BatchingRouter(Generic[ItemT, ResultT]):
    def __init__(
        self,
        workers: Sequence[WorkerHandle[ItemT, ResultT]],
        *,
        queue_limit: int = 1000,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        timeout_s: float = 30.0,
        max_inflight_per_worker: int = 2,
        is_error: Callable[[ResultT], bool] | None = None,
        on_worker_died: Callable[[int], Any] | None = None,
        seed: int = 0,
    ) -> None:
        if queue_limit < 1 or max_batch < 1 or max_inflight_per_worker < 1 or timeout_s <= 0:
            raise ValueError("queue_limit, max_batch, max_inflight_per_worker >= 1 and timeout_s > 0")
        self._slots: list[_Slot[ItemT, ResultT]] = [_Slot(w) for w in workers]
        self._alive = len(self._slots)
        self.queue_limit = queue_limit
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.timeout_s = timeout_s
        self.max_inflight_per_worker = max_inflight_per_worker
        self._is_error: Callable[[Any], bool] = is_error or _default_is_error
        self._on_worker_died = on_worker_died
        self._queue: collections.deque[_Pending[ItemT, ResultT]] = collections.deque()
        self._queued = 0  # live items in _queue
        self._inflight_items = 0
        self._admitted = 0  # slots taken by admit() whose item is not queued yet
        self._body_bytes = 0  # bytes of the bodies held by live admissions
        self._rr = 0
        self._closed = False  # refusing new work
        self._stopped = False  # dispatcher gone
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._items_waiter: asyncio.Future[None] | None = None
        self._items_need = 1
        self._slot_waiter: asyncio.Future[None] | None = None
        self._rng = random.Random(seed)
        # totals
        self._requests = self._completed = self._rejected = self._timed_out = self._errors = 0
        self._retries = self._deaths = 0
        self._batch_sizes: dict[int, int] = {}
        self._win = _Window()
        self._rate_t = 0.0  # start of the current 1 s completion bucket (loop time)
        self._rate_n = 0
        self._rate = 0.0  # completions per second over the last full bucket

    # ------------------------------------------------------------------------------ public API

    @property
    def workers(self) -> list[WorkerHandle[ItemT, ResultT]]:
        return [s.handle for s in self._slots]

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def inflight(self) -> int:
        return self._inflight_items

    @property
    def admitted(self) -> int:
        """Requests holding a slot while their body is being read."""
        return self._admitted

    @property
    def body_bytes(self) -> int:
        """Bytes of the bodies held by admitted, queued and running requests that were admitted."""
        return self._body_bytes

    def admit(self, nbytes: int = 0, max_bytes: int | None = None) -> Admission:
        """Take a queue slot (and ``nbytes`` of body) before reading the body: 503 when the deployment
        cannot serve, 429 when the queue is full or the bodies held would pass ``max_bytes`` (one body
        is always let in when none is held, so a cap below the body limit cannot starve)."""
        if self._closed:
            raise Unavailable("the deployment is shutting down")
        if not self._alive:
            raise Unavailable("no live inference worker", {"workers": len(self._slots)})
        self._check_depth(counted=False)
        if max_bytes is not None and self._body_bytes and self._body_bytes + nbytes > max_bytes:
            self._refuse_bytes(max_bytes)
        self._admitted += 1
        self._body_bytes += nbytes
        return Admission(self, nbytes, max_bytes)

    def _check_depth(self, *, counted: bool) -> None:
        """429 when the queue is full; ``counted``: the request was already counted in the stats."""
        depth = self._queued + self._inflight_items + self._admitted
        if depth >= self.queue_limit:
            if not counted:
                self._requests += 1
                self._win.requests += 1
            self._rejected += 1
            self._win.rejected += 1
            raise TooManyRequests(
                f"inference queue is full ({self.queue_limit} requests)",
                {"queue_limit": self.queue_limit},
                retry_after=self._retry_after(depth),
            )

    def _refuse_bytes(self, max_bytes: int) -> NoReturn:
        self._requests += 1
        self._rejected += 1
        self._win.requests += 1
        self._win.rejected += 1
        depth = self._queued + self._inflight_items + self._admitted
        raise TooManyRequests(
            f"too many request bodies in flight for this deployment (cap {max_bytes} bytes, "
            "CVOPS_MAX_PREDICT_INFLIGHT_BYTES)",
            {"max_inflight_bytes": max_bytes, "setting": "CVOPS_MAX_PREDICT_INFLIGHT_BYTES"},
            retry_after=self._retry_after(max(1, depth)),
        )

    def _hold(self, adm: Admission, nbytes: int) -> None:
        extra = nbytes - adm.bytes
        others = self._body_bytes - adm.bytes
        if adm.max_bytes is not None and others and self._body_bytes + extra > adm.max_bytes:
            self._refuse_bytes(adm.max_bytes)
        adm.bytes = nbytes
        self._body_bytes += extra

    def _release(self, adm: Admission) -> None:
        if adm.slot:
            adm.slot = False
            self._admitted -= 1
        self._body_bytes -= adm.bytes
        adm.bytes = 0

    async def submit(self, item: ItemT, admission: Admission | None = None) -> ResultT:
        """Queue one item and wait for its result (or the error it earned).  With ``admission`` (from
        :meth:`admit`) the slot taken then is used: no second queue check."""
        loop = self._ensure_started()
        self._requests += 1
        win = self._win
        win.requests += 1
        admitted = admission is not None and admission.slot
        if admission is not None and admitted:
            admission.slot = False  # the slot taken at admission becomes the queued item
            self._admitted -= 1
        if self._closed:
            raise Unavailable("the deployment is shutting down")
        if not self._alive:
            self._errors += 1
            win.errors += 1
            raise Unavailable("no live inference worker", {"workers": len(self._slots)})
        if not admitted:
            self._check_depth(counted=True)
        now = loop.time()
        fut: asyncio.Future[ResultT] = loop.create_future()
        p: _Pending[ItemT, ResultT] = _Pending(item, fut, now, now + self.timeout_s)
        p.timer = loop.call_at(p.deadline, self._expire, p)
        self._queue.append(p)
        self._queued += 1
        if self._queued > win.max_depth:
            win.max_depth = self._queued
        w = self._items_waiter
        if w is not None and self._queued >= self._items_need and not w.done():
            w.set_result(None)
        try:
            result = await fut
        except asyncio.CancelledError:  # the caller went away: leave no trace in the queue
            self._drop(p)
            raise
        except GatewayTimeout:
            self._timed_out += 1
            self._win.timed_out += 1
            self._sample(loop.time() - p.t0)
            raise
        except Exception:
            self._count_done(loop.time() - p.t0, error=True)
            raise
        finally:
            if p.timer is not None:
                p.timer.cancel()
        self._count_done(loop.time() - p.t0, error=self._is_error(result))
        return result

    def replace_worker(self, index: int, handle: WorkerHandle[ItemT, ResultT]) -> None:
        """Put a (restarted) worker in position ``index``; batches still running on the old one finish
        or fail on their own."""
        self._slots[index] = _Slot(handle)
        self._recount()

    def add_worker(self, handle: WorkerHandle[ItemT, ResultT]) -> int:
        self._slots.append(_Slot(handle))
        self._recount()
        return len(self._slots) - 1

    def mark_dead(self, index: int) -> None:
        """Stop routing to worker ``index`` until :meth:`replace_worker`."""
        self._slots[index].dead = True
        self._recount()

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new work; wait up to ``grace_s`` for queued and in-flight items, then fail the rest
        with Unavailable."""
        self._closed = True
        if grace_s > 0 and self._loop is not None:
            end = self._loop.time() + grace_s
            while (self._queued or self._inflight_items) and self._loop.time() < end:
                await asyncio.sleep(0.01)
        self._stopped = True
        err = Unavailable("the deployment is shutting down")
        while self._queue:
            p = self._queue.popleft()
            if p.state == _QUEUED:
                p.state = _DROPPED
                self._queued -= 1
            if not p.fut.done():
                p.fut.set_exception(err)
        for task in list(self._batch_tasks):
            task.cancel()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except asyncio.CancelledError:
                pass
            self._dispatcher = None
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)

    def stats(self) -> RouterStats:
        p50, p95, p99 = _percentiles(self._win.lat)
        return RouterStats(
            requests=self._requests,
            completed=self._completed,
            rejected=self._rejected,
            timed_out=self._timed_out,
            errors=self._errors,
            retries=self._retries,
            worker_deaths=self._deaths,
            queued=self._queued,
            inflight=self._inflight_items,
            workers=len(self._slots),
            workers_alive=self._alive,
            inflight_per_worker=[s.inflight for s in self._slots],
            batch_sizes=dict(sorted(self._batch_sizes.items())),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
        )

    def drain_window(self) -> WindowStats:
        """Close the current stats window and start a new one."""
        win, self._win = self._win, _Window()
        self._win.max_depth = self._queued
        p50, p95, p99 = _percentiles(win.lat)
        return WindowStats(
            window_start=win.start,
            window_end=self._win.start,
            requests=win.requests,
            completed=win.completed,
            errors=win.errors,
            rejected=win.rejected,
            timed_out=win.timed_out,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            mean_batch=round(win.batch_items / win.batches, 3) if win.batches else 0.0,
            batches=win.batches,
            max_queue_depth=win.max_depth,
            batch_sizes=dict(sorted(win.batch_sizes.items())),
        )

    # ------------------------------------------------------------------------------ bookkeeping

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._dispatcher is None or self._dispatcher.done():
            if self._stopped:
                return asyncio.get_running_loop()
            self._loop = asyncio.get_running_loop()
            self._dispatcher = self._loop.create_task(self._dispatch_loop(), name="cvops-batcher")
            self._dispatcher.add_done_callback(_log_crash)
        assert self._loop is not None
        return self._loop

    def _sample(self, seconds: float) -> None:
        win = self._win
        win.seen += 1
        ms = seconds * 1000.0
        if len(win.lat) < LATENCY_RESERVOIR:
            win.lat.append(ms)
        else:
            j = self._rng.randrange(win.seen)
            if j < LATENCY_RESERVOIR:
                win.lat[j] = ms

    def _count_done(self, seconds: float, *, error: bool) -> None:
        self._completed += 1
        assert self._loop is not None
        now = self._loop.time()
        dt = now - self._rate_t
        if dt >= 1.0:
            if dt < 2.0:  # a bucket that spans an idle gap says nothing about capacity
                self._rate = self._rate_n / dt
            self._rate_t, self._rate_n = now, 0
        self._rate_n += 1
        self._win.completed += 1
        if error:
            self._errors += 1
            self._win.errors += 1
        self._sample(seconds)

    def _retry_after(self, depth: int) -> float:
        """Seconds until the queue has likely drained, from the recent completion rate."""
        if self._rate <= 0.0:
            return 1.0
        return float(min(self.timeout_s, max(0.1, math.ceil(depth / self._rate * 10) / 10)))

    def _expire(self, p: _Pending[ItemT, ResultT]) -> None:
        p.timer = None
        if p.fut.done():
            return
        if p.state == _QUEUED:
            p.state = _DROPPED
            self._queued -= 1
            self._compact()
            where = "queued"
        else:
            where = "running"
        p.fut.set_exception(
            GatewayTimeout(
                f"inference did not finish within {self.timeout_s:g} s",
                {"timeout_s": self.timeout_s, "stage": where},
            )
        )

    def _drop(self, p: _Pending[ItemT, ResultT]) -> None:
        if p.state == _QUEUED:
            p.state = _DROPPED
            self._queued -= 1
            self._compact()

    def _compact(self) -> None:
        # dropped entries are skipped lazily; rebuild when they dominate (amortised O(1))
        if len(self._queue) > 2 * self._queued + 64:
            self._queue = collections.deque(p for p in self._queue if p.state == _QUEUED)

    def _recount(self) -> None:
        self._alive = sum(1 for s in self._slots if not s.dead)
        self._wake_slots()

    def _wake_slots(self) -> None:
        w = self._slot_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------------------------ dispatching

    def _pick(self, exclude: _Slot[ItemT, ResultT] | None = None, *, capped: bool = True) -> int | None:
        """Least-loaded live worker (with a free slot when ``capped``); ties → round robin."""
        n = len(self._slots)
        best, best_load = None, None
        for k in range(n):
            i = (self._rr + k) % n
            s = self._slots[i]
            if s.dead or s is exclude or (capped and s.inflight >= self.max_inflight_per_worker):
                continue
            if best_load is None or s.inflight < best_load:
                best, best_load = i, s.inflight
        if best is not None:
            self._rr = (best + 1) % n
        return best

    async def _wait_items(self, need: int, until: float | None) -> None:
        if self._queued >= need:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._items_waiter, self._items_need = fut, need
        timer = None
        if until is not None:
            timer = self._loop.call_at(until, _resolve, fut)
        try:
            await fut
        finally:
            self._items_waiter = None
            if timer is not None:
                timer.cancel()

    async def _wait_slot(self) -> int | None:
        """A worker index with a free slot; None when no worker is alive."""
        assert self._loop is not None
        while True:
            i = self._pick()
            if i is not None:
                return i
            if not self._alive:
                return None
            fut: asyncio.Future[None] = self._loop.create_future()
            self._slot_waiter = fut
            try:
                await fut
            finally:
                self._slot_waiter = None

    def _pop(self, n: int) -> list[_Pending[ItemT, ResultT]]:
        batch: list[_Pending[ItemT, ResultT]] = []
        q = self._queue
        while q and len(batch) < n:
            p = q.popleft()
            if p.state != _QUEUED:
                continue
            self._queued -= 1
            if p.fut.done():  # cancelled by its caller, not yet noticed by submit
                p.state = _DROPPED
                continue
            p.state = _DISPATCHED
            batch.append(p)
        return batch

    def _fail_queued(self, err: CvopsError) -> None:
        for p in self._pop(self._queued):
            if not p.fut.done():
                p.fut.set_exception(err)

    async def _dispatch_loop(self) -> None:
        while not self._stopped:
            await self._wait_items(1, None)
            q = self._queue
            while q and q[0].state != _QUEUED:
                q.popleft()
            if not q:
                continue
            until = q[0].t0 + self.max_wait_s
            assert self._loop is not None
            if self._queued < self.max_batch and until > self._loop.time():
                await self._wait_items(self.max_batch, until)
            i = await self._wait_slot()
            if i is None:
                self._fail_queued(Unavailable("no live inference worker"))
                continue
            batch = self._pop(self.max_batch)
            if not batch:
                continue
            self._start_batch(i, batch, retried=False)

    def _start_batch(self, i: int, batch: list[_Pending[ItemT, ResultT]], *, retried: bool) -> None:
        slot = self._slots[i]
        slot.inflight += 1
        self._inflight_items += len(batch)
        if not retried:
            size = len(batch)
            self._batch_sizes[size] = self._batch_sizes.get(size, 0) + 1
            win = self._win
            win.batches += 1
            win.batch_items += size
            win.batch_sizes[size] = win.batch_sizes.get(size, 0) + 1
        assert self._loop is not None
        task = self._loop.create_task(self._run_batch(i, slot, batch, retried))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(
        self, i: int, slot: _Slot[ItemT, ResultT], batch: list[_Pending[ItemT, ResultT]], retried: bool
    ) -> None:
        n = len(batch)
        retry: tuple[int, list[_Pending[ItemT, ResultT]]] | None = None
        try:
            results = await slot.handle.call([p.item for p in batch])
            if len(results) != n:
                raise RuntimeError(f"worker returned {len(results)} results for {n} items")
        except WorkerDied as e:
            self._deaths += 1
            if not slot.dead:
                slot.dead = True
                self._recount()
                log.warning("inference worker %d died: %s", i, e)
                if self._on_worker_died is not None and self._slots[i] is slot:
                    self._on_worker_died(i)
            live = [p for p in batch if not p.fut.done()]
            alt = self._pick(exclude=slot, capped=False) if not retried and live else None
            if alt is not None:
                retry = (alt, live)
            else:
                err = Unavailable("inference worker died", {"retried": retried})
                for p in live:
                    p.fut.set_exception(err)
        except asyncio.CancelledError:  # close(): nobody will answer these any more
            err = Unavailable("the deployment is shutting down")
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(err)
            raise
        except Exception as e:  # noqa: BLE001 — not swallowed: every waiter of the batch gets it
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(e)
        else:
            for p, r in zip(batch, results, strict=True):
                if not p.fut.done():
                    p.fut.set_result(r)
        finally:
            slot.inflight -= 1
            self._inflight_items -= n
            self._wake_slots()
        if retry is not None:
            self._retries += 1
            self._start_batch(retry[0], retry[1], retried=True)
