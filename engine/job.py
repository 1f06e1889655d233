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
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from engine import __version__, ee_adapter
from engine.defaults import EE_MAX_CONCURRENCY, EE_MAX_SIDE_COMPUTE, EE_MAX_SIDE_URLS
from engine.errors import JobError, SpecError
from engine.fetch import TileFetcher
from engine.grid import TilePlan, plan_tiles
from engine.live_merge import (
    LiveMerge,
    MergeStopped,
    checkpoint_path,
    interleave_for,
    publish_recorder,
    published_by,
)
from engine.offload import StateThread, started_pool, uninterrupted
from engine.outputs import merge_job
from engine.pacing import AdaptiveLimiter
from engine.paths import tiles_folder
from engine.progress import Progress, SilentProgress
from engine.scheduler import Fetch, RunSummary, Scheduler, SchedulerOptions, UpdateBuffer
from engine.spec import JobSpec, identity_differences, resumed_spec
from engine.tiles import is_tile_file, new_tile, tile_expectation, tile_name, tile_plan
from engine.tilestore import StoredTile, TileStore
from engine.transport import Transport, TransportOptions
from state import JobLock, OutputLock, StateError, Store, TileDone, TileRecord, TileReset

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


@dataclass
class JobResult:
    output: Path | None
    state_path: Path
    counts: dict[str, int]
    summary: RunSummary
    merged: bool
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.merged


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


def open_job(store: Store, spec: JobSpec, state_path: Path) -> tuple[bool, list[str], JobSpec]:
    """Create the job in an empty state file, or check that the file holds this very job.

    Returns the spec to run: ``spec``, with the stored plan's settings when resuming.
    """
    job = store.job()
    if job is None:
        tiles = [new_tile(t) for t in plan(spec)]
        store.create_job(spec.fingerprint(), spec.to_dict(), __version__, spec.output, tiles)
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
    if differs:
        raise JobError(
            f"state file {state_path} holds another job (for {job.output_path}; it differs in "
            f"{', '.join(differs)}); give this download its own --state, or delete that file "
            "to start over"
        )
    leaves = sum(n for status, n in store.counts().items() if status != "split")
    spec, notes = resumed_spec(stored, spec, leaves, partial(_largest_side, store))
    return False, notes, spec


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
        store.apply(resets, _now())
    return [f"tile {r.tile_id} will be fetched again: {r.reason}" for r in resets]


async def run_job(
    spec: JobSpec, state_path: Path, options: RunOptions, progress: Progress | None = None
) -> JobResult:
    """Fetch whatever is missing of ``spec`` and merge it; safe to call again after any stop.

    State I/O runs in a thread of its own and file work in worker threads: several jobs (a
    collection) share the event loop, and none may hold it up.
    """
    progress = progress or SilentProgress()
    output = Path(spec.output)
    if output.exists() and not options.overwrite and not state_path.exists():
        raise _output_exists(output)  # before a state file is made for a job that cannot run
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = await asyncio.to_thread(StateThread)
    try:
        with JobLock(state_path):
            store = await state(Store.open, state_path)
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
    if job.status != "merged" and output.exists() and not options.overwrite:
        if not published_by(output, job.uid, spec.fingerprint()):
            raise _output_exists(output)
        # The last run published this very file and was stopped before it could say so.
        await state(record_merged, store, output)
        if not spec.keep_tiles:
            await uninterrupted(TileStore(tiles_folder(state_path)).remove_all)
        job = await state(store.job)
        assert job is not None
    if job.status == "merged" and output.exists() and not options.overwrite:
        counts = await state(store.counts)
        return JobResult(
            output, state_path, counts, RunSummary(), True, [f"already complete: {output}"]
        )
    _check_output_folder(output)
    with OutputLock(output):
        tiles = TileStore(tiles_folder(state_path))
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
        live = await state(_start_live_merge, spec, job.uid, store, tiles, options, overwrite)
        try:
            summary = await _fetch_all(spec, job.uid, store, state, tiles, options, progress, live)
            counts = await state(store.counts)
            if counts["pending"] or counts["in_flight"] or counts["failed"]:
                status = "failed" if counts["failed"] else "running"
                await state(store.set_job_status, status)
                return JobResult(None, state_path, counts, summary, False, notes)
            await state(store.set_job_status, "downloaded")
            progress.note(f"all {counts['done']} tiles fetched; finishing {output}")
            merged = await _merge_to_the_end_or_not_at_all(
                spec, store, state, tiles, overwrite, live
            )
        finally:
            if live is not None:
                await uninterrupted(live.close)
        if spec.keep_tiles:
            await uninterrupted(tiles.free_reserve)
        else:
            await uninterrupted(tiles.remove_all)
        return JobResult(merged, state_path, await state(store.counts), summary, True, notes)


