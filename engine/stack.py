"""A collection as one Zarr store with a time dimension: all its images, one job.

Rather than one job per image writing into a shared store (several state files, locks and
journals for one output), the images are stacked in Earth Engine into one image, band
``T_BAND`` for image ``T`` (what ``ImageCollection.toBands`` does, with positions for names),
and downloaded as one ordinary job: one state file, one plan, one journal, resumable tile by
tile like any other. The Zarr writer puts stacked band ``T * bands + b`` at ``[T, b]`` of a
(time, band, y, x) array (``zarr_output.ZarrLayout.place``). Every image is on the job's one
grid (give ``--crs`` and ``--scale``, or a region, as for any composite).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ee

from engine import ee_adapter
from engine.collection import CollectionImage, member
from engine.defaults import ZARR_SUFFIX
from engine.ee_adapter import Connection
from engine.errors import InvalidJob
from engine.metadata import collection_of
from engine.request import DownloadRequest, build_job
from engine.scaling import apply_factors, band_factors
from engine.spec import JobSpec

STACK_NAME = "collection.zarr"
MAX_TIME_PROPERTIES = 64
_PROPERTY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_TAKEN = frozenset({"band", "x", "y", "time", "spatial_ref", "band_data", "image_id"})


def stack_output(out_dir: Path) -> Path:
    """The store a collection goes to: ``OUT_DIR`` itself if it ends in .zarr, else
    ``OUT_DIR/collection.zarr``."""
    return out_dir if out_dir.suffix.lower() == ZARR_SUFFIX else out_dir / STACK_NAME


def stack_job(
    collection: ee.ImageCollection,
    images: Sequence[CollectionImage],
    request: DownloadRequest,
    connection: Connection,
    *,
    concurrency: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobSpec:
    """The job that writes ``images`` of ``collection`` to ``request.output`` as one store.

    Two ``getInfo`` calls (the first image's bands, then the stack's); the images' properties
    come from the listing (``collection.list_images``).
    """
    if not images:
        raise InvalidJob("the collection has no images to stack")
    request.check(concurrency)
    first = ee_adapter.describe_image(member(collection, images[0].index))
    band_ids = ee_adapter.select_bands([b.id for b in first.bands], request.bands)
    stacked: ee.Image | None = None
    for position, image in enumerate(images):
        one = member(collection, image.index).select(band_ids)
        if request.scale_offset:
            factors = band_factors(band_ids, image.properties)
            one = apply_factors(one, band_ids, factors)
        one = one.rename([f"{position}_{band}" for band in band_ids])
        stacked = one if stacked is None else stacked.addBands(one)
    assert stacked is not None
    float_default = "float32" if request.scale_offset else None
    collection_id = collection_of(first.properties)
    extra: dict[str, Any] = {
        "stack": {
            "times": [_time_of(image) for image in images],
            "ids": [image.index for image in images],
            "bands": list(band_ids),
        },
        "metadata": {} if collection_id is None else {"EE_COLLECTION": collection_id},
        "time_properties": time_properties(images),
    }
    if request.scale_offset:
        extra["scale_offset"] = True
    return build_job(
        stacked,
        replace(request, bands=None, scale_offset=False, dtype=request.dtype or float_default),
        connection,
        concurrency=concurrency,
        warn=warn,
        extra=extra,
    )


def _time_of(image: CollectionImage) -> int | None:
    value = image.properties.get("system:time_start")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def time_properties(images: Sequence[CollectionImage]) -> dict[str, list[float]]:
    """Numeric properties every image has (cloud cover, sun elevation, ...): coordinates along
    time, so ``ds.where(ds.CLOUDY_PIXEL_PERCENTAGE < 10)`` works. Pure."""
    names: set[str] | None = None
    for image in images:
        numeric = {k for k, v in image.properties.items() if _numeric(v)}
        names = numeric if names is None else names & numeric
    chosen = sorted(
        n
        for n in names or ()
        if not n.startswith("system:") and _PROPERTY_NAME.fullmatch(n) and n not in _TAKEN
    )[:MAX_TIME_PROPERTIES]
    return {n: [float(image.properties[n]) for image in images] for n in chosen}


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
