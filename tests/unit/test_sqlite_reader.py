"""The aiosqlite read side: the event-store contract when it reads and a real EventLog writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cvops.errors import CvopsError, Unavailable
from cvops.events.log import EventLog
from cvops.events.schema import JobProgressed
from cvops.events.sqlite_reader import ReadThroughStore, SqliteReader
from tests.contracts import EventStoreContract, collect, ev, seqs


class TestReadThroughStore(EventStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ReadThroughStore]:
        log = await EventLog.open(tmp_path / "events.db")
        st = await ReadThroughStore.open(log.path, log)
        yield st
        await st.close()
        assert log.closed  # closing the composed store closes the writer too


async def test_reads_come_from_the_file_not_the_writer(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        await log.append("job-1", [ev(1), JobProgressed(job_id="1", progress={"p": 1})], user="u")
        await log.append("model-1", [ev(2)])
        reader = await SqliteReader.open(log.path)
        try:
            # the same answers as the writer's own reader, for every filter
            for filters in ({}, {"prefix": "job-"}, {"types": ["JobQueued"]}, {"until_seq": 2}, {"after": 1}):
                assert await reader.read(**filters) == await log.read(**filters)  # type: ignore[arg-type]
            assert await reader.read(since_ts=0.0, until_ts=1e12) == await log.read()
            log.read = None  # type: ignore[assignment, method-assign]  # a read through the writer fails
            st = ReadThroughStore(reader, log)
            assert seqs(await st.read(prefix="job-")) == [1, 2]
            got = await collect(st.subscribe(after=1), 2)
            assert seqs(got) == [2, 3]
        finally:
            await reader.close()


async def test_a_read_after_an_append_sees_it_under_concurrent_reads(tmp_path: Path) -> None:
    # one connection serves every reader: no read may be left inside an older read's snapshot
    async with await EventLog.open(tmp_path / "e.db") as log:
        st = ReadThroughStore(await SqliteReader.open(log.path), log)
        try:

            async def producer(p: int) -> None:
                for k in range(5):
                    await st.append(f"p-{p}", [ev(k)])
                    assert len(await st.read(stream=f"p-{p}")) == k + 1

            await asyncio.gather(*(producer(p) for p in range(50)))
        finally:
            await st.reader.close()


async def test_reader_is_read_only(tmp_path: Path) -> None:
    async with await EventLog.open(tmp_path / "e.db") as log:
        await log.append("s", [ev(1)])
        reader = await SqliteReader.open(log.path)
        try:
            with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
                await reader._conn.execute("DELETE FROM events")
        finally:
            await reader.close()
        with pytest.raises(Unavailable):
            await reader.read()


async def test_open_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="no event log"):
        await SqliteReader.open(tmp_path / "none.db")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 200)
    with pytest.raises(CvopsError):
        await SqliteReader.open(bad)
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE events (seq INTEGER)").connection.close()
    with pytest.raises(Unavailable, match="WAL"):
        await SqliteReader.open(plain)
