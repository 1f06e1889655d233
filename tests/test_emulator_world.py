"""The emulator's world catalog: tiling, acquisition plans, queries, clouds and pixels.

Real-world facts the tests hold the generated catalog to (all public): Sentinel-2 tile
origins from granule metadata (T11SMS at 399960/3700020, T37LDL at 399960/9100020), three
real Sentinel-2 acquisitions from EE (system:time_start of tiles 36WWU, 14TLS and 16XEP), the
WRS-2 path/rows of five cities and three real Landsat 8 scene ids.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.emulator import catalog, model
from engine.emulator.evaluate import EvaluationError, Image, evaluate, to_info
from engine.emulator.world import land, landsat, mgrs, sentinel2
from engine.emulator.world.assets import millis
from engine.testing.ee_offline import download_expression, offline_ee, wire

S2 = "COPERNICUS/S2_SR_HARMONIZED"
L8 = "LANDSAT/LC08/C02/T1_L2"
HUAINAN = shapely.box(116.35, 31.90, 117.20, 33.00)


def ms(day: str) -> int:
    return millis(datetime.fromisoformat(day).replace(tzinfo=UTC))


@pytest.fixture(scope="module")
def ee() -> Iterator[Any]:
    with offline_ee() as client:
        yield client


# --------------------------------------------------------------------------- MGRS and UTM


@pytest.mark.parametrize(
    ("name", "origin", "epsg"),
    [
        ("11SMS", (399960.0, 3700020.0), 32611),  # from the granule's MTD_TL.xml
        ("37LDL", (399960.0, 9100020.0), 32737),  # from the granule's MTD_TL.xml
        ("50SPA", (600000.0, 3600000.0), 32650),
        ("51RUQ", (300000.0, 3500040.0), 32651),
        ("32VNM", (499980.0, 6700020.0), 32632),
    ],
)
def test_tile_origins_follow_the_60_m_snap_of_the_square(
    name: str, origin: tuple[float, float], epsg: int
) -> None:
    tile = mgrs.parse_tile("T" + name)
    assert tile.name == name
    assert tile.origin == origin
    assert tile.epsg == epsg


@pytest.mark.parametrize(
    ("lon", "lat", "zone"),
    [
        (5.0, 60.0, 32),  # Norway: 32V spans 3-12 E
        (2.0, 60.0, 31),
        (15.0, 78.0, 33),  # Svalbard: 33X spans 9-21 E, there is no 32X or 34X
        (8.0, 78.0, 31),
        (25.0, 78.0, 35),
        (40.0, 78.0, 37),
        (5.0, 50.0, 31),
        (-179.9, 0.0, 1),
        (179.9, 0.0, 60),
    ],
)
def test_utm_zone_exceptions(lon: float, lat: float, zone: int) -> None:
    assert mgrs.zone_of(lon, lat) == zone


def test_no_tiles_in_the_grid_zones_svalbard_removes() -> None:
    for name in ("32XNA", "34XEA", "36XEA"):
        with pytest.raises(ValueError, match="no UTM grid zone"):
            mgrs.parse_tile(name)


@settings(max_examples=120, deadline=None)
@given(lon=st.floats(-179.5, 179.5), lat=st.floats(-79.5, 83.5))
def test_every_point_is_in_the_tile_its_letters_name(lon: float, lat: float) -> None:
    assume(abs(lat) > 1e-9)  # on the equator itself a southern northing rounds to 10000 km
    tile = mgrs.tile_of(lon, lat)
    x, y = mgrs.to_utm(np.array([lon]), np.array([lat]), tile.zone, tile.south)
    letters = mgrs.square_letters(tile.zone, x[0], y[0])
    assert tile.name == f"{tile.zone:02d}{tile.band}{letters}"
    assert mgrs.parse_tile(tile.name) == tile
    assert (tile.column, tile.row) == (int(x[0] // 100000), int(y[0] // 100000))
    x0, y0 = tile.origin
    assert x0 <= x[0] < x0 + mgrs.TILE_SIDE and y0 - mgrs.TILE_SIDE < y[0] <= y0
    back_lon, back_lat = mgrs.from_utm(x, y, tile.zone, tile.south)
    assert back_lon[0] == pytest.approx(lon, abs=1e-7)
    assert back_lat[0] == pytest.approx(lat, abs=1e-7)


def test_a_square_across_a_band_edge_has_one_tile() -> None:
    assert mgrs.tile_of(116.381, 39.977).name == "50TMK"  # not 50SMK, as in the real grid
    assert mgrs.tile_of(118.8, 31.95).name == "50SPA"
    for name in ("50SMK", "50RPA"):
        with pytest.raises(ValueError, match="not a square"):
            mgrs.parse_tile(name)


# --------------------------------------------------------------------------- acquisition plans


@pytest.mark.parametrize(
    ("tile", "orbit", "craft", "when"),
    [
        ("36WWU", 36, "Sentinel-2B", "2022-07-13T09:41:55"),
        ("14TLS", 55, "Sentinel-2B", "2019-03-02T17:41:05"),
        ("16XEP", 128, "Sentinel-2A", "2021-04-30T20:01:30"),
    ],
)
def test_sentinel2_passes_match_real_acquisitions(
    tile: str, orbit: int, craft: str, when: str
) -> None:
    real = ms(when)
    found = catalog.search(
        catalog.Query(S2, real - 3600_000, real + 3600_000).placed("MGRS_TILE", [tile])
    )
    scene = next(a for a in found.assets if a.properties["SENSING_ORBIT_NUMBER"] == orbit)
    assert scene.properties["SPACECRAFT_NAME"] == craft
    assert abs(scene.properties["system:time_start"] - real) < 120_000  # within two minutes


def test_a_tile_is_revisited_every_five_days_by_each_orbit_that_sees_it() -> None:
    found = catalog.search(
        catalog.Query(S2, ms("2022-01-01"), ms("2023-01-01")).placed("MGRS_TILE", ["50SMA"])
    )
    by_orbit: dict[int, list[Any]] = {}
    for scene in found.assets:
        by_orbit.setdefault(scene.properties["SENSING_ORBIT_NUMBER"], []).append(scene)
    # 50SMA (Huainan) lies where the swaths of relative orbits 32 and 132 overlap.
    assert sorted(by_orbit) == [32, 132]
    for scenes in by_orbit.values():
        assert len(scenes) == 73
        starts = [s.properties["system:time_start"] for s in scenes]
        gaps = np.diff(starts) / 86400_000
        assert np.all(np.abs(gaps - 5) < 0.001)
        crafts = [s.properties["SPACECRAFT_NAME"] for s in scenes]
        assert set(crafts) == {"Sentinel-2A", "Sentinel-2B"}
        assert all(a != b for a, b in itertools.pairwise(crafts))
    partial = [s for s in by_orbit[132] if s.properties["NODATA_PIXEL_PERCENTAGE"] > 0]
    assert partial  # orbit 132 sees only the tile's eastern part
    assert all(s.properties["NODATA_PIXEL_PERCENTAGE"] < 100 for s in partial)


def test_scene_ids_properties_and_bands_look_like_ees() -> None:
    found = catalog.search(catalog.Query(S2, ms("2022-06-01"), ms("2022-06-11"), (HUAINAN,)))
    assert found.assets
    pattern = re.compile(r"^\d{8}T\d{6}_\d{8}T\d{6}_T\d\d[C-X][A-Z]{2}$")
    for scene in found.assets:
        props = scene.properties
        assert pattern.match(props["system:index"])
        assert scene.id == f"{S2}/{props['system:index']}"
        assert props["system:index"].endswith("_T" + props["MGRS_TILE"])
        assert 0 <= props["CLOUDY_PIXEL_PERCENTAGE"] <= 100
        assert props["PRODUCT_ID"].startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        assert f"_R{props['SENSING_ORBIT_NUMBER']:03d}_" in props["PRODUCT_ID"]
        assert catalog.find_image(scene.id) == scene  # ids are found again, deterministically
    scales = {b.id: b.transform[0] for b in found.assets[0].bands}
    assert [b.id for b in found.assets[0].bands] == [name for name, _, _ in sentinel2.BANDS]
    assert "B10" not in scales  # EE's SR collection has no B10
    assert {scales[b] for b in ("B1", "B9", "QA60")} == {60}
    assert {scales[b] for b in ("B5", "B6", "B7", "B8A", "B11", "B12", "SCL")} == {20}
    assert {scales[b] for b in ("B2", "B3", "B4", "B8")} == {10}
    assert catalog.find_image(f"{S2}/20220601T000000_20220601T000000_T50SMA") is None


@pytest.mark.parametrize(
    ("lon", "lat", "path", "row"),
    [
        (-122.29, 37.90, 44, 34),  # San Francisco Bay
        (116.40, 39.90, 123, 32),  # Beijing
        (-77.00, 38.90, 15, 33),  # Washington DC
        (-0.10, 51.50, 201, 24),  # London
        (2.35, 48.85, 199, 26),  # Paris
    ],
)
def test_wrs2_path_rows_of_known_places(lon: float, lat: float, path: int, row: int) -> None:
    point = shapely.Point(lon, lat)
    hits = {(s.path, s.row) for s in landsat.scenes_in(lon, lat, lon, lat)}
    hits = {pr for pr in hits if landsat.outline(landsat.scene(*pr)).contains(point)}
    assert (path, row) in hits


def test_landsat_scenes_on_real_dates_with_ees_scale_factors() -> None:
    for day in ("20140318", "20201028", "20210508"):  # real LC08_044034 acquisitions
        scene = catalog.find_image(f"{L8}/LC08_044034_{day}")
        assert scene is not None
        props = scene.properties
        assert props["WRS_PATH"] == 44 and props["WRS_ROW"] == 34
        assert props["DATE_ACQUIRED"] == f"{day[:4]}-{day[4:6]}-{day[6:]}"
        assert props["REFLECTANCE_MULT_BAND_4"] == 2.75e-05
        assert props["REFLECTANCE_ADD_BAND_4"] == -0.2
        assert props["TEMPERATURE_MULT_BAND_ST_B10"] == 0.00341802
    assert catalog.find_image(f"{L8}/LC08_044034_20210509") is None  # not a 16-day multiple
    names = [b.id for b in scene.bands]
    assert names[:7] == [f"SR_B{i}" for i in range(1, 8)]
    assert {"QA_PIXEL", "QA_RADSAT", "ST_B10"} <= set(names)
    assert {b.transform[0] for b in scene.bands} == {30.0}
    assert scene.bands[0].crs == "EPSG:32610"
    # Pixel centres on multiples of 30 m, as USGS grids Landsat.
    assert (scene.bands[0].transform[2] - 15) % 30 == 0


def test_landsat_9_flies_eight_days_after_landsat_8() -> None:
    l8 = catalog.search(catalog.Query(L8, ms("2022-01-01"), ms("2022-03-01"), (HUAINAN,)))
    l9 = catalog.search(
        catalog.Query("LANDSAT/LC09/C02/T1_L2", ms("2022-01-01"), ms("2022-03-01"), (HUAINAN,))
    )
    days8 = {(a.properties["WRS_PATH"], a.properties["DATE_ACQUIRED"]) for a in l8.assets}
    for scene in l9.assets:
        when = datetime.fromisoformat(scene.properties["DATE_ACQUIRED"]).toordinal()
        before = datetime.fromordinal(when - 8).strftime("%Y-%m-%d")
        if before >= "2022-01-01":
            assert (scene.properties["WRS_PATH"], before) in days8


# --------------------------------------------------------------------------- queries


def test_a_province_year_query_generates_only_the_scenes_under_it() -> None:
    query = catalog.Query(S2, ms("2022-01-01"), ms("2022-12-31"), (HUAINAN,))
    found = catalog.search(query)
    tiles = {a.properties["MGRS_TILE"] for a in found.assets}
    orbits = {a.properties["SENSING_ORBIT_NUMBER"] for a in found.assets}
    assert tiles == {"50SMA", "50SNA", "50SMB", "50SNB"}
    # Candidates are bounded by tiles x orbits x revisits, whatever the world's size.
    assert found.candidates == len(found.assets) <= len(tiles) * len(orbits) * 73
    assert all(shapely.geometry.shape(a.footprint).intersects(HUAINAN) for a in found.assets)
    clear = [a for a in found.assets if a.properties["CLOUDY_PIXEL_PERCENTAGE"] < 10]
    assert 0.05 * len(found.assets) < len(clear) < 0.5 * len(found.assets)


def test_the_client_path_pushes_filters_into_the_catalog(
    ee: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    search = catalog.search

    def counting(query: catalog.Query, window: Any = None) -> catalog.Found:
        found = search(query, window)
        seen.append(found.candidates)
        return found

    monkeypatch.setattr(catalog, "search", counting)
    region = ee.Geometry.Rectangle([116.35, 31.90, 117.20, 33.00])
    collection = (
        ee.ImageCollection(S2)
        .filterDate("2022-01-01", "2022-12-31")
        .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10))
        .filterBounds(region)
    )
    size = evaluate(wire(collection.size()))
    assert 0 < size < 300
    masked = collection.map(_mask_s2).select("B4")  # maps keep the count
    assert evaluate(wire(masked.size())) == size
    assert evaluate(wire(masked.map(lambda i: i.set("x", 1), True).size())) == size
    assert seen and max(seen) <= 6 * 2 * 73
    seen.clear()
    tile = ee.ImageCollection(S2).filter(ee.Filter.eq("MGRS_TILE", "50SMA"))
    january = tile.filterDate("2022-01-01", "2022-02-01")
    query = catalog.Query(S2, ms("2022-01-01"), ms("2022-02-01")).placed("MGRS_TILE", ["50SMA"])
    direct = search(query)
    assert evaluate(wire(january.size())) == len(direct.assets)
    assert seen == [direct.candidates] and 12 <= direct.candidates <= 14  # two orbits


def test_a_filter_on_the_index_names_the_place(ee: Any) -> None:
    s2 = "20220307T025152_20220307T025351_T50SPA"
    one = ee.ImageCollection(S2).filter(ee.Filter.eq("system:index", s2))
    assert [f["id"] for f in to_info(evaluate(wire(one)))["features"]] == [f"{S2}/{s2}"]
    ids = ["LC08_044034_20140318", "LC08_123032_20220115"]
    two = ee.ImageCollection(L8).filter(ee.Filter.inList("system:index", ids))
    found = [f["properties"]["system:index"] for f in to_info(evaluate(wire(two)))["features"]]
    assert sorted(found) == sorted(i for i in ids if catalog.find_image(f"{L8}/{i}"))
    assert "LC08_044034_20140318" in found


def test_a_query_with_no_place_says_what_to_add(ee: Any) -> None:
    with pytest.raises(EvaluationError, match=r"add filterBounds\(region\)"):
        evaluate(wire(ee.ImageCollection(S2).filterDate("2022-01-01", "2022-01-02").size()))
    with pytest.raises(catalog.CatalogError, match="filterBounds"):
        catalog.search(catalog.Query(L8))


def test_land_and_sea() -> None:
    assert land.is_land(36.7, -1.4, 36.9, -1.2)  # Nairobi
    assert not land.is_land(-141.0, -1.0, -139.0, 1.0)  # mid-Pacific
    pacific = shapely.box(-141.0, -1.0, -139.0, 1.0)
    assert not catalog.search(
        catalog.Query(S2, ms("2022-01-01"), ms("2022-02-01"), (pacific,))
    ).assets
    antarctica = shapely.box(10.0, -72.0, 11.0, -71.0)  # south of Sentinel-2's 56 S
    assert not catalog.search(
        catalog.Query(S2, ms("2022-01-01"), ms("2022-02-01"), (antarctica,))
    ).assets


# --------------------------------------------------------------------------- pixels


def _render_asset(scene: Any, band_ids: list[str], size: float) -> Any:
    """The scene's bands over its whole tile grid at ``size`` metres."""
    image = evaluate(wire_load(scene.id))
    x0, y0 = scene.bands[0].transform[2], scene.bands[0].transform[5]
    side = round(scene.bands[0].dimensions[0] * scene.bands[0].transform[0] / size)
    return image.render(scene.bands[0].crs, (size, 0, x0, 0, -size, y0), side, side, band_ids)


