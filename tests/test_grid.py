"""Unit tests for engine.grid: EE's grids, request sizes, tiling and tile splitting."""

from __future__ import annotations

import itertools
import math
import random
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rasterio.warp import transform_bounds

from engine.grid import (
    EE_MAX_BANDS,
    EE_MAX_REQUEST_BYTES,
    EE_MAX_SIDE_URLS,
    METRES_PER_DEGREE,
    Grid,
    GridError,
    TilePlan,
    Window,
    grid_from_region,
    grid_from_transform,
    plan_tiles,
    request_bytes,
    scale_to_crs_units,
    split_for_slots,
    split_tile,
)

DEG_10M = 8.983152841195214e-05


def rect(x0: float, y0: float, x1: float, y1: float, **extra: object) -> dict:
    """A GeoJSON Polygon for an axis-aligned rectangle."""
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring], **extra}


def assert_on_lattice(grid: Grid) -> None:
    a, b, c, d, e, f = grid.transform
    assert b == 0 and d == 0 and e == -a
    assert c / a == pytest.approx(round(c / a), abs=1e-6)
    assert f / a == pytest.approx(round(f / a), abs=1e-6)


def assert_covers(grid: Grid, minx: float, miny: float, maxx: float, maxy: float) -> None:
    """The grid covers the bounds and has no spare row or column on any side."""
    a, _, c, _, e, f = grid.transform
    tol = 1e-9 * a
    assert c <= minx + tol < c + a
    assert c + grid.width * a >= maxx - tol > c + (grid.width - 1) * a
    assert f >= maxy - tol > f + e
    assert f + grid.height * e <= miny + tol < f + (grid.height - 1) * e


# ----------------------------------------------------------------------------- sizes and units


def test_request_bytes_counts_the_mask_byte() -> None:
    # EE's own error text: "Total request size (56623104 bytes) must be less than or equal to
    # 50331648 bytes." 3072 x 3072 pixels of 2 uint16 bands: 3072 * 3072 * (3 + 3).
    assert request_bytes(3072, 3072, [2, 2]) == 56623104
    assert request_bytes(3072, 3072, [2, 2]) > EE_MAX_REQUEST_BYTES
    assert request_bytes(1, 1, [1]) == 2
    assert request_bytes(10, 20, [1, 4, 8]) == 10 * 20 * (2 + 5 + 9)


def test_scale_to_crs_units() -> None:
    assert 2 * math.pi * 6378137 / 360 == METRES_PER_DEGREE
    assert scale_to_crs_units("EPSG:4326", 10) == DEG_10M
    assert scale_to_crs_units("epsg:4326", 10) == DEG_10M
    assert scale_to_crs_units("EPSG:32650", 30) == 30.0
    # US survey feet: 10 m is 32.8083... ft.
    assert scale_to_crs_units("EPSG:2227", 10) == pytest.approx(10 / 0.3048006096012192)


@pytest.mark.parametrize("scale", [0, -10, math.nan, math.inf, "10", None, True])
def test_bad_scale(scale: object) -> None:
    with pytest.raises(GridError, match="scale") as info:
        grid_from_region(rect(0, 0, 1, 1), "EPSG:4326", scale)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("crs", ["EPSG:999999", "not a crs", "", None])
def test_bad_crs(crs: object) -> None:
    with pytest.raises(GridError, match="crs") as info:
        grid_from_region(rect(0, 0, 1, 1), crs, 10)
    assert "\n" not in str(info.value)
    with pytest.raises(GridError):
        scale_to_crs_units(crs, 10)


