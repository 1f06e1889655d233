"""Running a job's coroutine from plain, blocking code: a script, a notebook, the command line.

``run_sync`` is what the Python API uses: it works whether or not an event loop is already
running (Jupyter runs one). ``run_until_signalled`` is what the command line uses: SIGTERM
cancels the job the way Ctrl-C does, so the state is saved either way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from engine.offload import started_pool

T = TypeVar("T")
RUNNER_STOP_SECONDS = 30.0  # how long an interrupted notebook call waits for the state
DEFAULT_POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's own default size


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, also from a notebook whose event loop is already running.

    In a running loop (Jupyter), the job runs on a fresh loop in a helper thread and this call
    waits for it, so ``download_ee_image`` stays a plain function call everywhere. Interrupting
    the cell (KeyboardInterrupt while waiting) cancels the job on its own loop and waits until
    its state is saved, so the next call resumes instead of finding a job still running.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_with_started_threads(coroutine)
    box: dict[str, Any] = {}
    started = threading.Event()
    finished = threading.Event()

    async def main() -> T:
        box["task"] = asyncio.current_task()
        box["loop"] = asyncio.get_running_loop()
        started.set()
        return await coroutine

    def target() -> None:
        try:
            box["value"] = run_with_started_threads(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()
            finished.set()

    # Waiting on an Event, not Thread.join: a KeyboardInterrupt inside join() can leave the
    # Thread marked as stopped while it still runs (CPython bpo-45274), and the wait for the
    # saved state would then return at once.
    threading.Thread(target=target, name="eefetch-runner", daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        started.wait(5)
        if "task" in box:
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        finished.wait(RUNNER_STOP_SECONDS)
        raise
    if "error" in box:
        error = box["error"]
        if isinstance(error, asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise error
    value: T = box["value"]
    return value


def run_until_signalled(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; SIGTERM cancels it like Ctrl-C does, so state is saved either way."""

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coroutine
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return run_with_started_threads(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


def run_with_started_threads(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, with the loop's default thread pool started beforehand: threads the
    pool would start on first use (file writes, hashing, name lookups) would each hold the loop
    until the operating system got round to running them."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(started_pool(DEFAULT_POOL_THREADS, "eefetch-io"))
        return runner.run(coroutine)
