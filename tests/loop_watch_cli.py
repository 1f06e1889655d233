"""`eefetch ARGS` with a watch on its event loop, for tests that nothing slow runs on it.

Every callback the loop runs is timed; the time the operating system kept the thread waiting
for a CPU (from /proc/thread-self/schedstat) is taken off, so what is counted is how long the
callback held the loop: its own work, blocking I/O, waiting for a lock or the GIL. A busy
machine (other processes on two cores) therefore does not fail the test, while a callback
that reads, hashes or fsyncs a large file on the loop does. asyncio's debug mode measures wall
time instead, and its own stack captures cost up to 0.2 s on a cold first step.

Callbacks over EEFETCH_TEST_SLOW_S (default 0.1 s) are written, one JSON line each, to the
file EEFETCH_TEST_LOOP_LOG: where the loop thread was when it was slowest, and the times.
"""

from __future__ import annotations

import asyncio.events
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from engine.cli import main

LOG = Path(os.environ["EEFETCH_TEST_LOOP_LOG"])
LIMIT = float(os.environ.get("EEFETCH_TEST_SLOW_S", "0.1"))
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def runqueue_wait() -> float:
    """Seconds this thread has waited for a CPU since it started (0 where Linux does not say)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def install() -> None:
    original = asyncio.events.Handle._run
    where: dict[str, Any] = {}

    def timed(self: asyncio.events.Handle) -> None:
        where["thread"] = threading.get_ident()
        waited, started = runqueue_wait(), time.perf_counter()
        where["started"] = started
        try:
            original(self)
        finally:
            wall = time.perf_counter() - started
            held = wall - (runqueue_wait() - waited)
            where["started"] = None
            if held >= LIMIT:
                task = getattr(self._callback, "__self__", None)  # a task's step: which task
                record = {"held_s": held, "wall_s": wall, "callback": repr(task or self)[:400]}
                record["stack"] = where.pop("stack", "")
                with LOG.open("a") as log:
                    log.write(json.dumps(record) + "\n")
            where.pop("stack", None)

    def sample() -> None:
        while True:
            time.sleep(0.02)
            started = where.get("started")
            if started is not None and time.perf_counter() - started > LIMIT / 2:
                frame = sys._current_frames().get(where.get("thread", 0))
                if frame is not None:
                    where["stack"] = "".join(traceback.format_stack(frame)[-8:])

    asyncio.events.Handle._run = timed
    threading.Thread(target=sample, name="loop-watch", daemon=True).start()


if __name__ == "__main__":
    install()
    sys.argv[0] = "eefetch"
    main()