@pytest.mark.parametrize(
    ("region", "match"),
    [
        ([[0, 0], [1, 1]], "GeoJSON"),
        ({}, "type"),
        ({"type": "Polygon", "coordinates": []}, "no coordinates"),
        ({"type": "Polygon", "coordinates": [[]]}, "no coordinates"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "fewer than 3"),
        ({"type": "Point", "coordinates": [0]}, "bad position"),
        ({"type": "Point", "coordinates": ["a", "b"]}, "bad position"),
        (rect(0, 0, math.nan, 1), "non-finite"),
        (rect(40, 116, 41, 117), "latitude"),
        ({"type": "Hexagon", "coordinates": []}, "unknown GeoJSON type"),
        ({"type": "MultiPolygon", "coordinates": []}, "no coordinates"),
        ({"type": "GeometryCollection", "geometries": []}, "empty"),
        ({"type": "FeatureCollection", "features": []}, "empty"),
        (rect(0, 0, 1, 1, crs={"type": "link", "properties": {}}), "crs"),
        (rect(0, 0, 1, 1, crs="EPSG:123456789"), "region crs"),
    ],
)
def test_bad_regions(region: object, match: str) -> None:
    with pytest.raises(GridError, match=match) as info:
        grid_from_region(region, "EPSG:4326", 10)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- grid_from_region


def test_geographic_10m_grid_is_eEs() -> None:
    grid = grid_from_region(rect(116.0, 39.9, 116.1, 40.0), "EPSG:4326", 10)
    a = grid.transform[0]
    assert a == DEG_10M
    assert_on_lattice(grid)
    # floor(116 / a) = 1291306, ceil(40 / a) = 445278; ceil(116.1 / a) = 1292420,
    # floor(39.9 / a) = 444164: 1114 x 1114 pixels.
    assert grid.transform[2] == 1291306 * DEG_10M
    assert grid.transform[5] == 445278 * DEG_10M
    assert (grid.width, grid.height) == (1114, 1114)
    assert_covers(grid, 116.0, 39.9, 116.1, 40.0)
    assert grid.crs == "EPSG:4326"


def test_utm_30m_grid_from_lonlat_region() -> None:
    region = rect(116.0, 39.9, 116.1, 40.0)
    grid = grid_from_region(region, "EPSG:32650", 30)
    assert grid.transform[0] == 30.0
    assert_on_lattice(grid)
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", "EPSG:32650", 116.0, 39.9, 116.1, 40.0)
    assert_covers(grid, minx, miny, maxx, maxy)
    assert grid.transform[2] == math.floor(minx / 30) * 30
    assert grid.transform[5] == math.ceil(maxy / 30) * 30
    assert grid.width == math.ceil(maxx / 30) - math.floor(minx / 30)
    assert grid.height == math.ceil(maxy / 30) - math.floor(miny / 30)


def test_utm_region_bounds_follow_the_projected_shape() -> None:
    # A long, thin diagonal strip: its projected bounds, not just its corners, must be covered.
    region = {"type": "LineString", "coordinates": [[115.0, 39.0], [117.5, 41.5]]}
    grid = grid_from_region(region, "EPSG:32650", 100)
    assert_on_lattice(grid)
    lons = np.linspace(115.0, 117.5, 2001)
    lats = np.linspace(39.0, 41.5, 2001)
    from rasterio.warp import transform

    xs, ys = transform("EPSG:4326", "EPSG:32650", lons.tolist(), lats.tolist())
    gminx, gminy, gmaxx, gmaxy = grid.bounds()
    assert gminx <= min(xs) and max(xs) <= gmaxx
    assert gminy <= min(ys) and max(ys) <= gmaxy
    assert gmaxx - max(xs) < 100 and min(xs) - gminx < 100


