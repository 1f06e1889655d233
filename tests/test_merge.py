"""The streaming merge against real tile files: exact pixels, metadata, refusals, atomicity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import merge
from engine.grid import Grid, TilePlan, Window
from engine.merge import (
    MergeError,
    OutputExistsError,
    bigtiff_option,
    choose_interleave,
    creation_options,
    merge_tiles,
    uncompressed_bytes,
    write_vrt,
)

GRID = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), 700, 600)
BANDS = ["B2", "B3", "B4", "B8", "SCL"]
BLOCK = 128


def random_data(grid: Grid, count: int, dtype: str, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1000, (count, grid.height, grid.width)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (count, grid.height, grid.width), endpoint=True).astype(
        dtype
    )


def write_tile(folder: Path, grid: Grid, plan: TilePlan, data: np.ndarray) -> Path:
    w = plan.window
    path = folder / f"t_{w.row_off}_{w.col_off}_{plan.band_start}.tif"
    sub = grid.window_grid(w)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w.width,
        height=w.height,
        count=plan.bands,
        dtype=data.dtype.name,
        crs=grid.crs,
        transform=Affine(*sub.transform),
    ) as dataset:
        rows = slice(w.row_off, w.row_off + w.height)
        cols = slice(w.col_off, w.col_off + w.width)
        dataset.write(data[plan.band_start : plan.band_stop, rows, cols])
    return path


def plans(grid: Grid, side: int, band_groups: list[tuple[int, int]]) -> list[TilePlan]:
    return [
        TilePlan(
            Window(row, col, min(side, grid.height - row), min(side, grid.width - col)), lo, hi
        )
        for row in range(0, grid.height, side)
        for col in range(0, grid.width, side)
        for lo, hi in band_groups
    ]


def make_tiles(
    folder: Path,
    grid: Grid,
    data: np.ndarray,
    side: int = 256,
    band_groups: list[tuple[int, int]] | None = None,
) -> list[tuple[TilePlan, Path]]:
    folder.mkdir(exist_ok=True)
    groups = band_groups or [(0, 2), (2, data.shape[0])]
    return [(p, write_tile(folder, grid, p, data)) for p in plans(grid, side, groups)]


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


def folder_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("dtype", ["uint16", "int8", "float32"])
def test_merge_reproduces_the_source_exactly(tmp_path: Path, dtype: str) -> None:
    data = random_data(GRID, len(BANDS), dtype)
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    calls: list[tuple[int, int]] = []
    out = merge_tiles(
        GRID,
        BANDS,
        dtype,
        reversed(tiles),
        tmp_path / "out.tif",
        nodata=-1 if dtype == "int8" else 0,
        blocksize=BLOCK,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert out == tmp_path / "out.tif"
    total = uncompressed_bytes(GRID.width, GRID.height, len(BANDS), dtype)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert dataset.descriptions == tuple(BANDS)
        assert dataset.nodata == (-1 if dtype == "int8" else 0)
        assert dataset.crs == rasterio.crs.CRS.from_user_input(GRID.crs)
        assert tuple(dataset.transform)[:6] == GRID.transform
        assert dataset.block_shapes == [(BLOCK, BLOCK)] * len(BANDS)
        structure = dataset.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == ("3" if dtype == "float32" else "2")
        assert structure["INTERLEAVE"] == "PIXEL"
    assert folder_names(tmp_path) == ["out.tif", "tiles"]


@pytest.mark.parametrize(("compress", "tag"), [("lzw", "LZW"), ("zstd", "ZSTD"), ("none", None)])
def test_other_compressions(tmp_path: Path, compress: str, tag: str | None) -> None:
    data = random_data(GRID, 2, "uint8")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, band_groups=[(0, 2)])
    out = merge_tiles(
        GRID, BANDS[:2], "uint8", tiles, tmp_path / "o.tif", nodata=None, compress=compress
    )
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert dataset.nodata is None
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == tag
        assert dataset.block_shapes[0] == (512, 512)


def test_small_chunks_and_band_interleave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips and column spans smaller than a window, and band groups on different windows."""
    monkeypatch.setattr(merge, "CHUNK_BYTES", BLOCK * BLOCK * 2)
    data = random_data(GRID, 5, "int16")
    folder = tmp_path / "tiles"
    folder.mkdir()
    layout = plans(GRID, 256, [(0, 3)]) + plans(GRID, 384, [(3, 5)])
    tiles = [(p, write_tile(folder, GRID, p, data)) for p in layout]
    out = merge_tiles(GRID, BANDS, "int16", tiles, tmp_path / "o.tif", nodata=0, blocksize=BLOCK)
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert dataset.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"


