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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from engine import __version__, ee_adapter
from engine.fetch import TileFetcher, tile_expectation, tile_name
from engine.grid import EE_MAX_SIDE_COMPUTE, EE_MAX_SIDE_URLS, TilePlan, plan_tiles
from engine.live_merge import LiveMerge, MergeStopped, interleave_for, tile_plan
from engine.merge import merge_tiles
from engine.pacing import DEFAULT_CONCURRENCY, AdaptiveLimiter
from engine.paths import tiles_folder
from engine.progress import Progress, SilentProgress
from engine.scheduler import Fetch, RunSummary, Scheduler, SchedulerOptions, UpdateBuffer
from engine.spec import JobSpec, SpecError, identity_differences, resumed_spec
from engine.tilestore import StoredTile, TileStore
from engine.transport import Transport, TransportOptions
from state import JobLock, NewTile, StateError, Store, TileDone, TileRecord, TileReset

MAX_VERIFY_ROUNDS = 3
LOG = logging.getLogger(__name__)


class JobError(Exception):
    """A job cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run goes, as opposed to what it fetches (see JobSpec)."""

    concurrency: int = DEFAULT_CONCURRENCY
    transport: TransportOptions = field(default_factory=TransportOptions)
    scheduler: SchedulerOptions | None = None
    overwrite: bool = False
    verify_checksums: bool = True
    # Write each tile into the output as it arrives instead of merging after the last one.
    merge_while_fetching: bool = True
    seed: int | None = None
    # One budget shared by several jobs run at once (a collection); None: the job's own.
    limiter: AdaptiveLimiter | None = None


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
        tiles = [
            NewTile(
                t.window.row_off,
                t.window.col_off,
                t.window.height,
                t.window.width,
                t.band_start,
                t.band_stop,
            )
            for t in plan(spec)
        ]
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


def reconcile(store: Store, tiles: TileStore, spec: JobSpec) -> list[str]:
    """Make the state and the tile files agree before fetching, and say what changed."""
    notes: list[str] = []
    stale = tiles.remove_stale_parts()
    if stale:
        notes.append(f"removed {stale} partial tile file(s) left by an interrupted run")
    now = _now()
    on_disk = tiles.sizes()
    updates: list[TileDone | TileReset] = []
    for tile_id, status, path, size in store.tile_files():
        if status == "done":
            found = on_disk.get(path or tile_name(tile_id))
            if found is None:
                updates.append(TileReset(tile_id, "tile file missing"))
            elif found != size:
                updates.append(TileReset(tile_id, f"tile file is {found} bytes, expected {size}"))
            continue
        name = tile_name(tile_id)
        if name not in on_disk:
            continue
        # Written and renamed just before an interruption, never recorded as done.
        tile = store.tile(tile_id)
        assert tile is not None
        if tiles.verify(name, tile_expectation(spec, tile), None) is None:
            stored = tiles.describe(name)
            updates.append(TileDone(tile_id, name, stored.bytes, stored.checksum))
        else:
            tiles.remove(name)
    if updates:
        store.apply(updates, now)
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
        name = tile.path or tile_name(tile.id)
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
    """Fetch whatever is missing of ``spec`` and merge it; safe to call again after any stop."""
    progress = progress or SilentProgress()
    output = Path(spec.output)
    if output.exists() and not options.overwrite and not state_path.exists():
        raise _output_exists(output)  # before a state file is made for a job that cannot run
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with JobLock(state_path), Store.open(state_path) as store:
        created, notes, spec = open_job(store, spec, state_path)
        job = store.job()
        assert job is not None
        if job.status == "merged" and output.exists() and not options.overwrite:
            counts = store.counts()
            return JobResult(
                output, state_path, counts, RunSummary(), True, [f"already complete: {output}"]
            )
        if output.exists() and not options.overwrite and job.status != "merged":
            raise _output_exists(output)
        _check_output_folder(output)
        tiles = TileStore(tiles_folder(state_path))
        if not created:
            retried = store.reset_failed()
            if retried:
                notes.append(f"trying {retried} failed tile(s) again")
            store.release_all_claims()
            notes.extend(reconcile(store, tiles, spec))
        for note in notes:
            progress.note(note)
        overwrite = options.overwrite or job.status == "merged"
        live = _start_live_merge(spec, store, tiles, options, overwrite)
        try:
            summary = await _fetch_all(spec, store, tiles, options, progress, live)
            counts = store.counts()
            if counts["pending"] or counts["in_flight"] or counts["failed"]:
                store.set_job_status("failed" if counts["failed"] else "running")
                return JobResult(None, state_path, counts, summary, False, notes)
            store.set_job_status("downloaded")
            progress.note(f"all {counts['done']} tiles fetched; finishing {output}")
            merged = await _merge_to_the_end_or_not_at_all(spec, store, tiles, overwrite, live)
        finally:
            if live is not None:
                live.close()
        if not spec.keep_tiles:
            tiles.remove_all()
        return JobResult(merged, state_path, store.counts(), summary, True, notes)


