"""Zarr output end to end (issue 15, part 1): the store equals the GeoTIFF of the same job value
for value, also after SIGKILLs; xarray opens either; a collection becomes one store with a time
dimension; the GeoTIFF path never imports zarr or xarray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ee
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import zarr
from click.testing import CliRunner

from engine import api, ee_adapter, open_dataset
from engine.cli import main
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import OtherJobError
from engine.outputs import zarr_layout
from engine.testing.cli import REPO, run_cli, start_cli
from engine.testing.jobs import dem_args, download_dem, job_spec, state_of
from engine.testing.oracle import served_counts, tile_key
from engine.zarr_output import JOURNAL, VARIABLE, temp_for
from state import Store

REGION = "118.70,32.00,118.76,32.04"  # four cloud-free 2022 Sentinel-2 scenes (test_collections)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=4)) as running:
        yield running


def dem(emulator: EmulatorThread, output: Path) -> Path:
    assert download_dem(emulator.url, output) == output.resolve()
    return output


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


@pytest.mark.slow
def test_a_zarr_store_equals_the_geotiff_and_both_open_as_the_same_dataset(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    tif, store = dem(emulator, tmp_path / "dem.tif"), dem(emulator, tmp_path / "dem.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(store / VARIABLE))[...], read_tif(tif))
    spec = job_spec(state_of(store))
    assert spec.output_format == "zarr"
    assert zarr.open_array(str(store / VARIABLE)).chunks == (1, *zarr_layout(spec).chunk)
    from_tif, from_zarr = open_dataset(tif), open_dataset(store)
    for ds in (from_tif, from_zarr):
        assert ds.band_data.dims == ("band", "y", "x")
        assert list(ds.band.values) == ["elevation"]
        assert ds.rio.crs.to_epsg() == 32650
        assert ds.band_data.rio.transform() == rasterio.Affine(*spec.grid.transform)
        assert ds.band_data.attrs["_FillValue"] == -32768
        assert ds.attrs["EEFETCH_FINGERPRINT"]
    np.testing.assert_array_equal(from_tif.band_data.values, from_zarr.band_data.values)
    np.testing.assert_array_equal(from_tif.x.values, from_zarr.x.values)
    np.testing.assert_array_equal(from_tif.y.values, from_zarr.y.values)
    assert (
        np.isnan(open_dataset(store, masked=True).band_data.values).sum()
        == np.isnan(open_dataset(tif, masked=True).band_data.values).sum()
    )


def journaled(store: Path) -> set[int]:
    try:
        lines = (temp_for(store) / JOURNAL).read_text().splitlines()[1:]
    except OSError:
        return set()
    tiles = set()
    for line in lines:
        try:
            tiles.add(int(json.loads(line)["tile"]))
        except (ValueError, KeyError):
            break
    return tiles


def chunk_files(spec_tiles: list[tuple[int, int, int, int]], chunk: tuple[int, int]) -> set[str]:
    """The chunk keys of tiles given as (row_off, col_off, height, width) (one band)."""
    keys = set()
    rows, cols = chunk
    for row, col, height, width in spec_tiles:
        for r in range(row // rows, -(-(row + height) // rows)):
            for c in range(col // cols, -(-(col + width) // cols)):
                keys.add(f"{VARIABLE}/c/0/{r}/{c}")
    return keys


@pytest.mark.slow
def test_sigkills_keep_the_journaled_chunks_and_end_in_the_geotiff(tmp_path: Path) -> None:
    """Kill the download twice once tiles are journaled; corrupt a chunk no record vouches
    for, as a torn write would; the third run keeps every journaled tile's chunks (neither
    fetched nor written again) and ends equal to the GeoTIFF of the same job."""
    config = EmulatorConfig.from_profile(
        "clean", seed=6, latency_fixed_s=0.15, latency_per_mpix_s=0.0
    )
    store = tmp_path / "dem.zarr"
    tile_args = ("--concurrency", "2", "--max-tile-bytes", "20000")
    with EmulatorThread(config) as emulator:
        args = dem_args(emulator.url, store, *tile_args)
        kept_tiles: set[int] = set()
        for _ in range(2):
            process = start_cli(args)
            deadline = time.monotonic() + 120
            while len(journaled(store)) < len(kept_tiles) + 3:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "no tile journaled in time"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            assert journaled(store) >= kept_tiles  # a resumed run keeps the earlier records
            kept_tiles = journaled(store)
        spec = job_spec(state_of(store))
        chunk = zarr_layout(spec).chunk
        with Store.open(state_of(store), create=False) as state:
            tiles = {t.id: t for t in state.tiles() if t.status != "split"}

        def keys(ids: set[int]) -> set[str]:
            chosen = [t for i, t in tiles.items() if i in ids]
            return chunk_files([(t.row_off, t.col_off, t.height, t.width) for t in chosen], chunk)

        ours, others = keys(kept_tiles), keys(set(tiles) - kept_tiles)
        temp = temp_for(store)
        kept = {key: (temp / key).stat().st_mtime_ns for key in ours - others}
        assert kept, "no chunk belongs to journaled tiles alone"
        torn = sorted(others - ours)[0]  # as if a kill had cut this chunk short
        (temp / torn).parent.mkdir(parents=True, exist_ok=True)
        (temp / torn).write_bytes(b"\x00garbage")
        (temp / f"{torn}.1234.partial").write_bytes(b"half")
        served_before = served_counts(emulator)
        finished = run_cli(*args)
        assert finished.returncode == 0, finished.stderr
        served = served_counts(emulator)
        again = run_cli(*args)  # the same command over the finished store (now a folder)
        assert again.returncode == 0, again.stderr
        assert served_counts(emulator) == served
    published = {key: (store / key).stat().st_mtime_ns for key in kept}
    assert published == kept  # journaled chunks kept as written, not written again
    keys_served = [tile_key(spec, tiles[i]) for i in kept_tiles]
    assert [served[k] - served_before.get(k, 0) for k in keys_served] == [0] * len(kept_tiles)
    assert not list(store.rglob("*.partial")) and not (store / JOURNAL).exists()
    with EmulatorThread(config) as again:
        tif = tmp_path / "dem.tif"
        made = run_cli(*dem_args(again.url, tif, *tile_args))
        assert made.returncode == 0, made.stderr
    np.testing.assert_array_equal(zarr.open_array(str(store / VARIABLE))[...], read_tif(tif))


def test_a_collection_goes_to_one_store_with_a_time_dimension(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    scenes = (
        ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED")
        .filterDate("2022-01-01", "2022-12-31")
        .filterBounds(ee.Geometry.Rectangle([118.70, 32.00, 118.76, 32.04]))
        .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10))
    )
    common = dict(region=REGION, crs="EPSG:32650", scale=60, bands=["B4", "B8"],
                  ee_url=emulator.url, quiet=True)  # fmt: skip
    stacked = api.download_ee_image_collection(scenes, tmp_path / "scenes", zarr=True, **common)
    singles = api.download_ee_image_collection(scenes, tmp_path / "tifs", **common)
    store = tmp_path / "scenes" / "collection.zarr"
    assert stacked.outputs == [store]
    ds = open_dataset(store)
    assert ds.band_data.dims == ("time", "band", "y", "x")
    assert list(ds.band.values) == ["B4", "B8"]
    names = list(singles.results)
    assert list(ds.image_id.values) == names
    times = ds.time.values
    assert (np.diff(times) > np.timedelta64(0)).all() and str(times[0]).startswith("2022-03-12")
    assert (ds.CLOUDY_PIXEL_PERCENTAGE.values < 10).all()
    assert ds.attrs["EE_COLLECTION"] == "COPERNICUS/S2_SR_HARMONIZED"
    for t, name in enumerate(names):
        np.testing.assert_array_equal(
            ds.band_data.values[t], read_tif(tmp_path / "tifs" / f"{name}.tif"), err_msg=name
        )
    args = ["collection", "--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10",
            "--bands", "B4,B8", "--region", REGION, "--crs", "EPSG:32650", "--scale", "60",
            "-o", str(tmp_path / "cli.zarr"), "--ee-url", emulator.url]  # fmt: skip
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"4 images, stacked along time into {tmp_path / 'cli.zarr'}" in dry.output
    assert "8 x float32" in dry.output  # 4 times x 2 bands
    # Fetched, as the API's images (raw values, no cloud mask): the same store.
    ran = CliRunner().invoke(main, [*args, "--no-divide", "--cloud-mask", "none", "--quiet"])
    assert ran.exit_code == 0, ran.output
    np.testing.assert_array_equal(
        open_dataset(tmp_path / "cli.zarr").band_data.values, ds.band_data.values
    )
    # Other values into the same store: advice a collection can follow (no --state for it).
    changed = CliRunner().invoke(main, [*args, "--cloud-mask", "none", "--quiet"])
    assert changed.exit_code == 1
    assert "cli.zarr.eefetch.db holds another download (it differs in expression, dtype" in (
        changed.stderr
    )
    assert "write the collection to another folder with -o" in changed.stderr
    assert "--state" not in changed.stderr
    with pytest.raises(OtherJobError, match="write the collection to another folder with -o"):
        fewer = {**common, "bands": ["B4"]}
        api.download_ee_image_collection(scenes, tmp_path / "scenes", zarr=True, **fewer)


def test_the_geotiff_path_never_imports_zarr_or_xarray(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    args = dem_args(emulator.url, tmp_path / "dem.tif", "--quiet")
    command = [sys.executable, "-X", "importtime", "-m", "engine.cli", *args]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=env, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "rasterio" in imported  # the listing is there
    assert {"zarr", "xarray", "rioxarray", "numcodecs"} & imported == set()
