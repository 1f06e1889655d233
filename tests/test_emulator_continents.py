"""The world catalog through the official client, at places the project never named.

One place per inhabited continent: the tutorial's Sentinel-2 composite, a Landsat 8 median,
SRTM and WorldCover must answer ``computePixels`` with valid, varying pixels. This module
initialises the real client against a running emulator (no offline patches).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.recipes import Composite, composite

DEG_30M = 30 / 111319.49079327357
PLACES = {
    "africa-nairobi": (36.82, -1.29),
    "south-america-cordoba": (-64.18, -31.42),
    "north-america-denver": (-104.99, 39.74),
    "europe-krakow": (19.94, 50.06),
    "asia-almaty": (76.95, 43.24),
    "oceania-alice-springs": (133.88, -23.70),
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=3)) as running:
        yield running


@pytest.fixture(scope="module")
def client(emulator: EmulatorThread) -> Iterator[Any]:
    import ee

    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, project="p", url=emulator.url)
    ee.data.setMaxRetries(0)
    yield ee
    ee.Reset()


def _landsat_median(ee: Any, box: list[float]) -> Any:
    def mask(img: Any) -> Any:
        clear = img.select("QA_PIXEL").bitwiseAnd(0b11111).eq(0)
        optical = img.select("SR_B.").multiply(0.0000275).add(-0.2)
        return img.addBands(optical, None, True).updateMask(clear)

    return (
        ee.ImageCollection("LANDSAT/LC08/C02/T1_L2")
        .filterDate("2022-01-01", "2023-01-01")
        .filterBounds(ee.Geometry.Rectangle(box))
        .map(mask)
        .select("SR_B[2-5]")
        .median()
    )


def _pixels(ee: Any, image: Any, lon: float, lat: float) -> np.ndarray:
    size = 40 * DEG_30M
    grid = {
        "dimensions": {"width": 40, "height": 40},
        "affineTransform": {
            "scaleX": DEG_30M,
            "shearX": 0.0,
            "translateX": lon - size / 2,
            "shearY": 0.0,
            "scaleY": -DEG_30M,
            "translateY": lat + size / 2,
        },
        "crsCode": "EPSG:4326",
    }
    array = ee.data.computePixels(
        {"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": grid}
    )
    return np.stack([array[name].astype(np.float64) for name in array.dtype.names])


@pytest.mark.parametrize("place", sorted(PLACES))
def test_every_continent_answers_through_the_official_client(client: Any, place: str) -> None:
    lon, lat = PLACES[place]
    box = [lon - 0.05, lat - 0.05, lon + 0.05, lat + 0.05]
    ring = [
        [box[0], box[1]],
        [box[2], box[1]],
        [box[2], box[3]],
        [box[0], box[3]],
        [box[0], box[1]],
    ]
    tutorial = composite(
        Composite(
            "COPERNICUS/S2_SR_HARMONIZED",
            "2022-01-01",
            "2022-12-31",
            {"type": "Polygon", "coordinates": [ring]},
            max_cloud=10,
            bands=("B[1-8]",),
        )
    )
    images = {
        "s2-composite": tutorial,
        "landsat-8-median": _landsat_median(client, box),
        "srtm": client.Image("USGS/SRTMGL1_003"),
        "worldcover": client.Image("ESA/WorldCover/v200/2021"),
    }
    for name, image in images.items():
        values = _pixels(client, image, lon, lat)
        finite = np.isfinite(values)
        assert finite.mean() > 0.9, (place, name)
        assert all(np.unique(band[np.isfinite(band)]).size > 1 for band in values), (place, name)


@pytest.mark.slow
def test_the_tutorials_huainan_plan_is_the_size_geemap_reported(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """The tutorial: Huainan, 2022, 8 float32 bands at 10 m in EPSG:4326; geemap said 3.71 GB."""
    region = Path(__file__).resolve().parents[1] / "engine" / "data" / "huainan.geojson"
    url = emulator.url
    args = ["composite", "--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10"]
    args += ["--bands", "B[1-8]", "--region", str(region), "--scale", "10", "--crs", "EPSG:4326"]
    args += ["-o", str(tmp_path / "huainan.tif"), "--dry-run", "--ee-url", url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    grid = re.search(r"grid:\s+(\d+) x (\d+) pixels", result.stdout)
    assert grid is not None, result.stdout
    size = int(grid.group(1)) * int(grid.group(2)) * 8 * 4
    assert abs(size - 3.71e9) / 3.71e9 < 0.02
    assert "size:     3.7 GB" in result.stdout
