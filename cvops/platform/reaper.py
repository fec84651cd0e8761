"""``python -m cvops.platform.reaper PID SESSION_DIR``: wait for PID to die, then kill every process
whose command line names SESSION_DIR's session (Ray's raylet, GCS, dashboard, workers)."""

from __future__ import annotations

import os
import sys
import time

import psutil


def _session_procs(session: str) -> list[psutil.Process]:
    me = os.getpid()
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        cmd = " ".join(proc.info.get("cmdline") or [])
        if session in cmd:
            out.append(proc)
    return out


def main(argv: list[str]) -> int:
    pid, session_dir = int(argv[0]), argv[1]
    session = os.path.basename(session_dir.rstrip("/")) or session_dir
    while psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    time.sleep(3.0)  # a clean shutdown stops Ray itself; give it a moment
    procs = _session_procs(session)
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