def wire_load(asset_id: str) -> dict[str, Any]:
    """The expression of ``ee.Image(asset_id)`` as the client sends it."""
    return {
        "result": "0",
        "values": {
            "0": {
                "functionInvocationValue": {
                    "functionName": "Image.load",
                    "arguments": {"id": {"constantValue": asset_id}},
                }
            }
        },
    }


@pytest.mark.slow
def test_sentinel2_cloud_masks_agree_with_the_cloud_properties() -> None:
    found = catalog.search(
        catalog.Query(S2, ms("2022-01-01"), ms("2022-03-01")).placed(
            "MGRS_TILE", ["50SPA", "33UUP", "36MYD"]
        )
    )
    checked = 0
    for scene in found.assets:
        props = scene.properties
        if props["NODATA_PIXEL_PERCENTAGE"] > 0:
            continue
        out = _render_asset(scene, ["QA60", "SCL", "MSK_CLDPRB"], 250.0)
        qa, scl, prob = out.data
        assert set(np.unique(qa)) <= {0, 1024, 2048}
        cloudy = qa != 0
        assert abs(cloudy.mean() * 100 - props["CLOUDY_PIXEL_PERCENTAGE"]) < 2.5, props
        if props["CLOUDY_PIXEL_PERCENTAGE"] > 5:
            share = (qa == 2048).sum() / cloudy.sum()
            want = props["THIN_CIRRUS_PERCENTAGE"] / props["CLOUDY_PIXEL_PERCENTAGE"]
            assert abs(share - want) < 0.1
        assert np.isin(scl[qa == 1024], [8, 9]).all()
        assert (scl[qa == 2048] == 10).all()
        assert not np.isin(scl[~cloudy], [8, 9, 10]).any()
        assert (prob[qa == 1024] >= 70).all() and (prob[~cloudy] < 10).all()
        checked += 1
    assert checked >= 10


