"""`eefetch ARGS` with one pause injected into the merge, for tests that stop a run at an exact
moment of it (no hook in the engine: this wrapper patches the merge before the CLI starts).

EEFETCH_TEST_PAUSE names the moment:
- ``finish``: every tile fetched and written into the output, before it is finished;
- ``publish``: the output complete and checked, just before it takes its final name;
- ``published``: just after it took its final name, before the state records the merge.
The wrapper writes the file EEFETCH_TEST_PAUSED when it gets there, then waits until the file
EEFETCH_TEST_RELEASE exists (a test that kills the process never creates it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from engine import live_merge, merge
from engine.cli import main

MOMENT = os.environ["EEFETCH_TEST_PAUSE"]
PAUSED = Path(os.environ["EEFETCH_TEST_PAUSED"])
RELEASE = Path(os.environ["EEFETCH_TEST_RELEASE"])


def pause() -> None:
    PAUSED.write_text(str(os.getpid()))
    while not RELEASE.exists():
        time.sleep(0.01)


def install() -> None:
    if MOMENT == "finish":
        finish = live_merge.LiveMerge._finish

        def paused_finish(self: live_merge.LiveMerge, done: list) -> Path:
            pause()
            return finish(self, done)

        live_merge.LiveMerge._finish = paused_finish
        return
    publish = merge._publish

    def paused_publish(temp: Path, output: Path, overwrite: bool) -> None:
        if MOMENT == "publish":
            pause()
        publish(temp, output, overwrite)
        if MOMENT == "published":
            pause()

    merge._publish = paused_publish


if __name__ == "__main__":
    install()
    sys.argv[0] = "eefetch"
    main()
