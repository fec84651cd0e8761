"""The event log: one SQLite table, one writer, group commit.

Design (DESIGN.md §2):

* one table ``events`` with a global gapless ``seq``, a per-stream ``version`` and
  ``UNIQUE(stream, version)``; WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``;
* one writer per database file, enforced by an exclusive ``flock`` on ``<db>.lock``;
* **group commit**: appends that arrive while a commit is in flight are queued and written together in
  the next transaction (one fsync).  Each append's expected version is checked on its own against an
  in-memory cache of stream versions before anything is written, so a conflict fails that append alone,
  never its neighbours in the group;
* an append returns only after its transaction committed, so an acknowledged event survives ``kill -9``;
* reads use a second connection on its own thread; subscriptions are catch-up subscriptions
  (history, then live) with no gap and no duplicate at the switch.

The writer connection is a plain :mod:`sqlite3` connection owned by one dedicated thread; the asyncio side
only queues appends and resolves futures.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import msgspec

from cvops.errors import ConcurrencyError, Unavailable, ValidationFailed
from cvops.events.schema import Envelope, Event

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data BLOB NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    correlation_id TEXT NOT NULL DEFAULT '',
    causation_id TEXT NOT NULL DEFAULT '',
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_type ON events (type);
"""

COLUMNS = "seq, stream, version, type, ts, data, user, correlation_id, causation_id"
_INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_NCOL = 9
_CHUNK = 256  # rows per multi-row INSERT (256 * 9 parameters, well under SQLite's limit)


def _insert_sql(rows: int) -> str:
    sql = _INSERT_SQL.get(rows)
    if sql is None:
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
        sql = _INSERT_SQL[rows] = f"INSERT INTO events ({COLUMNS}) VALUES {values}"
    return sql


_INSERT_SQL: dict[int, str] = {}


def _chunks(rows: int) -> Iterator[int]:
    """Split ``rows`` into INSERT sizes from a small fixed set (256, 128, ..., 1), so that the few
    statements stay in sqlite3's statement cache."""
    while rows >= _CHUNK:
        yield _CHUNK
        rows -= _CHUNK
    bit = _CHUNK >> 1
    while rows:
        if rows & bit:
            yield bit
            rows -= bit
        bit >>= 1


