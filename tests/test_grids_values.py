"""Grids and values (issue 15, part 2): --like, a nodata that does not eat valid zeros, the EE
mask as a GDAL mask, scale and offset, image properties as tags, valid COGs, a compressed size
estimate, and workload tags, each through the Python API or the command line and the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import ee
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

from engine import api, ee_adapter
from engine.cli import main
from engine.ee_adapter import BandInfo
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import InvalidJob
from engine.like import grid_of
from engine.metadata import collection_of
from engine.nodata import choose_nodata
from engine.scaling import band_factors
from engine.testing.jobs import SMALL_REGION, download_dem, job_spec, state_of
from engine.testing.oracle import oracle_render

COAST = "121.80,30.80,122.10,31.00"  # land and sea east of Shanghai: SRTM is masked at sea
LANDSAT = "LANDSAT/LC08/C02/T1_L2"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=3)) as running:
        yield running


def connect(emulator: EmulatorThread) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))


def coast_dem(emulator: EmulatorThread, output: Path, **options: object) -> Path:
    return download_dem(emulator.url, output, region=COAST, crs="EPSG:32651", scale=90, **options)


def landsat_scene(emulator: EmulatorThread) -> ee.Image:
    connect(emulator)
    point = ee.Geometry.Point(118.75, 32.03)
    scenes = ee.ImageCollection(LANDSAT).filterDate("2022-01-01", "2022-03-01").filterBounds(point)
    return ee.Image(scenes.first())


# ------------------------------------------------------------------------------- --like


def write_template(path: Path, crs: str, transform: Affine, width: int, height: int) -> Path:
    """A GeoTIFF made by GDAL directly (through rasterio), not by eefetch: a grid whose origin
    is not on Earth Engine's lattice for its pixel size."""
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
        crs=crs, transform=transform,
    ) as dataset:  # fmt: skip
        dataset.write(np.zeros((1, height, width), dtype="uint8"))
    return path


