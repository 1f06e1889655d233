"""One job from start to finish: open or create its state, reconcile, fetch, verify, merge.

This is the only module that holds the state store, the tile store, the transport and the
scheduler at once; each of them stays ignorant of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from engine import __version__, ee_adapter
from engine.clocks import DatabaseClock
from engine.defaults import (
    DEFAULT_CONCURRENCY,
    EE_MAX_CONCURRENCY,
    EE_MAX_SIDE_COMPUTE,
    EE_MAX_SIDE_URLS,
    PROJECT_QUOTA,
)
from engine.errors import JobError, OtherJobError, SpecError
from engine.fetch import TileFetcher
from engine.grid import TilePlan, plan_tiles
from engine.heartbeat import WorkerSession
from engine.live_merge import (
    LiveMerge,
    MergeStopped,
    checkpoint_path,
    interleave_for,
    publish_recorder,
    published_by,
)
from engine.metadata import recorded_fingerprint
from engine.offload import StateThread, started_pool, uninterrupted
from engine.outputs import merge_job
from engine.pacing import AdaptiveLimiter, ProbeSettings
from engine.paths import job_tiles_folder
from engine.progress import Progress, SilentProgress
from engine.quota_gate import QuotaGate, new_owner, open_quota
from engine.scheduler import Fetch, RunSummary, Scheduler, SchedulerOptions, UpdateBuffer
from engine.service import quota_key
from engine.spec import JobSpec, identity_differences, resumed_spec
from engine.tiles import is_tile_file, new_tile, tile_expectation, tile_name, tile_plan
from engine.tilestore import StoredTile, TileStore
from engine.transport import Transport, TransportOptions
from state import (
    JobExistsError,
    JobLock,
    OutputLock,
    StateError,
    Store,
    TileDone,
    TileRecord,
    TileReset,
    default_job_name,
    is_database_url,
)

MAX_VERIFY_ROUNDS = 3
LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run goes, as opposed to what it fetches (see JobSpec)."""

    concurrency: int | None = None  # None: found by probing (engine.pacing.ConcurrencyProbe)
    transport: TransportOptions = field(default_factory=TransportOptions)
    scheduler: SchedulerOptions | None = None
    overwrite: bool = False
    verify_checksums: bool = True
    # Write each tile into the output as it arrives instead of merging after the last one.
    merge_while_fetching: bool = True
    seed: int | None = None
    # One budget shared by several jobs run at once (a collection); None: the job's own.
    limiter: AdaptiveLimiter | None = None
    # The wall clock of retry times and leases (tests step it to play a suspend).
    clock: Callable[[], float] = time.time
    # The project's --project-quota (None: the one stored for it, 40 for a new project).
    project_quota: int | None = None
    # A folder every worker reaches (--tiles); each job keeps its tiles in a folder named after
    # it there. None: beside the state file (or the output, for a state on a server).
    tile_folder: Path | None = None
    # One door to the project's quota shared by several jobs run at once (a collection).
    quota: QuotaGate | None = None

    @property
    def lease_seconds(self) -> float:
        """How long claims and quota slots last unless renewed (a dead worker's, then freed)."""
        return (self.scheduler or SchedulerOptions()).lease_seconds


@dataclass
class JobResult:
    output: Path | None
    state_path: Path | str
    counts: dict[str, int]
    summary: RunSummary
    merged: bool
    notes: list[str] = field(default_factory=list)
    # All tiles are fetched and another worker (this owner) holds the merge.
    merged_by: str | None = None
    job: str | None = None

    @property
    def complete(self) -> bool:
        """Nothing is left for this process: the output is merged, or another worker merges."""
        return self.merged or self.merged_by is not None

    @property
    def resume_command(self) -> str:
        """What carries the job on (a state on a server: a worker of the named job)."""
        if isinstance(self.state_path, str) and is_database_url(self.state_path):
            return f"eefetch worker --state {self.state_path} --job {self.job}"
        return f"eefetch resume {self.state_path}"


