"""The tutorial's Sentinel-2 composite, as a script for `eefetch download --script`.

eefetch initialises Earth Engine before it runs this file (with --ee-url for the offline
emulator, or your own credentials), so the script only builds `image`.
"""

import os
from pathlib import Path

import ee

from engine.region_input import load_region

region_file = Path(
    os.environ.get(
        "EEFETCH_REGION", Path(__file__).parents[1] / "engine" / "data" / "nanjing.geojson"
    )
)
region = ee.Geometry(load_region(region_file))


def mask_clouds(img: ee.Image) -> ee.Image:
    qa = img.select("QA60")
    opaque = qa.bitwiseAnd(1 << 10).eq(0)
    cirrus = qa.bitwiseAnd(1 << 11).eq(0)
    return img.updateMask(opaque.And(cirrus)).divide(10000)


image = (
    ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED")
    .filterDate("2022-01-01", "2022-12-31")
    .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", 10))
    .filterBounds(region)
    .map(mask_clouds)
    .select("B[1-8]")
    .median()
    .clip(region.bounds())
)
