#!/usr/bin/env python
"""Closed-loop HTTP load test: N users, each sends a request, waits for the answer, thinks, repeats.

    python scripts/loadtest.py --url http://127.0.0.1:8080/api/v1/deployments/ID/predict \\
        --users 100 --duration 20 --file img.jpg --content-type image/jpeg --token JWT

Prints throughput, latency percentiles (of 2xx answers, and of all answers) and status-code counts.
``run_load`` is importable (scripts/bench_serving.py reuses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    users: int
    duration_s: float  # wall time from the first request to the last answer
    requests: int  # answered requests (any status) plus transport errors
    ok: int  # 2xx
    throughput_rps: float  # answered requests per second
    ok_rps: float
    p50_ms: float  # of 2xx answers
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    all_p50_ms: float  # of every answer, whatever its status
    all_p95_ms: float
    all_p99_ms: float
    status_counts: dict[str, int] = field(default_factory=dict)  # "200": n, "429": n, "error:X": n

    def table(self) -> str:
        rows = [
            ("users", f"{self.users}"),
            ("duration", f"{self.duration_s:.2f} s"),
            ("requests", f"{self.requests}"),
            ("throughput", f"{self.throughput_rps:.1f} req/s ({self.ok_rps:.1f} ok/s)"),
            ("latency 2xx p50/p95/p99", f"{self.p50_ms:.1f} / {self.p95_ms:.1f} / {self.p99_ms:.1f} ms"),
            ("latency 2xx mean/max", f"{self.mean_ms:.1f} / {self.max_ms:.1f} ms"),
            (
                "latency all p50/p95/p99",
                f"{self.all_p50_ms:.1f} / {self.all_p95_ms:.1f} / {self.all_p99_ms:.1f} ms",
            ),
            ("status", ", ".join(f"{k}: {v}" for k, v in sorted(self.status_counts.items()))),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _pcts(samples: list[float]) -> tuple[float, float, float]:
    if not samples:
        return 0.0, 0.0, 0.0
    p = np.percentile(np.asarray(samples), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


async def run_load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    users: int = 100,
    duration: float = 20.0,
    think_ms: float = 0.0,
    *,
    method: str = "POST",
    request_timeout_s: float = 60.0,
) -> LoadResult:
    """Run ``users`` closed-loop clients against ``url`` for ``duration`` seconds."""
    ok_lat: list[float] = []
    all_lat: list[float] = []
    status: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=max(1, users), force_close=False)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        end = start + duration

        async def user() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, data=body, headers=headers) as resp:
                        await resp.read()
                        code = resp.status
                except (TimeoutError, aiohttp.ClientError) as e:
                    status[f"error:{type(e).__name__}"] += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                status[str(code)] += 1
                all_lat.append(ms)
                if 200 <= code < 300:
                    ok_lat.append(ms)
                if think_ms > 0:
                    await asyncio.sleep(think_ms / 1000.0)

        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - start
    p50, p95, p99 = _pcts(ok_lat)
    a50, a95, a99 = _pcts(all_lat)
    total = sum(status.values())
    return LoadResult(
        users=users,
        duration_s=wall,
        requests=total,
        ok=len(ok_lat),
        throughput_rps=total / wall if wall > 0 else 0.0,
        ok_rps=len(ok_lat) / wall if wall > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(np.mean(ok_lat)) if ok_lat else 0.0,
        max_ms=max(ok_lat) if ok_lat else 0.0,
        all_p50_ms=a50,
        all_p95_ms=a95,
        all_p99_ms=a99,
        status_counts=dict(status),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds")
    ap.add_argument("--think-ms", type=float, default=0.0)
    ap.add_argument("--file", type=Path, help="request body (omit for an empty body)")
    ap.add_argument("--content-type", default="image/jpeg")
    ap.add_argument("--token", help="JWT sent as 'Authorization: Bearer ...'")
    ap.add_argument("--method", default="POST")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    body = args.file.read_bytes() if args.file else b""
    headers = {"Content-Type": args.content_type}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    res = asyncio.run(
        run_load(args.url, body, headers, args.users, args.duration, args.think_ms, method=args.method)
    )
    print(json.dumps(asdict(res), indent=2) if args.json else res.table())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
