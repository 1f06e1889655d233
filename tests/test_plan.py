"""The plan: grid, tiles, requests and size before anything is fetched; advice when too big."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import ee
import numpy as np
from click.testing import CliRunner
from emulator_fixture import clean_emulator

from engine import ee_adapter, plan
from engine.cli import main
from engine.emulator import EmulatorThread
from engine.estimate import UNREASONABLE_BYTES, plan_spec
from engine.grid import grid_from_region
from engine.job import plan as plan_tiles
from engine.region_input import load_region
from engine.spec import JobSpec
from engine.testing.cli import REPO
from engine.testing.jobs import dem_args

NANJING = REPO / "engine" / "data" / "nanjing.geojson"
DEM_REGION = "118.5,31.8,119.2,32.3"


def spec_for(region: str, scale: float, bands: int, dtype: str, tmp_path: Path) -> JobSpec:
    grid = grid_from_region(load_region(region), "EPSG:4326", scale)
    return JobSpec(
        expression="{}",
        grid=grid,
        band_ids=tuple(f"B{i}" for i in range(1, bands + 1)),
        dtype=dtype,
        nodata=0,
        output=str(tmp_path / "out.tif"),
    )


def test_the_tutorials_download_is_a_few_gb_in_a_hundred_or_so_tiles(tmp_path: Path) -> None:
    spec = spec_for(str(NANJING), 10, 8, "float32", tmp_path)
    report = plan_spec(spec)
    assert report.tiles == len(plan_tiles(spec))
    assert report.requests == 2 * report.tiles + 1
    assert report.raw_bytes == spec.grid.width * spec.grid.height * 8 * 4
    assert 3e9 < report.raw_bytes < 6e9
    assert 60 < report.tiles < 250
    assert report.largest_request_bytes <= spec.max_tile_bytes
    assert report.headline() == f"{report.raw_bytes / 1e9:.1f} GB, {report.tiles} tiles"
    assert not report.unreasonable
    assert not [w for w in report.warnings if "very large" in w]
    text = report.text()
    assert "tiles:" in text and "about 10 m" in text and report.headline() in text


def test_an_unreasonable_download_is_flagged_with_ways_to_shrink_it(tmp_path: Path) -> None:
    spec = spec_for("100,20,125,45", 10, 8, "float32", tmp_path)
    report = plan_spec(spec)
    assert report.unreasonable and report.raw_bytes >= UNREASONABLE_BYTES
    assert any("very large" in w for w in report.warnings)
    advice = " ".join(report.advice)
    for hint in ("--bands", "--scale", "--dtype", "--region"):
        assert hint in advice
    data = report.to_dict()
    assert data["unreasonable"] is True and data["tiles"] == report.tiles
    json.dumps(data)


def test_compute_endpoint_needs_one_request_per_tile(tmp_path: Path) -> None:
    spec = spec_for("118.7,32.0,118.9,32.2", 10, 3, "uint16", tmp_path)
    report = plan_spec(replace(spec, endpoint="compute"))
    assert report.requests == report.tiles + 1
    assert report.raw_bytes == spec.grid.width * spec.grid.height * 3 * np.dtype("uint16").itemsize


emulator = clean_emulator(seed=5)


def test_plan_command_and_dry_run_fetch_only_a_sample_tile(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """Each fetches one block for the compressed size estimate (engine.sample), no tile."""
    emulator.reset_stats()
    runner = CliRunner()
    planned = runner.invoke(
        main,
        dem_args(
            emulator.url,
            None,
            "--json",
            command="plan",
            region=DEM_REGION,
            crs=None,
            max_tile_bytes=None,
        ),
    )
    assert planned.exit_code == 0, planned.output
    data = json.loads(planned.stdout)
    assert data["bands"] == ["elevation"] and data["tiles"] >= 1
    itemsize = np.dtype(data["dtype"]).itemsize
    assert data["raw_bytes"] == data["width"] * data["height"] * itemsize
    output = tmp_path / "dem.tif"
    dry = runner.invoke(
        main,
        dem_args(
            emulator.url, output, "--dry-run", region=DEM_REGION, crs=None, max_tile_bytes=None
        ),
    )
    assert dry.exit_code == 0, dry.output
    assert f"total:    {data['raw_bytes'] / 1e6:.1f} MB, {data['tiles']} tiles" in dry.stdout
    assert not output.exists() and not Path(f"{output}.eefetch.db").exists()
    stats = emulator.stats()
    assert stats["requests"]["getPixels"] == {"200": 2}  # one sample for each command
    assert stats["requests"]["thumbnails:create"] == {"200": 2}
    assert data["compressed_bytes"] is not None


def test_plan_from_python(tmp_path: Path, emulator: EmulatorThread) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    report = plan(ee.Image("USGS/SRTMGL1_003"), tmp_path / "dem.tif", region=DEM_REGION, scale=90)
    assert report.bands == ("elevation",) and report.tiles >= 1
    assert report.output == str((tmp_path / "dem.tif").resolve())