def test_unaligned_tiles_still_merge_exactly(tmp_path: Path) -> None:
    data = random_data(GRID, 2, "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, side=200, band_groups=[(0, 1), (1, 2)])
    out = merge_tiles(GRID, BANDS[:2], "uint16", tiles, tmp_path / "o.tif", nodata=0)
    np.testing.assert_array_equal(read_all(out), data)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    side=st.sampled_from([16, 32, 48]),
    split=st.integers(1, 3),
)
def test_any_block_aligned_tiling_merges_exactly(
    tmp_path_factory: pytest.TempPathFactory, height: int, width: int, side: int, split: int
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    grid = Grid("EPSG:4326", (0.001, 0.0, 10.0, 0.0, -0.001, 50.0), width, height)
    data = random_data(grid, 3, "float64")
    groups = [(0, split), (split, 3)] if split < 3 else [(0, 3)]
    tiles = make_tiles(folder / "tiles", grid, data, side=side, band_groups=groups)
    out = merge_tiles(
        grid, ["a", "b", "c"], "float64", tiles, folder / "o.tif", nodata=math.nan, blocksize=16
    )
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert math.isnan(dataset.nodata)


def test_bigtiff_decision() -> None:
    assert bigtiff_option(1000, 1000, 3, "uint8", blocksize=512) == "IF_SAFER"
    assert bigtiff_option(40000, 40000, 3, "uint16", blocksize=512) == "YES"
    assert bigtiff_option(32768, 32768, 1, "uint32", blocksize=512) == "YES"
    assert bigtiff_option(30000, 30000, 1, "uint32", blocksize=512) == "IF_SAFER"
    assert bigtiff_option(30000, 30000, 1, "uint32", blocksize=512, overviews=True) == "YES"
    assert uncompressed_bytes(10, 20, 3, "float64") == 4800


def test_bigtiff_is_written_when_decided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "_TIFF_LIMIT", 1000)
    data = random_data(GRID, 1, "uint8")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, band_groups=[(0, 1)])
    out = merge_tiles(GRID, ["a"], "uint8", tiles, tmp_path / "o.tif", nodata=None)
    assert out.read_bytes()[:4] == b"II+\x00"
    np.testing.assert_array_equal(read_all(out), data)


def test_creation_options() -> None:
    options = creation_options("float64", "zstd", 256, "YES", "PIXEL")
    assert options["predictor"] == 3 and options["compress"] == "zstd"
    assert options["BIGTIFF"] == "YES" and options["NUM_THREADS"] == "ALL_CPUS"
    assert "predictor" not in creation_options("uint8", "none", 256, "IF_SAFER", "PIXEL")
    with pytest.raises(ValueError, match="compress"):
        creation_options("uint8", "jpeg", 256, "YES", "PIXEL")
    with pytest.raises(ValueError, match="multiple of 16"):
        creation_options("uint8", "deflate", 100, "YES", "PIXEL")
    assert choose_interleave(4, "uint16", 512) == "PIXEL"
    assert choose_interleave(64, "float32", 512) == "BAND"
    assert choose_interleave(2, "uint8", 512, windows_have_all_bands=False) == "BAND"


