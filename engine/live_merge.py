"""The merge running beside the fetch: each tile goes into the output as soon as it is stored.

Merging after the last tile leaves the CPU idle while the network is the bottleneck, then the
network idle while the CPU compresses. Here one worker thread of its own owns an
``OutputBuilder`` and takes tiles in the order they arrive; finishing then only writes what is
left, checks, and publishes. Tiles from an earlier run are re-hashed in that same thread before
they are written, so a file changed since is fetched again instead of merged.

Whatever goes wrong in here (a full disk, a GDAL error) only turns the live merge off: the job
then merges after the fetch as it always could, and that merge reports the error. Nothing is
ever published from here unless every leaf tile of the state is written with its current file.

A run that stops (Ctrl-C, SIGTERM, tiles left to fetch) keeps its unfinished output: it is
closed durably and a checkpoint beside it records which tile files (by checksum) it holds and
the file's size and modification time. The next run reopens it and writes only the other
tiles; if the file changed since (a run killed mid-write), the output is written anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from engine.filemodes import open_private
from engine.merge import OutputBuilder, choose_interleave
from engine.outputs import TileOutput, geotiff_builder, is_zarr, zarr_builder
from engine.spec import JobSpec
from engine.tiles import tile_expectation, tile_name, tile_plan
from engine.tilestore import TileStore
from state import TileRecord, TileReset

LOG = logging.getLogger(__name__)
CHECKPOINT_VERSION = 2  # 2: the job's uid, so that only the job that wrote it continues it


def checkpoint_path(output: Path) -> Path:
    """Where a stopped run records what its unfinished output holds, and a finishing run
    what it is about to publish."""
    return output.with_name(f".{output.name}.eefetch-merge.json")


def publish_recorder(output: Path, job_uid: str, fingerprint: str) -> Callable[[Path], None]:
    """A ``before_publish`` for the output builder: records, durably, which file (inode, size,
    modification time; a rename keeps all three) the job is about to publish. A run killed
    between the rename and the state's "merged" then lets the next run tell its own output
    from a file someone else put there."""

    def record(finished: Path) -> None:
        stat = _identity_file(finished).stat()
        _write_durably(
            checkpoint_path(output),
            {
                "version": CHECKPOINT_VERSION,
                "job_uid": job_uid,
                "fingerprint": fingerprint,
                "published": [stat.st_ino, stat.st_size, stat.st_mtime_ns],
            },
        )

    return record


def published_by(output: Path, job_uid: str, fingerprint: str) -> bool:
    """Whether ``output`` is the very file this job recorded it was publishing."""
    try:
        saved = json.loads(checkpoint_path(output).read_text())
        stat = _identity_file(output).stat()
        return bool(
            saved["version"] == CHECKPOINT_VERSION
            and saved["job_uid"] == job_uid
            and saved["fingerprint"] == fingerprint
            and saved["published"] == [stat.st_ino, stat.st_size, stat.st_mtime_ns]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _identity_file(output: Path) -> Path:
    """The file whose (inode, size, mtime) identify an output: a GeoTIFF itself, a Zarr
    store's root metadata (renaming the store's folder keeps that file as it is)."""
    return output / "zarr.json" if output.is_dir() else output


def _write_durably(path: Path, record: dict[str, object]) -> None:
    """Write JSON to a temporary name, fsync it, rename it, fsync the folder."""
    temp = path.with_name(path.name + ".tmp")
    with open(open_private(temp), "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MergeStopped(Exception):
    """The run was interrupted during the merge, before anything was published."""


def interleave_for(
    spec: JobSpec, band_groups: Sequence[tuple[int, int, int, int, int, int]], blocksize: int = 512
) -> str:
    """The output layout the after-fetch merge would choose, from the tiles (row, col, height,
    width, band_start, band_stop) that hold only some bands (``Store.band_groups``)."""
    bands: dict[tuple[int, int, int, int], int] = {}
    for row, col, height, width, start, stop in band_groups:
        bands[(row, col, height, width)] = bands.get((row, col, height, width), 0) + stop - start
    count = len(spec.band_ids)
    all_bands = all(n == count for n in bands.values())
    return choose_interleave(count, spec.dtype, blocksize, windows_have_all_bands=all_bands)


class LiveMerge:
    """Feeds tiles to an OutputBuilder in a worker thread while the scheduler fetches.

    Call ``offer`` from the event loop for each stored tile, ``settle`` to learn which tiles of
    an earlier run were found changed, ``finish`` once every tile is done, and ``close`` always.
    """

    def __init__(
        self,
        spec: JobSpec,
        job_uid: str,
        tiles: TileStore,
        *,
        overwrite: bool,
        interleave: str,
        rehash_earlier: bool = True,
    ) -> None:
        self.spec = spec
        self.job_uid = job_uid
        self.tiles = tiles
        self.overwrite = overwrite
        self.interleave = interleave
        self.rehash_earlier = rehash_earlier
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eefetch-merge")
        self._submitted: list[Future[None]] = []
        self._builder: TileOutput | None = None
        self._zarr = is_zarr(spec)  # a Zarr store journals each tile: no checkpoint needed
        self._written: dict[int, str | None] = {}  # tile id -> checksum of the file written
        self._changed: list[TileReset] = []
        self._lock = threading.Lock()  # guards _changed and failure across the two threads
        self._checkpoint = checkpoint_path(Path(spec.output))
        self._kept: dict[int, str] = {}  # tiles a stopped run already wrote, by checksum

    @property
    def active(self) -> bool:
        """False once the live merge gave up; the job then merges after the fetch."""
        return self.failure is None

    def start(self) -> None:
        self._submit(self._open)

    def offer(self, tile: TileRecord, name: str, checksum: str | None, *, earlier: bool) -> None:
        """Queue one stored tile for the output; ``earlier`` tiles are re-hashed first."""
        if self.active:
            self._submit(self._add, tile, name, checksum, earlier)

    async def settle(self) -> list[TileReset]:
        """Wait for every queued tile; return (and forget) the earlier tiles found changed."""
        submitted, self._submitted = self._submitted, []
        for future in submitted:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(future)
        with self._lock:
            changed, self._changed = self._changed, []
        return changed

    def finish_in_thread(self, done: Sequence[TileRecord]) -> Future[Path]:
        """Write whatever done tile is not in yet, then check and publish; runs in the worker.

        The returned future raises MergeStopped if ``stop`` was set first, or the builder's
        error (the live merge is then off and the caller merges the classic way).
        """
        return self._executor.submit(self._finish, list(done))

    def close(self) -> None:
        """Stop at the next strip, keep the unfinished output for the next run, end the thread.

        Blocks for one strip of the merge plus closing the output (GDAL compresses what its
        cache holds and fills the blocks not written yet); queued tiles are skipped.
        """
        self.stop.set()
        self._executor.submit(self._suspend)
        self._executor.shutdown(wait=True)

    def _submit(self, function: Callable[..., None], *args: object) -> None:
        self._submitted.append(self._executor.submit(self._guarded, function, *args))

    def _guarded(self, function: Callable[..., None], *args: object) -> None:
        if not self.active or self.stop.is_set():
            return
        try:
            function(*args)
        except MergeStopped:
            pass
        except Exception as exc:  # any error only turns the live merge off
            LOG.info("merging while fetching is off for this run: %s", exc)
            with self._lock:
                self.failure = exc
            self._discard()

    def _check_stop(self, done: int, total: int) -> None:
        if self.stop.is_set():
            raise MergeStopped

    def _open(self) -> None:
        if self._zarr:
            builder = zarr_builder(
                self.spec,
                self.job_uid,
                overwrite=self.overwrite,
                progress=self._check_stop,
                before_publish=self._recorder(),
            ).__enter__()
            self._builder, self._kept = builder, builder.kept()
            return
        kept = self._read_checkpoint()
        self._checkpoint.unlink(missing_ok=True)  # the file is about to change
        if kept:
            try:
                self._builder = self._new_builder(reopen=True).__enter__()
                self._kept = kept
                return
            except Exception as exc:
                LOG.info("the unfinished output of the last run is written anew: %s", exc)
        self._builder = self._new_builder(reopen=False).__enter__()

    def _new_builder(self, *, reopen: bool) -> OutputBuilder:
        return geotiff_builder(
            self.spec,
            overwrite=self.overwrite,
            progress=self._check_stop,
            interleave=self.interleave,
            reopen=reopen,
            before_publish=self._recorder(),
        )

    def _recorder(self) -> Callable[[Path], None]:
        return publish_recorder(Path(self.spec.output), self.job_uid, self.spec.fingerprint())

    def _read_checkpoint(self) -> dict[int, str]:
        """The tiles the last run's unfinished output holds, if that file is untouched since."""
        try:
            saved = json.loads(self._checkpoint.read_text())
            stat = (OutputBuilder.temp_for(Path(self.spec.output))).stat()
            if (
                saved["version"] != CHECKPOINT_VERSION
                or saved["job_uid"] != self.job_uid
                or saved["fingerprint"] != self.spec.fingerprint()
                or saved["compress"] != self.spec.compress
                or saved["interleave"] != self.interleave
                or (saved["size"], saved["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns)
            ):
                return {}
            return {int(k): str(v) for k, v in saved["tiles"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _suspend(self) -> None:
        """Keep the unfinished output and record what it holds; remove it if that fails."""
        if self._builder is None:
            return
        if self.failure is None:
            try:
                if self._zarr:  # its journal already holds every tile written
                    self._builder.suspend()
                    self._builder = None
                    return
                assert isinstance(self._builder, OutputBuilder)
                size, mtime_ns = self._builder.suspend()
                self._builder = None
                self._write_checkpoint(size, mtime_ns)
                return
            except Exception as exc:
                LOG.info("cannot keep the unfinished output for the next run: %s", exc)
        self._discard()

    def _write_checkpoint(self, size: int, mtime_ns: int) -> None:
        _write_durably(
            self._checkpoint,
            {
                "version": CHECKPOINT_VERSION,
                "job_uid": self.job_uid,
                "fingerprint": self.spec.fingerprint(),
                "compress": self.spec.compress,
                "interleave": self.interleave,
                "size": size,
                "mtime_ns": mtime_ns,
                "tiles": {str(k): v for k, v in self._written.items() if v is not None},
            },
        )

    def _add(self, tile: TileRecord, name: str, checksum: str | None, earlier: bool) -> None:
        assert self._builder is not None
        if earlier and checksum is not None and self._kept.get(tile.id) == checksum:
            self._builder.adopt(tile_plan(tile), self.tiles.final_path(name))
            self._written[tile.id] = checksum
            return
        if earlier:
            problem = self.tiles.verify(
                name,
                tile_expectation(self.spec, tile),
                checksum if self.rehash_earlier else None,
                fast=not self.rehash_earlier,
            )
            if problem is not None:
                self.tiles.remove(name)
                with self._lock:
                    self._changed.append(TileReset(tile.id, problem))
                return
        self._builder.add(tile_plan(tile), self.tiles.final_path(name))
        self._builder.record(tile.id, checksum)
        self._written[tile.id] = checksum

    def _finish(self, done: list[TileRecord]) -> Path:
        if self.failure is not None:
            raise self.failure
        assert self._builder is not None
        try:
            for tile in done:
                if tile.id not in self._written or self._written[tile.id] != tile.checksum:
                    # Never offered (should not happen): checked like a tile of an earlier run.
                    self._check_stop(0, 0)
                    name = tile.path or tile_name(self.job_uid, tile.id)
                    self._add(tile, name, tile.checksum, True)
            with self._lock:
                changed = list(self._changed)
            if changed:
                raise RuntimeError(f"{len(changed)} finished tile file(s) changed during the run")
            self._check_stop(0, 0)
            output = self._builder.finish()
        except MergeStopped:
            raise  # interrupted: the builder stays open, and close() keeps it for the next run
        except BaseException:
            self._discard()  # the caller merges from the tiles, under the same temporary name
            raise
        self._builder = None
        return output

    def _discard(self) -> None:
        if self._builder is not None:
            self._builder.__exit__(None, None, None)
            self._builder = None
        self._checkpoint.unlink(missing_ok=True)
