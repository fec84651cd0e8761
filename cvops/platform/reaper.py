"""``python -m cvops.platform.reaper PID SESSION_DIR``: wait for PID to die, then stop what it left:
every process that was its descendant while it lived (Ray's raylet, GCS, agents and workers rename
themselves, so they are tracked by pid) and every process whose command line names the Ray session."""

from __future__ import annotations

import os
import sys
import time

import psutil

POLL_S = 1.0


def _descendants(pid: int) -> dict[int, float]:
    try:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _leftovers(known: dict[int, float], session: str) -> list[psutil.Process]:
    me = os.getpid()
    out: dict[int, psutil.Process] = {}
    for pid, created in known.items():
        if pid == me:  # the reaper is a child of the server too
            continue
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:  # the same process, not a reused pid
                out[pid] = proc
        except psutil.NoSuchProcess:
            continue
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != me and session and session in " ".join(proc.info.get("cmdline") or []):
            out[proc.pid] = proc
    return list(out.values())


def main(argv: list[str]) -> int:
    pid = int(argv[0])
    session = os.path.basename(argv[1].rstrip("/")) if len(argv) > 1 else ""
    known: dict[int, float] = {}
    while _alive(pid):
        known.update(_descendants(pid))
        time.sleep(POLL_S)
    time.sleep(2.0)  # a clean shutdown stops Ray itself; give it a moment
    procs = _leftovers(known, session)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