def test_like_takes_the_grid_of_a_raster_another_tool_made(
    tmp_path: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    transform = Affine(25.0, 0.0, 660_007.0, 0.0, -25.0, 3_549_013.0)
    template = write_template(tmp_path / "template.tif", "EPSG:32650", transform, 173, 119)
    vrt = tmp_path / "template.vrt"  # any raster GDAL opens: a VRT of it
    rasterio.shutil.copy(template, vrt, driver="VRT")
    assert grid_of(vrt) == grid_of(template)
    output = tmp_path / "aligned.tif"
    result = CliRunner().invoke(
        main,
        ["download", "--asset", "USGS/SRTMGL1_003", "--like", str(vrt), "-o", str(output),
         "--ee-url", emulator.url, "--max-tile-bytes", "30000", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with rasterio.open(output) as made, rasterio.open(template) as like:
        assert (made.crs, made.transform, made.shape) == (like.crs, like.transform, like.shape)
        pixels = made.read()
    np.testing.assert_array_equal(pixels, oracle_render(oracle, job_spec(state_of(output))))


def test_like_refuses_a_grid_given_twice_and_a_file_without_one(tmp_path: Path) -> None:
    template = write_template(
        tmp_path / "t.tif", "EPSG:4326", Affine(0.001, 0, 118, 0, -0.001, 32), 10, 10
    )
    with pytest.raises(InvalidJob, match=r"--like takes the grid from .*drop --crs, --scale"):
        api.download_ee_image(
            ee.Image("USGS/SRTMGL1_003"), tmp_path / "x.tif", crs="EPSG:4326", scale=30,
            like=template,
        )  # fmt: skip
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as d:
        d.write(np.zeros((1, 4, 4), dtype="uint8"))
    with pytest.raises(InvalidJob, match="no coordinate reference system"):
        grid_of(plain)
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(InvalidJob, match="cannot read it as a raster"):
        grid_of(tmp_path / "text.tif")


# ------------------------------------------------------------------------------- nodata


def band(high: float | None, dtype: str = "uint8") -> BandInfo:
    return BandInfo("b", dtype, None, None, None, 0.0, high)


def test_the_default_nodata_of_unsigned_types_is_their_maximum_and_plan_says_why() -> None:
    assert choose_nodata("uint8", [band(100)], None) == (
        255,
        "uint8's maximum, outside every band's valid range",
    )
    value, note = choose_nodata("uint16", [band(65535, "uint16")], None)
    assert value == 65535 and "b may hold 65535 too" in note and "--mask-band" in note
    assert choose_nodata("int16", [band(None, "int16")], None)[0] == -32768
    assert choose_nodata("uint8", [band(100)], 0) == (0, "chosen (--nodata / unmask_value)")


def test_valid_zeros_stay_data_and_masked_pixels_take_255(
    tmp_path: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    """geemap PR #1977: a uint8 image with valid zeros and masked pixels (land above 20 m is
    1, below 0, the sea masked); EE declares the comparison's range 0..1."""
    connect(emulator)
    image = ee.Image("USGS/SRTMGL1_003").gt(20)
    report = api.plan(image, tmp_path / "x.tif", region=COAST, crs="EPSG:32651", scale=90,
                      ee_url=emulator.url)  # fmt: skip
    assert report.nodata == 255 and "outside every band's valid range" in report.nodata_note
    assert "nodata:   255 (uint8's maximum" in report.text()
    result = api.download_ee_image(
        image, tmp_path / "land.tif", region=COAST, crs="EPSG:32651", scale=90,
        ee_url=emulator.url, quiet=True,
    )  # fmt: skip
    with rasterio.open(result.output) as made:
        values = made.read(1)
        assert made.nodata == 255
    zeros, masked = (values == 0).sum(), (values == 255).sum()
    assert zeros > 0 and masked > 0 and (values == 1).sum() > 0
    np.testing.assert_array_equal(
        values, oracle_render(oracle, job_spec(state_of(result.output)))[0]
    )


# ------------------------------------------------------------------------------- --mask-band


@pytest.mark.slow
def test_mask_band_writes_ees_mask_as_the_geotiffs_mask_and_a_valid_cog(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    with_nodata = coast_dem(emulator, tmp_path / "nodata.tif")
    masked = coast_dem(emulator, tmp_path / "masked.tif", mask_band=True, cog=True)
    with rasterio.open(with_nodata) as plain, rasterio.open(masked) as made:
        sea = plain.read(1) == plain.nodata
        assert made.count == 1 and made.nodata is None
        assert made.mask_flag_enums == ([rasterio.enums.MaskFlags.per_dataset],)
        np.testing.assert_array_equal(made.read_masks(1) == 0, sea)
        assert 0 < sea.sum() < sea.size
        np.testing.assert_array_equal(made.read(1)[~sea], plain.read(1)[~sea])
        assert made.descriptions == ("elevation",)
    valid, errors, _ = cog_validate(str(masked))
    assert valid and not errors


def test_mask_band_refuses_a_nodata_value_and_zarr(tmp_path: Path) -> None:
    image = ee.Image.constant(1)
    with pytest.raises(InvalidJob, match="drop --nodata"):
        api.download_ee_image(image, tmp_path / "x.tif", mask_band=True, unmask_value=0)
    with pytest.raises(InvalidJob, match="drop --mask-band"):
        api.download_ee_image(image, tmp_path / "x.zarr", mask_band=True)


# ------------------------------------------------------------------------------- scale_offset


def test_scale_offset_gives_physical_values_as_float32(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    scene = landsat_scene(emulator)
    common = dict(region=SMALL_REGION, crs="EPSG:32650", scale=30, ee_url=emulator.url,
                  quiet=True, bands=["SR_B4", "ST_B10", "QA_PIXEL"])  # fmt: skip
    scaled = api.download_ee_image(scene, tmp_path / "scaled.tif", scale_offset=True, **common)
    raw = api.download_ee_image(scene, tmp_path / "raw.tif", **common)
    with rasterio.open(scaled.output) as made, rasterio.open(raw.output) as stored:
        physical, digital = made.read(), stored.read()
        assert made.dtypes == ("float32",) * 3 and stored.dtypes == ("uint16",) * 3
        valid = digital[0] != stored.nodata
        tags = made.tags()
    np.testing.assert_allclose(physical[0][valid], digital[0][valid] * 2.75e-05 - 0.2, rtol=1e-6)
    np.testing.assert_allclose(
        physical[1][valid], digital[1][valid] * 0.00341802 + 149.0, rtol=1e-6
    )
    np.testing.assert_array_equal(physical[2][valid], digital[2][valid])  # QA has no factor
    assert 0.0 < float(np.median(physical[0][valid])) < 1.0
    assert json.loads(tags["EEFETCH_SCALE_OFFSET"]) == {
        "SR_B4": [2.75e-05, -0.2],
        "ST_B10": [0.00341802, 149.0],
    }


def test_scale_offset_factors_and_refusals() -> None:
    s2 = {"system:id": "COPERNICUS/S2_SR_HARMONIZED/20220312T025204_20220312T025325_T50SPA"}
    assert band_factors(["B4", "B8A", "AOT", "SCL"], s2) == {
        "B4": (0.0001, 0.0),
        "B8A": (0.0001, 0.0),
        "AOT": (0.001, 0.0),
    }
    assert band_factors(["B4"], {}) == {}
    with pytest.raises(InvalidJob, match="scale_offset gives fractional values"):
        api.download_ee_image(ee.Image.constant(1), "x.tif", scale_offset=True, dtype="uint16")


def test_a_composite_without_factors_is_refused_before_any_tile(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    connect(emulator)
    composite = (
        ee.ImageCollection(LANDSAT)
        .filterDate("2022-01-01", "2022-03-01")
        .filterBounds(ee.Geometry.Point(118.75, 32.03))
        .median()
    )
    with pytest.raises(InvalidJob, match="no scale or offset is known"):
        api.download_ee_image(composite, tmp_path / "c.tif", region=SMALL_REGION,
                              crs="EPSG:32650", scale=30, ee_url=emulator.url,
                              scale_offset=True, bands=["SR_B4"])  # fmt: skip
    assert not (tmp_path / "c.tif.eefetch.db").exists()


# ------------------------------------------------------------------------------- metadata


def test_image_properties_and_the_jobs_identity_are_geotiff_tags(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    scene = landsat_scene(emulator)
    info = ee_adapter.describe_image(scene)
    result = api.download_ee_image(scene, tmp_path / "scene.tif", region=SMALL_REGION,
                                   crs="EPSG:32650", scale=30, ee_url=emulator.url, quiet=True,
                                   bands=["SR_B3", "SR_B2"])  # fmt: skip
    with rasterio.open(result.output) as made:
        tags, descriptions = made.tags(), made.descriptions
    spec = job_spec(state_of(result.output))
    assert descriptions == ("SR_B3", "SR_B2")
    assert tags["system_time_start"] == str(info.properties["system:time_start"])
    assert float(tags["CLOUD_COVER"]) == info.properties["CLOUD_COVER"]
    assert tags["EE_COLLECTION"] == LANDSAT
    assert tags["EEFETCH_FINGERPRINT"] == spec.fingerprint()
    assert len(tags["EEFETCH_EXPRESSION_SHA256"]) == 64
    assert collection_of({"system:id": "USGS/SRTMGL1_003"}) is None
    assert collection_of({"system:id": "projects/p/assets/img"}) is None


# ------------------------------------------------------------------------------- COG


def test_a_cog_passes_rio_cogeo_validate(tmp_path: Path, emulator: EmulatorThread) -> None:
    connect(emulator)
    result = api.download_ee_image(
        ee.Image("USGS/SRTMGL1_003"), tmp_path / "cog.tif", region=COAST, crs="EPSG:32651",
        scale=30, ee_url=emulator.url, cog=True, quiet=True,
    )  # fmt: skip
    output = result.output
    valid, errors, warnings = cog_validate(str(output))
    assert valid and not errors, (errors, warnings)
    with rasterio.open(output) as made:
        assert made.overviews(1) and made.tags()["EEFETCH_FINGERPRINT"]


# ------------------------------------------------------------------------------- plan


@pytest.mark.slow
def test_plan_estimates_the_compressed_size_from_a_sample_tile(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    emulator.reset_stats()
    args = ["plan", "--asset", "USGS/SRTMGL1_003", "--region", COAST, "--crs", "EPSG:32651",
            "--scale", "90", "--max-tile-bytes", "120000", "--json", "--ee-url", emulator.url,
            "-o", str(tmp_path / "dem.tif")]  # fmt: skip
    planned = CliRunner().invoke(main, args)
    assert planned.exit_code == 0, planned.output
    report = json.loads(planned.stdout)
    assert report["nodata"] == -32768 and report["nodata_note"] == "int16's lowest value"
    assert report["compressed_bytes"] < report["raw_bytes"]
    assert "sample tile compressed to" in report["compression_note"]
    assert emulator.stats()["requests"]["getPixels"] == {"200": 1}  # the sample, nothing else
    output = coast_dem(emulator, tmp_path / "dem.tif")
    actual = output.stat().st_size
    assert 0.5 < report["compressed_bytes"] / actual < 2.0, (report["compressed_bytes"], actual)
    zarr_plan = CliRunner().invoke(main, [*args[:-2], "-o", str(tmp_path / "dem.zarr")])
    assert json.loads(zarr_plan.stdout)["output_format"] == "zarr"


# ------------------------------------------------------------------------------- workload tag


@pytest.mark.slow
def test_the_workload_tag_reaches_earth_engine_and_the_state_not_the_fingerprint(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    emulator.reset_stats()
    tagged = coast_dem(emulator, tmp_path / "tagged.tif", workload_tag="city-2022",
                       endpoint="compute")  # fmt: skip
    seen = emulator.stats()["workload_tags"]
    assert seen["value:compute city-2022"] >= 1 and seen["computePixels city-2022"] >= 1
    assert ee_adapter.workload_tag_now() == ""  # the caller's tag (none) is back
    spec = job_spec(state_of(tagged))
    assert spec.extra["workload_tag"] == "city-2022"
    untagged = job_spec(state_of(coast_dem(emulator, tmp_path / "untagged.tif")))
    assert spec.fingerprint() != untagged.fingerprint()  # another output, of course
    same = replace(spec, extra={k: v for k, v in spec.extra.items() if k != "workload_tag"})
    assert same.fingerprint() == spec.fingerprint()
    emulator.reset_stats()
    command = CliRunner().invoke(
        main,
        ["download", "--asset", "USGS/SRTMGL1_003", "--region", COAST, "--crs", "EPSG:32651",
         "--scale", "90", "-o", str(tmp_path / "cli.tif"), "--ee-url", emulator.url,
         "--workload-tag", "city-cli", "--quiet"],
    )  # fmt: skip
    assert command.exit_code == 0, command.output
    assert emulator.stats()["workload_tags"]["thumbnails:create city-cli"] >= 1
    with pytest.raises(InvalidJob, match="workload tag 'City 2022'"):
        api.download_ee_image(ee.Image.constant(1), "x.tif", workload_tag="City 2022")
