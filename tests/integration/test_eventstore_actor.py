"""The EventStore contract, run against the EventLog Ray actor through its public facade."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import ray

from cvops.actors.eventlog import EventStore
from cvops.errors import CvopsError
from cvops.events.sqlite_reader import ReadThroughStore
from tests.contracts import EventStoreContract


def _start(path: Path, opened: list[EventStore]) -> EventStore:
    st = EventStore.start(str(path), name=f"test-eventlog-{uuid.uuid4().hex[:8]}")
    st.test_path = path  # type: ignore[attr-defined]
    st.test_opened = opened  # type: ignore[attr-defined]
    opened.append(st)
    return st


class TestEventLogActor(EventStoreContract):
    fifo = False  # Ray does not promise the order in which concurrent calls reach the actor

    @pytest.fixture
    async def store(self, tmp_path: Path, ray_session: Any) -> AsyncIterator[EventStore]:
        opened: list[EventStore] = []
        st = _start(tmp_path / "events.db", opened)
        await st.ping()
        yield st
        for s in opened:
            with contextlib.suppress(CvopsError):
                await s.close()
            ray.kill(s.handle, no_restart=True)

    async def reopen(self, store: Any) -> Any:
        await store.close()
        ray.kill(store.handle, no_restart=True)
        st = _start(store.test_path, store.test_opened)
        await st.ping()
        return st


class TestReadThroughActor(EventStoreContract):
    """The gateway's store: reads through aiosqlite on the file, writes through the actor."""

    fifo = False

    @pytest.fixture
    async def store(self, tmp_path: Path, ray_session: Any) -> AsyncIterator[ReadThroughStore]:
        opened: list[EventStore] = []
        writer = _start(tmp_path / "events.db", opened)
        await writer.ping()  # the actor creates the file; the reader opens it afterwards
        st = await ReadThroughStore.open(tmp_path / "events.db", writer)
        yield st
        with contextlib.suppress(CvopsError):
            await st.close()
        for s in opened:
            ray.kill(s.handle, no_restart=True)
