"""The gateway's event reads, through the EventLog actor (before) and through aiosqlite (after).

    python scripts/bench_event_reads.py [--events 50000] [--passes 3] [--modes actor,sqlite]

Fills one event log with ``--events`` events (JobProgressed on 100 job streams, written directly with
the EventLog before any server runs), then for each mode starts a real ``cvops serve`` on it with
``CVOPS_EVENT_READS=<mode>`` and measures, as the admin:

* ``/events`` page latency: ``GET /api/v1/events?after=N&limit=1000`` over the whole log, ``--passes``
  times (after one warm-up pass); p50 / p95 / mean in ms;
* websocket catch-up: ``WS /api/v1/events/ws?after=0`` until the log head has arrived; events/s (best of
  ``--passes``).

Both modes run in the same invocation on the same file, one server at a time, and print side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.config import load_settings  # noqa: E402
from cvops.events.log import EventLog  # noqa: E402
from cvops.events.schema import JobProgressed  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

PAGE = 1000


async def fill(db: Path, n: int) -> None:
    log = await EventLog.open(db)
    try:
        streams = 100
        versions = [0] * streams
        batch = 500
        for start in range(0, n, batch):
            sid = (start // batch) % streams
            events = [
                JobProgressed(job_id=str(sid), progress={"epoch": i, "loss": 1.0 / (i + 1), "note": "x" * 40})
                for i in range(start, min(start + batch, n))
            ]
            await log.append(f"job-{sid}", events, expected_version=versions[sid])
            versions[sid] += len(events)
    finally:
        await log.close()


async def pages(url: str, token: str, passes: int) -> list[float]:
    """Latencies (s) of every page of every pass (after one warm-up pass)."""
    out: list[float] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for p in range(passes + 1):
            after = 0
            while True:
                t0 = time.perf_counter()
                async with http.get(f"{url}/api/v1/events", params={"after": after, "limit": PAGE}) as resp:
                    assert resp.status == 200, await resp.text()
                    page = await resp.json()
                dt = time.perf_counter() - t0
                if p > 0:
                    out.append(dt)
                if len(page["events"]) < PAGE:
                    break
                after = page["next_after"]
    return out


async def catch_up(url: str, token: str, head: int) -> float:
    """Events/s of one websocket catch-up from seq 0 to ``head``."""
    n = 0
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        async with http.ws_connect(
            f"{url}/api/v1/events/ws?after=0", headers={"Authorization": f"Bearer {token}"}, max_msg_size=0
        ) as ws:
            async with asyncio.timeout(600):
                while True:
                    msg = await ws.receive()
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    data = json.loads(msg.data)
                    if data.get("type") == "heartbeat":
                        continue
                    n += 1
                    if data["seq"] >= head:
                        break
        dt = time.perf_counter() - t0
    return n / dt


async def measure(url: str, token: str, passes: int) -> dict[str, float]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{url}/api/v1/events", params={"after": 0, "limit": 1}) as resp:
            head = int((await resp.json())["last_seq"])
    lat = sorted(await pages(url, token, passes))
    await catch_up(url, token, head)  # warm-up
    rates = [await catch_up(url, token, head) for _ in range(passes)]
    return {
        "head": head,
        "pages": len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "mean_ms": 1000 * statistics.fmean(lat),
        "ws_events_per_s": max(rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--modes", default="actor,sqlite", help="comma-separated: actor (before), sqlite (after)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-event-reads-", dir="."))
    results: dict[str, dict[str, float]] = {}
    try:
        data = root / "data"
        db = load_settings({"CVOPS_DATA_DIR": str(data)}).db_path
        t0 = time.perf_counter()
        asyncio.run(fill(db, args.events))
        print(f"filled {args.events} events in {time.perf_counter() - t0:.1f} s", flush=True)
        for mode in args.modes.split(","):
            server = Server(data, CVOPS_EVENT_READS=mode, CVOPS_INFERENCE_WORKERS="1").start(timeout=300)
            try:
                results[mode] = asyncio.run(measure(server.url, server.token(), args.passes))
            finally:
                server.stop()
            r = results[mode]
            print(
                f"{mode:>6}: /events page p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                f"mean {r['mean_ms']:.1f} ms ({int(r['pages'])} pages of {PAGE});  "
                f"ws catch-up {r['ws_events_per_s']:.0f} events/s ({int(r['head'])} events)",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "actor" in results and "sqlite" in results:
        a, s = results["actor"], results["sqlite"]
        print(
            f"sqlite vs actor: page p50 x{a['p50_ms'] / s['p50_ms']:.2f} faster, "
            f"p95 x{a['p95_ms'] / s['p95_ms']:.2f}, ws catch-up x{s['ws_events_per_s'] / a['ws_events_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