def test_refuses_to_replace_an_existing_output(tmp_path: Path) -> None:
    data = random_data(GRID, 5, "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious bytes")
    with pytest.raises(OutputExistsError, match=r"out\.tif.*overwrite=True / --overwrite"):
        merge_tiles(GRID, BANDS, "uint16", tiles, out, nodata=0)
    assert out.read_bytes() == b"precious bytes"
    assert folder_names(tmp_path) == ["out.tif", "tiles"]
    merge_tiles(GRID, BANDS, "uint16", tiles, out, nodata=0, overwrite=True)
    np.testing.assert_array_equal(read_all(out), data)


def test_missing_tile_is_named(tmp_path: Path) -> None:
    data = random_data(GRID, 5, "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    missing = next(t for t in tiles if t[0].window.row_off == 256 and t[0].band_start == 2)
    kept = [t for t in tiles if t is not missing]
    with pytest.raises(
        MergeError,
        match=r"no tile covers window \(row_off=256, col_off=0, height=256, width=256\), band 'B4'",
    ):
        merge_tiles(GRID, BANDS, "uint16", kept, tmp_path / "out.tif", nodata=0)
    assert folder_names(tmp_path) == ["tiles"]


def test_overlapping_and_outside_tiles_are_refused(tmp_path: Path) -> None:
    data = random_data(GRID, 5, "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    with pytest.raises(MergeError, match="overlap"):
        merge_tiles(GRID, BANDS, "uint16", [*tiles, tiles[0]], tmp_path / "o.tif", nodata=0)
    outside = (TilePlan(Window(512, 512, 256, 256), 0, 2), tiles[0][1])
    with pytest.raises(MergeError, match="outside the 700x600 grid"):
        merge_tiles(GRID, BANDS, "uint16", [*tiles, outside], tmp_path / "o.tif", nodata=0)


def test_wrong_tile_file_fails_without_leaving_files(tmp_path: Path) -> None:
    data = random_data(GRID, 5, "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    last_plan, last_path = tiles[-1]
    tiles[-1] = (last_plan, tiles[-2][1])
    with pytest.raises(MergeError, match="with 2 band"):
        merge_tiles(GRID, BANDS, "uint16", tiles, tmp_path / "o.tif", nodata=0)
    tiles[-1] = (last_plan, tmp_path / "tiles" / "gone.tif")
    with pytest.raises(MergeError, match="cannot read tile"):
        merge_tiles(GRID, BANDS, "uint16", tiles, tmp_path / "o.tif", nodata=0)
    assert folder_names(tmp_path) == ["tiles"]
    assert last_path.exists()


def test_cog_output(tmp_path: Path) -> None:
    grid = Grid(GRID.crs, GRID.transform, 1100, 900)
    data = random_data(grid, 3, "uint16")
    tiles = make_tiles(tmp_path / "tiles", grid, data, side=512, band_groups=[(0, 1), (1, 3)])
    out = merge_tiles(
        grid, BANDS[:3], "uint16", tiles, tmp_path / "c.tif", nodata=0, cog=True, blocksize=256
    )
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert dataset.overviews(1)
        assert dataset.descriptions == tuple(BANDS[:3])
        assert dataset.nodata == 0
        assert dataset.block_shapes[0] == (256, 256)
        structure = dataset.tags(ns="IMAGE_STRUCTURE")
        assert structure.get("LAYOUT", "COG") == "COG"
        assert structure["COMPRESSION"] == "DEFLATE"
    assert folder_names(tmp_path) == ["c.tif", "tiles"]


def test_vrt_mosaics_the_tiles(tmp_path: Path) -> None:
    data = random_data(GRID, 5, "float32")
    tiles = make_tiles(tmp_path / "tiles", GRID, data)
    vrt = write_vrt(GRID, BANDS, "float32", tiles, tmp_path / "m.vrt", nodata=-9999)
    with rasterio.open(vrt) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
        assert dataset.descriptions == tuple(BANDS)
        assert dataset.nodata == -9999
        assert tuple(dataset.transform)[:6] == GRID.transform


def test_chunk_edges_fall_on_block_lines() -> None:
    assert merge._strip_edges(0, 1024, 256, 2) == [0, 512, 1024]
    assert merge._strip_edges(100, 700, 256, 1) == [100, 256, 512, 700]
    assert merge._strip_edges(512, 600, 256, 4) == [512, 600]


def test_failure_during_cog_step_removes_every_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(plain: Path, target: Path, *args: object) -> None:
        target.write_bytes(b"half a cog")
        target.with_name(target.name + ".ovr.tmp").write_bytes(b"overviews")
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "_write_cog", broken)
    data = random_data(GRID, 1, "uint8")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, band_groups=[(0, 1)])
    with pytest.raises(KeyboardInterrupt):
        merge_tiles(GRID, ["a"], "uint8", tiles, tmp_path / "c.tif", nodata=None, cog=True)
    assert folder_names(tmp_path) == ["tiles"]


def test_missing_output_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="does not exist"):
        merge_tiles(GRID, ["a"], "uint8", [], tmp_path / "nope" / "o.tif", nodata=None)


