"""The gateway's read side: the SQLite event log read directly, read-only, through aiosqlite.

The gateway runs on the node that holds the database file, so its reads (``/events`` pages, websocket
catch-up, the gateway's own projections) need not cross Ray to the EventLog actor and back as msgpack:

* :class:`SqliteReader` opens the file read-only (``file:...?mode=ro``; the writer keeps it in WAL mode,
  so readers never block the writer nor see a half-written transaction) on one aiosqlite connection and
  answers :meth:`read` with the query of :func:`~cvops.events.log.build_query` — the same filters and
  ordering as :meth:`EventLog.read <cvops.events.log.EventLog.read>`;
* :class:`ReadThroughStore` composes it with a writer :class:`~cvops.events.store.Store` (the EventLog
  actor's facade): ``read`` through the file, ``append`` / ``stream_version`` / ``wait_for`` through the
  writer, which stays the only writer.  An envelope is committed before ``wait_for`` reports its seq, so a
  read up to that seq sees it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiosqlite

from cvops.errors import Unavailable
from cvops.events.log import read_query, rows_to_envelopes
from cvops.events.schema import Envelope
from cvops.events.store import ForwardingStore, Reader, Store


class SqliteReader:
    """Read-only access to an event log file through one aiosqlite connection."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> SqliteReader:
        """Open the log at ``path`` read-only; raises Unavailable if there is none or it is not a log."""
        p = Path(path)
        if not p.exists():
            raise Unavailable(f"no event log at {p}", {"path": str(p)})
        conn = await aiosqlite.connect(f"file:{p.resolve()}?mode=ro", uri=True, isolation_level=None)
        try:
            await conn.execute_fetchall("PRAGMA busy_timeout = 5000")
            await conn.execute_fetchall("PRAGMA query_only = 1")
            mode = list(await conn.execute_fetchall("PRAGMA journal_mode"))
            if not mode or str(mode[0][0]).lower() != "wal":
                raise Unavailable(f"event log {p} is not in WAL mode", {"path": str(p)})
            await conn.execute_fetchall("SELECT 1 FROM events LIMIT 1")
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise Unavailable(f"cannot read event log {p}: {exc}", {"path": str(p)}) from exc
        except BaseException:
            await conn.close()
            raise
        return cls(p, conn)

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
        """Committed envelopes with ``seq > after`` matching the filters, oldest first, at most ``limit``."""
        closed = "event log reader is closed" if self._closed else ""
        sql, params = read_query(
            closed, self.path, after, limit, stream, prefix, types, until_seq, since_ts, until_ts
        )
        # execute and fetch in one job on the connection's thread: a statement left active between two
        # jobs would hold its read transaction open, and later reads would see that old snapshot
        rows = await self._conn.execute_fetchall(sql, params)
        return rows_to_envelopes(list(rows))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._conn.close()


class Writer(Store, Protocol):
    """The writer a :class:`ReadThroughStore` appends through (the EventLog actor's facade)."""

    async def close(self) -> None: ...


class ReadThroughStore(ForwardingStore):
    """A :class:`~cvops.events.store.Store` that reads the file and writes through the one writer."""

    def __init__(self, reader: SqliteReader, writer: Writer) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str | Path, writer: Writer) -> ReadThroughStore:
        """Compose ``writer`` with a reader of its file (the writer must have opened it already)."""
        return cls(await SqliteReader.open(path), writer)

    def _writer(self) -> Store:
        return self.writer

    def _reader(self) -> Reader:
        return self.reader

    async def close(self) -> None:
        """Close the reader, then the writer."""
        try:
            await self.reader.close()
        finally:
            await self.writer.close()
