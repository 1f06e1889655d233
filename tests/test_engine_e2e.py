"""End to end: the engine through the real earthengine-api client against the emulator.

Every merged GeoTIFF is compared pixel for pixel with the emulator's render of the whole
grid in one request (an emulator started with no_limits: the oracle).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import ee
import pytest
import rasterio
from tutorial import tutorial_recipe

from engine import DownloadIncomplete, download_ee_image, ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.live_merge import checkpoint_path
from engine.merge import OutputBuilder
from engine.recipes import composite
from engine.testing.cli import run_cli, start_cli
from engine.testing.emulators import paced_emulator
from engine.testing.jobs import dem_args, dem_job, job_spec, state_of, wait_for_done_tiles
from engine.testing.oracle import assert_matches_oracle, served_counts, tile_key
from state import Store


@pytest.fixture
def clean() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=1)) as emulator:
        yield emulator


def use(emulator: EmulatorThread) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))


TRIANGLE = {
    "type": "Polygon",
    "coordinates": [[[118.70, 32.00], [118.80, 32.00], [118.75, 32.06], [118.70, 32.00]]],
}


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["urls", "compute"])
def test_tutorial_composite_in_epsg4326_equals_the_oracle(
    tmp_path: Path, clean: EmulatorThread, oracle: EmulatorThread, endpoint: str
) -> None:
    use(clean)
    image = composite(tutorial_recipe(TRIANGLE, clip="outline"))
    output = tmp_path / "composite.tif"
    result = download_ee_image(
        image,
        output,
        region=TRIANGLE,
        crs="EPSG:4326",
        scale=10,
        max_tile_bytes=4_000_000,
        endpoint=endpoint,
        quiet=True,
    )
    assert result.complete and result.counts["done"] >= 6
    merged = assert_matches_oracle(output, result.state_path, oracle)
    nodata = job_spec(result.state_path).nodata
    masked = merged == nodata
    assert 0.2 < masked.mean() < 0.8  # outside the triangle, and clouds
    assert merged.shape[0] == 8
    assert not (tmp_path / "composite.tif.eefetch-tiles").exists() or not any(
        (tmp_path / "composite.tif.eefetch-tiles").iterdir()
    )
    stats = clean.stats()
    served = stats["tiles_served"]
    assert len(served) == result.counts["done"]
    assert all(item["count"] == 1 for item in served)


def test_projected_grid_with_edge_tiles_and_memory_splits(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    config = EmulatorConfig.from_profile("clean", seed=2, memory_budget=150_000)
    with EmulatorThread(config) as emulator:
        use(emulator)
        image = ee.Image("USGS/SRTMGL1_003")
        region = [118.70, 32.00, 118.92, 32.13]
        output = tmp_path / "dem.tif"
        result = download_ee_image(
            image, output, region=region, crs="EPSG:32650", scale=30, quiet=True
        )
        stats = emulator.stats()
    assert result.complete
    assert result.counts["split"] >= 1  # EE said "User memory limit exceeded." and we split
    assert result.summary.splits >= 1
    assert (
        stats["requests"]["getPixels"].get("400", 0)
        + stats["requests"]["thumbnails:create"].get("400", 0)
        >= 1
    )
    assert_matches_oracle(output, result.state_path, oracle)
    with rasterio.open(output) as dataset:
        assert dataset.crs.to_epsg() == 32650
        assert dataset.res == (30.0, 30.0)
        assert dataset.transform.c % 30 == pytest.approx(
            0
        ) or dataset.transform.c % 30 == pytest.approx(30)


def dem_command(url: str, output: Path, *extra: str) -> list[str]:
    """The DEM job over a larger region, in a few dozen tiles."""
    return dem_args(url, output, *extra, region="118.70,32.00,118.95,32.15", max_tile_bytes=400_000)


@pytest.mark.slow
def test_cli_under_the_flaky_profile_ends_in_a_correct_file(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    # The flaky mix of faults at three times its usual rate, so a small job meets several.
    flaky = paced_emulator(
        seed=7, latency_s=0.05, profile="flaky", fault_rate=0.3, api_latency_s=0.0, retry_after_s=1
    )
    output = tmp_path / "flaky.tif"
    with flaky as emulator:
        command = dem_args(
            emulator.url,
            output,
            "--concurrency",
            "6",
            "--max-backoff",
            "2",
            region="118.70,32.00,118.95,32.15",
            max_tile_bytes=150_000,
        )
        done = run_cli(*command)
        stats = emulator.stats()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(output))
    assert len(stats["faults"]) >= 3, f"too few kinds of fault injected: {stats['faults']}"
    assert_matches_oracle(output, state_of(output), oracle)


def slow_emulator(seed: int) -> EmulatorThread:
    """An emulator slow enough per tile that a test can interrupt a download part way."""
    return paced_emulator(seed, 0.3, profile="realistic", api_latency_s=0.0)


@pytest.mark.slow
def test_sigkill_then_rerun_fetches_no_finished_tile_again(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    output = tmp_path / "killed.tif"
    state = state_of(output)
    with slow_emulator(seed=3) as emulator:
        command = dem_command(emulator.url, output, "--concurrency", "4")
        process = start_cli(command)
        wait_for_done_tiles(state, 4, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)  # reaps it and closes its pipes
        with Store.open(state) as store:
            done_before = store.tiles("done")
        spec = job_spec(state)
        status = run_cli("status", str(state), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["tiles"]["done"] >= len(done_before)
        again = run_cli(*command)
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    for tile in done_before:
        assert served[tile_key(spec, tile)] == 1, f"finished tile {tile.id} was fetched again"
    assert_matches_oracle(output, state, oracle)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_needs_only_the_state_file(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    output = tmp_path / "terminated.tif"
    state = state_of(output)
    with slow_emulator(seed=4) as emulator:
        process = start_cli(dem_command(emulator.url, output, "--concurrency", "3"))
        wait_for_done_tiles(state, 2, process)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert time.monotonic() - started < 10
        assert process.returncode == 130
        assert "run the same command again to resume" in stderr
        with Store.open(state, create=False) as store:
            counts = store.counts()
            done = {t.id: t.checksum for t in store.tiles("done")}
        assert counts["in_flight"] == 0  # every claim was given back
        if not output.exists():  # else the signal came just after the output was published
            # The output being merged was kept for the next run, with what it holds.
            kept = json.loads(checkpoint_path(output).read_text())["tiles"]
            assert all(done[int(tile_id)] == checksum for tile_id, checksum in kept.items())
            assert OutputBuilder.temp_for(output).exists()
        resumed = run_cli("resume", str(state))
    assert resumed.returncode == 0, resumed.stderr
    assert_matches_oracle(output, state, oracle)
    assert not checkpoint_path(output).exists()
    assert not OutputBuilder.temp_for(output).exists()


@pytest.mark.slow
def test_failed_tiles_end_the_run_non_zero_and_the_next_run_retries_them(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    # Every tile request fails with a 503 until the emulator is replaced by a healthy one.
    broken = EmulatorConfig.from_profile(
        "clean", seed=5, fault_rate=1.0, fault_weights={"http_503": 1.0}
    )
    output = tmp_path / "retry.tif"
    with EmulatorThread(broken) as emulator:
        use(emulator)
        image = ee.Image("USGS/SRTMGL1_003")
        from engine.scheduler import SchedulerOptions

        with pytest.raises(DownloadIncomplete, match="run the same command again"):
            from engine.job import RunOptions, run_job
            from engine.runner import run_sync

            spec = dem_job(
                emulator.url,
                output,
                image,
                region=[118.7, 32.0, 118.8, 32.05],
                crs=None,
                concurrency=2,
            )
            options = RunOptions(
                concurrency=2,
                scheduler=SchedulerOptions(
                    concurrency=2, max_attempts=2, backoff_base=0.01, backoff_cap=0.02
                ),
            )
            result = run_sync(run_job(spec, state_of(output), options))
            assert not result.complete
            raise DownloadIncomplete(result)
    assert not output.exists()
    # On the same port: an emulator elsewhere would be another service (docs/CONTRACTS.md).
    port = int(emulator.url.rsplit(":", 1)[1])
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=5), port=port) as healthy:
        use(healthy)
        result = download_ee_image(
            image,
            output,
            region=[118.7, 32.0, 118.8, 32.05],
            scale=30,
            max_tile_bytes=200_000,
            quiet=True,
        )
    assert result.complete and result.counts["failed"] == 0
    assert_matches_oracle(output, result.state_path, oracle)