@pytest.mark.parametrize("seed", range(5))
def test_region_exactly_on_lattice_lines_gives_exact_pixel_count(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        i0 = rng.randrange(-2_000_000, 2_000_000)
        j0 = rng.randrange(-1_000_000, 1_000_000)
        w, h = rng.randrange(1, 5000), rng.randrange(1, 5000)
        lat_max = 90 / DEG_10M
        j0 = max(min(j0, int(lat_max) - h - 1), -int(lat_max) + 1)
        region = rect(i0 * DEG_10M, j0 * DEG_10M, (i0 + w) * DEG_10M, (j0 + h) * DEG_10M)
        grid = grid_from_region(region, "EPSG:4326", 10)
        assert (grid.width, grid.height) == (w, h)
        assert grid.transform[2] == i0 * DEG_10M
        assert grid.transform[5] == (j0 + h) * DEG_10M


def test_projected_region_on_lattice_lines_is_exact() -> None:
    region = rect(414510, 4420020, 417510, 4430010, crs="EPSG:32650")
    grid = grid_from_region(region, "EPSG:32650", 30)
    assert grid == Grid("EPSG:32650", (30.0, 0.0, 414510.0, 0.0, -30.0, 4430010.0), 100, 333)


def test_region_in_another_crs() -> None:
    utm = (414500.0, 4420000.0, 417500.0, 4430000.0)
    expected_bounds = transform_bounds("EPSG:32650", "EPSG:4326", *utm, densify_pts=101)
    member = rect(*utm, crs={"type": "name", "properties": {"name": "EPSG:32650"}})
    urn = rect(*utm, crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32650"}})
    by_kwarg = grid_from_region(rect(*utm), "EPSG:4326", 10, region_crs="EPSG:32650")
    grid = grid_from_region(member, "EPSG:4326", 10)
    assert grid == grid_from_region(urn, "EPSG:4326", 10) == by_kwarg
    assert_on_lattice(grid)
    assert_covers(grid, *expected_bounds)
    # Same CRS as the target: no transformation at all, hence exact.
    same = grid_from_region(member, "EPSG:32650", 10)
    assert same == Grid("EPSG:32650", (10.0, 0.0, 414500.0, 0.0, -10.0, 4430000.0), 300, 1000)


def test_feature_and_collections_are_accepted() -> None:
    geometry = rect(116.0, 39.9, 116.1, 40.0)
    expected = grid_from_region(geometry, "EPSG:4326", 10)
    feature = {"type": "Feature", "properties": {}, "geometry": geometry}
    assert grid_from_region(feature, "EPSG:4326", 10) == expected
    collection = {"type": "FeatureCollection", "features": [feature]}
    assert grid_from_region(collection, "EPSG:4326", 10) == expected
    # EE's GeoJSON carries extra members; they are ignored.
    assert grid_from_region({**geometry, "geodesic": False}, "EPSG:4326", 10) == expected
    parts = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Point", "coordinates": [116.0, 39.9]},
            {"type": "Point", "coordinates": [116.1, 40.0, 55.0]},
        ],
    }
    assert grid_from_region(parts, "EPSG:4326", 10) == expected


def test_point_gives_one_pixel() -> None:
    grid = grid_from_region({"type": "Point", "coordinates": [116.3, 39.9]}, "EPSG:4326", 10)
    assert (grid.width, grid.height) == (1, 1)
    assert_covers(grid, 116.3, 39.9, 116.3, 39.9)
    utm = grid_from_region({"type": "Point", "coordinates": [116.3, 39.9]}, "EPSG:32650", 30)
    assert (utm.width, utm.height) == (1, 1)


def test_point_on_a_lattice_corner_gives_the_pixel_to_its_north_east() -> None:
    point = {"type": "Point", "coordinates": [300.0, 600.0], "crs": "EPSG:32650"}
    grid = grid_from_region(point, "EPSG:32650", 30)
    assert grid == Grid("EPSG:32650", (30.0, 0.0, 300.0, 0.0, -30.0, 630.0), 1, 1)


def test_sub_pixel_region_gives_one_pixel() -> None:
    region = rect(116.30001, 39.90001, 116.30002, 39.90002)
    grid = grid_from_region(region, "EPSG:4326", 100)
    assert (grid.width, grid.height) == (1, 1)
    assert_covers(grid, 116.30001, 39.90001, 116.30002, 39.90002)


def test_crs_spelling_is_normalised() -> None:
    grid = grid_from_region(rect(0, 0, 1, 1), "epsg:4326", 1000)
    assert grid.crs == "EPSG:4326"


# ----------------------------------------------------------------------------- antimeridian

FIJI_SPLIT = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[179.2, -17.0], [180.0, -17.0], [180.0, -16.0], [179.2, -16.0], [179.2, -17.0]]],
        [[[-180.0, -17.0], [-179.3, -17.0], [-179.3, -16.0], [-180.0, -16.0], [-180.0, -17.0]]],
    ],
}
FIJI_JUMP = rect(179.2, -17.0, -179.3, -16.0)
FIJI_BEYOND = rect(179.2, -17.0, 180.7, -16.0)


