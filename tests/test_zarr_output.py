"""The Zarr writer on its own: exact values, georeferencing xarray and rioxarray read, chunks on
tile edges, a journal that keeps only what was made durable, and atomic publishing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from test_merge import make_tiles, plans, random_data, write_tile

from engine.errors import MergeError, OutputExistsError
from engine.grid import Grid, TilePlan
from engine.zarr_output import (
    JOURNAL,
    VARIABLE,
    ZarrBuilder,
    ZarrLayout,
    chunk_side,
    temp_for,
)

GRID = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), 700, 600)
BANDS = ("B2", "B3", "B4")
IDENTITY = {"job_uid": "0123456789ab", "fingerprint": "f" * 64}


def layout(dtype: str = "uint16", nodata: float = 65535, side: int = 128) -> ZarrLayout:
    return ZarrLayout(GRID, BANDS, dtype, nodata, "zstd", (side, side))


def builder(output: Path, lay: ZarrLayout | None = None, **kwargs: object) -> ZarrBuilder:
    return ZarrBuilder(
        lay or layout(),
        output,
        identity=IDENTITY,
        attributes={"system:time_start": 1640995200000, "CLOUDY_PIXEL_PERCENTAGE": 3.5},
        **kwargs,
    )


def test_chunk_sides_fall_on_every_tile_edge() -> None:
    assert chunk_side([0, 1024, 2048], 3000) == 512
    assert chunk_side([0, 200, 400], 500) == 200
    assert chunk_side([0, 600, 1200], 1300) == 300
    assert chunk_side([0], 300) == 300  # one tile: one chunk along the axis, at most the cap
    assert chunk_side([0], 5000) == 512
    assert chunk_side([0, 37, 74], 100) == 100  # odd edges would give tiny chunks: shared ones


def test_tiles_in_any_order_give_the_array_and_its_georeferencing(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    tiles = make_tiles(tmp_path, GRID, data, side=256, band_groups=[(0, 2), (2, 3)])
    output = tmp_path / "out.zarr"
    with builder(output) as b:
        for plan, path in reversed(tiles):
            b.add(plan, path)
        assert b.finish() == output
    assert not temp_for(output).exists()
    stored = zarr.open_array(str(output / VARIABLE), mode="r")
    np.testing.assert_array_equal(stored[...], data)
    assert stored.chunks == (1, 128, 128) and stored.fill_value == 65535
    assert not (output / JOURNAL).exists()

    ds = xr.open_zarr(output, decode_coords="all", mask_and_scale=False)
    assert list(ds.band.values) == list(BANDS)
    assert ds.band_data.dims == ("band", "y", "x")
    assert ds.band_data.attrs["_FillValue"] == 65535
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.band_data.rio.transform() == Affine(*GRID.transform)
    assert ds.attrs["CLOUDY_PIXEL_PERCENTAGE"] == 3.5
    assert float(ds.x[0]) == 500005.0 and float(ds.y[0]) == 3999995.0
    masked = xr.open_zarr(output)  # the default decoding: _FillValue becomes NaN
    assert np.isnan(masked.band_data.values[data == 65535]).all()


def test_finish_refuses_a_gap_and_publishes_nothing(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    tiles = make_tiles(tmp_path, GRID, data, side=256)
    output = tmp_path / "out.zarr"
    with builder(output) as b:
        for plan, path in tiles[1:]:
            b.add(plan, path)
        with pytest.raises(MergeError, match="no tile covers"):
            b.finish()
    assert not output.exists() and not temp_for(output).exists()


def test_a_suspended_store_keeps_the_journaled_tiles_and_only_those(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    tiles = make_tiles(tmp_path, GRID, data, side=256)
    output = tmp_path / "out.zarr"
    first = builder(output).__enter__()
    for number, (plan, path) in enumerate(tiles[:4]):
        first.add(plan, path)
        if number < 3:  # the fourth is written but not recorded: a kill before its record
            first.record(number, f"sum{number}")
    first.suspend()
    with (temp_for(output) / JOURNAL).open("a") as journal:
        journal.write('{"tile": 9, "chec')  # a line cut short by a kill

    again = builder(output).__enter__()
    assert again.kept() == {0: "sum0", 1: "sum1", 2: "sum2"}
    for number, (plan, path) in enumerate(tiles):
        if number in again.kept():
            again.adopt(plan, path)
        else:
            again.add(plan, path)
    again.finish()
    np.testing.assert_array_equal(zarr.open_array(str(output / VARIABLE))[...], data)


def test_a_store_of_another_job_or_layout_is_started_anew(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    tiles = make_tiles(tmp_path, GRID, data, side=256)
    output = tmp_path / "out.zarr"
    first = builder(output).__enter__()
    first.add(*tiles[0])
    first.record(0, "sum0")
    first.suspend()
    other = ZarrBuilder(layout(), output, identity={**IDENTITY, "job_uid": "x"}, attributes={})
    assert other.__enter__().kept() == {}
    other.suspend()
    assert builder(output, layout(side=64)).__enter__().kept() == {}


def test_a_collection_stack_puts_each_image_at_its_time(tmp_path: Path) -> None:
    times = (1640995200000, 1641427200000)
    lay = ZarrLayout(
        GRID, BANDS[:2], "float32", float("nan"), "deflate", (128, 128), times, ("a", "b")
    )
    data = random_data(GRID, 4, "float32")  # stacked bands: a_B2, a_B3, b_B2, b_B3
    tiles = make_tiles(tmp_path, GRID, data, side=256, band_groups=[(0, 3), (3, 4)])
    output = tmp_path / "stack.zarr"
    with ZarrBuilder(
        lay,
        output,
        identity=IDENTITY,
        attributes={},
        time_properties={"CLOUDY_PIXEL_PERCENTAGE": [1.0, 2.0]},
    ) as b:
        for plan, path in tiles:
            b.add(plan, path)
        b.finish()
    ds = xr.open_zarr(output, decode_coords="all", mask_and_scale=False)
    assert ds.band_data.dims == ("time", "band", "y", "x")
    assert list(ds.image_id.values) == ["a", "b"]
    assert ds.time.values[1] == np.datetime64("2022-01-06T00:00:00")
    assert list(ds.CLOUDY_PIXEL_PERCENTAGE.values) == [1.0, 2.0]
    np.testing.assert_array_equal(ds.band_data.values.reshape(4, *data.shape[1:]), data)


def test_an_existing_output_is_kept_without_overwrite_and_replaced_with_it(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    tiles = make_tiles(tmp_path, GRID, data, side=700, band_groups=[(0, 3)])
    output = tmp_path / "out.zarr"
    output.mkdir()
    (output / "zarr.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        builder(output)
    with builder(output, overwrite=True) as b:
        for plan, path in tiles:
            b.add(plan, path)
        b.finish()
    np.testing.assert_array_equal(zarr.open_array(str(output / VARIABLE))[...], data)
    assert json.loads((output / "zarr.json").read_text())["node_type"] == "group"
    assert not list(tmp_path.glob(".out.zarr.*"))


def test_an_unfinished_store_is_private_and_the_published_one_is_not(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    (plan, path), *rest = make_tiles(tmp_path, GRID, data, side=700, band_groups=[(0, 3)])
    output = tmp_path / "out.zarr"
    old = os.umask(0o022)
    try:
        with builder(output) as b:
            assert temp_for(output).stat().st_mode & 0o777 == 0o700
            b.add(plan, path)
            b.finish()
    finally:
        os.umask(old)
    assert not rest and output.stat().st_mode & 0o777 == 0o755


@pytest.mark.slow
def test_a_tile_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    data = random_data(GRID, 3, "uint16")
    plan = plans(GRID, 256, [(0, 3)])[0]
    wrong = TilePlan(plan.window, 0, 2)
    path = write_tile(tmp_path, GRID, plan, data)
    with builder(tmp_path / "out.zarr") as b, pytest.raises(MergeError, match="expected"):
        b.add(wrong, path)
