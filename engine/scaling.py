"""``scale_offset``: physical values (reflectance, kelvin) instead of the stored integers.

geedim's ``scale_offset`` multiplies each band by its scale and adds its offset, taking both
from Earth Engine's STAC catalog. That catalog lives on a Google storage host that eefetch
does not otherwise need (and that the emulator does not serve), so eefetch reads them where
the image carries them, and knows the few catalog values the images do not carry:

- **Image properties**: Landsat Collection 2 Level-2 images carry their factors as properties,
  ``REFLECTANCE_MULT_BAND_n`` / ``REFLECTANCE_ADD_BAND_n`` for ``SR_Bn`` and
  ``TEMPERATURE_MULT_BAND_ST_B10`` / ``TEMPERATURE_ADD_BAND_ST_B10`` for ``ST_B10``.
- **Catalog values** (EE's catalog pages): Sentinel-2 L1C and L2A (``COPERNICUS/S2*``) store
  reflectance x 10000 (scale 0.0001 for ``B1``..``B12`` and ``B8A``) and ``AOT``, ``WVP``
  x 1000; recognised by the image's ``system:id``.

Bands without a known factor keep theirs (scale 1, offset 0, e.g. QA bands). The factors are
applied in Earth Engine, so they are part of the job's expression (and its fingerprint), and
the output is float32 unless float64 is asked for. A computed image (a composite) has lost
its properties: if no band has a factor, the job is refused rather than silently unscaled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import ee

from engine.errors import InvalidJob

_SENTINEL2 = re.compile(r"^COPERNICUS/S2(_SR)?(_HARMONIZED)?/")
_S2_REFLECTANCE = re.compile(r"^B(1[0-2]|[1-9]|8A)$")
_LANDSAT_SR = re.compile(r"^SR_B(\d+)$")


def band_factors(
    band_ids: Sequence[str], properties: Mapping[str, Any]
) -> dict[str, tuple[float, float]]:
    """(scale, offset) of each band that has a known factor other than (1, 0). Pure."""
    image_id = str(properties.get("system:id") or "")
    found: dict[str, tuple[float, float]] = {}
    for band in band_ids:
        factor = _from_properties(band, properties) or _from_catalog(band, image_id)
        if factor is not None and factor != (1.0, 0.0):
            found[band] = factor
    return found


def _from_properties(band: str, properties: Mapping[str, Any]) -> tuple[float, float] | None:
    landsat = _LANDSAT_SR.fullmatch(band)
    if landsat:
        keys = (f"REFLECTANCE_MULT_BAND_{landsat[1]}", f"REFLECTANCE_ADD_BAND_{landsat[1]}")
    else:
        keys = (f"TEMPERATURE_MULT_BAND_{band}", f"TEMPERATURE_ADD_BAND_{band}")
    scale, offset = (_number(properties.get(k)) for k in keys)
    if scale is None and offset is None:
        return None
    return (1.0 if scale is None else scale, 0.0 if offset is None else offset)


def _from_catalog(band: str, image_id: str) -> tuple[float, float] | None:
    if _SENTINEL2.match(image_id):
        if _S2_REFLECTANCE.fullmatch(band):
            return (0.0001, 0.0)
        if band in ("AOT", "WVP"):
            return (0.001, 0.0)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def apply_factors(
    image: ee.Image, band_ids: Sequence[str], factors: Mapping[str, tuple[float, float]]
) -> ee.Image:
    """``image``'s bands times their scale plus their offset, computed in Earth Engine."""
    if not factors:
        names = ", ".join(band_ids[:4]) + (" ..." if len(band_ids) > 4 else "")
        raise InvalidJob(
            f"scale_offset: no scale or offset is known for band(s) {names} (the image's "
            "properties have none, as for a composite); apply them in Earth Engine "
            "(image.multiply(...).add(...)), or drop scale_offset"
        )
    scales = [factors.get(b, (1.0, 0.0))[0] for b in band_ids]
    offsets = [factors.get(b, (1.0, 0.0))[1] for b in band_ids]
    selected = image.select(list(band_ids))
    scaled: ee.Image = selected.multiply(ee.Image.constant(scales)).add(ee.Image.constant(offsets))
    return scaled