@pytest.mark.parametrize("region", [FIJI_SPLIT, FIJI_JUMP, FIJI_BEYOND])
def test_antimeridian_grid_is_continuous_across_180(region: dict) -> None:
    grid = grid_from_region(region, "EPSG:4326", 1000)
    a = grid.transform[0]
    assert_on_lattice(grid)
    assert_covers(grid, 179.2, -17.0, 180.7, -16.0)
    assert 179.0 < grid.transform[2] <= 179.2
    assert grid.width == math.ceil(180.7 / a) - math.floor(179.2 / a)
    assert grid.width * a < 2.0  # not the whole world


def test_antimeridian_region_east_of_180_is_normalised() -> None:
    shifted = grid_from_region(rect(181.0, -17.0, 182.0, -16.0), "EPSG:4326", 1000)
    plain = grid_from_region(rect(-179.0, -17.0, -178.0, -16.0), "EPSG:4326", 1000)
    assert shifted == plain


def test_antimeridian_into_a_projected_crs() -> None:
    split = grid_from_region(FIJI_SPLIT, "EPSG:32760", 100)
    jump = grid_from_region(FIJI_JUMP, "EPSG:32760", 100)
    assert split == jump
    assert split.width * 100 < 200_000  # ~160 km wide, not the whole zone


def test_far_apart_parts_not_touching_180_keep_plain_bounds() -> None:
    region = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[-100.0, 0.0], [-99.0, 0.0], [-99.0, 1.0], [-100.0, 0.0]]],
            [[[99.0, 0.0], [100.0, 0.0], [100.0, 1.0], [99.0, 0.0]]],
        ],
    }
    grid = grid_from_region(region, "EPSG:4326", 10_000)
    assert grid.bounds()[0] <= -100.0 and grid.bounds()[2] >= 100.0
    assert grid.bounds()[2] < 101.0


def test_whole_world() -> None:
    grid = grid_from_region(rect(-180, -90, 180, 90), "EPSG:4326", 10_000)
    a = grid.transform[0]
    assert grid.width == 2 * math.ceil(180 / a)
    assert grid.transform[2] == -math.ceil(180 / a) * a


# ----------------------------------------------------------------------------- grids


def test_grid_from_transform() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 500000, 0, -10, 4400000], 300, 200)
    assert grid == Grid("EPSG:32650", (10.0, 0.0, 500000.0, 0.0, -10.0, 4400000.0), 200, 300)
    assert grid.bounds() == (500000.0, 4397000.0, 502000.0, 4400000.0)
    nine = grid_from_transform("EPSG:32650", (10, 0, 500000, 0, -10, 4400000, 0, 0, 1), 300, 200)
    assert nine == grid
    assert hash(nine) == hash(grid)


@pytest.mark.parametrize(
    ("transform", "height", "width", "match"),
    [
        ([10, 0, 0, 0, -10], 1, 1, "6 numbers"),
        ([0, 0, 0, 0, -10, 0], 1, 1, "singular"),
        ([10, 0, math.nan, 0, -10, 0], 1, 1, "finite"),
        ([10, 0, "x", 0, -10, 0], 1, 1, "numbers"),
        ([10, 0, 0, 0, -10, 0], 0, 1, "height"),
        (10, 1, 1, "list of 6"),
        ([10, 0, 0, 0, -10, 0], 1, 1.5, "width"),
    ],
)
def test_grid_from_transform_errors(
    transform: list, height: object, width: object, match: str
) -> None:
    with pytest.raises(GridError, match=match):
        grid_from_transform("EPSG:32650", transform, height, width)


def test_window_grid() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 500000, 0, -10, 4400000], 300, 200)
    sub = grid.window_grid(Window(row_off=20, col_off=30, height=5, width=7))
    assert sub == Grid("EPSG:32650", (10.0, 0.0, 500300.0, 0.0, -10.0, 4399800.0), 7, 5)
    sheared = Grid("EPSG:3857", (2.0, 0.5, 100.0, 0.25, -2.0, 50.0), 10, 10)
    w = sheared.window_grid(Window(3, 4, 1, 1))
    assert w.transform[2] == 100.0 + 4 * 2.0 + 3 * 0.5
    assert w.transform[5] == 50.0 + 3 * -2.0 + 4 * 0.25
    with pytest.raises(GridError):
        grid.window_grid(Window(0, 0, 0, 5))


def test_grid_normalises_and_validates() -> None:
    grid = Grid("EPSG:4326", [1, 0, 0, 0, -1, 0], np.int64(3), 2)
    assert grid.transform == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    assert type(grid.width) is int
    with pytest.raises(GridError):
        Grid("EPSG:4326", (1, 0, 0, 0, -1, 0), 0, 2)


# ----------------------------------------------------------------------------- plan_tiles


def check_plan(
    grid: Grid,
    itemsizes: list[int],
    tiles: list[TilePlan],
    *,
    max_bytes: int,
    max_side: int,
    max_bands: int,
    min_tiles: int,
    block: int,
) -> None:
    """Exact coverage, limits, alignment, band-splitting only when needed, order."""
    n, height, width = len(itemsizes), grid.height, grid.width
    for t in tiles:
        w = t.window
        assert w.height >= 1 and w.width >= 1 and t.bands >= 1
        assert request_bytes(w.width, w.height, itemsizes[t.band_start : t.band_stop]) <= max_bytes
        assert w.height <= max_side and w.width <= max_side
        assert t.bands <= max_bands

    # Exact coverage: rows, columns and band groups each partition their axis, and the tiles
    # are exactly their product, so every (row, col, band) is in exactly one tile.
    row_spans = sorted({(t.window.row_off, t.window.height) for t in tiles})
    col_spans = sorted({(t.window.col_off, t.window.width) for t in tiles})
    groups = sorted({(t.band_start, t.band_stop) for t in tiles})
    for spans, size in ((row_spans, height), (col_spans, width), (groups, n)):
        edge = 0
        for start, extent in spans:
            stop = extent if spans is groups else start + extent
            assert start == edge
            edge = stop
        assert edge == size
    product = {
        (r, c, h, w, lo, hi) for r, h in row_spans for c, w in col_spans for lo, hi in groups
    }
    got = [(t.window.row_off, t.window.col_off, t.window.height, t.window.width,
            t.band_start, t.band_stop) for t in tiles]  # fmt: skip
    assert len(got) == len(set(got)) == len(product)
    assert set(got) == product

    # Row-major, band groups of a window adjacent.
    keys = [(t.window.row_off, t.window.col_off, t.band_start) for t in tiles]
    assert keys == sorted(keys)

    costs = [s + 1 for s in itemsizes]
    step = min(block, max_side)
    unit = min(step, height) * min(step, width)
    aligned = max(costs) * unit <= max_bytes
    if aligned:
        for start, extent in row_spans:
            assert start % step == 0
            assert extent % step == 0 or start + extent == height
        for start, extent in col_spans:
            assert start % step == 0
            assert extent % step == 0 or start + extent == width
        fits_whole = n <= max_bands and unit * sum(costs) <= max_bytes
        assert (len(groups) == 1) == fits_whole
        # Fewest groups: no two neighbours could be joined at the block-sized tile.
        for (lo, _), (_, hi) in itertools.pairwise(groups):
            assert hi - lo > max_bands or unit * sum(costs[lo:hi]) > max_bytes
        # Enough tiles for the concurrency slots, unless tiles are already block-sized.
        if len(tiles) < min_tiles:
            assert max(h for _, h in row_spans) <= step
            assert max(w for _, w in col_spans) <= step


