"""Recipes: the images tutorials build by hand, from a few options.

``composite`` builds the tutorial's expression exactly: filter a collection by date, cloud
cover and region, mask clouds (Sentinel-2's QA60 bits 10 and 11), scale to reflectance,
select bands, reduce per pixel, and clip to the region's bounding box (the tutorial's advice:
a box is cheaper for Earth Engine than an intricate city outline). The result is an ordinary
``ee.Image``; it goes through the same resumable download as any other image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ee

from engine.defaults import CLIPS, CLOUD_MASKS, REDUCERS, SENTINEL2_SCALE
from engine.errors import InvalidJob

CloudMask = Literal["qa60", "none"]
Reducer = Literal["median", "mean", "min", "max", "mosaic"]
Clip = Literal["bounds", "outline", "none"]
QA60_OPAQUE_BIT = 10
QA60_CIRRUS_BIT = 11


@dataclass(frozen=True, slots=True)
class Composite:
    """What ``eefetch composite`` needs to know; defaults follow the Sentinel-2 tutorial."""

    collection: str
    start: str
    end: str
    region: dict[str, Any]  # a GeoJSON geometry (engine.region_input.load_region)
    max_cloud: float | None = None
    cloud_property: str = "CLOUDY_PIXEL_PERCENTAGE"
    cloud_mask: CloudMask = "qa60"
    divide: float | None = SENTINEL2_SCALE
    bands: tuple[str, ...] = ()
    reducer: Reducer = "median"
    clip: Clip = "bounds"

    def check(self) -> None:
        """Refuse options Earth Engine would only reject after a round trip."""
        if self.reducer not in REDUCERS:
            raise InvalidJob(f"unknown reducer {self.reducer!r}; use one of {', '.join(REDUCERS)}")
        if self.cloud_mask not in CLOUD_MASKS:
            raise InvalidJob(
                f"unknown cloud mask {self.cloud_mask!r}; use one of {', '.join(CLOUD_MASKS)}"
            )
        if self.clip not in CLIPS:
            raise InvalidJob(f"unknown clip {self.clip!r}; use one of {', '.join(CLIPS)}")
        if self.divide is not None and self.divide == 0:
            raise InvalidJob("--divide 0 would divide by zero; leave it out to keep raw values")
        if self.start >= self.end:
            raise InvalidJob(
                f"--start {self.start} is not before --end {self.end}; give dates as YYYY-MM-DD"
            )


def mask_qa60(divide: float | None) -> Any:
    """The tutorial's cloud mask: drop pixels flagged opaque (bit 10) or cirrus (bit 11)."""

    def mask_clouds(img: ee.Image) -> ee.Image:
        qa = img.select("QA60")
        opaque = qa.bitwiseAnd(1 << QA60_OPAQUE_BIT).eq(0)
        cirrus = qa.bitwiseAnd(1 << QA60_CIRRUS_BIT).eq(0)
        masked = img.updateMask(opaque.And(cirrus))
        return masked.divide(_number(divide)) if divide is not None else masked

    return mask_clouds


def composite_collection(recipe: Composite) -> ee.ImageCollection:
    """The filtered, masked, band-selected collection before the reduction."""
    recipe.check()
    region = ee.Geometry(recipe.region)
    collection = ee.ImageCollection(recipe.collection).filterDate(recipe.start, recipe.end)
    if recipe.max_cloud is not None:
        collection = collection.filter(ee.Filter.lt(recipe.cloud_property, recipe.max_cloud))
    collection = collection.filterBounds(region)
    if recipe.cloud_mask == "qa60":
        collection = collection.map(mask_qa60(recipe.divide))
    elif recipe.divide is not None:
        divide = _number(recipe.divide)
        collection = collection.map(lambda img: img.divide(divide))
    if recipe.bands:
        collection = collection.select(*_selectors(recipe.bands))
    filtered: ee.ImageCollection = collection
    return filtered


def composite(recipe: Composite) -> ee.Image:
    """The composite ``ee.Image`` (same expression as examples/tutorial_composite.py)."""
    collection = composite_collection(recipe)
    image: ee.Image = getattr(collection, recipe.reducer)()
    region = ee.Geometry(recipe.region)
    if recipe.clip == "bounds":
        image = image.clip(region.bounds())
    elif recipe.clip == "outline":
        image = image.clip(region)
    return image


def _number(value: float) -> float | int:
    """10000, not 10000.0: the expression then matches the tutorial's byte for byte."""
    return int(value) if float(value).is_integer() else float(value)


def _selectors(bands: Sequence[str]) -> list[Any]:
    """One selector as a plain string (as the tutorial writes it), several as a list."""
    return [bands[0]] if len(bands) == 1 else [list(bands)]
