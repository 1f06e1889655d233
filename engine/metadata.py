"""What an output says about itself: Earth Engine's image properties and the job's identity.

A GeoTIFF gets them as metadata tags (``gdalinfo`` and ``rasterio``'s ``tags()`` show them), a
Zarr store as attributes (``xarray``'s ``Dataset.attrs``): the image's properties as EE gives
them (``system:time_start``, ``CLOUDY_PIXEL_PERCENTAGE``, ...), the collection the image
belongs to (``EE_COLLECTION``), the job's fingerprint and a hash of the expression, so a file
can be traced back to what made it. GDAL reads ``:`` in a metadata name as the end of the
name, so a GeoTIFF's tag names have ``_`` for it (``system_time_start``). Pure, but for
``recorded_fingerprint``, which reads the job's identity back from a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.spec import JobSpec

FINGERPRINT_KEY = "EEFETCH_FINGERPRINT"
MAX_VALUE_CHARS = 2048
"""Longer values (a footprint's coordinates, say) are left out: a tag is for reading."""
SKIPPED = frozenset({"system:footprint"})


def image_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The properties worth keeping, as JSON values: numbers, strings and short lists."""
    kept: dict[str, Any] = {}
    for key, value in sorted(properties.items()):
        if key in SKIPPED or not isinstance(key, str):
            continue
        if isinstance(value, bool | int | float | str):
            if len(str(value)) <= MAX_VALUE_CHARS:
                kept[key] = value
        elif isinstance(value, list | dict):
            text = json.dumps(value, sort_keys=True)
            if len(text) <= MAX_VALUE_CHARS:
                kept[key] = value
    return kept


def collection_of(properties: Mapping[str, Any]) -> str | None:
    """The collection id of an image of a collection: ``system:id`` without its last part.

    An image's properties do not say whether its parent is a collection or a folder, so
    this guesses from the id's shape: catalog collections have at least two parts
    (``COPERNICUS/S2_SR_HARMONIZED``, ``ESA/WorldCover/v200``), folders of single images one
    (``USGS`` of ``USGS/SRTMGL1_003``); a user's ``projects/P/assets`` is a folder too.
    """
    image_id = properties.get("system:id")
    if not isinstance(image_id, str) or image_id.count("/") < 2:
        return None
    parent = image_id.rsplit("/", 1)[0]
    return None if parent.endswith("/assets") else parent


def expression_hash(expression: str) -> str:
    return hashlib.sha256(expression.encode()).hexdigest()


def output_attributes(spec: JobSpec) -> dict[str, Any]:
    """Everything an output records about itself, as JSON values (a Zarr's attributes)."""
    properties = dict(spec.extra.get("metadata") or {})
    attributes: dict[str, Any] = dict(properties)
    collection = collection_of(properties)
    if collection is not None:
        attributes["EE_COLLECTION"] = collection
    factors = spec.extra.get("scale_offset")
    if factors:
        attributes["EEFETCH_SCALE_OFFSET"] = factors
    attributes[FINGERPRINT_KEY] = spec.fingerprint()
    attributes["EEFETCH_EXPRESSION_SHA256"] = expression_hash(spec.expression)
    return attributes


def output_tags(spec: JobSpec) -> dict[str, str]:
    """The same as GeoTIFF metadata tags (text: strings as they are, the rest as JSON)."""
    return {
        key.replace(":", "_"): value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True)
        for key, value in output_attributes(spec).items()
    }


def recorded_fingerprint(output: Path) -> str | None:
    """The fingerprint an output records of the job that wrote it: a GeoTIFF's tag, a Zarr
    store's attribute; None when it records none or cannot be read."""
    try:
        if output.is_dir():
            root = json.loads((output / "zarr.json").read_text())
            value = root.get("attributes", {}).get(FINGERPRINT_KEY)
        else:
            import rasterio

            with rasterio.open(output) as dataset:
                value = dataset.tags().get(FINGERPRINT_KEY)
    except (OSError, ValueError, AttributeError):  # rasterio's errors are OSErrors
        return None
    return value if isinstance(value, str) else None