def new_limiter(concurrency: int | None) -> AdaptiveLimiter:
    """A job's (or a collection's) concurrency budget: pinned, or found by probing."""
    return AdaptiveLimiter.unpinned() if concurrency is None else AdaptiveLimiter(concurrency)


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


async def _fetch_all(
    spec: JobSpec,
    job_uid: str,
    store: Store,
    state: StateThread,
    tiles: TileStore,
    options: RunOptions,
    progress: Progress,
    live: LiveMerge | None,
) -> RunSummary:
    """Fetch until every tile is done (or failed), re-checking finished tiles each round.

    With a live merge, the tiles of earlier runs are re-hashed by it as it writes them, and
    those fetched now are not re-hashed at all (they are read back right after their check).
    """
    total = RunSummary()
    counts = await state(store.counts)
    leaves = counts["pending"] + counts["in_flight"] + counts["done"] + counts["failed"]
    progress.start(leaves, counts["done"], await state(store.bytes_done))
    # Reading a large expression back takes the client a while: not on the event loop.
    image = await asyncio.to_thread(ee_adapter.prepared_image, spec)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    slots = options.concurrency or EE_MAX_CONCURRENCY
    scheduler_options = options.scheduler or SchedulerOptions(concurrency=slots)
    limiter = options.limiter or new_limiter(options.concurrency)
    rng = random.Random(options.seed)
    base_url = ee_adapter.current_base_url()
    executor = await asyncio.to_thread(started_pool, scheduler_options.concurrency, "eefetch-ee")
    try:
        async with Transport(options.transport, base_url) as transport:
            updates = UpdateBuffer(store, state, options.clock)
            fetcher: Fetch = TileFetcher(
                spec,
                job_uid,
                image,
                transport,
                tiles,
                executor,
                updates.record,
                options.clock,
                meter=limiter,
            )
            if live is not None:
                fetcher = _offering(fetcher, live)
            for _ in range(MAX_VERIFY_ROUNDS):
                scheduler = Scheduler(
                    store,
                    fetcher,
                    partial(transport.probe, base_url),
                    owner=owner,
                    itemsizes=itemsizes(spec),
                    updates=updates,
                    options=scheduler_options,
                    progress=progress,
                    rng=rng,
                    clock=options.clock,
                    limiter=limiter,
                    free_space=tiles.free_reserve,
                )
                summary = await scheduler.run()
                _add(total, summary)
                if (await state(store.counts))["pending"]:
                    break
                if live is not None and live.active:
                    resets = await live.settle()
                if live is not None and live.active:
                    await state(store.apply, resets, _now())
                    changed = [
                        f"tile {r.tile_id} will be fetched again: {r.reason}" for r in resets
                    ]
                elif options.verify_checksums:
                    changed = await asyncio.to_thread(verify_done_tiles, store, tiles, spec)
                else:
                    break
                for note in changed:
                    progress.note(note)
                if not changed:
                    break
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        progress.close()
        # No tile is in flight now: no bearer URL need stay on disk.
        await uninterrupted(_forget_urls, store, executor=state.executor)
    return total


def _forget_urls(store: Store) -> None:
    with contextlib.suppress(StateError):  # URLs left behind are remade anyway
        store.forget_urls()


async def _merge_to_the_end_or_not_at_all(
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


def _output_exists(output: Path) -> JobError:
    return JobError(
        f"{output} already exists; pass --overwrite to replace it, or choose another output with -o"
    )


def _check_output_folder(output: Path) -> None:
    """Refuse before fetching anything if the merge could not write the output at all."""
    folder = output.parent
    if not folder.is_dir():
        raise JobError(f"cannot write {output}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JobError(
            f"cannot write {output}: folder {folder} is not writable (read-only or no "
            "permission); choose another output with -o"
        )


def _add(total: RunSummary, part: RunSummary) -> None:
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


def merge_only(state_path: Path, *, overwrite: bool = False) -> Path:
    """Redo the merge of a job whose tiles are all fetched and still on disk."""
    with JobLock(state_path), Store.open(state_path, create=False) as store:
        job = store.job()
        if job is None:
            raise JobError(f"{state_path} holds no job; start one with `eefetch download`")
        spec = JobSpec.from_dict(job.spec)
        with OutputLock(spec.output):
            return _merge_only(store, spec, state_path, overwrite or job.status == "merged")


def _merge_only(store: Store, spec: JobSpec, state_path: Path, overwrite: bool) -> Path:
    """The merge of ``merge_only``, under its locks."""
    counts = store.counts()
    missing = counts["pending"] + counts["in_flight"] + counts["failed"]
    if missing:
        raise JobError(
            f"{missing} tile(s) are not fetched yet; run `eefetch resume "
            f"{state_path}` to fetch them and merge"
        )
    tiles = TileStore(tiles_folder(state_path))
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
