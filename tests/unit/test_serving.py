"""BatchingRouter: batching, admission limit, timeouts, worker death + retry, routing, stats, close.

The workers here are fakes with the WorkerHandle shape; they stand in for the Ray actors that the
InferencePool wraps (tested with Ray in tests/integration).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cvops.errors import GatewayTimeout, TooManyRequests, Unavailable
from cvops.events.schema import InferenceStats
from cvops.serving import BatchingRouter, WorkerDied


class FakeWorker:
    def __init__(self, name: str = "w", delay: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.delay = delay
        self.gate = gate
        self.batches: list[int] = []
        self.active = 0
        self.max_active = 0

    async def call(self, items: list[Any]) -> list[Any]:
        self.batches.append(len(items))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            return [f"{self.name}:{x}" for x in items]
        finally:
            self.active -= 1


class DyingWorker(FakeWorker):
    async def call(self, items: list[Any]) -> list[Any]:
        self.batches.append(len(items))
        await asyncio.sleep(0)
        raise WorkerDied("actor died")


class BrokenWorker(FakeWorker):
    async def call(self, items: list[Any]) -> list[Any]:
        self.batches.append(len(items))
        raise ValueError("model exploded")


class ShortWorker(FakeWorker):
    async def call(self, items: list[Any]) -> list[Any]:
        return []


class ErrorItemWorker(FakeWorker):
    async def call(self, items: list[Any]) -> list[Any]:
        return [{"error": {"code": "validation_failed"}} if x < 0 else {"ok": x} for x in items]


async def test_batches_form_under_concurrency() -> None:
    w = FakeWorker(delay=0.01)
    r: BatchingRouter[int, str] = BatchingRouter([w], max_batch=8, max_wait_ms=2, max_inflight_per_worker=1)
    out = await asyncio.gather(*(r.submit(i) for i in range(40)))
    assert out == [f"w:{i}" for i in range(40)]  # every caller gets its own answer, in order
    assert sum(w.batches) == 40
    assert max(w.batches) == 8 and len(w.batches) <= 6
    assert w.max_active == 1  # never more in a worker than its slots
    st = r.stats()
    assert st.batch_sizes.get(8, 0) >= 4 and st.completed == 40 and st.queued == 0 and st.inflight == 0
    await r.close()


async def test_single_request_waits_at_most_max_wait() -> None:
    w = FakeWorker()
    r: BatchingRouter[int, str] = BatchingRouter([w], max_batch=8, max_wait_ms=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await r.submit(7) == "w:7"
    dt = loop.time() - t0
    assert 0.015 <= dt < 0.5  # held for the batching window, then sent alone
    assert w.batches == [1]
    await r.close()


async def test_queue_limit_rejects_excess_and_completes_accepted() -> None:
    workers = [FakeWorker(f"w{i}", delay=0.005) for i in range(4)]
    r: BatchingRouter[int, str] = BatchingRouter(workers, queue_limit=1000, max_batch=32, max_wait_ms=1)
    res = await asyncio.gather(*(r.submit(i) for i in range(1500)), return_exceptions=True)
    rejected = [x for x in res if isinstance(x, TooManyRequests)]
    ok = [x for x in res if isinstance(x, str)]
    assert len(rejected) == 500 and len(ok) == 1000
    assert all(x.status == 429 and x.retry_after > 0 for x in rejected)
    assert "retry_after" in rejected[0].details
    assert all(isinstance(x, (str, TooManyRequests)) for x in res)
    st = r.stats()
    assert st.rejected == 500 and st.completed == 1000 and st.requests == 1500
    win = r.drain_window()
    assert win.rejected == 500 and win.max_queue_depth == 1000
    # once drained, the queue takes work again
    assert (await r.submit(1)).endswith(":1")
    await r.close()


async def test_timeout_running_and_queued_items_are_dropped() -> None:
    gate = asyncio.Event()
    w = FakeWorker(gate=gate)
    r: BatchingRouter[int, str] = BatchingRouter(
        [w], max_batch=1, max_wait_ms=0, timeout_s=0.05, max_inflight_per_worker=1
    )
    res = await asyncio.gather(*(r.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(x, GatewayTimeout) and x.status == 504 for x in res)
    stages = sorted(x.details["stage"] for x in res if isinstance(x, GatewayTimeout))
    assert stages == ["queued", "queued", "running"]
    assert r.queued == 0 and r.inflight == 1  # the worker still holds the first one
    gate.set()
    await asyncio.sleep(0.01)
    assert r.inflight == 0 and w.batches == [1]  # the timed-out queued items never reached the worker
    assert r.stats().timed_out == 3
    assert await r.submit(5) == "w:5"
    await r.close()


async def test_dead_worker_batch_is_retried_once_on_another() -> None:
    dead, good = DyingWorker("dead"), FakeWorker("good")
    died: list[int] = []
    r: BatchingRouter[int, str] = BatchingRouter([dead, good], max_batch=4, on_worker_died=died.append)
    out = await asyncio.gather(*(r.submit(i) for i in range(4)))
    assert out == [f"good:{i}" for i in range(4)]
    assert dead.batches == [4] and good.batches == [4]
    st = r.stats()
    assert st.retries == 1 and st.worker_deaths == 1 and st.workers_alive == 1 and died == [0]
    # no more traffic to the dead one
    await asyncio.gather(*(r.submit(i) for i in range(8)))
    assert dead.batches == [4]
    # a replacement in position 0 takes traffic again
    fresh = FakeWorker("fresh", delay=0.01)
    r.replace_worker(0, fresh)
    await asyncio.gather(*(r.submit(i) for i in range(16)))
    assert fresh.batches and r.stats().workers_alive == 2
    await r.close()


async def test_batch_fails_with_unavailable_after_one_retry() -> None:
    a, b = DyingWorker("a"), DyingWorker("b")
    r: BatchingRouter[int, str] = BatchingRouter([a, b], max_batch=2)
    res = await asyncio.gather(r.submit(1), r.submit(2), return_exceptions=True)
    assert all(isinstance(x, Unavailable) and x.status == 503 for x in res)
    assert a.batches == [2] and b.batches == [2]  # one try each, no third
    with pytest.raises(Unavailable):  # nobody is left
        await r.submit(3)
    await r.close()


async def test_least_loaded_routing_spreads_and_avoids_slow_worker() -> None:
    ws = [FakeWorker(f"w{i}", delay=0.02) for i in range(4)]
    r: BatchingRouter[int, str] = BatchingRouter(ws, max_batch=1, max_wait_ms=0)
    await asyncio.gather(*(r.submit(i) for i in range(8)))
    assert [len(w.batches) for w in ws] == [2, 2, 2, 2]
    await r.close()

    slow, fast = FakeWorker("slow", delay=0.3), FakeWorker("fast", delay=0.002)
    r2: BatchingRouter[int, str] = BatchingRouter([slow, fast], max_batch=1, max_wait_ms=0)
    out = await asyncio.gather(*(r2.submit(i) for i in range(20)))
    assert sum(x.startswith("fast") for x in out) >= 18
    assert len(slow.batches) <= 2
    await r2.close()


async def test_errors_are_counted_and_propagated() -> None:
    r: BatchingRouter[int, Any] = BatchingRouter([BrokenWorker()], max_wait_ms=0)
    with pytest.raises(ValueError, match="exploded"):
        await r.submit(1)
    assert r.stats().errors == 1
    await r.close()
    r2: BatchingRouter[int, Any] = BatchingRouter([ShortWorker()], max_wait_ms=0)
    with pytest.raises(RuntimeError, match="results for"):
        await r2.submit(1)
    await r2.close()
    r3: BatchingRouter[int, Any] = BatchingRouter([ErrorItemWorker()], max_batch=4, max_wait_ms=1)
    out = await asyncio.gather(r3.submit(1), r3.submit(-1), r3.submit(2))
    assert out[0] == {"ok": 1} and "error" in out[1]
    win = r3.drain_window()
    assert win.errors == 1 and win.completed == 3
    await r3.close()


async def test_stats_windows_and_event() -> None:
    w = FakeWorker(delay=0.005)
    r: BatchingRouter[int, str] = BatchingRouter([w], max_batch=4, max_wait_ms=1)
    r.drain_window()
    await asyncio.gather(*(r.submit(i) for i in range(12)))
    win = r.drain_window()
    assert win.requests == 12 and win.completed == 12 and win.errors == 0
    assert win.batches == len(w.batches) and sum(k * v for k, v in win.batch_sizes.items()) == 12
    assert win.mean_batch == pytest.approx(12 / win.batches)
    assert 0 < win.p50_ms <= win.p95_ms <= win.p99_ms
    assert win.window_end >= win.window_start
    ev = win.to_event("dep-1")
    assert isinstance(ev, InferenceStats)
    assert (ev.deployment_id, ev.requests, ev.p99_ms, ev.mean_batch) == (
        "dep-1",
        12,
        win.p99_ms,
        win.mean_batch,
    )
    empty = r.drain_window()
    assert empty.requests == 0 and empty.p50_ms == 0.0 and empty.mean_batch == 0.0
    assert r.stats().requests == 12  # totals survive windows
    await r.close()


async def test_cancelled_caller_leaves_the_queue() -> None:
    gate = asyncio.Event()
    w = FakeWorker(gate=gate)
    r: BatchingRouter[int, str] = BatchingRouter([w], max_batch=1, max_wait_ms=0, max_inflight_per_worker=1)
    first = asyncio.ensure_future(r.submit(0))
    second = asyncio.ensure_future(r.submit(1))
    await asyncio.sleep(0.01)
    assert r.queued == 1 and r.inflight == 1
    second.cancel()
    await asyncio.sleep(0)
    assert r.queued == 0
    gate.set()
    assert await first == "w:0"
    assert w.batches == [1]
    await r.close()


async def test_close_fails_pending_with_unavailable() -> None:
    gate = asyncio.Event()
    r: BatchingRouter[int, str] = BatchingRouter(
        [FakeWorker(gate=gate)], max_batch=1, max_inflight_per_worker=1
    )
    tasks = [asyncio.ensure_future(r.submit(i)) for i in range(3)]
    await asyncio.sleep(0.02)
    await r.close()
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(x, Unavailable) for x in res)
    with pytest.raises(Unavailable):
        await r.submit(9)


async def test_close_with_grace_lets_work_finish() -> None:
    r: BatchingRouter[int, str] = BatchingRouter([FakeWorker(delay=0.02)], max_batch=2, max_wait_ms=0)
    tasks = [asyncio.ensure_future(r.submit(i)) for i in range(4)]
    await asyncio.sleep(0)
    await r.close(grace_s=2.0)
    assert [t.result() for t in tasks] == [f"w:{i}" for i in range(4)]


async def test_mark_dead_fails_queued_work_when_no_worker_is_left() -> None:
    gate = asyncio.Event()
    w = FakeWorker(gate=gate)
    r: BatchingRouter[int, str] = BatchingRouter([w], max_batch=1, max_wait_ms=0, max_inflight_per_worker=1)
    running = asyncio.ensure_future(r.submit(0))
    queued = asyncio.ensure_future(r.submit(1))
    await asyncio.sleep(0.01)
    r.mark_dead(0)
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await r.submit(2)
    gate.set()
    assert await running == "w:0"  # what was already running still answers
    r.replace_worker(0, FakeWorker("new"))
    assert await r.submit(3) == "new:3"
    await r.close()


def test_default_max_batch_follows_the_benchmark_then_the_device() -> None:
    from cvops.ml.spec import default_max_batch

    assert default_max_batch("onnxruntime-cpu", None, None) == 8
    assert default_max_batch("torch-cuda-fp16", None, None) == 32
    assert default_max_batch("tensorrt-fp16", "onnxruntime-cpu", 4) == 32  # chosen for another engine
    assert default_max_batch("torch-cuda-fp16", "torch-cuda-fp16", 128) == 128
    assert default_max_batch("onnxruntime-cpu", "onnxruntime-cpu", 1) == 1
    assert default_max_batch("torch-cuda", "torch-cuda", 1024) == 256
