"""Projection / SyncProjection over the real SQLite EventLog: catch-up, filters, waits, own appends."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from cvops.events.log import EventLog
from cvops.events.projection import Projection, SyncProjection
from cvops.events.schema import Envelope, Event, JobProgressed, JobQueued


def count(state: list[str], env: Envelope) -> list[str]:
    state.append(f"{env.seq}:{env.stream}:{env.type}")
    return state


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventLog]:
    lg = await EventLog.open(tmp_path / "events.db")
    yield lg
    await lg.close()


async def test_catch_up_folds_filtered_events_and_stands_at_the_head(log: EventLog) -> None:
    await log.append("job-a", [JobQueued(job_id="a", position=1)])
    await log.append("other", [JobQueued(job_id="x", position=1)])
    await log.append("job-b", [JobProgressed(job_id="b", progress={})])
    p = Projection(log, count, [], prefix="job-", types=["JobQueued", "JobProgressed"])
    state = await p.catch_up()
    assert state == ["1:job-a:JobQueued", "3:job-b:JobProgressed"]
    assert p.position == 3
    await log.append("other", [JobQueued(job_id="y", position=2)])
    await p.catch_up()
    assert p.position == 4  # non-matching events move the position too, so waits wait for new ones
    assert len(p.state) == 2


async def test_catch_up_pages_through_a_long_log(log: EventLog) -> None:
    for i in range(25):
        await log.append(f"job-{i}", [JobQueued(job_id=str(i), position=i)])
    p = Projection(log, count, [], page=4)
    assert len(await p.catch_up()) == 25
    assert p.position == 25


async def test_wait_until_wakes_on_a_new_event_without_polling(log: EventLog) -> None:
    p = Projection(log, count, [], stream="job-z")

    async def later() -> None:
        await asyncio.sleep(0.2)
        await log.append("job-z", [JobQueued(job_id="z", position=1)])

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    assert await p.wait_until(lambda s: len(s) == 1, timeout=10)
    assert time.monotonic() - t0 < 5
    await task
    assert not await p.wait_until(lambda s: len(s) == 2, timeout=0.2)


async def test_fold_appended_folds_own_events_and_reads_a_gap(log: EventLog) -> None:
    p = Projection(log, count, [])
    await p.catch_up()
    own = await log.append("job-a", [JobQueued(job_id="a", position=1)])  # the writer's own envelopes
    await p.fold_appended(own)
    assert p.state == ["1:job-a:JobQueued"] and p.position == 1
    await p.fold_appended(own)  # folding it twice is harmless
    assert len(p.state) == 1
    await log.append("job-b", [JobQueued(job_id="b", position=2)])  # someone else's event: a gap
    own = await log.append("job-a", [JobProgressed(job_id="a", progress={})])
    await p.fold_appended(own)
    assert [s.split(":")[0] for s in p.state] == ["1", "2", "3"]


class _Blocking:
    """A SyncStore over an EventLog running on a loop in another thread (as a worker sees the actor)."""

    def __init__(self, log: EventLog, loop: asyncio.AbstractEventLoop) -> None:
        self.log, self.loop = log, loop

    def _run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(30)

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[Envelope]:
        return self._run(self.log.append(stream, events, expected_version))  # type: ignore[no-any-return]

    def read(self, after: int = 0, limit: int = 1000, **filters: Any) -> list[Envelope]:
        return self._run(self.log.read(after, limit, **filters))  # type: ignore[no-any-return]

    def wait_for(self, after: int, timeout: float) -> int:
        return self._run(self.log.wait_for(after, timeout))  # type: ignore[no-any-return]


async def test_sync_projection_in_a_thread(log: EventLog) -> None:
    store = _Blocking(log, asyncio.get_running_loop())
    await log.append("job-a", [JobQueued(job_id="a", position=1)])
    result: dict[str, Any] = {}

    def worker() -> None:
        p = SyncProjection(store, count, [], stream="job-a")
        result["first"] = list(p.catch_up())
        result["waited"] = p.wait_until(lambda s: len(s) == 2, timeout=10)
        result["state"] = list(p.state)

    th = threading.Thread(target=worker)
    th.start()
    await asyncio.sleep(0.3)
    await log.append("job-a", [JobProgressed(job_id="a", progress={})])
    await asyncio.get_running_loop().run_in_executor(None, th.join, 30)
    assert result == {
        "first": ["1:job-a:JobQueued"],
        "waited": True,
        "state": ["1:job-a:JobQueued", "2:job-a:JobProgressed"],
    }
