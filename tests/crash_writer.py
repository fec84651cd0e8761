"""Child process for the crash test: appends forever and prints every acknowledged seq.

``python -m tests.crash_writer DB`` — prints ``ready`` once the log is open, then one line per
acknowledged seq (flushed right after the append returns, i.e. after the commit).  Meant to be killed.
"""

from __future__ import annotations

import asyncio
import random
import sys

from cvops.events.log import EventLog
from cvops.events.schema import TrialCompleted


async def main(path: str) -> None:
    log = await EventLog.open(path)
    out = sys.stdout
    out.write(f"ready {log.last_seq}\n")
    out.flush()

    async def producer(p: int) -> None:
        stream = f"job-{p}"
        version = await log.stream_version(stream)
        step = 0
        while True:
            n = random.choice((1, 1, 1, 2, 5))
            events = [
                TrialCompleted(
                    job_id=str(p), generation=0, index=step + i, genes={"pad": "x" * 50}, fitness=0.0
                )
                for i in range(n)
            ]
            wrote = await log.append(stream, events, expected_version=version)
            version += n
            step += n
            out.write("".join(f"{e.seq}\n" for e in wrote))
            out.flush()

    await asyncio.gather(*(producer(p) for p in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