@dataclass(frozen=True, slots=True)
class Worker:
    """Who fetches, and under which budgets: this process's name in the state, the clock its
    stored times are on, its concurrency limiter, its door to the project's quota, and whether
    other workers share the job (then every lease is on the database's clock)."""

    owner: str
    clock: Callable[[], float]
    limiter: AdaptiveLimiter
    gate: QuotaGate | None
    shared: bool = False


def itemsizes(spec: JobSpec) -> list[int]:
    return [np.dtype(spec.dtype).itemsize] * len(spec.band_ids)


def plan(spec: JobSpec) -> list[TilePlan]:
    max_side = EE_MAX_SIDE_COMPUTE if spec.endpoint == "compute" else EE_MAX_SIDE_URLS
    max_side = min(max_side, int(spec.extra.get("max_tile_dim", max_side)))
    return plan_tiles(
        spec.grid,
        itemsizes(spec),
        max_bytes=spec.max_tile_bytes,
        max_side=max_side,
        min_tiles=spec.plan_concurrency,
    )


def open_job(
    store: Store, spec: JobSpec, state_path: Path | str
) -> tuple[bool, list[str], JobSpec]:
    """Create the job in an empty state file, or check that the file holds this very job.

    Returns the spec to run: ``spec``, with the stored plan's settings when resuming.
    """
    job = store.job()
    if job is None:
        if not store.is_server:
            _refuse_a_second_job(store, state_path)
        tiles = [new_tile(t) for t in plan(spec)]
        try:
            store.create_job(spec.fingerprint(), spec.to_dict(), __version__, spec.output, tiles)
        except JobExistsError:
            if not store.is_server:
                raise
            job = store.job()  # another worker created it between the look and now: join it
            assert job is not None
        else:
            planned = (
                f"planned {len(tiles)} tiles for a {spec.grid.width} x "
                f"{spec.grid.height} grid of {len(spec.band_ids)} bands"
            )
            return True, [planned], spec
    try:
        stored = JobSpec.from_dict(job.spec)
    except SpecError as exc:
        raise JobError(f"state file {state_path}: {exc}") from exc
    differs = identity_differences(stored, spec)
    if differs and store.is_server:
        raise OtherJobError(
            f"job {job.name} in {state_path} is another download (for {job.output_path}; it "
            f"differs in {', '.join(differs)}); give this download another --job name",
            differs,
        )
    if differs:
        raise OtherJobError(
            f"state file {state_path} holds another job (for {job.output_path}; it differs in "
            f"{', '.join(differs)}); give this download its own --state, or delete that file "
            "to start over",
            differs,
        )
    leaves = sum(n for status, n in store.counts().items() if status != "split")
    spec, notes = resumed_spec(stored, spec, leaves, partial(_largest_side, store))
    return False, notes, spec


def _refuse_a_second_job(store: Store, state_path: Path | str) -> None:
    """A state file keeps one job: its tile folder and its lock are the file's, so a second
    job there (another --job name) would clear the first one's tiles as leftovers."""
    others = store.jobs()
    if others:
        raise OtherJobError(
            f"state file {state_path} holds job {others[0].name!r} (for "
            f"{others[0].output_path}); a state file keeps one job: give this download its own "
            "--state (a PostgreSQL --state keeps several jobs, each under its --job name)"
        )


def _largest_side(store: Store) -> int:
    return max((max(t.height, t.width) for t in store.tiles() if t.status != "split"), default=0)


def clear_for_new_job(tiles: TileStore) -> list[str]:
    """Empty the tile folder of whatever an earlier job left there (its state file deleted,
    the same output): a new job starts from no file at all."""
    removed = tiles.remove_stale_parts() + tiles.remove_unless(lambda name: False, is_tile_file)
    if not removed:
        return []
    return [f"removed {removed} file(s) left in {tiles.root} by an earlier job"]


