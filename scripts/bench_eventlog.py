"""Benchmark of the cvops EventLog against raw sqlite3 (and the `eventsourcing` library) on one disk.

    python scripts/bench_eventlog.py [--events 20000] [--producers 100] [--rounds 3]

(a) single-event appends from N concurrent asyncio producers (group commit) vs raw sqlite3 with one
    transaction per event (WAL, synchronous=FULL) vs eventsourcing's SQLite recorder (N threads);
(b) batch appends of 100 events vs raw executemany, one transaction per batch;
(c) replay + decode of the whole log vs a raw SELECT + msgspec decode.

Every contender does the same work: encode each event with msgspec, write it durably with the same
columns (global seq, stream, version, type, ts, data, user, correlation ids), and, for (c), read every
row back and decode its payload.  Each figure is the best of ``--rounds`` runs, and the contenders take
turns inside every round, so a slow spell of the shared machine or disk hits all of them alike.  The
databases live in a temporary folder under the current directory (the same disk for all).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.events.log import SCHEMA, EventLog  # noqa: E402
from cvops.events.schema import JobProgressed, decode_event, encode_event, type_of  # noqa: E402

GOALS = {"a": 10.0, "b": 0.8, "c": 0.7}
BATCH = 100
_INSERT = (
    "INSERT INTO events (seq, stream, version, type, ts, data, user, correlation_id, causation_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def event(i: int) -> JobProgressed:
    return JobProgressed(job_id=f"job-{i % 100}", progress={"step": i, "loss": 0.25, "lr": 0.001})


def raw_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)  # the same table and indexes as the EventLog
    return conn


# ------------------------------------------------------------------------------------------- (a)


def cvops_single(path: Path, n: int, producers: int) -> float:
    async def run() -> float:
        log = await EventLog.open(path)
        per = n // producers

        async def producer(p: int) -> None:
            stream = f"s-{p}"
            for k in range(per):
                await log.append(stream, [event(p * per + k)], expected_version=k)

        t = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        dt = time.perf_counter() - t
        assert log.last_seq == per * producers
        await log.close()
        return per * producers / dt

    return asyncio.run(run())


def raw_single(path: Path, n: int, producers: int) -> float:
    conn = raw_connect(path)
    versions: dict[str, int] = {}
    per = n // producers
    seq = 0
    t = time.perf_counter()
    for k in range(per):  # round-robin over the same streams as the producers
        for p in range(producers):
            e = event(p * per + k)
            stream = f"s-{p}"
            v = versions.get(stream, 0) + 1
            seq += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INSERT, (seq, stream, v, type_of(e), time.time(), encode_event(e), "", "", ""))
            conn.execute("COMMIT")
            versions[stream] = v
    dt = time.perf_counter() - t
    conn.close()
    return per * producers / dt


def eventsourcing_single(path: Path, n: int, producers: int) -> float | None:
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
    except ImportError:
        return None
    # the library switches to WAL itself; synchronous stays at SQLite's default, FULL, as for the others
    datastore = SQLiteDatastore(
        str(path),
        pool_size=producers,
        max_overflow=0,
        pool_timeout=600.0,  # 100 threads queue for the one writer; do not give up on a busy machine
        lock_timeout=600,
        originator_id_type="text",
    )
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    per = n // producers
    topic = "cvops.events.schema:JobProgressed"

    def producer(p: int) -> None:
        stream = f"s-{p}"
        for k in range(per):
            data = encode_event(event(p * per + k))
            recorder.insert_events(
                [StoredEvent(originator_id=stream, originator_version=k + 1, topic=topic, state=data)]
            )

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=producers) as ex:
        list(ex.map(producer, range(producers)))
    dt = time.perf_counter() - t
    datastore.close()
    return per * producers / dt


# ------------------------------------------------------------------------------------------- (b)


def cvops_batch(path: Path, n: int) -> float:
    async def run() -> float:
        log = await EventLog.open(path)
        batches = n // BATCH
        t = time.perf_counter()
        for b in range(batches):
            events = [event(b * BATCH + i) for i in range(BATCH)]
            await log.append(f"b-{b % 10}", events, expected_version=(b // 10) * BATCH)
        dt = time.perf_counter() - t
        await log.close()
        return batches * BATCH / dt

    return asyncio.run(run())


def raw_batch(path: Path, n: int) -> float:
    conn = raw_connect(path)
    versions: dict[str, int] = {}
    batches = n // BATCH
    seq = 0
    t = time.perf_counter()
    for b in range(batches):
        events = [event(b * BATCH + i) for i in range(BATCH)]
        stream = f"b-{b % 10}"
        v = versions.get(stream, 0)
        ts = time.time()
        rows = []
        for e in events:
            seq += 1
            v += 1
            rows.append((seq, stream, v, type_of(e), ts, encode_event(e), "", "", ""))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
        versions[stream] = v
    dt = time.perf_counter() - t
    conn.close()
    return batches * BATCH / dt


# ------------------------------------------------------------------------------------------- (c)


def cvops_replay(path: Path, page: int = 5000) -> float:
    async def run() -> float:
        log = await EventLog.open(path)
        t = time.perf_counter()
        count = 0
        after = 0
        while True:
            envs = await log.read(after=after, limit=page)
            for env in envs:
                env.event()
            count += len(envs)
            if len(envs) < page:
                break
            after = envs[-1].seq
        dt = time.perf_counter() - t
        await log.close()
        return count / dt

    return asyncio.run(run())


def raw_replay(path: Path) -> float:
    conn = sqlite3.connect(str(path))
    t = time.perf_counter()
    rows = conn.execute(
        "SELECT seq, stream, version, type, ts, data, user, correlation_id, causation_id "
        "FROM events ORDER BY seq"
    ).fetchall()
    for r in rows:
        decode_event(r[3], r[5])
    dt = time.perf_counter() - t
    conn.close()
    return len(rows) / dt


# ----------------------------------------------------------------------------------------- driver


def run_rounds(
    rounds: int, contenders: dict[str, Callable[[Path], float | None]], workdir: Path
) -> dict[str, float | None]:
    """Best events/s of each contender (None: skipped); contenders take turns inside every round."""
    results: dict[str, list[float]] = {k: [] for k in contenders}
    skipped: set[str] = set()
    for r in range(rounds):
        for name, fn in contenders.items():
            if name in skipped:
                continue
            d = Path(tempfile.mkdtemp(prefix=f"{name}-{r}-", dir=workdir))
            try:
                v = fn(d / "events.db")
            finally:
                shutil.rmtree(d, ignore_errors=True)
            if v is None:
                skipped.add(name)
            else:
                results[name].append(v)
    return {k: (max(v) if v else None) for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--producers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replay-events", type=int, default=100000)
    args = ap.parse_args(argv)
    n, prod, rounds = args.events, args.producers, args.rounds
    workdir = Path(tempfile.mkdtemp(prefix=".bench-eventlog-", dir=os.getcwd()))
    print(f"events={n} producers={prod} best of {rounds} rounds, on the disk of {workdir.parent}")
    try:
        res = run_rounds(
            rounds,
            {
                "a_cv": lambda p: cvops_single(p, n, prod),
                "a_raw": lambda p: raw_single(p, n, prod),
                "a_es": lambda p: eventsourcing_single(p, n, prod),
                "b_cv": lambda p: cvops_batch(p, n),
                "b_raw": lambda p: raw_batch(p, n),
            },
            workdir,
        )
        # (c) on one log of --replay-events rows written by the EventLog
        log_db = workdir / "replay" / "events.db"
        log_db.parent.mkdir()
        cvops_batch(log_db, args.replay_events)
        res.update(
            run_rounds(
                rounds,
                {"c_cv": lambda _p: cvops_replay(log_db), "c_raw": lambda _p: raw_replay(log_db)},
                workdir,
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    a_cv, a_raw, a_es = res["a_cv"], res["a_raw"], res["a_es"]
    b_cv, b_raw, c_cv, c_raw = res["b_cv"], res["b_raw"], res["c_cv"], res["c_raw"]
    assert a_cv and a_raw and b_cv and b_raw and c_cv and c_raw

    rows: list[tuple[str, float, float, str]] = [
        (f"(a) {prod} producers x 1 event, cvops", a_cv, a_cv / a_raw, "a"),
        ("(a) raw sqlite3, 1 txn per event", a_raw, 1.0, ""),
    ]
    if a_es is not None:
        rows.append((f"(a) eventsourcing SQLite, {prod} threads", a_es, a_es / a_raw, ""))
    rows += [
        ("(b) batches of 100, cvops EventLog", b_cv, b_cv / b_raw, "b"),
        ("(b) raw executemany, 1 txn per batch", b_raw, 1.0, ""),
        (f"(c) replay+decode {args.replay_events}, cvops", c_cv, c_cv / c_raw, "c"),
        ("(c) raw SELECT + msgspec decode", c_raw, 1.0, ""),
    ]
    print(f"{'contender':<42} {'events/s':>12} {'ratio':>7}  goal")
    for name, rate, ratio, goal in rows:
        verdict = f">= {GOALS[goal]:<4} {'PASS' if ratio >= GOALS[goal] else 'FAIL'}" if goal else ""
        print(f"{name:<42} {rate:>12,.0f} {ratio:>7.2f}  {verdict}")
    if a_es is None:
        print("note: eventsourcing is not installed; its row is skipped")
    else:
        print(f"cvops vs eventsourcing on (a): {a_cv / a_es:.1f}x")
    ok = a_cv / a_raw >= GOALS["a"] and b_cv / b_raw >= GOALS["b"] and c_cv / c_raw >= GOALS["c"]
    print("overall:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
