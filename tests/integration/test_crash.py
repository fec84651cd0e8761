"""kill -9 during appends loses no acknowledged event and leaves a sound log."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvops.events.log import EventLog, iter_envelopes, open_readonly
from cvops.events.schema import TrialCompleted
from cvops.events.verify import verify

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One log shared by all rounds, so every round also recovers from the crashes before it."""
    return tmp_path_factory.mktemp("crash") / "events.db"


@pytest.mark.parametrize("round_", range(20))
async def test_kill_9_keeps_acknowledged_events(db: Path, round_: int) -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.crash_writer", str(db), cwd=ROOT, env=ENV, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert first.startswith(b"ready"), first
    start_seq = int(first.split()[1])
    # wait for the first acknowledgement (a busy machine may take a while), then kill at a random moment
    first_ack = await asyncio.wait_for(proc.stdout.readline(), 20)
    await asyncio.sleep(random.uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    rest = first_ack + await proc.stdout.read()
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # a line without its newline may be cut by the kill: only complete lines were acknowledged
    acked = [int(x) for x in rest.split(b"\n")[:-1]]
    assert acked, "the writer acknowledged nothing before the kill"
    assert min(acked) > start_seq

    # reopening works at once: the dead writer's lock went with it
    async with await EventLog.open(db) as log:
        assert log.last_seq >= max(acked)
        envs = [e for e in await _read_all(log)]
        seqs = [e.seq for e in envs]
        assert seqs == list(range(1, len(seqs) + 1))  # gapless
        assert set(acked) <= set(seqs)  # nothing acknowledged was lost
        assert verify(envs) == []
        # versions continue correctly after the crash
        v = await log.stream_version("job-0")
        assert await log.append(
            "job-0",
            [TrialCompleted(job_id="0", generation=1, index=0, genes={}, fitness=1.0)],
            expected_version=v,
        )

    if round_ == 0:
        res = subprocess.run(
            [sys.executable, "-m", "cvops", "replay", "verify", "--db", str(db), "--tokens", "2"],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("ok: ")
    else:
        assert time.monotonic() - started < 20.0  # a round takes < 2 s on an idle machine; this catches hangs


async def _read_all(log: EventLog) -> list:
    out = []
    after = 0
    while True:
        batch = await log.read(after=after, limit=5000)
        out.extend(batch)
        if len(batch) < 5000:
            return out
        after = batch[-1].seq


def test_readonly_view_after_crash(db: Path) -> None:
    conn = open_readonly(db)
    try:
        envs = list(iter_envelopes(conn))
    finally:
        conn.close()
    assert envs and verify(envs) == []