def reconcile(store: Store, tiles: TileStore, spec: JobSpec, job_uid: str) -> list[str]:
    """Make the state and the tile files agree before fetching, and say what changed.

    A file is taken for a tile only if its name carries this job's uid; tile files of any
    other job are removed. Blocking (it decodes and hashes files): run it in a worker thread.
    """
    notes: list[str] = []
    stale = tiles.remove_stale_parts()
    if stale:
        notes.append(f"removed {stale} partial tile file(s) left by an interrupted run")
    on_disk = tiles.sizes()
    ours: set[str] = set()
    updates: list[TileDone | TileReset] = []
    for tile_id, status, path, size in store.tile_files():
        if status == "done":
            name = path or tile_name(job_uid, tile_id)
            ours.add(name)
            found = on_disk.get(name)
            if found is None:
                updates.append(TileReset(tile_id, "tile file missing"))
            elif found != size:
                updates.append(TileReset(tile_id, f"tile file is {found} bytes, expected {size}"))
            continue
        name = tile_name(job_uid, tile_id)
        if name not in on_disk:
            continue
        # Written and renamed just before an interruption, never recorded as done.
        tile = store.tile(tile_id)
        assert tile is not None
        if tiles.verify(name, tile_expectation(spec, tile), None) is None:
            ours.add(name)
            stored = tiles.describe(name)
            updates.append(TileDone(tile_id, name, stored.bytes, stored.checksum))
        else:
            tiles.remove(name)
    foreign = tiles.remove_unless(ours.__contains__, is_tile_file)
    if foreign:
        notes.append(f"removed {foreign} tile file(s) that are not this job's")
    if updates:
        store.apply(updates, _now())
        resets = [u for u in updates if isinstance(u, TileReset)]
        adopted = len(updates) - len(resets)
        if resets:
            notes.append(
                f"{len(resets)} finished tile(s) will be fetched again: "
                + "; ".join(f"tile {u.tile_id}: {u.reason}" for u in resets[:5])
            )
        if adopted:
            notes.append(f"kept {adopted} tile file(s) written just before an interruption")
    return notes


def verify_done_tiles(store: Store, tiles: TileStore, spec: JobSpec) -> list[str]:
    """Re-hash every finished tile before the merge; a tile that changed is fetched again."""
    resets = []
    for tile in store.tiles("done"):
        name = tile.path
        assert name is not None  # a done tile always has its file (a schema constraint)
        problem = tiles.verify(name, tile_expectation(spec, tile), tile.checksum)
        if problem is not None:
            resets.append(TileReset(tile.id, problem))
            tiles.remove(name)
    if resets:
        store.apply(resets, None if store.is_server else _now())  # a server: its clock
    return [f"tile {r.tile_id} will be fetched again: {r.reason}" for r in resets]


async def run_job(
    spec: JobSpec,
    state_path: Path | str,
    options: RunOptions,
    progress: Progress | None = None,
    *,
    job: str | None = None,
) -> JobResult:
    """Fetch whatever is missing of ``spec`` and merge it; safe to call again after any stop.

    ``state_path`` is an SQLite file (one process works on the job, under its lock) or a
    PostgreSQL URL (``engine.workers``: this process is one of the job's workers, and the job
    is named ``job``, by default after the output). State I/O runs in a thread of its own and
    file work in worker threads: several jobs (a collection) share the event loop, and none
    may hold it up.
    """
    progress = progress or SilentProgress()
    if isinstance(state_path, str) and is_database_url(state_path):
        from engine.workers import run_shared  # the shared run builds on this module

        name = job or default_job_name(spec.output)
        return await run_shared(spec, state_path, name, options, progress)
    state_path = Path(state_path)
    output = Path(spec.output)
    if output.exists() and not options.overwrite and not state_path.exists():
        raise output_exists_error(output)  # before a state file is made for a job that cannot run
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = await asyncio.to_thread(StateThread)
    try:
        with JobLock(state_path):
            store = await state(partial(Store.open, state_path, job=job))
            try:
                return await _run_locked(spec, state_path, store, state, options, progress)
            finally:
                await uninterrupted(store.close, executor=state.executor)
    finally:
        state.close()