def tiling_limits(
    max_bytes: st.SearchStrategy[int],
    max_side: st.SearchStrategy[int],
    max_bands: st.SearchStrategy[int],
    min_tiles: st.SearchStrategy[int],
    block: st.SearchStrategy[int],
) -> st.SearchStrategy[dict[str, int]]:
    """The keywords of ``plan_tiles`` that limit a tile, each drawn from its strategy."""
    return st.fixed_dictionaries(
        {
            "max_bytes": max_bytes,
            "max_side": max_side,
            "max_bands": max_bands,
            "min_tiles": min_tiles,
            "block": block,
        }
    )


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 30_000),
    width=st.integers(1, 30_000),
    itemsizes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=40),
    limits=tiling_limits(
        max_bytes=st.one_of(st.just(EE_MAX_REQUEST_BYTES), st.integers(100_000, 60_000_000)),
        max_side=st.one_of(st.just(EE_MAX_SIDE_URLS), st.integers(50, 40_000)),
        max_bands=st.one_of(st.just(EE_MAX_BANDS), st.integers(1, 50)),
        min_tiles=st.integers(1, 100),
        block=st.sampled_from([1, 7, 64, 256, 512, 1000]),
    ),
)
def test_plan_tiles_properties(
    height: int, width: int, itemsizes: list[int], limits: dict[str, int]
) -> None:
    # Keep each example to a few thousand tiles so the checks stay fast.
    assume(request_bytes(width, height, itemsizes) / limits["max_bytes"] <= 1000)
    max_side = limits["max_side"]
    assume(math.ceil(width / max_side) * math.ceil(height / max_side) <= 1000)
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], height, width)
    tiles = plan_tiles(grid, itemsizes, **limits)
    check_plan(grid, itemsizes, tiles, **limits)
    assert tiles == plan_tiles(grid, itemsizes, **limits)


@settings(max_examples=100, deadline=None)
@given(
    height=st.integers(1, 100),
    width=st.integers(1, 100),
    itemsizes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=6),
    limits=tiling_limits(
        max_bytes=st.integers(9, 30_000),
        max_side=st.integers(1, 150),
        max_bands=st.integers(1, 6),
        min_tiles=st.integers(1, 30),
        block=st.integers(1, 40),
    ),
)
def test_plan_tiles_cover_every_pixel_once(
    height: int, width: int, itemsizes: list[int], limits: dict[str, int]
) -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], height, width)
    tiles = plan_tiles(grid, itemsizes, **limits)
    count = np.zeros((len(itemsizes), height, width), dtype=np.int32)
    for t in tiles:
        w = t.window
        count[t.band_start : t.band_stop, w.row_off : w.row_off + w.height,
              w.col_off : w.col_off + w.width] += 1  # fmt: skip
    assert (count == 1).all()


def test_geedim_comparison_10_band_uint16_10k() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 10_000, 10_000)
    tiles = plan_tiles(grid, [2] * 10)
    # geedim makes 600 single-band 4 MB tiles; ideal is ceil(3e9 / 48 MiB) = 60.
    assert len(tiles) <= 80
    assert all(t.bands == 10 for t in tiles)
    full = [t for t in tiles if (t.window.height, t.window.width) == (1024, 1536)]
    assert len(full) == 54
    assert request_bytes(1536, 1024, [2] * 10) > 0.9 * EE_MAX_REQUEST_BYTES
    print(f"\n10-band uint16 10000x10000: {len(tiles)} tiles, first {tiles[0].window}")


def test_256mb_image_is_six_full_tiles_or_more_with_min_tiles() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 8192, 8192)
    tiles = plan_tiles(grid, [1, 1])
    assert len(tiles) == 6
    assert max(request_bytes(t.window.width, t.window.height, [1, 1]) for t in tiles) == (
        EE_MAX_REQUEST_BYTES
    )
    many = plan_tiles(grid, [1, 1], min_tiles=40)
    assert 40 <= len(many) <= 64
    check_plan(grid, [1, 1], many, max_bytes=EE_MAX_REQUEST_BYTES, max_side=EE_MAX_SIDE_URLS,
               max_bands=EE_MAX_BANDS, min_tiles=40, block=512)  # fmt: skip


def test_min_tiles_stops_at_block_size() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 1000, 1000)
    tiles = plan_tiles(grid, [2], min_tiles=40)
    assert len(tiles) == 4
    assert {(t.window.height, t.window.width) for t in tiles} == {
        (512, 512),
        (512, 488),
        (488, 512),
        (488, 488),
    }