def _start_live_merge(
    spec: JobSpec, store: Store, tiles: TileStore, options: RunOptions, overwrite: bool
) -> LiveMerge | None:
    """Open the output beside the fetch and queue the tiles earlier runs already fetched."""
    if not options.merge_while_fetching:
        return None
    live = LiveMerge(
        spec,
        tiles,
        overwrite=overwrite,
        interleave=interleave_for(spec, store.band_groups(len(spec.band_ids))),
        rehash_earlier=options.verify_checksums,
    )
    live.start()
    for tile in store.tiles("done"):
        live.offer(tile, tile.path or tile_name(tile.id), tile.checksum, earlier=True)
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
    store: Store,
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
    counts = store.counts()
    leaves = counts["pending"] + counts["in_flight"] + counts["done"] + counts["failed"]
    progress.start(leaves, counts["done"], store.bytes_done())
    image = ee_adapter.prepare_image(
        ee_adapter.deserialize(spec.expression), spec.band_ids, spec.dtype, spec.nodata
    )
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    scheduler_options = options.scheduler or SchedulerOptions(concurrency=options.concurrency)
    rng = random.Random(options.seed)
    base_url = ee_adapter.current_base_url()
    executor = ThreadPoolExecutor(
        max_workers=scheduler_options.concurrency, thread_name_prefix="eefetch-ee"
    )
    try:
        async with Transport(options.transport, base_url) as transport:
            updates = UpdateBuffer(store)
            fetcher: Fetch = TileFetcher(spec, image, transport, tiles, executor, updates.record)
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
                    limiter=options.limiter,
                )
                summary = await scheduler.run()
                _add(total, summary)
                if store.counts()["pending"]:
                    break
                if live is not None and live.active:
                    resets = await live.settle()
                if live is not None and live.active:
                    store.apply(resets, _now())
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
        with contextlib.suppress(StateError):  # URLs left behind are remade anyway
            store.forget_urls()  # no tile is in flight now: no bearer URL need stay on disk
    return total


async def _merge_to_the_end_or_not_at_all(
    spec: JobSpec, store: Store, tiles: TileStore, overwrite: bool, live: LiveMerge | None
) -> Path:
    """Finish the merge in a worker thread and record the result, even when interrupted.

    The live merge has written most tiles already; if it is off or fails, the whole merge runs
    now instead. A thread cannot be cancelled: left alone it would publish the output after
    the job was stopped, and the state would not know the file is its own. On Ctrl-C or
    SIGTERM the merge is told to stop at its next strip; if it got as far as publishing, that
    is recorded.
    """
    if live is not None and live.active:
        finishing = asyncio.wrap_future(live.finish_in_thread(store.tiles("done")))
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
            store.set_job_status("merged", str(await merging))
        raise
    store.set_job_status("merged", str(merged))
    return merged


def _merge(
    spec: JobSpec,
    store: Store,
    tiles: TileStore,
    overwrite: bool,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    done: list[TileRecord] = store.tiles("done")
    pieces = [(tile_plan(t), tiles.final_path(t.path or tile_name(t.id))) for t in done]
    return merge_tiles(
        spec.grid,
        spec.band_ids,
        spec.dtype,
        pieces,
        Path(spec.output),
        nodata=spec.nodata,
        compress=spec.compress,
        cog=spec.cog,
        overwrite=overwrite,
        progress=progress,
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
        merged = _merge(spec, store, tiles, overwrite or job.status == "merged")
        store.set_job_status("merged", str(merged))
        return merged
