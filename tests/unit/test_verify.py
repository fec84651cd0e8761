"""verify(): a sound log passes; a corrupted one (gap, bad payload, version jump) is reported."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest

from cvops.events import schema as s
from cvops.events.log import EventLog, iter_envelopes, open_readonly
from cvops.events.verify import verify

HAS_SCHEDULING = importlib.util.find_spec("cvops.events.scheduling") is not None


async def make_log(path: Path, n: int = 20) -> None:
    async with await EventLog.open(path) as log:
        for i in range(n):
            await log.append(f"job-{i % 3}", [s.JobProgressed(job_id=f"{i % 3}", progress={"i": i})])


def envelopes(path: Path) -> list[s.Envelope]:
    conn = open_readonly(path)
    try:
        return list(iter_envelopes(conn))
    finally:
        conn.close()


def corrupt(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def test_sound_log_has_no_problems(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db)
    assert verify(envelopes(db)) == []
    assert verify([]) == []


async def test_seq_gap_reported(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db)
    corrupt(db, "DELETE FROM events WHERE seq IN (5, 6)")
    problems = verify(envelopes(db))
    assert any("seq gap: missing 5..6" in p for p in problems), problems
    # the versions of the stream that lost events jump too
    assert any("version" in p for p in problems)


async def test_log_not_starting_at_one(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db, 3)
    corrupt(db, "DELETE FROM events WHERE seq = 1")
    problems = verify(envelopes(db))
    assert any("missing 1 " in p for p in problems), problems


async def test_bad_payload_reported(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db)
    corrupt(db, "UPDATE events SET data = ? WHERE seq = 7", b"\xc1garbage")
    problems = verify(envelopes(db))
    assert len(problems) == 1 and "seq 7" in problems[0] and "does not decode" in problems[0]


async def test_type_mismatch_reported(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db)
    corrupt(db, "UPDATE events SET type = 'JobQueued' WHERE seq = 3")
    problems = verify(envelopes(db))
    assert problems == ["seq 3: row type 'JobQueued' but payload is 'JobProgressed'"]


async def test_version_jump_reported(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    await make_log(db)
    corrupt(db, "UPDATE events SET version = 40 WHERE seq = 20")
    problems = verify(envelopes(db))
    assert len(problems) == 1 and "version 40, expected" in problems[0]


def test_out_of_order_and_duplicate_seq() -> None:
    data = s.encode_event(s.JobQueued(job_id="x"))
    envs = [
        s.Envelope(seq=1, stream="a", version=1, type="JobQueued", ts=0.0, data=data),
        s.Envelope(seq=1, stream="b", version=1, type="JobQueued", ts=0.0, data=data),
    ]
    assert any("out of order" in p for p in verify(envs))


@pytest.mark.skipif(not HAS_SCHEDULING, reason="cvops.events.scheduling not present")
def test_token_audit_runs_when_tokens_given() -> None:
    envs: list[s.Envelope] = []

    def add(ev: s.Event) -> None:
        envs.append(
            s.Envelope(
                seq=len(envs) + 1,
                stream="scheduler",
                version=len(envs) + 1,
                type=s.type_of(ev),
                ts=float(len(envs)),
                data=s.encode_event(ev),
            )
        )

    for j in ("a", "b"):
        add(s.JobSubmitted(job_id=j, kind="train", spec={}))
        add(s.JobQueued(job_id=j))
    add(s.GpuTokenGranted(token=0, job_id="a"))
    add(s.JobStarted(job_id="a", token=0, device="cpu"))
    add(s.GpuTokenGranted(token=0, job_id="b"))  # token 0 is held by a: over-subscription
    add(s.JobStarted(job_id="b", token=0, device="cpu"))
    assert verify(envs) == []  # structure alone is fine
    problems = verify(envs, tokens=1)
    assert problems and any("token 0" in p for p in problems), problems
