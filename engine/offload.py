"""Blocking work kept off the event loop.

Several jobs (a collection's images) share one event loop, so nothing that can take tens of
milliseconds may run on it: a state transaction that happens to checkpoint SQLite's WAL, a
database on another machine, closing a multi-GB output, hashing adopted tiles.

- :class:`StateThread` runs state-store calls in one thread of their own, one at a time and in
  the order they were made, so "write these updates, then claim" keeps its order.
- :func:`uninterrupted` runs a clean-up in a worker thread and sees it through even if the
  task is cancelled meanwhile, so files and state are never left half-changed.
- :func:`started_pool` makes a thread pool whose threads are all running already: a pool that
  starts a thread on the loop's first call blocks the loop until the operating system runs
  that thread, which on a busy machine takes tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, every one of them started before this returns (call it
    off the event loop: it waits for the threads)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    everyone = threading.Barrier(workers + 1)
    for _ in range(workers):
        pool.submit(everyone.wait)
    everyone.wait()
    return pool


class StateThread:
    """One worker thread for state I/O; ``await state(function, *args)`` runs a call in it.

    Its thread is started when it is made: make it off the event loop (``await
    asyncio.to_thread(StateThread)``) where the loop must not wait.
    """

    def __init__(self) -> None:
        self._executor = started_pool(1, "eefetch-state")

    async def __call__(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args))

    @property
    def executor(self) -> Executor:
        return self._executor

    def close(self) -> None:
        """Finish the calls already made, then end the thread."""
        self._executor.shutdown(wait=True)


async def uninterrupted(
    function: Callable[..., T], *args: object, executor: Executor | None = None
) -> T:
    """Run ``function(*args)`` in a worker thread and wait for it even if the task is cancelled
    meanwhile (Ctrl-C, twice); the cancellation is raised once the work is over."""
    loop = asyncio.get_running_loop()
    future = asyncio.ensure_future(loop.run_in_executor(executor, partial(function, *args)))
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
        except Exception:
            break
    if cancelled is not None:
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not report it as lost
        raise cancelled
    return future.result()
