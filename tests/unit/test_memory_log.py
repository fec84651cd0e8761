"""InMemoryLog: the same event-store contract as the SQLite EventLog and the EventLog actor."""

from __future__ import annotations

import asyncio

import pytest

from cvops.errors import ValidationFailed
from cvops.events.memory import InMemoryLog, LogCore
from cvops.events.projection import Projection
from cvops.events.schema import Envelope, JobQueued
from tests.contracts import EventStoreContract, ev, seqs


class TestInMemoryLog(EventStoreContract):
    @pytest.fixture
    async def store(self) -> InMemoryLog:
        return InMemoryLog()


async def test_wait_for_wakes_on_append_and_times_out() -> None:
    log = InMemoryLog()
    assert await log.wait_for(0, 0) == 0
    assert await log.wait_for(0, 0.05) == 0  # nothing came

    async def later() -> None:
        await asyncio.sleep(0.05)
        await log.append("s", [ev(1)])

    task = asyncio.create_task(later())
    assert await asyncio.wait_for(log.wait_for(0, 30), 5) == 1  # woken, not timed out
    await task


async def test_projection_over_the_in_memory_log() -> None:
    log = InMemoryLog()

    def fold(state: list[int], env: Envelope) -> list[int]:
        return [*state, env.seq]

    p = Projection(log, fold, [], prefix="job-")
    own = await log.append("job-a", [JobQueued(job_id="a")])
    await p.fold_appended(own)
    await log.append("other", [ev(2)])
    assert await p.wait_until(lambda s: s == [1], timeout=1)
    assert p.position == 2


def test_core_read_filters_and_time_window() -> None:
    core = LogCore(clock=iter([10.0, 20.0, 30.0]).__next__)
    core.append("job-1", [ev(1), ev(2)])
    core.append("model-1", [ev(3)])
    core.append("job-2", [ev(4)])
    assert seqs(core.read(prefix="job-")) == [1, 2, 4]
    assert seqs(core.read(since_ts=15, until_ts=25)) == [3]
    assert seqs(core.read(after=1, limit=2)) == [2, 3]
    assert seqs(core.read(until_seq=2)) == [1, 2]
    assert core.read(types=[]) == []
    with pytest.raises(ValidationFailed):
        core.read(limit=-1)
    with pytest.raises(ValidationFailed):
        core.append("s", [ev(1)], expected_version=-1)