def insert_flat(conn: sqlite3.Connection, params: list[Any]) -> None:
    """Insert rows given as one flat parameter list (9 per row) with multi-row INSERTs, which costs
    SQLite and Python less per row than ``executemany``."""
    pos = 0
    for size in _chunks(len(params) // _NCOL):
        end = pos + size * _NCOL
        conn.execute(_insert_sql(size), params[pos:end])
        pos = end


_encode = msgspec.msgpack.Encoder().encode  # the same bytes as schema.encode_event, one call less


# ------------------------------------------------------------------------------- shared read helpers


def build_query(
    after: int = 0,
    limit: int | None = 1000,
    stream: str | None = None,
    prefix: str | None = None,
    types: Sequence[str] | None = None,
    since_ts: float | None = None,
    until_ts: float | None = None,
    until_seq: int | None = None,
) -> tuple[str, list[Any]]:
    """SQL + parameters for a filtered read, ordered by ``seq``.

    ``stream`` is an exact stream name, ``prefix`` a stream-name prefix, ``types`` event types (any of),
    ``since_ts``/``until_ts`` an inclusive time window, ``until_seq`` an inclusive upper seq bound.
    """
    where = ["seq > ?"]
    params: list[Any] = [after]
    if stream is not None:
        where.append("stream = ?")
        params.append(stream)
    if prefix:
        where.append("substr(stream, 1, ?) = ?")
        params.extend((len(prefix), prefix))
    if types is not None:
        types = list(types)
        if not types:
            where.append("0")
        else:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
    if since_ts is not None:
        where.append("ts >= ?")
        params.append(since_ts)
    if until_ts is not None:
        where.append("ts <= ?")
        params.append(until_ts)
    if until_seq is not None:
        where.append("seq <= ?")
        params.append(until_seq)
    sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def read_query(
    closed: str,
    path: Path,
    after: int,
    limit: int,
    stream: str | None,
    prefix: str | None,
    types: Sequence[str] | None,
    until_seq: int | None,
    since_ts: float | None,
    until_ts: float | None,
) -> tuple[str, list[Any]]:
    """The checked query of a Store's ``read``: Unavailable if ``closed`` names a closed log (it is the
    error's message, empty while open), ValidationFailed on a negative ``limit``, else :func:`build_query`."""
    if closed:
        raise Unavailable(closed, {"path": str(path)})
    if limit < 0:
        raise ValidationFailed(f"limit must be >= 0, got {limit}")
    return build_query(
        after, limit, stream, prefix, types, since_ts=since_ts, until_ts=until_ts, until_seq=until_seq
    )


def rows_to_envelopes(rows: list[Any]) -> list[Envelope]:
    return [
        Envelope(seq=a, stream=b, version=c, type=d, ts=e, data=f, user=g, correlation_id=h, causation_id=i)
        for a, b, c, d, e, f, g, h, i in rows
    ]


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``) that works while a server holds the writer lock."""
    p = Path(path)
    if not p.exists():
        raise Unavailable(f"no event log at {p}", {"path": str(p)})
    conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def read_rows(conn: sqlite3.Connection, **filters: Any) -> list[Envelope]:
    sql, params = build_query(**filters)
    return rows_to_envelopes(conn.execute(sql, params).fetchall())


def iter_envelopes(
    conn: sqlite3.Connection,
    after: int = 0,
    *,
    page: int = 5000,
    limit: int | None = None,
    **filters: Any,
) -> Iterator[Envelope]:
    """Every matching envelope after ``after`` (at most ``limit``), read in pages."""
    remaining = limit
    while remaining is None or remaining > 0:
        n = page if remaining is None else min(page, remaining)
        batch = read_rows(conn, after=after, limit=n, **filters)
        yield from batch
        if len(batch) < n:
            return
        after = batch[-1].seq
        if remaining is not None:
            remaining -= len(batch)


# ---------------------------------------------------------------------------------------- the writer


class _Pending:
    """One append waiting for its group: either encoded ``items`` or ``events`` to encode (``encoded``)."""

    __slots__ = ("stream", "items", "encoded", "expected", "user", "correlation_id", "causation_id", "future")

    def __init__(
        self,
        stream: str,
        items: Sequence[Any],
        encoded: bool,
        expected: int | None,
        user: str,
        correlation_id: str,
        causation_id: str,
        future: asyncio.Future[list[Envelope]],
    ) -> None:
        self.stream = stream
        self.items = items
        self.encoded = encoded
        self.expected = expected
        self.user = user
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.future = future


# result of one append inside a group: the envelopes it wrote, or the error that fails it alone
_Result = list[Envelope] | BaseException


class _Writer:
    """State owned by the writer thread: the connection, the committed seq and the stream versions."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA busy_timeout = 5000")
        self.conn.executescript(SCHEMA)
        row = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self.seq: int = int(row[0])
        self.versions: dict[str, int] = {}

    def version_of(self, stream: str) -> int:
        v = self.versions.get(stream)
        if v is None:
            row = self.conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
            v = self.versions[stream] = int(row[0])
        return v

    def commit(self, batch: list[_Pending], ts: float) -> tuple[list[_Result], int]:
        try:
            return self._commit(batch, ts)
        except sqlite3.IntegrityError:
            # the version cache disagrees with the file (should not happen with one writer): reload, retry
            log.warning("event log version cache was stale; retrying the group with fresh versions")
            self.versions.clear()
            return self._commit(batch, ts)

    def _commit(self, batch: list[_Pending], ts: float) -> tuple[list[_Result], int]:
        conn = self.conn
        results: list[_Result] = []
        params: list[Any] = []  # the rows, flat: 9 values each
        spans: list[tuple[int, int, int]] = []  # per written append: (index in results, first row, end)
        touched: dict[str, int] = {}
        seq = self.seq
        conn.execute("BEGIN IMMEDIATE")
        try:
            for p in batch:
                stream = p.stream
                cur = touched.get(stream)
                if cur is None:
                    cur = self.version_of(stream)
                if p.expected is not None and p.expected != cur:
                    results.append(
                        ConcurrencyError(
                            f"stream {stream!r} is at version {cur}, not {p.expected}",
                            {"stream": stream, "expected": p.expected, "actual": cur},
                        )
                    )
                    continue
                first = seq + 1
                row0 = len(params) // _NCOL
                user, corr, caus = p.user, p.correlation_id, p.causation_id
                if p.encoded:
                    for type_, data in p.items:
                        seq += 1
                        cur += 1
                        params += (seq, stream, cur, type_, ts, data, user, corr, caus)
                else:
                    # encode here, in one pass with building the rows; a payload that does not encode
                    # fails its own append only
                    mark = len(params)
                    try:
                        for e in p.items:
                            seq += 1
                            cur += 1
                            params += (
                                seq,
                                stream,
                                cur,
                                e.__struct_config__.tag,
                                ts,
                                _encode(e),
                                user,
                                corr,
                                caus,
                            )
                    except Exception as exc:  # noqa: BLE001 - reported to the caller of this append
                        del params[mark:]
                        seq = first - 1
                        results.append(ValidationFailed(f"event does not encode: {exc}", {"stream": stream}))
                        continue
                touched[stream] = cur
                spans.append((len(results), row0, len(params) // _NCOL))
                results.append([])  # its envelopes, once committed
            if params:
                insert_flat(conn, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.seq = seq
        self.versions.update(touched)
        # the writer knows every field of what it wrote: hand the envelopes back, no read needed
        envs = [
            Envelope(
                seq=params[k],
                stream=params[k + 1],
                version=params[k + 2],
                type=params[k + 3],
                ts=ts,
                data=params[k + 5],
                user=params[k + 6],
                correlation_id=params[k + 7],
                causation_id=params[k + 8],
            )
            for k in range(0, len(params), _NCOL)
        ]
        for i, row0, end in spans:
            results[i] = envs[row0:end]
        return results, seq

    def close(self) -> None:
        self.conn.close()


class EventLog:
    """The single writer of one SQLite event log (see the module docstring)."""

    def __init__(self, path: Path, lock_file: IO[bytes], writer: _Writer, reader: sqlite3.Connection) -> None:
        self.path = path
        self._lock_file = lock_file
        self._w = writer
        self._reader = reader
        self._rexec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvops-eventlog-reader")
        self._loop = asyncio.get_running_loop()
        self._last_seq = writer.seq
        self._pending: list[_Pending] = []  # appends waiting for the next group
        self._busy = False  # a group is scheduled or being committed
        self._idle = asyncio.Event()  # set while nothing is pending or in flight
        self._idle.set()
        self._changed = asyncio.Event()  # replaced and set on every commit (wakes wait_for)
        self._closed = False
        self._jobs: queue.SimpleQueue[tuple[list[_Pending], float] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer_main, name="cvops-eventlog-writer", daemon=True)
        self._thread.start()
        self.commits = 0  # transactions committed by this instance (group commit makes it < appends)

    # ------------------------------------------------------------------------------- open / close

    @classmethod
    async def open(cls, path: str | Path) -> EventLog:
        """Open (creating if needed) the log at ``path``; raises Unavailable if another writer holds it."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        lock_path = p.with_name(p.name + ".lock")
        lock_file = open(lock_path, "ab")  # noqa: SIM115 - held for the life of the log
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock_file.close()
            raise Unavailable(
                f"event log {p} is already open by another writer (lock {lock_path} is held)",
                {"path": str(p), "lock": str(lock_path)},
            ) from exc
        writer: _Writer | None = None
        try:
            loop = asyncio.get_running_loop()
            writer = await loop.run_in_executor(None, _Writer, p)
            reader = await loop.run_in_executor(None, _open_reader, p)
        except sqlite3.DatabaseError as exc:
            if writer is not None:
                writer.close()
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            lock_file.close()
            raise Unavailable(f"cannot open event log {p}: {exc}", {"path": str(p)}) from exc
        except BaseException:
            if writer is not None:
                writer.close()
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            lock_file.close()
            raise
        log.info("event log %s opened at seq %d", p, writer.seq)
        return cls(p, lock_file, writer, reader)

    async def close(self) -> None:
        """Finish queued appends, then close both connections and release the writer lock."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        self._jobs.put(None)  # the writer thread closes its connection and ends
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.join)
        await loop.run_in_executor(self._rexec, self._reader.close)
        self._rexec.shutdown(wait=True)
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        self._lock_file.close()
        self._changed.set()  # wake waiters so subscriptions notice the close
        log.info("event log %s closed at seq %d", self.path, self._last_seq)

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def last_seq(self) -> int:
        """The highest committed seq (0 for an empty log)."""
        return self._last_seq

    @property
    def closed(self) -> bool:
        return self._closed

    # -------------------------------------------------------------------------------------- append

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        user: str = "",
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        """Append ``events`` to ``stream`` atomically; returns the envelopes written (seq, version, ts and
        the encoded payload), once durably committed — a writer folds its own events without reading
        them back.

        ``expected_version``: None = no check, 0 = the stream must be new, N = the stream must be at N;
        a mismatch raises ConcurrencyError and writes nothing.
        """
        return await self._submit(stream, events, False, expected_version, user, correlation_id, causation_id)

    async def append_encoded(
        self,
        stream: str,
        items: Sequence[tuple[str, bytes]],
        expected_version: int | None = None,
        *,
        user: str = "",
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        """Like :meth:`append` for ``(type, msgpack data)`` pairs that are already encoded."""
        return await self._submit(stream, items, True, expected_version, user, correlation_id, causation_id)

    def _submit(
        self,
        stream: str,
        items: Sequence[Any],
        encoded: bool,
        expected: int | None,
        user: str,
        correlation_id: str,
        causation_id: str,
    ) -> asyncio.Future[list[Envelope]]:
        if self._closed:
            raise Unavailable("event log is closed", {"path": str(self.path)})
        if not stream:
            raise ValidationFailed("an event stream name must not be empty")
        if expected is not None and expected < 0:
            raise ValidationFailed(f"expected_version must be >= 0, got {expected}", {"stream": stream})
        fut: asyncio.Future[list[Envelope]] = self._loop.create_future()
        self._pending.append(
            _Pending(stream, items, encoded, expected, user, correlation_id, causation_id, fut)
        )
        if not self._busy:
            # one loop iteration later, so every append made ready in this iteration joins the group
            self._busy = True
            self._idle.clear()
            self._loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        """Hand everything pending to the writer thread as one group (one transaction, one fsync)."""
        if not self._pending:
            self._busy = False
            self._idle.set()
            return
        batch, self._pending = self._pending, []
        self._jobs.put((batch, time.time()))

    def _writer_main(self) -> None:
        """The writer thread: commit each group, then report back to the loop in one callback."""
        while True:
            job = self._jobs.get()
            if job is None:
                self._w.close()
                return
            batch, ts = job
            try:
                outcome: tuple[list[_Result], int] | BaseException = self._w.commit(batch, ts)
            except Exception as exc:  # the whole group failed; every caller hears about it
                log.exception("event log commit of %d appends failed", len(batch))
                outcome = exc
            try:
                self._loop.call_soon_threadsafe(self._done, batch, outcome)
            except RuntimeError:  # the loop is gone; nobody is waiting any more
                log.error("event log writer: event loop closed with %d appends in flight", len(batch))

    def _done(self, batch: list[_Pending], outcome: tuple[list[_Result], int] | BaseException) -> None:
        """On the loop: resolve the group's futures, wake waiters, start the next group."""
        if isinstance(outcome, BaseException):
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(outcome)
        else:
            results, seq = outcome
            self._last_seq = seq
            self.commits += 1
            for p, r in zip(batch, results, strict=True):
                if p.future.done():  # the caller was cancelled; its events are committed anyway
                    continue
                if isinstance(r, BaseException):
                    p.future.set_exception(r)
                else:
                    p.future.set_result(r)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        # appends that arrived during the commit form the next group, right away
        self._kick()

    # ---------------------------------------------------------------------------------------- read

    async def stream_version(self, stream: str) -> int:
        """The current version of ``stream`` (0 if it has no events)."""
        v = self._w.versions.get(stream)
        if v is not None:
            return v
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(
            self._rexec,
            lambda: self._reader.execute(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone(),
        )
        return int(row[0])

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
        closed = "event log is closed" if self._closed else ""
        sql, params = read_query(
            closed, self.path, after, limit, stream, prefix, types, until_seq, since_ts, until_ts
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._rexec, self._read_sync, sql, params)

    def _read_sync(self, sql: str, params: list[Any]) -> list[Envelope]:
        return rows_to_envelopes(self._reader.execute(sql, params).fetchall())

    async def wait_for(self, after: int, timeout: float) -> int:
        """Return :attr:`last_seq` as soon as it is greater than ``after``, or when ``timeout`` passes
        (or the log is closed meanwhile).  Raises Unavailable on a closed log, so a polling loop ends
        instead of spinning."""
        if self._closed:
            raise Unavailable("event log is closed", {"path": str(self.path)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._last_seq <= after and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return self._last_seq

    async def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        page: int = 1000,
        poll_s: float = 30.0,
    ) -> AsyncIterator[Envelope]:
        """Every matching envelope after ``after``: the history, then live ones as they commit.

        No gap and no duplicate at the switch from history to live: the cursor only advances over seqs
        that were committed (and so visible) when they were read.  Ends when the log is closed.
        """
        cursor = after
        types = list(types) if types is not None else None
        while not self._closed:
            head = self._last_seq
            if head > cursor:
                batch = await self.read(
                    cursor, page, stream=stream, prefix=prefix, types=types, until_seq=head
                )
                for env in batch:
                    yield env
                # a short page means everything up to `head` was scanned (filters may skip seqs)
                cursor = batch[-1].seq if len(batch) == page else head
            else:
                await self.wait_for(cursor, poll_s)


def _open_reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn
