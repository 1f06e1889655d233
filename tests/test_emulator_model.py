"""The emulator's model half: expressions built by the real ``ee`` client, evaluated and rendered.

The exactness tests matter most: eefetch's end-to-end tests compare a merged download of many
tiles with one render of the whole grid, so a tile must render exactly the same pixels as the
same window of the whole grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.emulator import pixels
from engine.emulator.evaluate import (
    EvaluationError,
    Image,
    _middle_values,
    _sorted_planes,
    evaluate,
    to_info,
)
from engine.grid import grid_from_region
from engine.testing.ee_offline import download_expression, offline_ee, wire

S2 = "COPERNICUS/S2_SR_HARMONIZED"
# A generated 2022 scene over Nanjing (tile 50SPA, relative orbit 132, 15.6 % cloud).
SCENE = f"{S2}/20220307T025152_20220307T025351_T50SPA"
NANJING = [[[118.7, 32.0], [118.9, 32.0], [118.9, 32.1], [118.7, 32.1], [118.7, 32.0]]]


@pytest.fixture(scope="module")
def ee() -> Iterator[Any]:
    with offline_ee() as client:
        yield client


def _mask_clouds(ee: Any) -> Any:
    def mask(img: Any) -> Any:
        qa = img.select("QA60")
        clear = qa.bitwiseAnd(1 << 10).eq(0).And(qa.bitwiseAnd(1 << 11).eq(0))
        return img.updateMask(clear).divide(10000)

    return mask


def _tutorial_collection(ee: Any) -> Any:
    region = ee.Geometry.Polygon(NANJING)
    return (
        ee.ImageCollection(S2)
        .filterDate("2022-01-01", "2022-12-31")
        .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10))
        .filterBounds(region)
        .map(_mask_clouds(ee))
    )


def _tutorial_image(ee: Any) -> Any:
    region = ee.Geometry.Polygon(NANJING)
    return _tutorial_collection(ee).select("B[1-8]").median().clip(region.bounds())


def _render_download(ee: Any, image: Any, crs: str, transform: list[float], w: int, h: int) -> Any:
    """Evaluate the exact-grid download expression and render it on its own grid."""
    img = evaluate(download_expression(image, crs=crs, crs_transform=transform, dimensions=[w, h]))
    assert isinstance(img, Image)
    grid = img.bounded_grid()
    assert grid is not None
    assert (grid.width, grid.height) == (w, h)
    assert grid.transform == pytest.approx(tuple(transform))
    return img.render(grid.crs, grid.transform, grid.width, grid.height)


# --------------------------------------------------------------------------- getInfo shapes


def test_tutorial_composite_info(ee: Any) -> None:
    info = to_info(evaluate(wire(_tutorial_image(ee))))
    assert info["type"] == "Image"
    assert [b["id"] for b in info["bands"]] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"]
    for band in info["bands"]:
        assert band["data_type"] == {"type": "PixelType", "precision": "float"}
        assert band["crs"] == "EPSG:4326"
        assert band["crs_transform"] == [1, 0, 0, 0, 1, 0]
        assert "dimensions" not in band


def test_tutorial_collection_filters(ee: Any) -> None:
    col = evaluate(wire(_tutorial_collection(ee)))
    info = to_info(col)
    assert info["type"] == "ImageCollection"
    assert info["bands"] == []
    region = ee.Geometry.Polygon(NANJING)
    year = ee.ImageCollection(S2).filterDate("2022-01-01", "2022-12-31").filterBounds(region)
    every = to_info(evaluate(wire(year)))["features"]
    # Nanjing's square is tile 50SPA (it spans the 32 N band edge; its centre is in band S):
    # one relative orbit (132) sees it every 5 days, 73 times in 2022 (the end is exclusive).
    assert len(every) == 73
    assert {f["properties"]["MGRS_TILE"] for f in every} == {"50SPA"}
    assert {f["properties"]["SENSING_ORBIT_NUMBER"] for f in every} == {132}
    clear = [f for f in every if f["properties"]["CLOUDY_PIXEL_PERCENTAGE"] < 10]
    assert 0 < len(clear) < len(every) / 2
    raw = to_info(evaluate(wire(year.filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10)))))
    assert [f["id"] for f in raw["features"]] == [f["id"] for f in clear]
    assert [f["properties"]["system:index"] for f in info["features"]] == [
        f["properties"]["system:index"] for f in clear
    ]
    shanghai = ee.Geometry.Point([121.4, 31.2])
    over_shanghai = to_info(
        evaluate(
            wire(
                ee.ImageCollection(S2).filterBounds(shanghai).filterDate("2022-06-01", "2022-07-01")
            )
        )
    )
    assert over_shanghai["features"]
    assert all(f["id"].endswith("_T51RUQ") for f in over_shanghai["features"])


def test_filters_and_equals_greater_than(ee: Any) -> None:
    tile = ee.ImageCollection(S2).filter(ee.Filter.eq("MGRS_TILE", "50SPA"))
    year = tile.filterDate("2022-01-01", "2023-01-01")
    flt = ee.Filter.And(
        ee.Filter.gt("CLOUDY_PIXEL_PERCENTAGE", 40), ee.Filter.eq("MGRS_TILE", "50SPA")
    )
    every = to_info(evaluate(wire(year)))["features"]
    cloudy = to_info(
        evaluate(wire(ee.ImageCollection(S2).filter(flt).filterDate("2022-01-01", "2023-01-01")))
    )
    expected = [f["id"] for f in every if f["properties"]["CLOUDY_PIXEL_PERCENTAGE"] > 40]
    assert [f["id"] for f in cloudy["features"]] == expected
    assert 0 < len(expected) < len(every)
    first = to_info(evaluate(wire(tile.first())))
    assert first["properties"]["system:time_start"] == min(
        f["properties"]["system:time_start"]
        for f in to_info(evaluate(wire(tile.filterDate("2017-01-01", "2017-05-01"))))["features"]
    )
    assert first["properties"]["system:time_start"] >= 1490659200000  # 2017-03-28
    with pytest.raises(EvaluationError, match="filterBounds"):
        to_info(evaluate(wire(ee.ImageCollection(S2).first())))


def test_loaded_image_info(ee: Any) -> None:
    info = to_info(evaluate(wire(ee.Image(SCENE))))
    bands = {b["id"]: b for b in info["bands"]}
    assert list(bands)[:4] == ["B1", "B2", "B3", "B4"]
    assert "B8A" in bands
    assert "QA60" in bands
    assert bands["B4"]["data_type"] == {
        "type": "PixelType",
        "precision": "int",
        "min": 0,
        "max": 65535,
    }
    assert bands["B4"]["crs"] == "EPSG:32650"
    assert bands["B4"]["crs_transform"] == [10, 0, 600000, 0, -10, 3600000]
    assert bands["B4"]["dimensions"] == [10980, 10980]
    assert bands["B1"]["crs_transform"][0] == 60
    assert info["properties"]["system:time_start"] > 0
    dem = to_info(evaluate(wire(ee.Image("USGS/SRTMGL1_003"))))
    assert dem["bands"][0]["id"] == "elevation"
    assert dem["bands"][0]["data_type"] == {
        "type": "PixelType",
        "precision": "int",
        "min": -32768,
        "max": 32767,
    }


def test_geometry_and_projection_info(ee: Any) -> None:
    region = ee.Geometry.Polygon([[[118.7, 32.0], [118.9, 32.05], [118.8, 32.1]]])
    bounds = to_info(evaluate(wire(region.bounds())))
    assert bounds["type"] == "Polygon"
    xs = [p[0] for p in bounds["coordinates"][0]]
    ys = [p[1] for p in bounds["coordinates"][0]]
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((118.7, 118.9, 32.0, 32.1))
    proj = to_info(evaluate(wire(ee.Image(SCENE).select("B4").projection())))
    assert proj == {
        "type": "Projection",
        "crs": "EPSG:32650",
        "transform": [10, 0, 600000, 0, -10, 3600000],
    }
    scale = evaluate(wire(ee.Image(SCENE).select("B1").projection().nominalScale()))
    assert scale == 60
    with pytest.raises(EvaluationError, match="different projections"):
        evaluate(wire(ee.Image(SCENE).projection()))


# --------------------------------------------------------------------------- errors


def test_unknown_function_is_named() -> None:
    expr = {
        "result": "0",
        "values": {
            "0": {
                "functionInvocationValue": {
                    "functionName": "Image.fooBar",
                    "arguments": {"input": {"constantValue": 1}},
                }
            }
        },
    }
    with pytest.raises(EvaluationError, match=r"Image\.fooBar"):
        evaluate(expr)


def test_function_definitions_references_and_arrays() -> None:
    def constant(value: dict[str, Any]) -> dict[str, Any]:
        return {"functionInvocationValue": {"functionName": "Image.constant", "arguments": value}}

    expr = {
        "result": "0",
        "values": {
            "one": {"constantValue": 1},
            "f": {"functionDefinitionValue": {"argumentNames": ["x"], "body": "b"}},
            "b": {
                "functionInvocationValue": {
                    "functionName": "Image.add",
                    "arguments": {
                        "image1": {"argumentReference": "x"},
                        "image2": constant({"value": {"integerValue": "2"}}),
                    },
                }
            },
            "0": {
                "functionInvocationValue": {
                    "functionReference": "f",
                    "arguments": {
                        "x": constant(
                            {
                                "value": {
                                    "arrayValue": {
                                        "values": [{"valueReference": "one"}, {"constantValue": 3}]
                                    }
                                }
                            }
                        )
                    },
                }
            },
        },
    }
    image = evaluate(expr)
    assert [b.id for b in image.bands] == ["constant", "constant_1"]
    out = image.render("EPSG:4326", (0.5, 0, 10, 0, -0.5, 20), 3, 2)
    assert [d.shape for d in out.data] == [(2, 3), (2, 3)]
    assert [v.shape for v in out.valid] == [(2, 3), (2, 3)]
    assert [int(d[1, 2]) for d in out.data] == [3, 5]
    assert all(v.all() for v in out.valid)


@pytest.mark.parametrize(
    "expr",
    [
        {"values": {}},
        {"result": "0", "values": {}},
        {"result": "0", "values": {"0": {"functionInvocationValue": {"arguments": {}}}}},
        {"result": "0", "values": {"0": {"functionDefinitionValue": {"argumentNames": []}}}},
        {"result": "0", "values": {"0": {"arrayValue": 3}}},
        {"result": "0", "values": {"0": {"weird": 1}}},
    ],
)
def test_malformed_expressions_raise_evaluation_error(expr: dict[str, Any]) -> None:
    with pytest.raises(EvaluationError):
        evaluate(expr)


def test_missing_asset_and_bad_selector(ee: Any) -> None:
    with pytest.raises(EvaluationError, match="not found"):
        evaluate(wire(ee.Image("COPERNICUS/S2_SR_HARMONIZED/nope")))
    with pytest.raises(EvaluationError, match="did not match any bands"):
        evaluate(wire(ee.Image(SCENE).select("B99")))


# --------------------------------------------------------------------------- bands and types


def test_select_regex_indices_and_new_names(ee: Any) -> None:
    img = evaluate(wire(ee.Image(SCENE).select("B[1-8]")))
    assert [b.id for b in img.bands] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"]
    img = evaluate(wire(ee.Image(SCENE).select(["B4", "B3", "B2"], ["r", "g", "b"])))
    assert [b.id for b in img.bands] == ["r", "g", "b"]
    img = evaluate(wire(ee.Image(SCENE).select([0, 3])))
    assert [b.id for b in img.bands] == ["B1", "B4"]
    img = evaluate(wire(ee.Image(SCENE).slice(1, 3)))
    assert [b.id for b in img.bands] == ["B2", "B3"]
    img = evaluate(wire(ee.Image(SCENE).select("B4").rename("red")))
    assert [b.id for b in img.bands] == ["red"]


@pytest.mark.parametrize(
    ("build", "dtype", "precision"),
    [
        (lambda ee, i: i.divide(10000), "float32", "float"),
        (lambda ee, i: i.multiply(i), "uint32", "int"),
        (lambda ee, i: i.subtract(i), "int32", "int"),
        (lambda ee, i: i.add(1), "uint32", "int"),
        (lambda ee, i: i.toUint8().add(1), "uint16", "int"),
        (lambda ee, i: i.multiply(0.5), "float64", "double"),
        (lambda ee, i: i.toFloat().add(1), "float32", "float"),
        (lambda ee, i: i.toDouble(), "float64", "double"),
        (lambda ee, i: i.eq(0), "uint8", "int"),
        (lambda ee, i: i.bitwiseAnd(1024), "uint16", "int"),
        (lambda ee, i: i.toInt16(), "int16", "int"),
        (lambda ee, i: i.gt(100).Or(i.lt(10)), "uint8", "int"),
    ],
)
def test_type_promotion(ee: Any, build: Any, dtype: str, precision: str) -> None:
    image = build(ee, ee.Image(SCENE).select("B4"))
    result = evaluate(wire(image))
    assert result.bands[0].dtype == dtype
    info = to_info(result)
    assert info["bands"][0]["data_type"]["precision"] == precision
    rendered = result.render("EPSG:32650", (10, 0, 660000, 0, -10, 3550000), 7, 5)
    assert rendered.data[0].dtype == np.dtype(dtype)
    assert rendered.data[0].shape == (5, 7)


def test_arithmetic_values(ee: Any) -> None:
    grid = ("EPSG:32650", (10, 0, 660000, 0, -10, 3550000), 40, 30)
    b4 = evaluate(wire(ee.Image(SCENE).select("B4"))).render(*grid).data[0]
    div = evaluate(wire(ee.Image(SCENE).select("B4").divide(10000))).render(*grid).data[0]
    assert np.array_equal(div, b4.astype(np.float32) / np.float32(10000))
    zero = evaluate(wire(ee.Image(SCENE).select("B4").divide(0))).render(*grid).data[0]
    assert not zero.any()
    cast = evaluate(wire(ee.Image(SCENE).select("B4").toUint8())).render(*grid).data[0]
    assert np.array_equal(cast, np.clip(b4, 0, 255).astype(np.uint8))


def test_masks_and_unmask(ee: Any) -> None:
    grid = ("EPSG:32650", (60, 0, 640000, 0, -60, 3570000), 300, 300)
    masked = _mask_clouds(ee)(ee.Image(SCENE))
    out = evaluate(wire(masked.select("B4"))).render(*grid)
    qa = evaluate(wire(ee.Image(SCENE).select("QA60"))).render(*grid).data[0]
    assert np.array_equal(out.valid[0], qa == 0)
    assert 0.02 < 1 - out.valid[0].mean() < 0.25
    filled = evaluate(wire(masked.select("B4").unmask(-1))).render(*grid)
    assert filled.valid[0].all()
    assert np.array_equal(filled.data[0] == -1, ~out.valid[0])
    assert filled.data[0].dtype == np.float32


def test_band_by_band_operations_keep_each_bands_values_and_masks(ee: Any) -> None:
    """mask, selfMask, Not, clip and the casts each map every band on its own, with its type."""
    grid = ("EPSG:32650", (60, 0, 640000, 0, -60, 3570000), 120, 100)
    qa = ee.Image(SCENE).select("QA60")
    clear = qa.bitwiseAnd(1 << 10).eq(0).And(qa.bitwiseAnd(1 << 11).eq(0))
    # Raw values: B4 spans the uint8 range's edge (clamped by toUint8), QA60 has 0s and not.
    masked = ee.Image(SCENE).select(["B4", "QA60"]).updateMask(clear).subtract(1000)

    def render(image: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        result = evaluate(wire(image))
        out = result.render(*grid)
        return np.stack(out.data), np.stack(out.valid), [b.dtype for b in result.bands]

    data, valid, dtypes = render(masked)
    assert not valid[0].all()  # clouds masked: the masks below have something to keep
    values = data[valid]
    assert (values < 0).any() and (values > 255).any() and (values == 0).any()

    mask, mask_valid, mask_types = render(masked.mask())
    assert mask_types == ["uint8", "uint8"] and mask_valid.all()
    assert np.array_equal(mask.astype(bool), valid)

    _, selfmasked_valid, selfmasked_types = render(masked.selfMask())
    assert selfmasked_types == dtypes
    assert np.array_equal(selfmasked_valid, valid & (data != 0))

    negated, negated_valid, negated_types = render(masked.Not())
    assert negated_types == ["uint8", "uint8"]
    assert np.array_equal(negated_valid, valid)
    assert np.array_equal(negated[valid], (data[valid] == 0).astype(np.uint8))

    cast, cast_valid, cast_types = render(masked.toUint8())
    assert cast_types == ["uint8", "uint8"]
    assert np.array_equal(cast_valid, valid)
    assert np.array_equal(cast[valid], np.clip(data[valid], 0, 255).astype(np.uint8))

    west_half = ee.Geometry.Rectangle([640000, 3564000, 643600, 3570000], "EPSG:32650", False)
    clipped, clipped_valid, clipped_types = render(masked.clip(west_half))
    assert clipped_types == dtypes
    assert np.array_equal(clipped_valid[:, :, :60], valid[:, :, :60])
    assert not clipped_valid[:, :, 60:].any()
    assert np.array_equal(clipped[clipped_valid], data[clipped_valid])


# --------------------------------------------------------------------------- pixels


def test_qa60_cloud_bits_and_values_look_like_s2(ee: Any) -> None:
    img = evaluate(wire(ee.Image(SCENE)))
    out = img.render("EPSG:32650", (60, 0, 640000, 0, -60, 3570000), 300, 300)
    bands = dict(zip(out.band_ids, out.data, strict=True))
    qa = bands["QA60"]
    assert set(np.unique(qa)) <= {0, 1024, 2048}
    assert 0.03 < (qa != 0).mean() < 0.25
    assert (qa == 2048).any()
    clear = qa == 0
    for name in ("B2", "B3", "B4", "B8"):
        values = bands[name][clear]
        assert values.min() >= 1 and values.max() <= 10000
        assert 200 < np.median(values) < 4500
    assert bands["B8"][clear].mean() > bands["B4"][clear].mean()
    assert bands["B2"][~clear].mean() > 5000


def test_other_catalog_images(ee: Any) -> None:
    grid = ("EPSG:4326", (1 / 3600, 0, 118.7, 0, -1 / 3600, 32.1), 120, 90)
    dem = evaluate(wire(ee.Image("USGS/SRTMGL1_003"))).render(*grid)
    assert dem.data[0].dtype == np.int16
    assert 0 < dem.data[0].min() < dem.data[0].max() < 1000
    lc = evaluate(wire(ee.Image("ESA/WorldCover/v200/2021"))).render(*grid)
    assert lc.data[0].dtype == np.uint8
    assert set(np.unique(lc.data[0])) <= {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}
    assert len(np.unique(lc.data[0])) > 2


def test_render_is_independent_of_band_subset(ee: Any) -> None:
    img = evaluate(wire(_tutorial_image(ee)))
    grid = ("EPSG:32650", (30, 0, 660000, 0, -30, 3552000), 64, 48)
    full = img.render(*grid)
    only = img.render(*grid, band_ids=["B4"])
    assert only.band_ids == ["B4"]
    i = full.band_ids.index("B4")
    assert np.array_equal(only.data[0], full.data[i])
    assert np.array_equal(only.valid[0], full.valid[i])


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(-(10**7), 10**7),
    j=st.integers(-(10**7), 10**7),
    size=st.sampled_from([10.0, 30.0, 8.983152841195214e-05, 1 / 3600, 0.1, 463.3127165279165]),
    col_off=st.integers(0, 500),
    row_off=st.integers(0, 500),
    north_up=st.booleans(),
)
def test_lattice_of_tile_is_window_of_whole(
    k: int, j: int, size: float, col_off: int, row_off: int, north_up: bool
) -> None:
    e = -size if north_up else size
    whole = (size, 0.0, k * size, 0.0, e, j * size)
    tile = (size, 0.0, k * size + col_off * size, 0.0, e, j * size + row_off * e)
    big = pixels.lattice(whole, col_off + 7, row_off + 5, False)
    small = pixels.lattice(tile, 7, 5, False)
    assert np.array_equal(small.ix, big.ix[col_off:])
    assert np.array_equal(small.iy, big.iy[row_off:])


# --------------------------------------------------------------------------- exactness


def _windows(width: int, height: int, tw: int, th: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, height, th):
        for c in range(0, width, tw):
            yield r, c, min(th, height - r), min(tw, width - c)


@pytest.mark.parametrize(
    ("crs", "scale", "tile"),
    [
        ("EPSG:32650", 30.0, (64, 48)),
        ("EPSG:4326", 10.0, (97, 61)),
        ("EPSG:32651", 60.0, (50, 33)),
    ],
)
def test_tiles_equal_window_of_whole(
    ee: Any, crs: str, scale: float, tile: tuple[int, int]
) -> None:
    image = _tutorial_image(ee)
    region = {"type": "Polygon", "coordinates": NANJING}
    grid = grid_from_region(region, crs, scale)
    a, _, c, _, e, f = grid.transform
    # A margin of 20 pixels so the clip edge is inside; at most 301 x 203 pixels (fast).
    margin = (a, 0.0, c - 20 * a, 0.0, e, f - 20 * e)
    size = (min(grid.width + 40, 301), min(grid.height + 40, 203))
    grid = type(grid)(grid.crs, margin, *size)
    whole = _render_download(ee, image, grid.crs, list(grid.transform), grid.width, grid.height)
    assert any((~v).any() for v in whole.valid)
    assert any(v.any() for v in whole.valid)
    a, _, c, _, e, f = grid.transform
    windows = list(_windows(grid.width, grid.height, *tile))
    for r, col, h, w in windows[:: max(1, len(windows) // 6)] + windows[-1:]:
        transform = [a, 0.0, c + col * a, 0.0, e, f + r * e]
        part = _render_download(ee, image, grid.crs, transform, w, h)
        for name, d_all, v_all, d, v in zip(
            whole.band_ids, whole.data, whole.valid, part.data, part.valid, strict=True
        ):
            assert np.array_equal(d, d_all[r : r + h, col : col + w]), name
            assert np.array_equal(v, v_all[r : r + h, col : col + w]), name


def test_scene_footprint_masks_pixels_exactly_per_tile(ee: Any) -> None:
    image = evaluate(wire(ee.Image(SCENE).select(["B4", "QA60"])))
    a, c, f, width, height = 60.0, 594000.0, 3550000.0, 200, 100
    whole = image.render("EPSG:32650", (a, 0, c, 0, -a, f), width, height)
    valid = whole.valid[0]
    xs = c + (np.arange(width) + 0.5) * a
    assert not valid[:, xs < 599900].any()
    assert valid[:, xs > 600100].all()
    for r, col, h, w in _windows(width, height, 37, 23):
        part = image.render("EPSG:32650", (a, 0, c + col * a, 0, -a, f - r * a), w, h)
        for d_all, v_all, d, v in zip(whole.data, whole.valid, part.data, part.valid, strict=True):
            assert np.array_equal(d, d_all[r : r + h, col : col + w])
            assert np.array_equal(v, v_all[r : r + h, col : col + w])


def test_composite_is_numpy_median_of_valid_inputs(ee: Any) -> None:
    grid = ("EPSG:32650", (30, 0, 663000, 0, -30, 3546000), 120, 90)
    mapped = evaluate(wire(_tutorial_collection(ee).select("B[1-8]")))
    composite = evaluate(wire(_tutorial_collection(ee).select("B[1-8]").median()))
    inputs = [img.render(*grid, band_ids=["B4"]) for img in mapped.images]
    out = composite.render(*grid, band_ids=["B4"])
    data = np.stack([r.data[0] for r in inputs])
    valid = np.stack([r.valid[0] for r in inputs])
    assert (~valid).any()
    assert np.array_equal(out.valid[0], valid.any(axis=0))
    expected = np.zeros(out.data[0].shape, dtype=np.float32)
    for y, x in zip(*np.nonzero(out.valid[0]), strict=True):
        expected[y, x] = np.median(data[valid[:, y, x], y, x])
    assert out.data[0].dtype == np.float32
    assert np.array_equal(out.data[0], expected)


@pytest.mark.parametrize("n", range(1, 20))
def test_sorting_networks_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.integers(0, 5, size=(n, 3, 40)).astype(np.float32)
    out = np.stack(_sorted_planes([v.copy() for v in values]))
    assert np.array_equal(out, np.sort(values, axis=0))
    if n <= 8:  # the 0-1 principle: all binary inputs prove a network sorts
        bits = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.float32).T
        out = np.stack(_sorted_planes([b[np.newaxis, :].copy() for b in bits]))
        assert np.array_equal(out[:, 0, :], np.sort(bits, axis=0))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_middle_values_are_numpys_median_of_the_valid_values(n: int, seed: int, dtype: str) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.integers(-50, 50, size=(n, 5, 7)) / 8).astype(dtype)
    valid = rng.random((n, 5, 7)) < 0.6
    planes = list(zip(data, valid, strict=True))
    count = valid.sum(axis=0).astype(np.uint8)
    lo, hi = _middle_values(planes, count, np.dtype(dtype))
    lo = lo + hi
    median = lo / lo.dtype.type(2)
    for y, x in zip(*np.nonzero(count), strict=True):
        assert median[y, x] == np.median(data[valid[:, y, x], y, x]), (y, x)


def test_mosaic_puts_later_images_on_top(ee: Any) -> None:
    grid = ("EPSG:32650", (30, 0, 663000, 0, -30, 3546000), 80, 60)
    col = _tutorial_collection(ee).select("B4")
    mapped = evaluate(wire(col))
    out = evaluate(wire(col.mosaic())).render(*grid)
    expected = np.zeros((60, 80), dtype=np.float32)
    for img in mapped.images:
        r = img.render(*grid)
        expected = np.where(r.valid[0], r.data[0], expected)
    assert np.array_equal(out.data[0], expected)
    assert to_info(evaluate(wire(col.mosaic())))["bands"][0]["crs"] == "EPSG:4326"


# --------------------------------------------------------------------------- grids


def test_clip_to_bounds_and_scale_forms(ee: Any) -> None:
    region = ee.Geometry.Polygon(NANJING)
    geojson = {"type": "Polygon", "coordinates": NANJING}
    img = evaluate(download_expression(ee.Image(SCENE).select("B4"), region=region, scale=30))
    assert img.bounded_grid() == grid_from_region(geojson, "EPSG:32650", 30)
    info = to_info(img)["bands"][0]
    grid = img.bounded_grid()
    assert info["dimensions"] == [grid.width, grid.height]
    img = evaluate(
        download_expression(ee.Image(SCENE).select("B4"), region=region, scale=10, crs="EPSG:4326")
    )
    assert img.bounded_grid() == grid_from_region(geojson, "EPSG:4326", 10)
    img = evaluate(wire(ee.Image(SCENE).select("B4").clipToBoundsAndScale(geometry=region)))
    assert img.bounded_grid() == grid_from_region(geojson, "EPSG:32650", 10)
    # A region alone is sent as Image.clip: the grid is then not fixed by the expression.
    img = evaluate(download_expression(ee.Image(SCENE).select("B4"), region=region))
    assert img.bounded_grid() is None
    img = evaluate(
        download_expression(ee.Image(SCENE).select("B4"), region=region, dimensions=[100, 50])
    )
    grid = img.bounded_grid()
    assert (grid.width, grid.height) == (100, 50)
    composite = evaluate(wire(_tutorial_image(ee)))
    assert composite.bounded_grid() is None
    composite = evaluate(
        download_expression(_tutorial_image(ee), region=region, scale=30, crs="EPSG:32650")
    )
    assert composite.bounded_grid() == grid_from_region(geojson, "EPSG:32650", 30)
    assert {b.crs for b in composite.bands} == {"EPSG:32650"}


def test_work_counts_sources(ee: Any) -> None:
    single = evaluate(wire(ee.Image(SCENE).select(["B4", "B3"])))
    assert single.work(10, 10) == 200
    composite = evaluate(wire(_tutorial_image(ee)))
    scenes = len(to_info(evaluate(wire(_tutorial_collection(ee))))["features"])
    assert scenes > 1
    assert composite.work(10, 10) == 10 * 10 * 8 * scenes
