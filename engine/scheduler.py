"""The download loop: claim tiles, fetch them under an adaptive limit, record what happened.

The scheduler knows nothing of Earth Engine or HTTP: it is given a ``fetch`` coroutine that
turns a tile into a stored file or raises :class:`engine.retry.FetchError`, and a ``probe``
coroutine that says whether the network is back. What to do after a failure is decided by
``engine.retry.classify``; this module carries the decision out (it is where a tile is
retried, split or failed) and writes it to the state store in batches.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from engine.clocks import ClockWatch
from engine.defaults import (
    BACKOFF_BASE_S,
    DEFAULT_CONCURRENCY,
    MAX_ATTEMPTS,
    MAX_BACKOFF_S,
    OUTPUT_BLOCK,
    TAIL_PART_BYTES,
    WORKER_LEASE_S,
)
from engine.errors import ErrorKind, FetchError, JobStopped
from engine.grid import split_for_slots, split_tile
from engine.offload import StateThread, uninterrupted
from engine.pacing import (
    RATE_LIMIT_PAUSE_CAP_S,
    RATE_LIMIT_PAUSE_S,
    AdaptiveLimiter,
    OutageMonitor,
)
from engine.progress import Progress, SilentProgress
from engine.retry import Action, Verdict, classify, retry_delay
from engine.tiles import new_tile, tile_plan
from engine.tilestore import StoredTile
from state import (
    Store,
    TileDone,
    TileFailed,
    TileRecord,
    TileReleased,
    TileRetry,
    TileSplit,
    TileUpdate,
    TileUrl,
)

LOG = logging.getLogger("eefetch")

RATE_LIMIT_BUDGET = 4  # times max_attempts, for a tile whose latest failure was a 429

Fetch = Callable[[TileRecord], Awaitable[StoredTile]]
Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = MAX_ATTEMPTS
    lease_seconds: float = WORKER_LEASE_S
    flush_every: float = 1.0
    backoff_base: float = BACKOFF_BASE_S
    backoff_cap: float = MAX_BACKOFF_S
    outage_threshold: int = 3
    split_tail: bool = True  # cut the last tiles when connections would idle
    first_probe_interval: float = 2.0
    max_probe_interval: float = 300.0
    min_split_side: int = 1


@dataclass
class RunSummary:
    fetched_tiles: int = 0
    fetched_bytes: int = 0
    retries: int = 0
    splits: int = 0
    tail_splits: int = 0
    failed: int = 0
    outages: int = 0
    stopped_by: str | None = None
    errors: list[str] = field(default_factory=list)


class UpdateBuffer:
    """State changes queued in memory and written in batches, one transaction each.

    A tile's status changes several times a second in a busy job; one transaction per change
    would make SQLite's fsyncs the bottleneck. Writes go through the state thread, in order.
    """

    def __init__(
        self,
        store: Store,
        state: StateThread,
        clock: Callable[[], float] = time.time,
        *,
        database_clock: bool = False,
    ) -> None:
        """``database_clock``: the batches are stamped by the database (several workers);
        otherwise by ``clock``."""
        self.store = store
        self.state = state
        self.clock = clock
        self.database_clock = database_clock
        self._pending: list[TileUpdate] = []

    def stamp(self) -> float | None:
        """The ``now`` of a batch: None when the database's clock stamps it."""
        return None if self.database_clock else self.clock()

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, update: TileUpdate) -> None:
        self._pending.append(update)

    def take(self) -> list[TileUpdate]:
        """The queued updates, handed over (the queue is empty afterwards)."""
        batch, self._pending = self._pending, []
        return batch

    async def flush(self) -> None:
        """Write what is queued (the batch is taken before the first await, so batches are
        written in the order they were taken)."""
        batch = self.take()
        if batch:
            await self.state(self.store.apply, batch, self.stamp())