def test_landsat_qa_pixel_and_reflectances() -> None:
    scene = catalog.find_image(f"{L8}/LC08_044034_20201028")
    assert scene is not None
    out = _render_asset(scene, ["SR_B4", "SR_B5", "QA_PIXEL"], 240.0)
    red, nir, qa = out.data
    valid = out.valid[0]
    assert 0.5 < valid.mean() < 0.95  # the tilted footprint inside its north-up grid
    qa = qa[valid]
    assert set(np.unique(qa)) <= {21824, 21952, 22280, 54596, 23888, 30048}
    cloudy = (qa & 0b1100) != 0
    assert abs(cloudy.mean() * 100 - scene.properties["CLOUD_COVER"]) < 4
    clear_land = qa == 21824
    reflectance = red[valid][clear_land] * 2.75e-05 - 0.2
    assert 0.0 < np.median(reflectance) < 0.3
    assert np.median(nir[valid][clear_land]) > np.median(red[valid][clear_land])


def test_dems_and_land_cover_see_the_sea(ee: Any) -> None:
    # Off Lisbon: the coarse coastline runs through this box.
    step = 1 / 1200
    grid = ("EPSG:4326", (step, 0, -9.2, 0, -step, 39.0), 480, 360)
    srtm = evaluate(wire(ee.Image("USGS/SRTMGL1_003"))).render(*grid)
    sea = ~srtm.valid[0]
    assert 0.1 < sea.mean() < 0.9
    assert srtm.data[0][~sea].min() > 0 and srtm.data[0].dtype == np.int16
    cover = evaluate(wire(ee.Image("ESA/WorldCover/v200/2021"))).render(*grid).data[0]
    assert (cover[sea] == 80).all()
    glo = evaluate(
        wire(
            ee.ImageCollection("COPERNICUS/DEM/GLO30")
            .filterBounds(ee.Geometry.Rectangle([-9.2, 38.7, -8.8, 39.0]))
            .mosaic()
        )
    )
    tiles = glo.render(*grid, band_ids=["DEM", "WBM"])
    (dem, wbm), covered = tiles.data, tiles.valid[0]
    assert (covered & sea).any() and not covered.all()  # no GLO-30 tile over open sea
    assert (wbm[covered & sea] == 1).all() and (dem[covered & sea] == 0).all()
    assert (wbm[~sea] != 1).all() and covered[~sea].all()
    # Beyond SRTM's 60 N the image is masked; WorldCover goes on to 84 N.
    north = ("EPSG:4326", (step, 0, 25.0, 0, -step, 66.0), 50, 50)
    assert not evaluate(wire(ee.Image("USGS/SRTMGL1_003"))).render(*north).valid[0].any()
    assert evaluate(wire(ee.Image("ESA/WorldCover/v200/2021"))).render(*north).valid[0].all()


