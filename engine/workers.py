"""Many workers on one job: the job's state on a PostgreSQL server, its tiles in one folder.

``eefetch download ... --state postgresql://...`` and every ``eefetch worker --state URL --job
NAME`` run :func:`run_shared`. They coordinate only through the database, never by file locks
(they may run on several machines):

- Claims, leases and retry times are on the database's clock, so a worker with a wrong clock
  neither steals live leases nor loses its own. A worker that dies stops renewing its claims;
  after their lease the others take its tiles.
- A worker with nothing to claim while other workers' tiles are in flight waits (polling a few
  times a lease) rather than exit, so it can take over a dead worker's tiles; it stops when
  every tile is done or failed.
- When every tile is done, exactly one worker takes the job's merge lease: it re-hashes every
  tile against the checksum the writing worker recorded (a tile changed or missing on the
  shared folder is fetched again), merges, and records the job merged. The others end, saying
  who merges. ``eefetch merge URL --job NAME`` does the merge alone (:func:`merge_shared`).
- Nothing is ever removed at the start of a worker (a part file may be another worker's
  download in progress); the merger removes the job's tile folder after publishing.
- The live merge (engine/live_merge.py) is off: it assumes one process sees every tile as it
  arrives, and the output may not even be on this worker's machine. The merger writes the
  output after the fetch, from the tile folder.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from engine.defaults import WORKER_LEASE_S
from engine.errors import JobError
from engine.heartbeat import WorkerSession
from engine.job import (
    MAX_VERIFY_ROUNDS,
    JobResult,
    JobRun,
    RunOptions,
    add_summary,
    check_output_folder,
    fetching,
    may_merge_over,
    merge_to_the_end,
    open_job,
    output_exists_error,
    still_written_by,
    verify_done_tiles,
    worker_budget,
)
from engine.live_merge import published_by
from engine.offload import StateThread, uninterrupted
from engine.paths import job_tiles_folder
from engine.progress import Progress
from engine.scheduler import RunSummary
from engine.spec import JobSpec
from engine.tilestore import TileStore
from state import OutputLock, Store


def poll_interval(lease_seconds: float) -> float:
    """How often a worker with nothing to claim looks again: a few times per lease, so a dead
    worker's tiles are taken soon after its lease runs out."""
    return min(5.0, max(0.5, lease_seconds / 6))


async def run_shared(
    spec: JobSpec, target: str, name: str, options: RunOptions, progress: Progress
) -> JobResult:
    """Work on job ``name`` in the database at ``target`` (creating it from ``spec`` if it
    does not exist yet) until no tile is left for this worker; merge if it is the one."""
    state = await asyncio.to_thread(StateThread)
    try:
        store = await state(partial(Store.open, target, job=name))
        try:
            return await _work(spec, store, state, options, progress)
        finally:
            await uninterrupted(store.close, executor=state.executor)
    finally:
        state.close()


async def _work(
    spec: JobSpec, store: Store, state: StateThread, options: RunOptions, progress: Progress
) -> JobResult:
    label = store.target
    created, notes, spec = await state(open_job, store, spec, label)
    job = await state(store.job)
    assert job is not None
    output = Path(spec.output)
    if created and output.exists() and not options.overwrite:
        raise output_exists_error(output)
    if job.status == "merged":
        if output.exists() and not still_written_by(output, spec):  # seen from this machine
            raise JobError(
                f"{output} is no longer the output job {job.name} wrote (another download has "
                "replaced it); choose another output with -o, or run the job again under "
                "another --job name"
            )
        counts = await state(store.counts)
        done = f"already complete: {job.output_path}"
        return JobResult(output, label, counts, RunSummary(), True, [done], job=job.name)
    tiles = TileStore(job_tiles_folder(label, output, job.name, options.tile_folder))
    retried = 0 if created else await state(store.reset_failed)
    if retried:
        notes.append(f"trying {retried} failed tile(s) again")
    for note in notes:
        progress.note(note)
    async with worker_budget(spec, label, store, options, shared=True) as worker:
        session = WorkerSession(store, state, worker.owner, options.lease_seconds)
        async with session:
            counting = session.counting(progress)
            counts = await state(store.counts)
            leaves = sum(n for status, n in counts.items() if status != "split")
            counting.start(leaves, counts["done"], await state(store.bytes_done))
            total = RunSummary()
            try:
                run = JobRun(spec, job.uid, store, state, tiles, options, counting, worker)
                async with fetching(run) as fetch_round:
                    verified = 0
                    while True:
                        add_summary(total, await fetch_round())
                        counts = await state(store.counts)
                        if counts["pending"]:
                            continue  # released or reset meanwhile: claimable again
                        if counts["in_flight"]:
                            # Other workers' tiles: wait, to take them over if their worker
                            # dies (its lease runs out).
                            await asyncio.sleep(poll_interval(options.lease_seconds))
                            continue
                        if counts["failed"]:
                            await state(store.set_job_status, "failed")
                            return JobResult(None, label, counts, total, False, notes, job=job.name)
                        current = await state(store.job)
                        assert current is not None
                        if current.status == "merged":  # by another worker, just now
                            note = f"another worker merged {current.output_path}"
                            counting.note(note)
                            return JobResult(
                                output, label, counts, total, True, [*notes, note], job=job.name
                            )
                        if not session.holds_merge:
                            holder = await _merger(store, state, worker.owner, options)
                            if holder is not None:
                                note = f"all tiles are fetched; {holder} merges {output}"
                                counting.note(note)
                                return JobResult(
                                    output, label, counts, total, False, [*notes, note],
                                    merged_by=holder, job=job.name,
                                )  # fmt: skip
                            session.holds_merge = True
                            # Another worker may have merged between the look and the lease.
                            continue
                        await state(store.set_job_status, "downloaded")
                        changed = await asyncio.to_thread(verify_done_tiles, store, tiles, spec)
                        for note in changed:
                            counting.note(note)
                        verified += 1
                        if not changed:
                            counting.note(f"all {counts['done']} tiles fetched; merging {output}")
                            break
                        if verified >= MAX_VERIFY_ROUNDS:
                            counts = await state(store.counts)
                            return JobResult(None, label, counts, total, False, notes, job=job.name)
            finally:
                counting.close()
            merged = await _merge(spec, store, state, tiles, options.overwrite)
    counts = await state(store.counts)
    return JobResult(merged, label, counts, total, True, notes, job=job.name)