def test_no_tiles_names_the_whole_grid(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match=r"no tile covers window \(row_off=0, col_off=0, "):
        merge_tiles(GRID, ["a"], "uint8", [], tmp_path / "o.tif", nodata=None)


def test_builder_writes_tiles_in_any_order_and_publishes_only_when_finished(
    tmp_path: Path,
) -> None:
    """Tiles arrive in whatever order the fetch ends them; the output is the same."""
    data = random_data(GRID, len(BANDS), "uint16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, side=BLOCK)
    order = np.random.default_rng(7).permutation(len(tiles))
    output = tmp_path / "out.tif"
    with merge.OutputBuilder(GRID, BANDS, "uint16", output, nodata=0, blocksize=BLOCK) as builder:
        for index in order[: len(tiles) // 2]:
            builder.add(*tiles[index])
        assert builder.written_bytes > 0
        assert not output.exists()
        for index in order[len(tiles) // 2 :]:
            builder.add(*tiles[index])
        builder.add(*tiles[int(order[0])])  # fetched again: its window is written again
        assert builder.finish() == output
    np.testing.assert_array_equal(read_all(output), data)
    with rasterio.open(output) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "PIXEL"
    assert folder_names(tmp_path) == ["out.tif", "tiles"]


def test_builder_writes_a_window_once_all_its_band_groups_are_in(tmp_path: Path) -> None:
    data = random_data(GRID, len(BANDS), "int16")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, side=BLOCK)  # bands 0:2 and 2:5
    output = tmp_path / "out.tif"
    with merge.OutputBuilder(GRID, BANDS, "int16", output, nodata=0, blocksize=BLOCK) as builder:
        builder.add(*tiles[0])
        assert builder.written_bytes == 0  # bands 2:5 of that window are still missing
        builder.add(*tiles[1])
        assert builder.written_bytes == uncompressed_bytes(BLOCK, BLOCK, len(BANDS), "int16")
        for tile in tiles[2:]:
            builder.add(*tile)
        builder.finish()
    np.testing.assert_array_equal(read_all(output), data)


def test_builder_left_unfinished_removes_its_temporary_file(tmp_path: Path) -> None:
    data = random_data(GRID, 2, "uint8")
    tiles = make_tiles(tmp_path / "tiles", GRID, data, band_groups=[(0, 2)])
    output = tmp_path / "out.tif"
    with merge.OutputBuilder(GRID, BANDS[:2], "uint8", output, nodata=None) as builder:
        builder.add(*tiles[0])
        with pytest.raises(MergeError, match="no tile covers"):
            builder.finish()  # the other tiles never came
    assert folder_names(tmp_path) == ["tiles"]
