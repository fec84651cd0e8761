"""`cvops replay`: list / tail / stats / rebuild / verify / export on a temp data dir."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cvops import replay
from cvops.events import schema as s
from cvops.events.log import EventLog

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cvops")
    replay.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = replay.run(parse(["replay", *argv]))
    out, err = capsys.readouterr()
    return rc, out, err


async def fill(data_dir: Path) -> None:
    async with await EventLog.open(data_dir / "events.db") as log:
        await log.append(
            "user-admin", [s.UserCreated(username="admin", role="admin", password_hash="h")], 0, user="system"
        )
        await log.append(
            "model-m1",
            [
                s.ModelUploaded(
                    model_id="m1",
                    name="net",
                    task="classification",
                    source_format="onnx",
                    source_sha256="a" * 64,
                    source_bytes=3,
                ),
                s.ModelConversionStarted(model_id="m1"),
            ],
            0,
            correlation_id="req-1",
        )
        for i in range(10):
            await log.append(
                "job-j1", [s.TrialCompleted(job_id="j1", generation=0, index=i, genes={"lr": i}, fitness=0.5)]
            )


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    await fill(tmp_path)
    return tmp_path


async def test_list_and_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["list", "--data-dir", str(data_dir)], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 13
    assert "UserCreated" in lines[0] and "user=system" in lines[0] and '"username":"admin"' in lines[0]
    rc, out, _ = run(["--data-dir", str(data_dir), "list", "--json", "--stream", "model-"], capsys)
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["seq"] for r in rows] == [2, 3]
    assert rows[0]["data"]["model_id"] == "m1" and rows[0]["correlation_id"] == "req-1"
    assert rows[0]["time"].endswith("Z")
    rc, out, _ = run(
        [
            "list",
            "--db",
            str(data_dir / "events.db"),
            "--json",
            "--type",
            "TrialCompleted",
            "--type",
            "UserCreated",
            "--after",
            "1",
            "--until-seq",
            "6",
            "--limit",
            "2",
        ],
        capsys,
    )
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [4, 5]
    rc, out, _ = run(
        [
            "list",
            "--data-dir",
            str(data_dir),
            "--json",
            "--since",
            "2000-01-01T00:00:00",
            "--until",
            "2000-01-02",
        ],
        capsys,
    )
    assert rc == 0 and out == ""
    rc, out, _ = run(
        ["list", "--data-dir", str(data_dir), "--json", "--since", "2000-01-01T00:00:00Z"], capsys
    )
    assert len(out.splitlines()) == 13


async def test_bad_input(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["list", "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "no event log" in err
    rc, _, err = run(["list", "--data-dir", str(data_dir), "--since", "yesterday"], capsys)
    assert rc == 2 and "not an ISO time" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.db").write_bytes(b"this is not sqlite" * 100)
    rc, _, err = run(["verify", "--data-dir", str(tmp_path / "junk")], capsys)
    assert rc == 2 and "not a readable event log" in err
    rc, _, err = run(["export", "--data-dir", str(data_dir), "--out", str(tmp_path / "x.txt")], capsys)
    assert rc == 2 and "--format" in err


async def test_tail(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["tail", "-n", "3", "--data-dir", str(data_dir), "--json"], capsys)
    assert rc == 0 and [json.loads(x)["seq"] for x in out.splitlines()] == [11, 12, 13]
    rc, out, _ = run(["tail", "-n", "2", "--type", "UserCreated", "--data-dir", str(data_dir)], capsys)
    assert len(out.splitlines()) == 1


async def test_tail_follow_sees_live_appends(data_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cvops",
        "replay",
        "tail",
        "-f",
        "-n",
        "1",
        "--json",
        "--interval",
        "0.05",
        "--max-seconds",
        "30",
        "--stream",
        "job-",
        "--data-dir",
        str(data_dir),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    # the last matching event is printed first: the tail is up and following from the head
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert json.loads(first)["seq"] == 13
    async with await EventLog.open(data_dir / "events.db") as log:  # a live writer holds the lock
        await log.append("model-m2", [s.ModelDeleted(model_id="m2")])  # filtered out
        for i in range(3):
            await log.append("job-j2", [s.JobQueued(job_id="j2", position=i)])
    seen: list[int] = []
    while len(seen) < 3:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "tail -f ended before showing the live events"
        seen.append(json.loads(line)["seq"])
    proc.kill()
    await proc.wait()
    assert seen == [15, 16, 17]


async def test_stats(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["stats", "--data-dir", str(data_dir), "--json", "--buckets", "4"], capsys)
    st = json.loads(out)
    assert rc == 0 and st["events"] == 13
    assert st["by_type"]["TrialCompleted"] == 10 and st["by_type"]["UserCreated"] == 1
    assert st["by_stream_prefix"] == {"job": 10, "model": 2, "user": 1}
    assert sum(b["events"] for b in st["rate"]) == 13 and len(st["rate"]) in (1, 4)
    rc, out, _ = run(["stats", "--data-dir", str(data_dir)], capsys)
    assert "events: 13" in out and "TrialCompleted" in out and "events/s" in out


async def test_rebuild(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["rebuild", "--data-dir", str(data_dir), "--json"], capsys)
    full = json.loads(out)
    assert rc == 0 and len(full["state_hash"]) == 64
    assert full["users"] == 1 and full["models"] == {"converting": 1} and full["last_seq"] == 13
    rc, out, _ = run(["rebuild", "--data-dir", str(data_dir), "--json"], capsys)
    assert json.loads(out)["state_hash"] == full["state_hash"]  # deterministic
    rc, out, _ = run(["rebuild", "--until", "2", "--data-dir", str(data_dir), "--json"], capsys)
    part = json.loads(out)
    assert part["last_seq"] == 2 and part["models"] == {"pending": 1}
    assert part["state_hash"] != full["state_hash"]
    rc, out, _ = run(["rebuild", "--data-dir", str(data_dir)], capsys)
    assert f"state hash: {full['state_hash']}" in out


async def test_verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["verify", "--data-dir", str(data_dir), "--tokens", "2"], capsys)
    assert rc == 0 and out.strip() == "ok: 13 events"
    conn = sqlite3.connect(data_dir / "events.db")
    conn.execute("DELETE FROM events WHERE seq = 4")
    conn.execute("UPDATE events SET data = x'c1' WHERE seq = 9")
    conn.commit()
    conn.close()
    rc, out, err = run(["verify", "--data-dir", str(data_dir)], capsys)
    assert rc == 1 and "broken" in out
    assert "seq gap: missing 4" in err and "seq 9" in err


async def test_export_parquet_and_csv(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq = tmp_path / "out" / "events.parquet"
    rc, out, _ = run(["export", "--data-dir", str(data_dir), "--format", "parquet", "--out", str(pq)], capsys)
    assert rc == 0 and "exported 13 events" in out
    df = pl.read_parquet(pq)
    assert df.columns == [
        "seq",
        "stream",
        "version",
        "type",
        "ts",
        "user",
        "correlation_id",
        "causation_id",
        "data",
    ]
    assert df["seq"].to_list() == list(range(1, 14))
    assert df["user"][0] == "system"
    assert json.loads(df["data"][1])["model_id"] == "m1"
    assert json.loads(df["data"][12])["genes"] == {"lr": 9}
    csv = tmp_path / "events.csv"
    rc, _, _ = run(
        ["export", "--data-dir", str(data_dir), "--out", str(csv), "--type", "TrialCompleted"], capsys
    )
    dfc = pl.read_csv(csv)
    assert rc == 0 and dfc.height == 10 and set(dfc["type"].to_list()) == {"TrialCompleted"}
    assert json.loads(dfc["data"][0])["index"] == 0


async def test_cli_subprocess_verify(data_dir: Path) -> None:
    env = {**os.environ, "CVOPS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "cvops", "replay", "verify"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: 13 events"


# a real argon2 hash (of "correct-horse-battery-1"), as the server writes it
ARGON2 = "$argon2id$v=19$m=19456,t=2,p=1$9dqrDvCgPr6rqqMuT0VWxw$8f8Yfm1H0N9ZVpJBmNn8xDNvd3DZ0KGY8xg4yT0JWzA"


async def test_password_hashes_are_redacted_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with await EventLog.open(tmp_path / "events.db") as log:
        await log.append("user-ann", [s.UserCreated(username="ann", role="admin", password_hash=ARGON2)], 0)
        await log.append("user-ann", [s.PasswordChanged(username="ann", password_hash=ARGON2 + "x")], 1)
    d = str(tmp_path)
    shown = []
    for argv in (["list"], ["list", "--json"], ["tail", "-n", "5"], ["tail", "--json"]):
        rc, out, err = run([*argv, "--data-dir", d], capsys)
        assert rc == 0, err
        assert "$argon2" not in out and out.count('"password_hash":"***"') == 2, out
        shown.append(out)
    assert '"username":"ann"' in shown[0]  # the rest of the payload is still there
    for fmt in ("csv", "parquet"):
        dest = tmp_path / f"events.{fmt}"
        rc, _, err = run(["export", "--data-dir", d, "--out", str(dest)], capsys)
        assert rc == 0, err
        df = pl.read_csv(dest) if fmt == "csv" else pl.read_parquet(dest)
        assert [json.loads(x)["password_hash"] for x in df["data"]] == ["***", "***"]
    # the owner of the file can still see everything
    rc, out, _ = run(["list", "--json", "--unredacted", "--data-dir", d], capsys)
    assert [json.loads(x)["data"]["password_hash"] for x in out.splitlines()] == [ARGON2, ARGON2 + "x"]
    rc, _, _ = run(["export", "--unredacted", "--data-dir", d, "--out", str(tmp_path / "all.csv")], capsys)
    assert json.loads(pl.read_csv(tmp_path / "all.csv")["data"][0])["password_hash"] == ARGON2


async def test_rebuild_while_a_job_holds_a_gpu_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cvops.events.log import iter_envelopes, open_readonly
    from cvops.events.projections import rebuild, state_hash
    from cvops.events.scheduling import SCHEDULER_STREAM

    async with await EventLog.open(tmp_path / "events.db") as log:
        await log.append(
            SCHEDULER_STREAM,
            [
                s.JobSubmitted(job_id="j1", kind="train", spec={}),
                s.JobQueued(job_id="j1"),
                s.JobSubmitted(job_id="j2", kind="benchmark", spec={}),
                s.JobQueued(job_id="j2"),
                s.GpuTokenGranted(token=1, job_id="j1"),
                s.JobStarted(job_id="j1", token=1, device="cpu"),
                s.GpuTokenGranted(token=0, job_id="j2"),
                s.JobStarted(job_id="j2", token=0, device="cpu"),
            ],
            0,
        )
    d = str(tmp_path)
    rc, out, err = run(["rebuild", "--data-dir", d, "--tokens", "2", "--json"], capsys)
    assert rc == 0, err
    first = json.loads(out)
    assert first["jobs"] == 2 and len(first["state_hash"]) == 64
    rc, out, _ = run(["rebuild", "--data-dir", d, "--tokens", "2"], capsys)
    assert rc == 0 and f"state hash: {first['state_hash']}" in out  # the same hash on every run
    conn = open_readonly(tmp_path / "events.db")
    try:
        state = rebuild(iter_envelopes(conn), tokens=2)
    finally:
        conn.close()
    assert state.jobs.holders == {1: "j1", 0: "j2"}
    assert state_hash(state) == first["state_hash"]  # the tool and an in-process fold agree
    rc, out, _ = run(["verify", "--data-dir", d, "--tokens", "2"], capsys)
    assert rc == 0 and out.startswith("ok:")


def test_replay_outside_the_project_folder_says_how_to_find_the_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CVOPS_DATA_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    for argv in (["list"], ["rebuild"], ["--data-dir", str(tmp_path / "nowhere"), "stats"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cvops", "replay", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "no event log at" in proc.stderr
        assert "--data-dir" in proc.stderr and "CVOPS_DATA_DIR" in proc.stderr, proc.stderr
    # a data dir whose events.db is not a readable file: still one line, never a traceback
    (tmp_path / ".cvops" / "events.db").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "cvops", "replay", "rebuild"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "CVOPS_DATA_DIR" in proc.stderr
