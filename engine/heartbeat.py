"""A worker's presence in the state: registered at the start, a heartbeat while it works,
stopped at the end.

Every process that works on a job registers as a worker (``Store.register_worker``): its host,
pid, how many tiles and bytes it fetched, and when it was last seen, on the database's clock.
``eefetch status`` shows these rows; other workers read from them who is alive. While a worker
holds the job's merge lease, the same heartbeat renews it, so a long merge keeps it and a dead
merger loses it after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from types import TracebackType

from engine.offload import StateThread, uninterrupted
from engine.progress import Progress
from state import StateError, Store

LOG = logging.getLogger(__name__)


MAX_BEAT_S = 5.0  # what `eefetch status` shows of a worker is at most this old


def beat_interval(lease_seconds: float) -> float:
    """Seconds between heartbeats: a third of the lease (a live worker is never judged dead),
    and at most MAX_BEAT_S, so that the per-worker rows of a status stay fresh."""
    return min(MAX_BEAT_S, max(0.5, lease_seconds / 3))


class CountingProgress:
    """A progress display that also counts this worker's finished tiles and their bytes."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.tiles = 0
        self.bytes = 0

    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None:
        self.inner.start(total_tiles, done_tiles, done_bytes)

    def tile_done(self, nbytes: int) -> None:
        self.tiles += 1
        self.bytes += nbytes
        self.inner.tile_done(nbytes)

    def tiles_added(self, count: int) -> None:
        self.inner.tiles_added(count)

    def note(self, message: str) -> None:
        self.inner.note(message)

    def retry(self, message: str) -> None:
        self.inner.retry(message)

    def close(self) -> None:
        self.inner.close()


class WorkerSession:
    """``async with WorkerSession(store, state, owner, lease):`` around a worker's run."""

    def __init__(self, store: Store, state: StateThread, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.state = state
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.counters: CountingProgress | None = None
        self.holds_merge = False
        self.lost_merge = False
        self._task: asyncio.Task[None] | None = None

    def counting(self, progress: Progress) -> CountingProgress:
        """``progress``, counting this worker's tiles for its heartbeats."""
        self.counters = CountingProgress(progress)
        return self.counters

    async def __aenter__(self) -> WorkerSession:
        await self.state(self._register)
        self._task = asyncio.create_task(self._beat())
        return self

    def _register(self) -> None:
        self.store.register_worker(
            self.owner, self.lease_seconds, host=socket.gethostname(), pid=os.getpid()
        )

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await uninterrupted(self._stop, executor=self.state.executor)

    def _stop(self) -> None:
        """The last heartbeat with the totals, then stopped; and the merge lease given up."""
        with contextlib.suppress(StateError):  # a worker that is not seen is dead to the others
            self._send()
            if self.holds_merge:
                self.store.release_merge(self.owner)
            self.store.stop_worker(self.owner)

    def _send(self) -> None:
        counters = self.counters
        self.store.heartbeat(
            self.owner,
            tiles_done=None if counters is None else counters.tiles,
            bytes_done=None if counters is None else counters.bytes,
        )
        if self.holds_merge and not self.store.renew_merge(self.owner, self.lease_seconds):
            self.lost_merge = True

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(beat_interval(self.lease_seconds))
            try:
                await self.state(self._send)
            except StateError as exc:  # the next beat tries again; the store already waited
                LOG.warning("heartbeat of %s failed: %s", self.owner, exc)