async def _run_locked(
    spec: JobSpec,
    state_path: Path,
    store: Store,
    state: StateThread,
    options: RunOptions,
    progress: Progress,
) -> JobResult:
    """``run_job`` once the job's lock is held and its state file open."""
    output = Path(spec.output)
    created, notes, spec = await state(open_job, store, spec, state_path)
    job = await state(store.job)
    assert job is not None
    tiles = TileStore(job_tiles_folder(state_path, output, job.name, options.tile_folder))
    if job.status != "merged" and output.exists() and not options.overwrite:
        if not published_by(output, job.uid, spec.fingerprint()):
            raise output_exists_error(output)
        # The last run published this very file and was stopped before it could say so.
        await state(record_merged, store, output)
        if not spec.keep_tiles:
            await uninterrupted(tiles.remove_all)
        job = await state(store.job)
        assert job is not None
    if job.status == "merged" and output.exists() and not options.overwrite:
        if not still_written_by(output, spec):
            raise replaced_output_error(output)
        counts = await state(store.counts)
        return JobResult(
            output, state_path, counts, RunSummary(), True, [f"already complete: {output}"]
        )
    check_output_folder(output)
    with OutputLock(output):
        if created:
            notes.extend(await uninterrupted(clear_for_new_job, tiles))
        else:
            retried = await state(store.reset_failed)
            if retried:
                notes.append(f"trying {retried} failed tile(s) again")
            await state(store.release_all_claims)
            notes.extend(await uninterrupted(reconcile, store, tiles, spec, job.uid))
        await uninterrupted(tiles.reserve)
        for note in notes:
            progress.note(note)
        overwrite = options.overwrite or job.status == "merged"
        async with worker_budget(spec, state_path, store, options) as worker:
            session = WorkerSession(store, state, worker.owner, options.lease_seconds)
            async with session:
                live = await state(
                    _start_live_merge, spec, job.uid, store, tiles, options, overwrite
                )
                try:
                    counting = session.counting(progress)
                    run = JobRun(spec, job.uid, store, state, tiles, options, counting, worker)
                    summary = await _fetch_all(run, live)
                    counts = await state(store.counts)
                    if counts["pending"] or counts["in_flight"] or counts["failed"]:
                        status = "failed" if counts["failed"] else "running"
                        await state(store.set_job_status, status)
                        return JobResult(None, state_path, counts, summary, False, notes)
                    await state(store.set_job_status, "downloaded")
                    progress.note(f"all {counts['done']} tiles fetched; finishing {output}")
                    merged = await merge_to_the_end(spec, store, state, tiles, overwrite, live)
                finally:
                    if live is not None:
                        await uninterrupted(live.close)
        if spec.keep_tiles:
            await uninterrupted(tiles.free_reserve)
        else:
            await uninterrupted(tiles.remove_all)
        return JobResult(merged, state_path, await state(store.counts), summary, True, notes)


def new_limiter(concurrency: int | None, ceiling: int = EE_MAX_CONCURRENCY) -> AdaptiveLimiter:
    """A job's (or a collection's) concurrency budget: pinned, or found by probing; never
    above ``ceiling``, the project's quota, which every process of the project shares."""
    ceiling = max(1, min(ceiling, EE_MAX_CONCURRENCY))
    if concurrency is not None:
        return AdaptiveLimiter(min(concurrency, ceiling))
    start = min(DEFAULT_CONCURRENCY, ceiling)
    return AdaptiveLimiter.unpinned(
        ProbeSettings(start=start, floor=min(ProbeSettings().floor, start), ceiling=ceiling)
    )


async def open_gate(
    target: Path | str, options: RunOptions, owner: str, store: Store | None = None
) -> QuotaGate:
    """This process's door to the project's quota (the project the client sends requests
    to), kept in the state database itself when it is a server (through ``store``'s
    connections, if given), else in this user's quota file; opened with the run's
    --project-quota."""
    if store is not None and store.is_server:
        quota = store.quota()
    else:
        quota = await asyncio.to_thread(open_quota, target)
    project = quota_key(ee_adapter.current_project(), ee_adapter.current_base_url())
    gate = QuotaGate(
        quota, project, owner, lease_seconds=options.lease_seconds, ceiling=options.project_quota
    )
    try:
        await gate.open()
    except BaseException:
        await gate.close()
        raise
    return gate