def test_narrow_grid_gets_full_width_strips() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 100_000, 3000)
    tiles = plan_tiles(grid, [2])
    assert all(t.window.width == 3000 for t in tiles)
    assert len(tiles) == 20


def test_heavy_images_split_bands_into_equal_groups() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 10_000, 10_000)
    tiles = plan_tiles(grid, [8] * 1024)
    groups = sorted({(t.band_start, t.band_stop) for t in tiles})
    sizes = {hi - lo for lo, hi in groups}
    assert sizes <= {20, 21}
    assert len(groups) == math.ceil(1024 / (EE_MAX_REQUEST_BYTES // (512 * 512 * 9)))
    assert {(t.window.height, t.window.width) for t in tiles if t.window.row_off == 0} >= {
        (512, 512)
    }
    many = plan_tiles(grid_from_transform("EPSG:4326", [1, 0, 0, 0, -1, 0], 10, 10), [1] * 1500)
    assert [(t.band_start, t.band_stop) for t in many] == [(0, 750), (750, 1500)]


def test_plan_tiles_rejects_bad_arguments() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 10, 10)
    with pytest.raises(GridError, match="no bands"):
        plan_tiles(grid, [])
    with pytest.raises(GridError, match="item sizes"):
        plan_tiles(grid, [0])
    with pytest.raises(GridError, match="max_bytes"):
        plan_tiles(grid, [2], max_bytes=0)
    with pytest.raises(GridError, match="max_bytes"):
        plan_tiles(grid, [8], max_bytes=8)
    with pytest.raises(GridError, match="min_tiles"):
        plan_tiles(grid, [2], min_tiles=0)
    huge = grid_from_transform("EPSG:32650", [1, 0, 0, 0, -1, 0], 10**7, 10**7)
    with pytest.raises(GridError, match="scale"):
        plan_tiles(huge, [8] * 10)


def test_plan_100k_tiles_speed() -> None:
    grid = grid_from_transform("EPSG:32650", [10, 0, 0, 0, -10, 0], 512 * 400, 512 * 250)
    wall, cpu = math.inf, math.inf
    for _ in range(2):
        start, start_cpu = time.perf_counter(), time.process_time()
        tiles = plan_tiles(grid, [2], max_bytes=512 * 512 * 3)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    assert len(tiles) == 100_000
    print(f"\nplan_tiles: 100000 tiles in {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU")


# ----------------------------------------------------------------------------- split_tile


def assert_children_cover(parent: TilePlan, children: list[TilePlan]) -> None:
    assert len(children) >= 2
    p = parent.window
    count = np.zeros((parent.band_stop, p.height, p.width), dtype=np.int32)
    for c in children:
        w = c.window
        assert parent.band_start <= c.band_start < c.band_stop <= parent.band_stop
        assert p.row_off <= w.row_off and w.row_off + w.height <= p.row_off + p.height
        assert p.col_off <= w.col_off and w.col_off + w.width <= p.col_off + p.width
        assert w.height * w.width * c.bands < p.height * p.width * parent.bands
        r, k = w.row_off - p.row_off, w.col_off - p.col_off
        count[c.band_start : c.band_stop, r : r + w.height, k : k + w.width] += 1
    assert (count[parent.band_start :] == 1).all()
    assert (count[: parent.band_start] == 0).all()


@settings(max_examples=200, deadline=None)
@given(
    row_off=st.integers(0, 5000),
    col_off=st.integers(0, 5000),
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    band_start=st.integers(0, 5),
    bands=st.integers(1, 6),
    block=st.integers(1, 128),
    itemsizes=st.one_of(st.none(), st.lists(st.sampled_from([1, 2, 4, 8]), min_size=11)),
)
def test_split_tile_children_cover_parent(
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    band_start: int,
    bands: int,
    block: int,
    itemsizes: list[int] | None,
) -> None:
    tile = TilePlan(Window(row_off, col_off, height, width), band_start, band_start + bands)
    if height == width == bands == 1:
        with pytest.raises(GridError, match="cannot be split"):
            split_tile(tile, itemsizes, block)
        return
    children = split_tile(tile, itemsizes, block)
    assert_children_cover(tile, children)


def test_split_tile_halves_the_longer_side_on_block_lines() -> None:
    tile = TilePlan(Window(512, 1024, 512, 1536), 0, 3)
    children = split_tile(tile)
    assert [c.window for c in children] == [
        Window(512, 1024, 512, 768),
        Window(512, 1792, 512, 768),
    ]
    odd = split_tile(TilePlan(Window(0, 9216, 1000, 784), 0, 1))
    assert [c.window for c in odd] == [Window(0, 9216, 512, 784), Window(512, 9216, 488, 784)]
    unaligned = split_tile(TilePlan(Window(0, 0, 3, 7), 0, 1), block=256)
    assert [c.window.width for c in unaligned] == [4, 3]


def test_split_tile_splits_bands_once_windows_are_small() -> None:
    small = TilePlan(Window(0, 0, 200, 100), 4, 9)
    children = split_tile(small, block=256)
    assert [(c.band_start, c.band_stop) for c in children] == [(4, 7), (7, 9)]
    assert all(c.window == small.window for c in children)
    one = split_tile(TilePlan(Window(5, 5, 1, 1), 0, 2))
    assert [(c.band_start, c.band_stop) for c in one] == [(0, 1), (1, 2)]
    weighted = split_tile(TilePlan(Window(0, 0, 1, 1), 0, 4), itemsizes=[8, 1, 1, 1])
    assert [(c.band_start, c.band_stop) for c in weighted] == [(0, 1), (1, 4)]


def test_split_tile_repeatedly_reaches_single_pixels() -> None:
    pending = [TilePlan(Window(3, 4, 9, 6), 0, 2)]
    leaves = []
    while pending:
        tile = pending.pop()
        if tile.window.height == tile.window.width == tile.bands == 1:
            leaves.append(tile)
        else:
            pending.extend(split_tile(tile, block=4))
    assert len(leaves) == len(set(leaves)) == 9 * 6 * 2


# ---- cutting the last tiles for idle connections ---------------------------------------------


def _covers_exactly(tile: TilePlan, parts: list[TilePlan]) -> bool:
    w = tile.window
    seen = np.zeros((w.height, w.width), dtype=int)
    for p in parts:
        assert (p.band_start, p.band_stop) == (tile.band_start, tile.band_stop)  # bands uncut
        r, c = p.window.row_off - w.row_off, p.window.col_off - w.col_off
        seen[r : r + p.window.height, c : c + p.window.width] += 1
    return bool((seen == 1).all())


def test_the_last_tiles_are_cut_into_one_part_per_idle_slot() -> None:
    big = TilePlan(Window(0, 0, 2048, 4096), 0, 8)  # 8 x 2 bytes: 128 MiB
    small = TilePlan(Window(2048, 0, 2048, 2048), 0, 8)
    parts = split_for_slots([big, small], [2] * 8, slots=12, min_part_bytes=4 << 20, block=512)
    assert sum(len(g) for g in parts) == 12
    assert len(parts[0]) > len(parts[1])  # the larger tile takes more of the cuts
    for tile, group in zip([big, small], parts, strict=True):
        assert _covers_exactly(tile, group)
        for p in group:  # block-aligned, so each output block is still written once
            assert p.window.row_off % 512 == 0 and p.window.col_off % 512 == 0


def test_tiles_are_not_cut_below_the_smallest_worthwhile_part() -> None:
    tile = TilePlan(Window(0, 0, 1024, 1024), 0, 1)  # 1 MiB of uint8
    assert split_for_slots([tile], [1], slots=40, min_part_bytes=4 << 20) == [[tile]]
    bigger = TilePlan(Window(0, 0, 4096, 4096), 0, 1)  # 16 MiB
    parts = split_for_slots([bigger], [1], slots=40, min_part_bytes=4 << 20)
    assert len(parts[0]) == 4 and _covers_exactly(bigger, parts[0])
    assert split_for_slots([bigger], [1], slots=1, min_part_bytes=1) == [[bigger]]
