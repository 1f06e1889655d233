"""Previews are real pictures of the asked size whose colours follow the stretch."""

from __future__ import annotations

import io
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import ee
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from engine import ee_adapter, imaging, preview
from engine.cli import main
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.quicklook import PreviewError, Stretch, preview_file, preview_image

DEM_REGION = [118.5, 31.8, 119.2, 32.3]
S2_REGION = "118.70,32.00,118.78,32.05"


def read_picture(path: Path) -> np.ndarray:
    """(bands, height, width) of a PNG/JPEG, checked to be one by its signature."""
    body = path.read_bytes()
    assert imaging.picture_format(body) in ("PNG", "JPEG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as picture:
            assert picture.driver in ("PNG", "JPEG")
            return picture.read()


def test_stretch_is_monotonic_and_clipped_at_min_and_max() -> None:
    values = np.linspace(-1, 2, 301)
    levels = imaging.stretch(values, 0.0, 1.0).astype(int)
    assert levels.dtype == np.int_ and np.all(np.diff(levels) >= 0)
    assert np.all(levels[values <= 0] == 0) and np.all(levels[values >= 1] == 255)
    assert levels[np.argmin(abs(values - 0.5))] == 128
    brighter = imaging.stretch(np.array([0.25]), 0.0, 1.0, gamma=2.0)
    assert brighter[0] == round(255 * 0.25**0.5)
    with pytest.raises(ValueError):
        imaging.stretch(values, 1.0, 1.0)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=6)) as running:
        ee_adapter.initialize(ee_adapter.Connection(url=running.url))
        yield running


def sample(image: ee.Image, region: list[float], dimensions: int) -> np.ndarray:
    """The raw values on the grid a thumbnail of these parameters uses (NPY download)."""
    url = image.getDownloadURL({"region": region, "dimensions": dimensions, "format": "NPY"})
    with urllib.request.urlopen(url, timeout=60) as answer:
        array = np.load(io.BytesIO(answer.read()))
    return np.asarray(array[array.dtype.names[0]], dtype=np.float64)