@pytest.mark.slow
def test_renders_are_the_same_every_time_and_by_strips(
    ee: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _huainan_composite(ee)
    grid = ("EPSG:4326", (8.983152841195214e-05, 0, 116.9, 0, -8.983152841195214e-05, 32.6))
    first = evaluate(wire(image)).render(*grid, 200, 150)
    monkeypatch.setattr(model, "STRIP_BYTES", 50_000)  # a few rows per strip
    again = evaluate(wire(image)).render(*grid, 200, 150)
    assert any(v.any() for v in first.valid)
    for a, b, va, vb in zip(first.data, again.data, first.valid, again.valid, strict=True):
        assert np.array_equal(a, b) and np.array_equal(va, vb)


# --------------------------------------------------------------------------- exactness


def _mask_s2(img: Any) -> Any:
    qa = img.select("QA60")
    clear = qa.bitwiseAnd(1 << 10).eq(0).And(qa.bitwiseAnd(1 << 11).eq(0))
    return img.updateMask(clear).divide(10000)


def _mask_landsat(img: Any) -> Any:
    clear = img.select("QA_PIXEL").bitwiseAnd(0b11111).eq(0)
    optical = img.select("SR_B.").multiply(0.0000275).add(-0.2)
    return img.addBands(optical, None, True).updateMask(clear)


def _huainan_composite(ee: Any) -> Any:
    region = ee.Geometry.Rectangle([116.35, 31.90, 117.20, 33.00])
    return (
        ee.ImageCollection(S2)
        .filterDate("2022-01-01", "2022-12-31")
        .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10))
        .filterBounds(region)
        .map(_mask_s2)
        .select("B[1-8]")
        .median()
        .clip(region)
    )