async def _merger(store: Store, state: StateThread, owner: str, options: RunOptions) -> str | None:
    """Take the job's merge lease; None if this worker got it, else who holds it."""
    if await state(store.acquire_merge, owner, options.lease_seconds):
        return None
    lease = await state(store.merge_lease)
    return lease.owner if lease is not None else "another worker"


async def _merge(
    spec: JobSpec, store: Store, state: StateThread, tiles: TileStore, overwrite: bool
) -> Path:
    """Merge the job's tiles into its output (this worker holds the merge lease), record it,
    and remove the tiles unless the job keeps them."""
    output = Path(spec.output)
    job = await state(store.job)
    assert job is not None
    check_output_folder(output)
    with OutputLock(output):
        if output.exists() and not overwrite:
            if not published_by(output, job.uid, spec.fingerprint()):
                raise JobError(
                    f"{output} already exists; the tiles are kept: run `eefetch merge "
                    f"{store.target} --job {job.name} --overwrite` to replace it"
                )
            overwrite = True  # this job published it and was stopped before saying so
        merged = await merge_to_the_end(spec, store, state, tiles, overwrite, None)
    if not spec.keep_tiles:
        await uninterrupted(tiles.remove_all)
    return merged


def merge_shared(
    target: str, name: str | None, tile_folder: Path | None, *, overwrite: bool = False
) -> Path:
    """``eefetch merge URL --job NAME``: merge a job whose tiles are all fetched, under its
    merge lease (refused while another process holds it)."""
    return asyncio.run(_merge_shared(target, name, tile_folder, overwrite))


async def _merge_shared(
    target: str, name: str | None, tile_folder: Path | None, overwrite: bool
) -> Path:
    from engine.quota_gate import new_owner

    state = await asyncio.to_thread(StateThread)
    try:
        store = await state(partial(Store.open, target, job=name, create=False))
        try:
            job = await state(store.job)
            if job is None:
                raise JobError(
                    f"{store.target} holds no job named {name}; check --job (eefetch status "
                    f"{store.target} lists the jobs)"
                )
            spec = JobSpec.from_dict(job.spec)
            counts = await state(store.counts)
            missing = counts["pending"] + counts["in_flight"] + counts["failed"]
            if missing:
                raise JobError(
                    f"{missing} tile(s) of job {job.name} are not fetched yet; run `eefetch "
                    f"worker --state {store.target} --job {job.name}` to fetch them and merge"
                )
            owner = new_owner()
            if not await state(store.acquire_merge, owner, WORKER_LEASE_S):
                lease = await state(store.merge_lease)
                holder = lease.owner if lease is not None else "another worker"
                raise JobError(
                    f"{holder} holds the merge of job {job.name}; wait for it (eefetch status "
                    f"{store.target} --job {job.name})"
                )
            session = WorkerSession(store, state, owner, WORKER_LEASE_S)
            session.holds_merge = True
            async with session:
                folder = job_tiles_folder(target, Path(spec.output), job.name, tile_folder)
                tiles = TileStore(folder)
                problems = await asyncio.to_thread(verify_done_tiles, store, tiles, spec)
                if problems:
                    raise JobError(
                        f"{len(problems)} tile file(s) in {folder} are gone or changed "
                        f"({'; '.join(problems[:3])}); run `eefetch worker --state "
                        f"{store.target} --job {job.name}` to fetch them again and merge"
                    )
                await state(store.set_job_status, "downloaded")
                replace_own = may_merge_over(job.status, spec)
                return await _merge(spec, store, state, tiles, overwrite or replace_own)
        finally:
            await uninterrupted(store.close, executor=state.executor)
    finally:
        state.close()


__all__ = ["merge_shared", "poll_interval", "run_shared"]