@contextlib.asynccontextmanager
async def worker_budget(
    spec: JobSpec, target: Path | str, store: Store, options: RunOptions, *, shared: bool = False
) -> AsyncIterator[Worker]:
    """This process as a worker of the job: its owner name, clock, limiter and quota gate (the
    run's own, or the ones ``options`` shares between jobs); the own gate is closed after."""
    owner = new_owner()
    gate = options.quota
    own_gate = gate is None
    if gate is None:
        gate = await open_gate(target, options, owner, store)
    try:
        ceiling = gate.ceiling or PROJECT_QUOTA
        limiter = options.limiter or new_limiter(options.concurrency, ceiling)
        clock: Callable[[], float] = options.clock
        if shared:
            database_clock = DatabaseClock(options.clock)
            await asyncio.to_thread(database_clock.measure, store.now)
            clock = database_clock
        yield Worker(owner, clock, limiter, gate, shared)
    finally:
        if own_gate:
            await gate.close()


def _start_live_merge(
    spec: JobSpec,
    job_uid: str,
    store: Store,
    tiles: TileStore,
    options: RunOptions,
    overwrite: bool,
) -> LiveMerge | None:
    """Open the output beside the fetch and queue the tiles earlier runs already fetched."""
    if not options.merge_while_fetching:
        return None
    live = LiveMerge(
        spec,
        job_uid,
        tiles,
        overwrite=overwrite,
        interleave=interleave_for(spec, store.band_groups(len(spec.band_ids))),
        rehash_earlier=options.verify_checksums,
    )
    live.start()
    for tile in store.tiles("done"):
        assert tile.path is not None
        live.offer(tile, tile.path, tile.checksum, earlier=True)
    return live


def _offering(fetch: Fetch, live: LiveMerge) -> Fetch:
    """The fetcher, plus: hand each stored tile to the live merge."""

    async def fetch_and_offer(tile: TileRecord) -> StoredTile:
        stored = await fetch(tile)
        live.offer(tile, stored.path.name, stored.checksum, earlier=False)
        return stored

    return fetch_and_offer


Round = Callable[[], Awaitable[RunSummary]]


@dataclass(frozen=True, slots=True)
class JobRun:
    """What one process's fetch of a job works with: the job, its state (and the thread that
    writes it), its tile folder, the run's options and progress, and who fetches."""

    spec: JobSpec
    job_uid: str
    store: Store
    state: StateThread
    tiles: TileStore
    options: RunOptions
    progress: Progress
    worker: Worker


@contextlib.asynccontextmanager
async def fetching(run: JobRun, live: LiveMerge | None = None) -> AsyncIterator[Round]:
    """The fetch set up (the image, a transport, threads for the API calls); yields a
    coroutine function that runs one scheduler round: claim and fetch until nothing is left to
    claim. The URLs of tiles not in flight are forgotten at the end."""
    spec, store, state, tiles, options = run.spec, run.store, run.state, run.tiles, run.options
    worker = run.worker
    # Reading a large expression back takes the client a while: not on the event loop.
    image = await asyncio.to_thread(ee_adapter.prepared_image, spec)
    slots = options.concurrency or EE_MAX_CONCURRENCY
    scheduler_options = options.scheduler or SchedulerOptions(concurrency=slots)
    rng = random.Random(options.seed)
    base_url = ee_adapter.current_base_url()
    executor = await asyncio.to_thread(started_pool, scheduler_options.concurrency, "eefetch-ee")
    try:
        async with Transport(options.transport, base_url) as transport:
            updates = UpdateBuffer(store, state, worker.clock, database_clock=worker.shared)
            fetcher: Fetch = TileFetcher(
                spec,
                run.job_uid,
                image,
                transport,
                tiles,
                executor,
                updates.record,
                worker.clock,
                meter=worker.limiter,
                quota=worker.gate,
            )
            if live is not None:
                fetcher = _offering(fetcher, live)

            async def one_round() -> RunSummary:
                scheduler = Scheduler(
                    store,
                    fetcher,
                    partial(transport.probe, base_url),
                    owner=worker.owner,
                    itemsizes=itemsizes(spec),
                    updates=updates,
                    options=scheduler_options,
                    progress=run.progress,
                    rng=rng,
                    clock=worker.clock,
                    limiter=worker.limiter,
                    free_space=None if worker.shared else tiles.free_reserve,
                    shared=worker.shared,
                )
                return await scheduler.run()

            yield one_round
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        # No tile of this process is in flight now: no bearer URL need stay on disk.
        await uninterrupted(_forget_urls, store, executor=state.executor)


