"""The Python API from a notebook: an event loop already runs, a bar shows progress, and
interrupting the cell leaves a job the next call resumes."""

from __future__ import annotations

import _thread
import asyncio
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ee
import pytest

from engine import download_ee_image, download_ee_image_collection, ee_adapter, plan, preview
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.progress import BarProgress, SilentProgress, choose_progress
from engine.runner import run_sync
from state import Store

REGION = "118.70,32.00,118.80,32.06"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=9)) as running:
        ee_adapter.initialize(ee_adapter.Connection(url=running.url))
        yield running


def in_running_loop(call: Any) -> Any:
    """Call a plain function from inside a running event loop, as a Jupyter cell does."""

    async def cell() -> Any:
        asyncio.get_running_loop()
        return call()

    # Not asyncio.run: like ipykernel, leave Ctrl-C as KeyboardInterrupt in the main thread.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(cell())
    finally:
        loop.close()


def test_run_sync_uses_a_helper_thread_only_when_a_loop_runs() -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert run_sync(where()) == threading.current_thread().name
    assert in_running_loop(lambda: run_sync(where())) == "eefetch-runner"


def test_the_whole_api_works_inside_a_running_loop(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    dem = ee.Image("USGS/SRTMGL1_003")

    def cell() -> tuple[Any, Any, Any]:
        report = plan(dem, tmp_path / "dem.tif", region=REGION, scale=30)
        box = ee.Geometry.Rectangle([118.70, 32.00, 118.80, 32.06])
        look = preview(dem, tmp_path / "dem.png", region=box, dimensions=64)
        result = download_ee_image(dem, tmp_path / "dem.tif", region=REGION, scale=30, quiet=True)
        return report, look, result

    report, look, result = in_running_loop(cell)
    assert result.complete and result.output == (tmp_path / "dem.tif").resolve()
    assert result.counts["done"] == report.tiles
    assert look._repr_png_() is not None  # Jupyter displays the picture


def test_a_collection_inside_a_running_loop(tmp_path: Path, emulator: EmulatorThread) -> None:
    scenes = (
        ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED")
        .filterDate("2022-08-01", "2022-08-06")  # one 5-day revisit
        .filter(ee.Filter.eq("MGRS_TILE", "50SPA"))
        .filterBounds(ee.Geometry.Rectangle([118.70, 32.00, 118.72, 32.02]))
        .select(["B4"])
    )
    result = in_running_loop(
        lambda: download_ee_image_collection(
            scenes, tmp_path, region="118.70,32.00,118.72,32.02", scale=60, quiet=True
        )
    )
    assert result.complete and len(result.outputs) == 1


class InterruptAfter(SilentProgress):
    """Interrupts the main thread (a notebook's Stop button) after some tiles."""

    def __init__(self, tiles: int) -> None:
        self.left = tiles

    def tile_done(self, nbytes: int) -> None:
        self.left -= 1
        if self.left == 0:
            _thread.interrupt_main()


def test_interrupting_the_cell_saves_the_job_and_the_next_call_resumes(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig.from_profile("clean", seed=10, latency_fixed_s=0.2)
    with EmulatorThread(config) as slow:
        ee_adapter.initialize(ee_adapter.Connection(url=slow.url))
        dem = ee.Image("USGS/SRTMGL1_003")
        output = tmp_path / "dem.tif"
        kwargs = {"region": REGION, "scale": 30, "max_tile_bytes": 30_000, "concurrency": 2}
        with pytest.raises(KeyboardInterrupt):
            in_running_loop(
                lambda: download_ee_image(dem, output, progress=InterruptAfter(3), **kwargs)
            )
        state = Path(f"{output}.eefetch.db")
        with Store.open(state, create=False) as store:
            counts = store.counts()
        assert counts["done"] >= 3 and counts["pending"] > 0 and counts["in_flight"] == 0
        assert not Path(f"{state}.lock").exists()  # the job let go of its lock
        before = sum(i["count"] for i in slow.stats()["tiles_served"])
        result = in_running_loop(lambda: download_ee_image(dem, output, quiet=True, **kwargs))
        assert result.complete
        fetched_again = sum(i["count"] for i in slow.stats()["tiles_served"]) - before
        missing = result.counts["done"] - counts["done"]
        # Only what was missing; tiles written just as the cell was stopped (at most one per
        # slot) are adopted from disk instead of fetched again.
        assert missing - kwargs["concurrency"] <= fetched_again <= missing


def test_a_notebook_gets_the_widget_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZMQInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    progress = choose_progress()
    assert isinstance(progress, BarProgress)
    progress.start(4, 1, 0)
    progress.tile_done(100)
    progress.close()
    assert progress.counters.done == 2
