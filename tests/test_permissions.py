"""Work files are the owner's only, whatever the umask; the published output is an ordinary
file; download URLs (bearer capabilities) do not outlive the run that made them."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from test_live_merge import GRID, run_live, spec_for, tile_records
from test_merge import random_data

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.grid import TilePlan, Window
from engine.live_merge import checkpoint_path
from engine.merge import OutputBuilder
from engine.paths import default_state_path, tiles_folder
from engine.testing.jobs import dem_job
from engine.tilestore import TileStore
from state import JobLock, Store

REGION = [118.70, 32.00, 118.80, 32.06]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_a_new_state_file_its_wal_shm_and_lock_are_private(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "job.eefetch.db"
    with JobLock(state), Store.open(state) as store:
        assert store.job() is None  # a pooled connection stays open: -wal and -shm exist
        lock = Path(f"{state}.lock")
        companions = [Path(f"{state}-wal"), Path(f"{state}-shm")]
        assert all(p.exists() for p in companions)
        assert {p.name: mode(p) for p in [state, lock, *companions]} == {
            p.name: 0o600 for p in [state, lock, *companions]
        }


def test_a_state_file_of_an_older_eefetch_is_made_private_by_the_next_run(tmp_path: Path) -> None:
    state = tmp_path / "old.eefetch.db"
    Store.open(state).close()
    os.chmod(state, 0o644)
    Store.open(state, create=False).close()  # reading (`eefetch status`) changes nothing
    assert mode(state) == 0o644
    Store.open(state).close()
    assert mode(state) == 0o600


def test_tile_folder_and_kept_unfinished_output_are_private(tmp_path: Path, umask: int) -> None:
    tiles = TileStore(tmp_path / "out.tif.eefetch-tiles")
    tiles._ensure_root()
    assert mode(tiles.root) == 0o700
    output = tmp_path / "out.tif"
    spec = spec_for(output)
    data = random_data(GRID, len(spec.band_ids), spec.dtype)
    records = tile_records(tmp_path / "t", data)
    asyncio.run(run_live(spec, TileStore(tmp_path / "t"), [], records[:2], None))
    kept = OutputBuilder.temp_for(output)
    assert kept.exists() and checkpoint_path(output).exists()  # stopped: kept for next run
    assert mode(kept) == 0o600 and mode(checkpoint_path(output)) == 0o600
    assert not output.exists()


def test_the_published_output_has_the_usual_mode(tmp_path: Path, umask: int) -> None:
    output = tmp_path / "out.tif"
    data = random_data(GRID, 3, "uint16")
    tiles = tile_records(tmp_path / "t", data)
    with OutputBuilder(GRID, ("a", "b", "c"), "uint16", output, nodata=0) as builder:
        for tile in tiles:
            plan = TilePlan(Window(tile.row_off, tile.col_off, tile.height, tile.width), 0, 3)
            builder.add(plan, tmp_path / "t" / str(tile.path))
        assert mode(builder.plain) == 0o600  # while being written
        builder.finish()
    assert mode(output) == 0o666 & ~umask
    with rasterio.open(output) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)


@pytest.fixture
def failing() -> Iterator[EmulatorThread]:
    """Every tile download fails, after its URL was made (as during a long outage)."""
    config = EmulatorConfig.from_profile(
        "clean", seed=6, fault_rate=1.0, fault_weights={"http_503": 1.0}
    )
    with EmulatorThread(config) as emulator:
        yield emulator


def test_download_urls_do_not_outlive_the_run(tmp_path: Path, failing: EmulatorThread) -> None:
    from engine.job import RunOptions, run_job
    from engine.runner import run_sync
    from engine.scheduler import SchedulerOptions

    ee_adapter.initialize(ee_adapter.Connection(url=failing.url))
    output = tmp_path / "dem.tif"
    # More than 64 tiles: eefetch before this fix did write URLs then (in batches of 64).
    spec = dem_job(failing.url, output, region=REGION, max_tile_bytes=2_400, concurrency=4)
    options = RunOptions(
        concurrency=2,
        scheduler=SchedulerOptions(concurrency=2, max_attempts=1, backoff_base=0.01),
    )
    state = default_state_path(output)
    result = run_sync(run_job(spec, state, options))
    assert not result.complete and result.counts["failed"] >= 70
    made = sum(failing.stats()["requests"]["thumbnails:create"].values())
    assert made >= result.counts["failed"]  # a URL was made for every tile
    with Store.open(state, create=False) as store:
        assert [t.url for t in store.tiles() if t.url is not None] == []
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("dem.tif.eefetch.db*"))
    assert b":getPixels" not in on_disk  # not even in free pages or the WAL
    assert not tiles_folder(state).exists() or mode(tiles_folder(state)) == 0o700


def test_the_url_a_fetch_makes_reaches_the_state_file(tmp_path: Path) -> None:
    """The fetcher records into the buffer it shares with the scheduler; an empty buffer
    passed in (falsy: len 0) was once replaced, and those records were never written."""
    from test_scheduler import FAST, always_up, make_store

    from engine.errors import ErrorKind, FetchError
    from engine.offload import StateThread
    from engine.scheduler import Scheduler, UpdateBuffer
    from state import TileRecord, TileUrl

    store = make_store(tmp_path, 3)
    state = StateThread()
    updates = UpdateBuffer(store, state)

    async def fetch(tile: TileRecord):
        updates.record(TileUrl(tile.id, f"http://127.0.0.1:9/t{tile.id}:getPixels", 1.0))
        raise FetchError(ErrorKind.HTTP, "HTTP 503", status=503)

    options = replace(FAST, max_attempts=1)
    scheduler = Scheduler(store, fetch, always_up, owner="o", itemsizes=[2], updates=updates,
                          options=options)  # fmt: skip
    asyncio.run(scheduler.run())
    state.close()
    assert {t.id: t.url for t in store.tiles()} == {
        i: f"http://127.0.0.1:9/t{i}:getPixels" for i in (1, 2, 3)
    }
    store.close()
