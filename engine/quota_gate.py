"""Every request to Earth Engine takes a slot of its project's shared quota first.

Earth Engine allows a Cloud project a number of concurrent requests (40 by default) whatever
the number of processes or machines sending them. ``state.Quota`` keeps that budget in a
database every process of the project reaches (the PostgreSQL state database, or one SQLite
file per user on one machine); this module is the engine's door to it.

- :class:`QuotaGate` (async): ``async with gate.slot():`` around one request (making a download
  URL, fetching a tile, a computePixels call). Its outcome moves the shared limit: a 429 halves
  it for every process of the project, successes raise it again (``state.quota.Aimd``). The
  database calls run in threads of the gate's own, never on the event loop. While the project is
  full, one waiter per process polls the database (with a growing pause, cut short when a slot
  of this process is given back); the others queue behind it in order.
- :func:`blocking_slot` (sync): the same for the one call made before a run starts (the
  image's description in ``build_job``).

A process renews the slots it holds every third of their lease; a process that dies stops
renewing, and its slots are free again when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from engine.defaults import WORKER_LEASE_S
from engine.errors import FetchError
from engine.offload import started_pool, uninterrupted
from engine.retry import classify
from state import Quota, QuotaStatus, quota_target
from state.quota import Outcome

T = TypeVar("T")
FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5


def new_owner() -> str:
    """A name for this process in the state: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def outcome_of(error: BaseException | None) -> Outcome | None:
    """What a request's end tells the shared limit: "success", "rate_limited" (a 429), or
    nothing (any other failure says nothing about the project's load)."""
    if error is None:
        return "success"
    if isinstance(error, FetchError) and classify(error).rate_limited:
        return "rate_limited"
    return None


def poll_delay(previous: float, rng: random.Random) -> float:
    """The next pause between two looks at a full project: doubling, jittered, capped."""
    return min(MAX_POLL_S, previous * 2) * (0.5 + rng.random() / 2)


class QuotaGate:
    """One process's door to the shared quota of one Earth Engine project.

    Shared by every job the process runs (a collection's images), like the concurrency
    limiter. ``open`` before the first slot, ``close`` at the end (it gives back whatever the
    process still holds).
    """

    def __init__(
        self,
        quota: Quota,
        project: str,
        owner: str,
        *,
        lease_seconds: float = WORKER_LEASE_S,
        ceiling: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``project`` is the quota's key (``engine.service.quota_key``); ``ceiling`` the
        project's --project-quota (None keeps the one stored, 40 for a new project)."""
        self.quota = quota
        self.project = project
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.ceiling = ceiling
        self.rng = rng or random.Random()
        self._pool = started_pool(2, "eefetch-quota")
        self._queue = asyncio.Lock()  # one waiter per process polls; the others wait in order
        self._freed = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self.held = 0
        self.waits = 0  # slots that were not free at the first look

    async def open(self) -> QuotaStatus:
        """Make sure the project has a budget (with this ceiling, if given); keep this
        process's slots renewed from now on."""
        status = await self._call(self.quota.configure, self.project, self.ceiling)
        self.ceiling = status.ceiling
        self._renewer = asyncio.create_task(self._renew())
        return status

    async def close(self) -> None:
        """Stop renewing and give back every slot this process holds."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        try:
            await uninterrupted(self.quota.release_owner, self.owner, executor=self._pool)
        finally:
            self._pool.shutdown(wait=False)

    async def status(self) -> QuotaStatus | None:
        return await self._call(self.quota.status, self.project)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the request made inside; its outcome is told on the way out."""
        number = await self._acquire()
        self.held += 1
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.held -= 1
            try:
                await uninterrupted(self._release, number, outcome_of(error), executor=self._pool)
            finally:
                self._freed.set()

    def _release(self, number: int, outcome: Outcome | None) -> None:
        self.quota.release_slot(self.project, self.owner, number, outcome=outcome)

    async def _acquire(self) -> int:
        async with self._queue:
            delay = FIRST_POLL_S
            first = True
            while True:
                self._freed.clear()
                number = await self._take()
                if number is not None:
                    return number
                if first:
                    self.waits += 1
                    first = False
                try:
                    async with asyncio.timeout(delay):
                        await self._freed.wait()
                except TimeoutError:
                    pass
                delay = poll_delay(delay, self.rng)

    async def _take(self) -> int | None:
        """One look for a free slot. Cancelled meanwhile, a slot the look took anyway is given
        back (the database call itself cannot be stopped)."""
        loop = asyncio.get_running_loop()
        taking = loop.run_in_executor(
            self._pool, self.quota.acquire_slot, self.project, self.owner, self.lease_seconds
        )
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._give_back_late)
            raise

    def _give_back_late(self, taking: asyncio.Future[int | None]) -> None:
        if taking.cancelled() or taking.exception() is not None:
            return
        number = taking.result()
        if number is not None:
            self._pool.submit(self._release, number, None)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.lease_seconds / 3))
            with contextlib.suppress(Exception):  # the next round tries again; the lease is long
                await self._call(self.quota.renew_slots, self.owner, self.lease_seconds)

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)


@contextlib.contextmanager
def blocking_slot(
    state: str | os.PathLike[str],
    project: str,
    *,
    ceiling: int | None = None,
    lease_seconds: float = WORKER_LEASE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """One slot of ``project``'s quota (kept where a job with this ``state`` keeps it) for a
    blocking call made outside a run, such as describing the image before planning."""
    owner = new_owner()
    rng = random.Random()
    with Quota.open(quota_target(state)) as quota:
        quota.configure(project, ceiling)
        delay = FIRST_POLL_S
        while (number := quota.acquire_slot(project, owner, lease_seconds)) is None:
            sleep(delay)
            delay = poll_delay(delay, rng)
        try:
            yield
        finally:
            quota.release_slot(project, owner, number)


def call_slot(
    state: str | os.PathLike[str], ceiling: int | None
) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """What ``build_job`` takes as ``slot``: a slot of the project the client sends requests
    to, in the quota a job with this ``state`` uses (the client must be initialised)."""
    from engine import ee_adapter
    from engine.service import quota_key

    project = quota_key(ee_adapter.current_project(), ee_adapter.current_base_url())
    return functools.partial(blocking_slot, state, project, ceiling=ceiling)


def open_quota(state: str | Path) -> Quota:
    """The quota database of a job whose state is ``state`` (blocking: run it off the loop)."""
    return Quota.open(quota_target(state))


__all__ = ["QuotaGate", "blocking_slot", "call_slot", "new_owner", "open_quota", "outcome_of"]
