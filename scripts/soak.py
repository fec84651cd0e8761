#!/usr/bin/env python
"""Soak test: a real ``cvops serve`` under 100 closed-loop users for ``--minutes``; no errors allowed
and the server's memory must stay flat after warm-up.

    python scripts/soak.py [--minutes 10] [--users 100] [--model mobilenet_v3_small] [--workers N]
        [--warmup-s 60] [--max-growth 0.10]

1. Starts ``cvops serve`` (tests/e2e/server.py), builds the preset, deploys it on onnxruntime-cpu.
2. Drives it with scripts/loadtest.py ``run_load`` in 30 s chunks (the photo-like JPEG of
   scripts/bench_serving.py), and every chunk samples the memory of the server's whole process tree
   (the gateway, Ray's processes, the actors, the inference workers): the sum of RSS, and the sum of
   PSS (shared pages counted once; the Ray object store is shared memory that RSS counts in every
   process that maps it).
3. After ``--warmup-s`` the first sample is the baseline; the result compares the mean of the last
   three samples with it.  Passes when every answer was a 200, no inference worker died, and the
   RSS growth is below ``--max-growth`` (10 %).  Exit status 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serving import Cvops, photo_jpeg  # noqa: E402
from loadtest import run_load  # noqa: E402

CHUNK_S = 30.0


@dataclass
class Sample:
    t: float  # seconds since the load began
    rss_mb: float
    pss_mb: float
    procs: int
    rps: float
    p99_ms: float
    bad: int  # non-200 answers and transport errors in the chunk


def tree_memory_mb(pid: int) -> tuple[float, float, int]:
    """(sum of RSS, sum of PSS, process count) of ``pid`` and its descendants, in MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0, 0
    rss = pss = 0.0
    n = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        n += 1
    return rss / 2**20, pss / 2**20, n


def per_process_rss_mb(pid: int) -> dict[str, float]:
    """RSS (MiB) of each process of the tree, keyed by ``pid name``."""
    import psutil

    out: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            name = " ".join(p.cmdline()[:3])[-60:] if p.name().startswith("python") else p.name()
            out[f"{p.pid} {name}"] = p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--workers", type=int, default=None, help="deployment workers (default: the server's)")
    ap.add_argument("--warmup-s", type=float, default=60.0)
    ap.add_argument("--max-growth", type=float, default=0.10)
    args = ap.parse_args(argv)
    import os

    workers = args.workers or (os.cpu_count() or 1)
    jpeg = photo_jpeg()
    total_s = args.minutes * 60.0
    samples: list[Sample] = []
    by_proc: dict[str, float] = {}
    by_proc_end: dict[str, float] = {}
    statuses: Counter[str] = Counter()
    requests = 0
    with tempfile.TemporaryDirectory(prefix="soak-") as td:
        cv = Cvops(Path(td), args.model, workers)
        assert cv.server.proc is not None
        pid = cv.server.proc.pid
        print(
            f"soak: {args.model}, {args.users} users, {args.minutes:g} min, {workers} workers, "
            f"warm-up {args.warmup_s:g} s; server pid {pid}",
            flush=True,
        )
        try:
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < total_s:
                chunk = min(CHUNK_S, total_s - elapsed)
                res = asyncio.run(run_load(cv.url, jpeg, cv.headers, args.users, chunk))
                statuses.update(res.status_counts)
                requests += res.requests
                rss, pss, n = tree_memory_mb(pid)
                s = Sample(
                    time.monotonic() - start,
                    rss,
                    pss,
                    n,
                    res.throughput_rps,
                    res.p99_ms,
                    res.requests - res.status_counts.get("200", 0),
                )
                samples.append(s)
                if not by_proc and s.t >= args.warmup_s:
                    by_proc = per_process_rss_mb(pid)
                print(
                    f"t={s.t:6.0f} s  {s.rps:6.1f} req/s  p99 {s.p99_ms:7.1f} ms  bad {s.bad:4d}  "
                    f"RSS {s.rss_mb:7.0f} MiB  PSS {s.pss_mb:7.0f} MiB  procs {s.procs}",
                    flush=True,
                )
            router = cv.router()
            by_proc_end = per_process_rss_mb(pid)
        finally:
            cv.stop()
    after = [s for s in samples if s.t >= args.warmup_s]
    if len(after) < 2:
        print("FAIL: too short to judge memory after the warm-up; use more --minutes or less --warmup-s")
        return 1
    base = after[0]
    tail = after[-3:] if len(after) >= 4 else after[-1:]
    rss_end = statistics.fmean(s.rss_mb for s in tail)
    pss_end = statistics.fmean(s.pss_mb for s in tail)
    rss_growth = (rss_end - base.rss_mb) / base.rss_mb
    pss_growth = (pss_end - base.pss_mb) / base.pss_mb
    bad = requests - statuses.get("200", 0)
    deaths = int(router.get("worker_deaths", 0))
    ok = bad == 0 and deaths == 0 and rss_growth < args.max_growth
    rps = statistics.fmean(s.rps for s in samples)
    print("\n== soak result")
    print(f"duration          {samples[-1].t:.0f} s, {requests} requests, mean {rps:.1f} req/s")
    print(f"statuses          {dict(statuses)}")
    print(f"errors            {bad} (goal 0); worker deaths {deaths}; router errors {router.get('errors')}")
    print(
        f"RSS after warm-up {base.rss_mb:.0f} -> {rss_end:.0f} MiB ({rss_growth * 100:+.1f} %, goal < "
        f"{args.max_growth * 100:.0f} %); peak {max(s.rss_mb for s in after):.0f} MiB"
    )
    print(f"PSS after warm-up {base.pss_mb:.0f} -> {pss_end:.0f} MiB ({pss_growth * 100:+.1f} %)")
    print(
        f"p99 per chunk     {min(s.p99_ms for s in samples):.0f} .. {max(s.p99_ms for s in samples):.0f} ms"
    )
    growth = sorted(((by_proc_end[k] - v, k) for k, v in by_proc.items() if k in by_proc_end), reverse=True)
    print("RSS growth by process (MiB, after warm-up -> end):")
    for d, k in growth[:6]:
        print(f"  {d:+7.1f}  {by_proc[k]:7.0f} -> {by_proc_end[k]:7.0f}  {k}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
