"""Contract tests for an event store, written once and run against every backend.

A backend test class subclasses :class:`EventStoreContract` and provides the async fixture ``store``: an
object with the async methods

* ``append(stream, events, expected_version=None, *, user=, correlation_id=, causation_id=) -> list[Envelope]``
  (the envelopes written, equal to what a read returns for them)
* ``read(after=0, limit=1000, stream=None, prefix=None, types=None, ..., until_seq=None) -> list[Envelope]``
* ``subscribe(after=0, *, stream=None, prefix=None, types=None) -> AsyncIterator[Envelope]``
* ``stream_version(stream) -> int``

Backends that can be closed and reopened, or that guard against a second writer, override
:meth:`EventStoreContract.reopen` and :meth:`EventStoreContract.open_second_writer`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cvops.errors import ConcurrencyError, CvopsError
from cvops.events.schema import Envelope, JobProgressed, JobQueued, UserCreated, decode_event


def ev(i: int) -> JobQueued:
    return JobQueued(job_id=f"job-{i}", position=i)


async def read_all(store: Any, **filters: Any) -> list[Envelope]:
    out: list[Envelope] = []
    after = 0
    while True:
        batch = await store.read(after=after, limit=500, **filters)
        out.extend(batch)
        if len(batch) < 500:
            return out
        after = batch[-1].seq


def seqs(envs: list[Envelope]) -> list[int]:
    return [e.seq for e in envs]


async def collect(it: AsyncIterator[Envelope], n: int, timeout: float = 10.0) -> list[Envelope]:
    out: list[Envelope] = []

    async def run() -> None:
        async for env in it:
            out.append(env)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


class EventStoreContract:
    """Behaviour every event store must have.  Subclasses provide the ``store`` fixture."""

    fifo = True  # concurrent calls reach the store in call order (False for remote backends)

    async def reopen(self, store: Any) -> Any:
        """Close ``store`` and open it again on the same data; backends without it skip."""
        pytest.skip("backend cannot be reopened")

    async def open_second_writer(self, store: Any) -> Any:
        """Open a second writer on the store's data (it must raise Unavailable); backends without it skip."""
        pytest.skip("backend has no second-writer guard")

    # ------------------------------------------------------------------------------------ basics

    async def test_append_and_read_back(self, store: Any) -> None:
        wrote = await store.append(
            "job-1", [ev(1), ev(2)], user="alice", correlation_id="c1", causation_id="x"
        )
        assert seqs(wrote) == [1, 2]
        wrote += await store.append("job-2", [ev(3)])
        assert seqs(wrote[2:]) == [3]
        envs = await store.read()
        assert wrote == envs  # append hands back exactly what it wrote
        assert [e.seq for e in envs] == [1, 2, 3]
        assert [(e.stream, e.version) for e in envs] == [("job-1", 1), ("job-1", 2), ("job-2", 1)]
        assert envs[0].type == "JobQueued"
        assert envs[0].event() == ev(1)
        assert decode_event(envs[2].type, envs[2].data) == ev(3)
        assert (envs[0].user, envs[0].correlation_id, envs[0].causation_id) == ("alice", "c1", "x")
        assert envs[0].ts > 0
        assert await store.stream_version("job-1") == 2
        assert await store.stream_version("job-2") == 1
        assert await store.stream_version("nope") == 0
        assert [e.seq for e in await store.read(after=1, limit=1)] == [2]

    async def test_expected_version_conflict_writes_nothing(self, store: Any) -> None:
        assert seqs(await store.append("model-a", [ev(1)], expected_version=0)) == [1]
        with pytest.raises(ConcurrencyError) as info:
            await store.append("model-a", [ev(2)], expected_version=0)  # stream is not new
        assert info.value.details == {"stream": "model-a", "expected": 0, "actual": 1}
        with pytest.raises(ConcurrencyError):
            await store.append("model-a", [ev(2), ev(3)], expected_version=5)
        with pytest.raises(ConcurrencyError):
            await store.append("model-new", [ev(2)], expected_version=1)
        assert [e.seq for e in await read_all(store)] == [1]
        assert await store.stream_version("model-a") == 1
        assert await store.stream_version("model-new") == 0
        # the right version works, and seq continues without a gap after the failures
        assert seqs(await store.append("model-a", [ev(2)], expected_version=1)) == [2]
        assert seqs(await store.append("model-a", [ev(3)])) == [3]  # None: no check

    async def test_multi_event_batch_is_atomic(self, store: Any) -> None:
        await store.append("s", [ev(0)])
        batch = [ev(i) for i in range(1, 51)]
        with pytest.raises(ConcurrencyError):
            await store.append("s", batch, expected_version=0)
        assert len(await read_all(store)) == 1
        wrote = await store.append("s", batch, expected_version=1)
        assert seqs(wrote) == list(range(2, 52))
        assert [e.version for e in wrote] == list(range(2, 52))
        assert len({e.ts for e in wrote}) == 1  # one commit
        envs = await read_all(store, stream="s")
        assert envs[1:] == wrote
        assert [e.version for e in envs] == list(range(1, 52))
        assert [e.event() for e in envs[1:]] == batch

    async def test_conflict_in_group_fails_alone(self, store: Any) -> None:
        await store.append("shared", [ev(0)])
        # all of these are queued in the same loop iteration, so they share a group commit
        calls = [store.append(f"n-{i}", [ev(i), ev(i + 100)], expected_version=0) for i in range(10)]
        calls.insert(3, store.append("shared", [ev(1)], expected_version=7))  # wrong version
        calls.insert(6, store.append("shared", [ev(2)], expected_version=1))  # right version
        calls.insert(8, store.append("shared", [ev(3)], expected_version=1))  # loses to the one before
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 2 and all(isinstance(e, ConcurrencyError) for e in errors)
        assert isinstance(results[3], ConcurrencyError)
        # the two appends that both expect version 1: one wins, the other fails seeing version 2.
        # An in-process log serves them in call order; a remote one (Ray) need not.
        if self.fifo:
            winner, loser = 6, 8
        else:
            winner, loser = (6, 8) if isinstance(results[8], ConcurrencyError) else (8, 6)
        assert isinstance(results[loser], ConcurrencyError)
        assert not isinstance(results[winner], BaseException)
        assert results[loser].details["actual"] == 2  # type: ignore[union-attr]
        ok = [r for r in results if not isinstance(r, BaseException)]
        assert len(ok) == 11
        all_seqs = sorted(e.seq for r in ok for e in r)  # type: ignore[union-attr]
        assert all_seqs == list(range(2, 2 + 21))  # gapless: nothing written for the failures
        shared = await read_all(store, stream="shared")
        assert [e.event() for e in shared] == [ev(0), ev(2) if winner == 6 else ev(3)]
        for i in range(10):
            assert await store.stream_version(f"n-{i}") == 2

    async def test_gapless_under_concurrency(self, store: Any) -> None:
        async def producer(p: int) -> list[int]:
            got: list[int] = []
            wrote: list[Envelope] = []
            for k in range(5):
                envs = await store.append(f"p-{p}", [ev(k)], expected_version=k)
                assert [(e.stream, e.version) for e in envs] == [(f"p-{p}", k + 1)]
                got += seqs(envs)
                wrote += envs
                if random.random() < 0.3:
                    await asyncio.sleep(0)
            assert wrote == await read_all(store, stream=f"p-{p}")
            return got

        results = await asyncio.gather(*(producer(p) for p in range(100)))
        assert sorted(s for r in results for s in r) == list(range(1, 501))
        envs = await read_all(store)
        assert [e.seq for e in envs] == list(range(1, 501))
        for p in (0, 57, 99):
            assert [e.version for e in await read_all(store, stream=f"p-{p}")] == [1, 2, 3, 4, 5]
        # each producer's acknowledged seqs are increasing (its appends are ordered)
        for r in results:
            assert r == sorted(r)

    async def test_subscribe_catch_up_then_live_no_gap_no_duplicate(self, store: Any) -> None:
        for i in range(60):
            await store.append(f"a-{i % 3}", [ev(i)])

        async def writer() -> None:
            for i in range(60, 200):
                await store.append(f"a-{i % 3}", [ev(i)])
                if i % 7 == 0:
                    await asyncio.sleep(0.001)

        it = store.subscribe(after=10)
        task = asyncio.create_task(writer())
        try:
            got = await collect(it, 190)
        finally:
            await task
            await it.aclose()
        assert [e.seq for e in got] == list(range(11, 201))
        assert [e.event() for e in got] == [ev(i) for i in range(10, 200)]

    async def test_subscribe_filtered_live(self, store: Any) -> None:
        await store.append("model-1", [ev(0)])
        await store.append("job-1", [JobProgressed(job_id="job-1", progress={"p": 0})])
        it = store.subscribe(after=0, prefix="job-", types=["JobProgressed"])

        async def writer() -> None:
            for i in range(1, 20):
                await store.append("model-1", [ev(i)])  # filtered out
                await store.append("job-1", [JobProgressed(job_id="job-1", progress={"p": i})])
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        try:
            got = await collect(it, 20)
        finally:
            await task
            await it.aclose()
        assert [e.event().progress["p"] for e in got] == list(range(20))  # type: ignore[union-attr]
        assert {e.stream for e in got} == {"job-1"}

    async def test_filters(self, store: Any) -> None:
        await store.append("user-ann", [UserCreated(username="ann", role="admin", password_hash="h")])
        await store.append("job-1", [ev(1), JobProgressed(job_id="job-1", progress={})])
        await store.append("job-2", [ev(2)])
        await store.append("jobx", [ev(3)])
        await store.append("model-1", [ev(4)])
        assert [e.seq for e in await read_all(store, stream="job-1")] == [2, 3]
        assert [e.seq for e in await read_all(store, prefix="job-")] == [2, 3, 4]
        assert [e.seq for e in await read_all(store, prefix="job")] == [2, 3, 4, 5]
        assert [e.seq for e in await read_all(store, types=["UserCreated", "JobProgressed"])] == [1, 3]
        assert await read_all(store, types=[]) == []
        assert [e.seq for e in await read_all(store, until_seq=3)] == [1, 2, 3]
        assert [e.seq for e in await read_all(store, prefix="job-", types=["JobQueued"], until_seq=3)] == [2]
        assert [e.seq for e in await store.read(after=2, limit=2)] == [3, 4]
        assert await store.read(after=6) == []
        assert await read_all(store, stream="nope") == []
        # prefix with LIKE metacharacters is taken literally
        await store.append("a_%b", [ev(5)])
        await store.append("axxb", [ev(6)])
        assert [e.stream for e in await read_all(store, prefix="a_%")] == ["a_%b"]

    async def test_payload_roundtrip_of_every_field(self, store: Any) -> None:
        e = JobProgressed(job_id="j", progress={"loss": 0.5, "nested": {"a": [1, 2, 3]}, "s": "ü"})
        await store.append("job-j", [e], user="bob", correlation_id="corr", causation_id="cause")
        (env,) = await store.read()
        assert env.event() == e
        assert env.user == "bob" and env.correlation_id == "corr" and env.causation_id == "cause"

    async def test_bad_input(self, store: Any) -> None:
        with pytest.raises(CvopsError):
            await store.append("", [ev(1)])
        with pytest.raises(CvopsError):
            await store.append("s", [ev(1)], expected_version=-1)
        assert await store.read() == []

    # ----------------------------------------------------------------------------- persistence

    async def test_reopen_keeps_everything(self, store: Any) -> None:
        for i in range(30):
            await store.append(f"r-{i % 4}", [ev(i)])
        before = await read_all(store)
        store2 = await self.reopen(store)
        after = await read_all(store2)
        assert after == before
        assert await store2.stream_version("r-1") == len([e for e in before if e.stream == "r-1"])
        assert seqs(await store2.append("r-1", [ev(99)], expected_version=8)) == [31]
        with pytest.raises(ConcurrencyError):
            await store2.append("r-2", [ev(99)], expected_version=0)

    async def test_second_writer_refused(self, store: Any) -> None:
        await store.append("s", [ev(1)])
        with pytest.raises(CvopsError) as info:
            await self.open_second_writer(store)
        assert info.value.status == 503
        # the first writer still works
        assert seqs(await store.append("s", [ev(2)], expected_version=1)) == [2]