async def _fetch_all(run: JobRun, live: LiveMerge | None) -> RunSummary:
    """Fetch until every tile is done (or failed), re-checking finished tiles each round.

    With a live merge, the tiles of earlier runs are re-hashed by it as it writes them, and
    those fetched now are not re-hashed at all (they are read back right after their check).
    """
    spec, store, state, tiles, progress = run.spec, run.store, run.state, run.tiles, run.progress
    total = RunSummary()
    counts = await state(store.counts)
    leaves = counts["pending"] + counts["in_flight"] + counts["done"] + counts["failed"]
    progress.start(leaves, counts["done"], await state(store.bytes_done))
    try:
        async with fetching(run, live) as fetch_round:
            for _ in range(MAX_VERIFY_ROUNDS):
                add_summary(total, await fetch_round())
                if (await state(store.counts))["pending"]:
                    break
                if live is not None and live.active:
                    resets = await live.settle()
                if live is not None and live.active:
                    await state(store.apply, resets, _now())
                    changed = [
                        f"tile {r.tile_id} will be fetched again: {r.reason}" for r in resets
                    ]
                elif run.options.verify_checksums:
                    changed = await asyncio.to_thread(verify_done_tiles, store, tiles, spec)
                else:
                    break
                for note in changed:
                    progress.note(note)
                if not changed:
                    break
    finally:
        progress.close()
    return total


def _forget_urls(store: Store) -> None:
    with contextlib.suppress(StateError):  # URLs left behind are remade anyway
        store.forget_urls()


async def merge_to_the_end(
    spec: JobSpec,
    store: Store,
    state: StateThread,
    tiles: TileStore,
    overwrite: bool,
    live: LiveMerge | None,
) -> Path:
    """Finish the merge in a worker thread and record the result, even when interrupted.

    The live merge has written most tiles already; if it is off or fails, the whole merge runs
    now instead. A thread cannot be cancelled: left alone it would publish the output after
    the job was stopped, and the state would not know the file is its own. On Ctrl-C or
    SIGTERM the merge is told to stop at its next strip; if it got as far as publishing, that
    is recorded.
    """
    if live is not None and live.active:
        done = await state(store.tiles, "done")
        finishing = asyncio.wrap_future(live.finish_in_thread(done))
        try:
            return await _record_merge(finishing, live.stop, store)
        except (asyncio.CancelledError, MergeStopped):
            raise
        except Exception as exc:  # the classic merge below reports real errors
            LOG.info("merging while fetching failed (%s); merging again from the tiles", exc)
    stop = threading.Event()

    def stop_when_asked(done: int, total: int) -> None:
        if stop.is_set():
            raise MergeStopped

    merging = asyncio.ensure_future(
        asyncio.to_thread(_merge, spec, store, tiles, overwrite, stop_when_asked)
    )
    return await _record_merge(merging, stop, store)


async def _record_merge(merging: asyncio.Future[Path], stop: threading.Event, store: Store) -> Path:
    try:
        merged = await asyncio.shield(merging)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            record_merged(store, await merging)
        raise
    record_merged(store, merged)
    return merged


def record_merged(store: Store, output: Path) -> None:
    """The output is published: say so in the state, then drop the record of publishing it."""
    store.set_job_status("merged", str(output))
    checkpoint_path(output).unlink(missing_ok=True)