def test_thumbnail_of_an_ee_image_follows_the_stretch(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    dem = ee.Image("USGS/SRTMGL1_003")
    raw = sample(dem, DEM_REGION, 200)
    low, high = np.percentile(raw, [20, 80])
    result = preview_image(
        dem,
        tmp_path / "dem.png",
        region=DEM_REGION,
        stretch=Stretch(min=(float(low),), max=(float(high),)),
        dimensions=200,
    )
    grey = read_picture(result.path)
    assert grey.shape == (1, raw.shape[0], raw.shape[1])
    assert max(result.width, result.height) == 200
    assert (result.width, result.height) == (raw.shape[1], raw.shape[0])
    levels = grey[0].astype(int)
    np.testing.assert_array_equal(levels, imaging.stretch(raw, low, high))
    order = np.argsort(raw, axis=None)
    assert np.all(np.diff(levels.ravel()[order]) >= 0)  # brighter where the data is higher
    assert np.all(levels[raw <= low] == 0) and np.all(levels[raw >= high] == 255)
    assert 0.1 < (levels == 0).mean() < 0.3 and 0.1 < (levels == 255).mean() < 0.3


def test_true_colour_png_and_jpeg_of_the_composite(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    from engine.recipes import Composite, composite
    from engine.region_input import load_region

    region = load_region(S2_REGION)
    image = composite(
        Composite("COPERNICUS/S2_SR_HARMONIZED", "2022-01-01", "2022-12-31", region, 10)
    )
    png = preview(image, tmp_path / "tc.png", region=S2_REGION, min=0, max=0.3, dimensions=120)
    assert png.bands == ("B4", "B3", "B2") and max(png.width, png.height) == 120
    rgb = read_picture(png.path)
    assert rgb.shape[0] in (3, 4) and rgb.shape[1:] == (png.height, png.width)
    assert rgb[:3].std() > 5  # a picture, not a flat colour
    jpeg = preview(image, tmp_path / "tc.jpg", region=S2_REGION, file_format="jpg", dimensions=64)
    assert read_picture(jpeg.path).shape[0] == 3
    assert jpeg.min != (0.0, 0.0, 0.0)  # the 2-98 % stretch of a sample


def test_palette_colours_one_band(tmp_path: Path, emulator: EmulatorThread) -> None:
    result = preview_image(
        ee.Image("USGS/SRTMGL1_003"),
        tmp_path / "red.png",
        region=DEM_REGION,
        stretch=Stretch(min=(0.0,), max=(300.0,), palette=("000000", "ff0000")),
        dimensions=50,
    )
    red, green, blue = read_picture(result.path)[:3]
    assert red.max() > 100 and green.max() == 0 and blue.max() == 0


def test_a_float_image_without_stretch_is_refused_by_ee(emulator: EmulatorThread) -> None:
    image = ee.Image("USGS/SRTMGL1_003").toFloat()
    with pytest.raises(PreviewError, match="visualization parameters"):
        ee_adapter.thumbnail_url(image, {"region": DEM_REGION, "dimensions": 20})


def gradient_tiff(path: Path) -> np.ndarray:
    """A 3-band float GeoTIFF: band 1 rises left to right, nodata in one corner."""
    height, width = 60, 90
    ramp = np.tile(np.linspace(0, 0.5, width, dtype=np.float32), (height, 1))
    data = np.stack([ramp, ramp * 0.5, ramp * 0.25])
    data[:, :10, :10] = -9999
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": Affine(0.001, 0.0, 118.0, 0.0, -0.001, 32.0),
        "nodata": -9999,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        for index, name in enumerate(("B4", "B3", "B2"), start=1):
            dataset.set_band_description(index, name)
    return data


def test_preview_of_a_geotiff_is_decimated_stretched_and_transparent_at_nodata(
    tmp_path: Path,
) -> None:
    source = tmp_path / "scene.tif"
    data = gradient_tiff(source)
    result = preview_file(source, stretch=Stretch(min=(0.0,), max=(0.3,)), dimensions=45)
    assert result.path == tmp_path / "scene.png"
    assert (result.width, result.height) == (45, 30)
    rgba = read_picture(result.path)
    assert rgba.shape == (4, 30, 45)
    assert rgba[3, 0, 0] == 0 and rgba[3, -1, -1] == 255  # nodata is transparent
    red = rgba[0, -1].astype(int)
    assert np.all(np.diff(red) >= 0) and red[-1] == 255  # rises, clipped at max
    expected = imaging.stretch(data[0, -1, 1::2], 0.0, 0.3)  # nearest: every other pixel
    np.testing.assert_array_equal(red, expected)


def test_preview_command_of_a_geotiff(tmp_path: Path) -> None:
    source = tmp_path / "scene.tif"
    gradient_tiff(source)
    out = tmp_path / "look.png"
    result = CliRunner().invoke(
        main,
        ["preview", str(source), "--bands", "B4", "--min", "0", "--max", "0.5", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    grey = read_picture(out)
    assert grey.shape[0] == 2  # grey + alpha (nodata corner)
    wrong = CliRunner().invoke(main, ["preview", str(source), "--bands", "B9"])
    assert wrong.exit_code == 1 and "B9" in wrong.output and wrong.output[-1] == "\n"
    with pytest.raises(PreviewError):
        preview_file(source, stretch=Stretch(bands=("B4", "B3")))


def test_preview_command_from_earth_engine(tmp_path: Path, emulator: EmulatorThread) -> None:
    out = tmp_path / "dem.png"
    result = CliRunner().invoke(
        main,
        [
            "preview",
            "--asset",
            "USGS/SRTMGL1_003",
            "--region",
            ",".join(str(v) for v in DEM_REGION),
            "--dimensions",
            "64",
            "-o",
            str(out),
            "--ee-url",
            emulator.url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert max(read_picture(out).shape[1:]) == 64
