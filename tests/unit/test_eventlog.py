"""EventLog: the event-store contract over SQLite, plus what only the SQLite backend has."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cvops.errors import ConcurrencyError, Unavailable, ValidationFailed
from cvops.events.log import EventLog, iter_envelopes, open_readonly
from cvops.events.schema import JobProgressed, JobQueued, encode_event
from tests.contracts import EventStoreContract, ev, seqs


class TestEventLog(EventStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[EventLog]:
        log = await EventLog.open(tmp_path / "events.db")
        opened = [log]
        log.opened_in_test = opened  # type: ignore[attr-defined]
        yield log
        for lg in opened:
            await lg.close()

    async def reopen(self, store: Any) -> Any:
        await store.close()
        log = await EventLog.open(store.path)
        store.opened_in_test.append(log)
        log.opened_in_test = store.opened_in_test
        return log

    async def open_second_writer(self, store: Any) -> Any:
        return await EventLog.open(store.path)


async def test_group_commit_uses_few_transactions(tmp_path: Path) -> None:
    log = await EventLog.open(tmp_path / "e.db")
    try:

        async def producer(p: int) -> None:
            for k in range(10):
                await log.append(f"p-{p}", [ev(k)])

        await asyncio.gather(*(producer(p) for p in range(100)))
        assert log.last_seq == 1000
        # 100 producers waiting on each commit: far fewer transactions than appends
        assert log.commits <= 100, log.commits
    finally:
        await log.close()


async def test_conflict_and_neighbours_share_one_transaction(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        await log.append("x", [ev(0)])
        before = log.commits
        results = await asyncio.gather(
            log.append("a", [ev(1)], expected_version=0),
            log.append("x", [ev(2)], expected_version=0),  # conflict: x is at 1
            log.append("b", [ev(3), ev(4)], expected_version=0),
            return_exceptions=True,
        )
        assert log.commits == before + 1  # one group, one transaction
        assert seqs(results[0]) == [2] and seqs(results[2]) == [3, 4]  # type: ignore[arg-type]
        assert isinstance(results[1], ConcurrencyError)
        assert [e.seq for e in await log.read()] == [1, 2, 3, 4]


async def test_append_encoded_and_last_seq(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        assert log.last_seq == 0
        items = [("JobQueued", encode_event(JobQueued(job_id=f"j{i}"))) for i in range(3)]
        wrote = await log.append_encoded("job-x", items, expected_version=0, user="u")
        assert seqs(wrote) == [1, 2, 3]
        assert wrote == await log.read()
        assert log.last_seq == 3
        assert [e.event() for e in await log.read()] == [JobQueued(job_id=f"j{i}") for i in range(3)]
        with pytest.raises(ConcurrencyError):
            await log.append_encoded("job-x", items, expected_version=0)
        assert await log.append("job-x", []) == []
        assert log.last_seq == 3
    with pytest.raises(Unavailable):
        await log.append("s", [ev(1)])
    with pytest.raises(Unavailable):
        await log.read()


async def test_unencodable_event_fails_its_append_alone(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        bad = JobProgressed(job_id="x", progress={"obj": object()})  # msgspec cannot encode an object()
        results = await asyncio.gather(
            log.append("a", [ev(1)]),
            log.append("b", [ev(2), bad], expected_version=0),
            log.append("c", [ev(3)]),
            return_exceptions=True,
        )
        assert seqs(results[0]) == [1] and seqs(results[2]) == [2]  # type: ignore[arg-type]
        assert isinstance(results[1], ValidationFailed)
        assert await log.stream_version("b") == 0
        assert [e.stream for e in await log.read()] == ["a", "c"]
        assert encode_event(ev(1)) == (await log.read())[0].data  # same bytes as schema.encode_event


async def test_wait_for(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        assert await log.wait_for(0, 0.05) == 0  # times out
        waiter = asyncio.create_task(log.wait_for(0, 5.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await log.append("s", [ev(1)])
        assert await asyncio.wait_for(waiter, 1.0) == 1
        assert await log.wait_for(0, 5.0) == 1  # already past: immediate


async def test_subscribe_ends_on_close(tmp_path: Path) -> None:
    log = await EventLog.open(tmp_path / "e.db")
    await log.append("s", [ev(1)])
    got: list[int] = []

    async def consume() -> None:
        async for env in log.subscribe():
            got.append(env.seq)

    waiter = asyncio.create_task(log.wait_for(1, 30.0))
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await log.close()
    await asyncio.wait_for(task, 2.0)
    assert got == [1]
    assert await asyncio.wait_for(waiter, 2.0) == 1  # a waiter returns when the log closes
    with pytest.raises(Unavailable):  # and a later wait fails, so polling loops end instead of spinning
        await log.wait_for(0, 1.0)


async def test_readonly_reader_while_writer_open(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventLog.open(path) as log:
        for i in range(25):
            await log.append(f"s-{i % 2}", [ev(i)])
        conn = open_readonly(path)
        try:
            envs = list(iter_envelopes(conn, page=7))
            assert [e.seq for e in envs] == list(range(1, 26))
            assert [e.seq for e in iter_envelopes(conn, page=7, limit=10, stream="s-1")] == list(
                range(2, 21, 2)
            )
            with pytest.raises(sqlite3.OperationalError):
                conn.execute("DELETE FROM events")
        finally:
            conn.close()
    with pytest.raises(Unavailable):
        open_readonly(tmp_path / "missing.db")


async def test_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventLog.open(path) as log:
        await log.append("s", [ev(1)])
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
            assert cols == [
                "seq",
                "stream",
                "version",
                "type",
                "ts",
                "data",
                "user",
                "correlation_id",
                "causation_id",
            ]
            indexes = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
            assert "events_type" in indexes
            with pytest.raises(sqlite3.IntegrityError):  # UNIQUE(stream, version)
                conn.execute("INSERT INTO events VALUES (99, 's', 1, 'JobQueued', 0, x'00', '', '', '')")
        finally:
            conn.close()


async def test_second_writer_in_another_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "e.db"
    async with await EventLog.open(path):
        code = (
            "import asyncio, sys\n"
            "from cvops.events.log import EventLog\n"
            "from cvops.errors import Unavailable\n"
            "try:\n"
            f"    asyncio.run(EventLog.open({str(path)!r}))\n"
            "except Unavailable as e:\n"
            "    print('refused:', e); sys.exit(3)\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=subprocess.PIPE, cwd=str(Path(__file__).parents[2])
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 3, out
        assert b"already open by another writer" in out
    # once released, another process may open it
    async with await EventLog.open(path) as log:
        assert log.last_seq == 0


async def test_open_refuses_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    bad = tmp_path / "events.db"
    bad.write_bytes(b"not a database at all" * 200)
    with pytest.raises(Unavailable, match="cannot open event log"):
        await EventLog.open(bad)
    # the lock was released: a good file in the same place opens fine afterwards
    bad.unlink()
    async with await EventLog.open(bad) as log:
        assert seqs(await log.append("s", [ev(1)])) == [1]