def _merge(
    spec: JobSpec,
    store: Store,
    tiles: TileStore,
    overwrite: bool,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    job = store.job()
    assert job is not None
    done: list[TileRecord] = store.tiles("done")
    pieces = [(tile_plan(t), tiles.final_path(t.path)) for t in done if t.path is not None]
    return merge_job(
        spec,
        job.uid,
        pieces,
        overwrite=overwrite,
        progress=progress,
        before_publish=publish_recorder(Path(spec.output), job.uid, spec.fingerprint()),
    )


def output_exists_error(output: Path) -> JobError:
    return JobError(
        f"{output} already exists; pass --overwrite to replace it, or choose another output with -o"
    )


def still_written_by(output: Path, spec: JobSpec) -> bool:
    """Whether the output of a finished job is still what it wrote: another download given
    the same -o (with --overwrite and a state of its own) may have replaced it since."""
    return recorded_fingerprint(output) == spec.fingerprint()


def may_merge_over(status: str, spec: JobSpec) -> bool:
    """Whether a merge of this job may replace its output unasked: a finished job's own output
    (merged again from kept tiles), never another download's."""
    return status == "merged" and still_written_by(Path(spec.output), spec)


def replaced_output_error(output: Path) -> JobError:
    return JobError(
        f"{output} is no longer the output this job wrote (another download has replaced "
        "it); pass --overwrite to write this job's again (its tiles are fetched again unless "
        "kept), or choose another output with -o"
    )


def check_output_folder(output: Path) -> None:
    """Refuse before fetching anything if the merge could not write the output at all."""
    folder = output.parent
    if not folder.is_dir():
        raise JobError(f"cannot write {output}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JobError(
            f"cannot write {output}: folder {folder} is not writable (read-only or no "
            "permission); choose another output with -o"
        )


def add_summary(total: RunSummary, part: RunSummary) -> None:
    total.fetched_tiles += part.fetched_tiles
    total.fetched_bytes += part.fetched_bytes
    total.retries += part.retries
    total.splits += part.splits
    total.tail_splits += part.tail_splits
    total.failed += part.failed
    total.outages += part.outages
    total.errors.extend(part.errors)


def _now() -> float:
    return time.time()


def merge_only(
    state_path: Path | str,
    *,
    overwrite: bool = False,
    job: str | None = None,
    tile_folder: Path | None = None,
) -> Path:
    """Redo the merge of a job whose tiles are all fetched and still on disk (a state on a
    server: under the job's merge lease, ``engine.workers.merge_shared``)."""
    if isinstance(state_path, str) and is_database_url(state_path):
        from engine.workers import merge_shared  # the shared run builds on this module

        return merge_shared(state_path, job, tile_folder, overwrite=overwrite)
    state_path = Path(state_path)
    with JobLock(state_path), Store.open(state_path, job=job, create=False) as store:
        record = store.job()
        if record is None:
            raise JobError(f"{state_path} holds no job; start one with `eefetch download`")
        spec = JobSpec.from_dict(record.spec)
        tiles = TileStore(job_tiles_folder(state_path, Path(spec.output), record.name, tile_folder))
        with OutputLock(spec.output):
            replace_own = may_merge_over(record.status, spec)
            return _merge_only(store, spec, state_path, tiles, overwrite or replace_own)


def _merge_only(
    store: Store, spec: JobSpec, state_path: Path, tiles: TileStore, overwrite: bool
) -> Path:
    """The merge of ``merge_only``, under its locks."""
    counts = store.counts()
    missing = counts["pending"] + counts["in_flight"] + counts["failed"]
    if missing:
        raise JobError(
            f"{missing} tile(s) are not fetched yet; run `eefetch resume "
            f"{state_path}` to fetch them and merge"
        )
    problems = verify_done_tiles(store, tiles, spec)
    if problems:
        raise JobError(
            f"{len(problems)} tile file(s) are gone or changed ({'; '.join(problems[:3])}; "
            f"tiles are deleted after a merge unless --keep-tiles); run `eefetch resume "
            f"{state_path}` to fetch them again"
        )
    merged = _merge(spec, store, tiles, overwrite)
    record_merged(store, merged)
    return merged