class Scheduler:
    def __init__(
        self,
        store: Store,
        fetch: Fetch,
        probe: Probe,
        *,
        owner: str,
        itemsizes: Sequence[int],
        updates: UpdateBuffer | None = None,
        options: SchedulerOptions | None = None,
        progress: Progress | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limiter: AdaptiveLimiter | None = None,
        free_space: Callable[[], None] | None = None,
        shared: bool = False,
    ) -> None:
        """``limiter`` shares one concurrency budget between jobs (a collection's images);
        by default the scheduler has its own of ``options.concurrency`` slots. ``clock`` is
        the wall clock of the times stored in the state; ``monotonic`` measures intervals and
        notices when the wall clock steps. ``updates`` (and its state thread) may be shared
        with the fetcher; by default the scheduler has its own for the run. ``free_space``
        gives back disk space kept in reserve, when the run ends on an error. ``shared``: other
        workers share the job, so claims, leases and retry times are on the database's clock
        (``clock`` then reads that clock, ``engine.clocks.DatabaseClock``)."""
        self.store = store
        self.fetch = fetch
        self.probe = probe
        self.owner = owner
        self.itemsizes = list(itemsizes)
        self.options = options or SchedulerOptions()
        self.progress = progress or SilentProgress()
        self.rng = rng or random.Random()
        self.clock = clock
        self.monotonic = monotonic
        self.clock_watch = ClockWatch(clock, monotonic)
        self.sleep = sleep
        self.free_space = free_space
        self.shared = shared
        self.limiter = limiter or AdaptiveLimiter(self.options.concurrency)
        self.outage = OutageMonitor(
            self.options.outage_threshold,
            self.options.first_probe_interval,
            self.options.max_probe_interval,
        )
        self.summary = RunSummary()
        self._own_state = updates is None
        # "is None", not "or": an empty buffer is falsy (len 0), and one passed in is shared
        # with the fetcher, whose URL records would otherwise go to a buffer nobody flushes.
        self.updates = (
            updates
            if updates is not None
            else UpdateBuffer(store, StateThread(), clock, database_clock=shared)
        )
        self.state = self.updates.state
        self._queue: list[TileRecord] = []
        self._in_flight = 0
        self._store_drained = False  # the last claim got every tile left, none is waiting
        self._tail_cut = False
        self._changed = asyncio.Event()
        self._fatal: str | None = None

    def record(self, update: TileUpdate) -> None:
        self.updates.record(update)

    async def flush(self) -> None:
        await self.updates.flush()

    async def run(self) -> RunSummary:
        """Fetch every claimable tile; return when none is left or the job must stop."""
        ended_well = False
        try:
            async with asyncio.TaskGroup() as group:
                housekeeping = group.create_task(self._housekeeping())
                await self._dispatch(group)
                housekeeping.cancel()
            ended_well = self._fatal is None
        except BaseExceptionGroup as errors:
            # A task's own error (a state write on a full disk, say) is what the caller must
            # see, not a group of one: the command line turns it into one line.
            raise _first_error(errors) from None
        finally:
            if not ended_well and self.free_space is not None:
                self.free_space()  # a full disk must not keep the state from being settled
            for tile in self._queue:
                self.updates.record(TileReleased(tile.id))
            self._queue.clear()
            await uninterrupted(self._settle_state, executor=self.state.executor)
            if self._own_state:
                self.state.close()
        self.summary.outages = self.outage.outages
        if self._fatal is not None:
            self.summary.stopped_by = self._fatal
            raise JobStopped(self._fatal)
        return self.summary

    def _settle_state(self) -> None:
        """At the end of a run (in the state thread): write every queued update and give back
        the claims still held, whatever stopped the run."""
        pending = self.updates.take()
        try:
            if pending:
                self.store.apply(pending, self.updates.stamp())
        finally:
            # Even when the updates cannot be written (a full disk): no claim may outlive the
            # run, and giving them back is one small statement that may still get through.
            self.store.release_claims(self.owner)

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while self._fatal is None:
            if self.outage.down:
                await self._wait_out_outage()
                continue
            await self.limiter.acquire()
            try:
                tile = await self._next_tile()
            except BaseException:
                self.limiter.release()
                raise
            if tile is None:
                self.limiter.release()
                if self._in_flight == 0 and not self.updates:
                    wake = await self.state(self.store.next_wakeup)
                    if wake is None:
                        return
                    await self._wait(max(0.0, wake - self.clock()))
                else:
                    await self._wait(self.options.flush_every)
                continue
            self._in_flight += 1
            group.create_task(self._attempt(tile))

    async def _next_tile(self) -> TileRecord | None:
        if not self._queue:
            await self.flush()
            await self._follow_clock_steps()
            self._queue = await self._claim()
            self._queue.reverse()
        slots = self.limiter.limit
        if self._at_last_wave(slots):
            # Every tile left is queued here and fewer than the connections: cut them once so
            # that the last wave has a part per connection, not a few tiles and idle slots.
            self._tail_cut = True
            self._queue = (await self._cut_last_wave(self._queue[::-1], slots))[::-1]
        return self._queue.pop() if self._queue else None

    def _at_last_wave(self, slots: int) -> bool:
        return (
            self.options.split_tail
            and not self._tail_cut
            and self._store_drained
            and 0 < len(self._queue) < slots
        )

    async def _claim(self) -> list[TileRecord]:
        wanted = max(1, self.limiter.limit * 2)
        claimed = await self.state(
            self.store.claim,
            self.owner,
            self._lease_clock(),
            self.options.lease_seconds,
            wanted,
        )
        # Drained: the store gave fewer tiles than asked and none is waiting for a retry time
        # (after a burst of 429s most of a job can be waiting; it is not the last wave).
        self._store_drained = (
            len(claimed) < wanted and await self.state(self.store.next_wakeup) is None
        )
        return claimed

    async def _cut_last_wave(self, claimed: list[TileRecord], slots: int) -> list[TileRecord]:
        """The job's last tiles, cut so that ``slots`` connections get a part each (the cut is
        recorded in the state, as a split Earth Engine asked for would be)."""
        parts = split_for_slots(
            [tile_plan(t) for t in claimed],
            self.itemsizes,
            slots,
            min_part_bytes=TAIL_PART_BYTES,
            block=OUTPUT_BLOCK,
        )
        cut = [(tile, group) for tile, group in zip(claimed, parts, strict=True) if len(group) > 1]
        if not cut:
            return claimed
        for tile, group in cut:
            reason = "cut to keep idle connections busy at the job's end"
            self.record(TileSplit(tile.id, [new_tile(p, tile.id) for p in group], reason))
            self.progress.tiles_added(len(group) - 1)
        await self.flush()
        self.summary.tail_splits += len(cut)
        self.progress.note(
            f"{len(cut)} of the last tiles cut into {sum(len(g) for _, g in cut)} parts "
            "to keep idle connections busy"
        )
        whole = [tile for tile, group in zip(claimed, parts, strict=True) if len(group) == 1]
        return whole + await self._claim()

    def _lease_clock(self) -> float | None:
        """The ``now`` of claims and renewals: None (the database's clock) for a shared job."""
        return None if self.shared else self.clock()

    async def _follow_clock_steps(self) -> None:
        """After a suspend or a clock step, move stored retry times and this run's leases by
        the same amount: a retry due in 10 s stays due in 10 s, not in an hour. A shared job's
        times are on the database's clock, which no step of this machine's moves."""
        if self.shared:
            return
        delta = self.clock_watch.step()
        if delta:
            await self.state(self.store.shift_times, self.owner, delta)
            self.progress.note(
                f"the system clock jumped by {delta:+.0f} s; retry times and leases follow it"
            )

    async def _wait(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or a tile finishes, whichever comes first."""
        self._changed.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def _attempt(self, tile: TileRecord) -> None:
        try:
            stored = await self.fetch(tile)
        except FetchError as error:
            self._handle_failure(tile, error)
        except Exception as exc:
            # A failure nobody foresaw must not end an overnight job: it costs this tile an
            # attempt, and its traceback goes to the log for a bug report.
            LOG.exception("unexpected error while fetching tile %s", tile.id)
            self._handle_failure(
                tile, FetchError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")
            )
        except asyncio.CancelledError:
            self.updates.record(TileReleased(tile.id))
            raise
        else:
            self.record(TileDone(tile.id, stored.path.name, stored.bytes, stored.checksum))
            self.summary.fetched_tiles += 1
            self.summary.fetched_bytes += stored.bytes
            self.limiter.on_success()
            self.outage.record_success()
            self.progress.tile_done(stored.bytes)
        finally:
            self._in_flight -= 1
            self.limiter.release()
            self._changed.set()

    def _handle_failure(self, tile: TileRecord, error: FetchError) -> None:
        verdict = classify(error)
        if verdict.rate_limited:
            # The pause never outlasts the backoff the user allowed (--max-backoff).
            self.limiter.on_rate_limited(
                min(RATE_LIMIT_PAUSE_S, self.options.backoff_base),
                min(RATE_LIMIT_PAUSE_CAP_S, self.options.backoff_cap),
            )
        in_outage = verdict.network_down and self.outage.record_network_failure()
        action = verdict.action
        if action is Action.STOP_JOB:
            self._fatal = verdict.reason
            self.record(TileReleased(tile.id))
            return
        if action is Action.SPLIT:
            self._split(tile, verdict)
            return
        if action is Action.FAIL:
            self._fail(tile, verdict.reason)
            return
        if in_outage:
            # The network is down, not this tile: keep its attempts for when it is back.
            self.record(TileReleased(tile.id))
            return
        # A 429 says that Earth Engine is busy, not that the tile is bad: 429s do not count
        # toward max_attempts (else one burst of them fails a tile of a healthy job) but
        # toward their own ceiling of RATE_LIMIT_BUDGET times as many. Both counts live in the
        # state, so a resumed job does not start them again from zero.
        if verdict.rate_limited:
            spent, budget = tile.rate_limited + 1, self.options.max_attempts * RATE_LIMIT_BUDGET
        else:
            spent, budget = tile.attempts + 1, self.options.max_attempts
        if spent >= budget:
            total = tile.attempts + tile.rate_limited + 1
            self._fail(tile, f"gave up after {total} attempts: {verdict.reason}")
            return
        self._retry(tile, verdict)

    def _retry(self, tile: TileRecord, verdict: Verdict) -> None:
        delay = retry_delay(
            verdict,
            tile.attempts + tile.rate_limited,
            self.rng,
            base=self.options.backoff_base,
            cap=self.options.backoff_cap,
        )
        if verdict.action is Action.REMAKE_URL:
            delay = 0.0
            self.record(TileUrl(tile.id, None, None))
        if self.shared:
            retry = TileRetry(
                tile.id, verdict.reason, delay=delay, rate_limited=verdict.rate_limited
            )
        else:
            retry = TileRetry(
                tile.id, verdict.reason, self.clock() + delay, rate_limited=verdict.rate_limited
            )
        self.record(retry)
        self.summary.retries += 1
        self.progress.retry(f"tile {tile.id}: {verdict.reason} (next try in {delay:.1f} s)")

    def _split(self, tile: TileRecord, verdict: Verdict) -> None:
        plan = tile_plan(tile)
        if plan.window.width * plan.window.height <= 1 and plan.band_stop - plan.band_start <= 1:
            self._fail(tile, f"too big for Earth Engine even as one pixel: {verdict.reason}")
            return
        children = split_tile(plan, self.itemsizes)
        self.record(TileSplit(tile.id, [new_tile(c, tile.id) for c in children], verdict.reason))
        self.summary.splits += 1
        self.progress.tiles_added(len(children) - 1)
        self.progress.note(f"tile {tile.id} split into {len(children)}: {verdict.reason}")

    def _fail(self, tile: TileRecord, reason: str) -> None:
        self.record(TileFailed(tile.id, reason))
        self.summary.failed += 1
        self.summary.errors.append(f"tile {tile.id}: {reason}")
        self.progress.note(f"tile {tile.id} failed: {reason}")

    async def _wait_out_outage(self) -> None:
        """Stop spending attempts while the network is down; probe until it answers again."""
        await self.flush()
        while self._in_flight:
            await self._wait(1.0)
        delay = self.outage.next_probe_delay()
        self.progress.note(f"network or proxy unreachable; probing again in {delay:.0f} s")
        await self.sleep(delay)
        if await self.probe():
            self.outage.record_recovery()
            self.progress.note("network is back; carrying on")

    async def _housekeeping(self) -> None:
        """Flush batched updates, let the limiter's probe look, renew leases, while the run
        lasts."""
        renew_every = max(1.0, self.options.lease_seconds / 3)
        last_renew = self.monotonic()
        while True:
            await asyncio.sleep(self.options.flush_every)
            self.limiter.tick()
            await self.flush()
            await self._follow_clock_steps()
            if self.monotonic() - last_renew >= renew_every:
                await self.state(
                    self.store.renew_claims,
                    self.owner,
                    self._lease_clock(),
                    self.options.lease_seconds,
                )
                last_renew = self.monotonic()


def _first_error(errors: BaseExceptionGroup) -> BaseException:
    first = errors.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first