def _landsat_median(ee: Any, region: Any | None) -> Any:
    collection = ee.ImageCollection(L8).filterDate("2022-01-01", "2023-01-01")
    if region is not None:
        collection = collection.filterBounds(region)
    return collection.map(_mask_landsat).select("SR_B[2-5]").median()


def _windows(width: int, height: int, tw: int, th: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, height, th):
        for c in range(0, width, tw):
            yield r, c, min(th, height - r), min(tw, width - c)


def _render_download(image: Any, crs: str, transform: list[float], w: int, h: int) -> Any:
    img = evaluate(download_expression(image, crs=crs, crs_transform=transform, dimensions=[w, h]))
    assert isinstance(img, Image)
    grid = img.bounded_grid()
    assert grid is not None and (grid.width, grid.height) == (w, h)
    return img.render(grid.crs, grid.transform, grid.width, grid.height)


def _assert_tiles_equal_whole(
    image: Any, crs: str, transform: list[float], size: tuple[int, int], tile: tuple[int, int]
) -> Any:
    whole = _render_download(image, crs, transform, *size)
    a, _, c, _, e, f = transform
    windows = list(_windows(*size, *tile))
    for r, col, h, w in windows[:: max(1, len(windows) // 6)] + windows[-1:]:
        part = _render_download(image, crs, [a, 0.0, c + col * a, 0.0, e, f + r * e], w, h)
        for name, d_all, v_all, d, v in zip(
            whole.band_ids, whole.data, whole.valid, part.data, part.valid, strict=True
        ):
            assert np.array_equal(d, d_all[r : r + h, col : col + w]), name
            assert np.array_equal(v, v_all[r : r + h, col : col + w]), name
    return whole


DEG_30M = 30 / 111319.49079327357


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "crs", "transform", "tile"),
    [
        # Landsat 8 median near Cordoba, Argentina, in its UTM zone (footprint edges inside)
        ("landsat", "EPSG:32620", [60.0, 0.0, 360000.0, 0.0, -60.0, -3440000.0], (70, 45)),
        # SRTM over the coast off Lisbon, where the sea mask cuts through the grid
        ("srtm", "EPSG:4326", [DEG_30M, 0.0, -8.89, 0.0, -DEG_30M, 38.80], (61, 37)),
        # WorldCover around Nairobi in Web Mercator (another projected CRS)
        ("worldcover", "EPSG:3857", [30.0, 0.0, 4095000.0, 0.0, -30.0, -138000.0], (64, 50)),
        # GLO-30 tiles across the 1-degree seam at 117 E, 32 N
        ("glo30", "EPSG:4326", [DEG_30M, 0.0, 116.95, 0.0, -DEG_30M, 32.05], (53, 41)),
        # One Sentinel-2 scene whose footprint the swath edge cuts, with its QA bands
        ("s2scene", "EPSG:4326", [DEG_30M * 2, 0.0, 116.98, 0.0, -DEG_30M * 2, 32.45], (47, 29)),
        # The tutorial's Huainan composite in EPSG:4326 at 10 m, around a tile overlap
        ("huainan", "EPSG:4326", [DEG_30M / 3, 0.0, 117.05, 0.0, -DEG_30M / 3, 32.47], (97, 61)),
    ],
)
def test_tiles_equal_window_of_whole_for_world_datasets(
    ee: Any, case: str, crs: str, transform: list[float], tile: tuple[int, int]
) -> None:
    cordoba = ee.Geometry.Rectangle([-64.4, -31.6, -64.0, -31.2])
    images = {
        "landsat": lambda: _landsat_median(ee, cordoba),
        "srtm": lambda: ee.Image("USGS/SRTMGL1_003"),
        "worldcover": lambda: ee.Image("ESA/WorldCover/v200/2021"),
        "glo30": lambda: (
            ee.ImageCollection("COPERNICUS/DEM/GLO30")
            .filterBounds(ee.Geometry.Rectangle([116.9, 31.9, 117.1, 32.1]))
            .mosaic()
        ),
        "s2scene": lambda: (
            ee.ImageCollection(S2)
            .filterDate("2022-03-01", "2022-03-06")
            .filter(ee.Filter.eq("MGRS_TILE", "50SMA"))
            .filter(ee.Filter.eq("SENSING_ORBIT_NUMBER", 132))
            .first()
            .select(["B8A", "QA60", "SCL", "MSK_CLDPRB"])
        ),
        "huainan": lambda: _huainan_composite(ee),
    }
    whole = _assert_tiles_equal_whole(images[case](), crs, transform, (300, 200), tile)
    assert any(v.any() for v in whole.valid)
    assert any(np.unique(d[v]).size > 1 for d, v in zip(whole.data, whole.valid, strict=True))
    if case in ("srtm", "s2scene"):
        assert any((~v).any() for v in whole.valid)  # a mask edge runs through the grid


def test_a_composite_without_filter_bounds_is_the_bounded_one(ee: Any) -> None:
    """Unbounded, each request generates the scenes that meet it: the same pixels."""
    transform = [60.0, 0.0, 360000.0, 0.0, -60.0, -3440000.0]
    region = ee.Geometry.Rectangle([-64.4, -31.6, -64.0, -31.2])
    bounded = _render_download(_landsat_median(ee, region), "EPSG:32620", transform, 120, 90)
    lazy = _render_download(_landsat_median(ee, None), "EPSG:32620", transform, 120, 90)
    for a, b, va, vb in zip(bounded.data, lazy.data, bounded.valid, lazy.valid, strict=True):
        assert np.array_equal(va, vb) and np.array_equal(a, b)
    assert any(v.any() for v in lazy.valid)
    with pytest.raises(EvaluationError, match="filterBounds"):
        unmasked = ee.ImageCollection(L8).filterDate("2022-01-01", "2022-02-01")
        evaluate(wire(unmasked.map(lambda i: i.unmask(0)).median()))
