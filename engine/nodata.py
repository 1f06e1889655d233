"""Which value masked pixels take, and why (what ``plan`` shows). Pure.

The default must not collide with valid data. For unsigned types that rules out 0, which is
valid in almost every unsigned band (geemap PR #1977: uint8 nodata 0 turned valid zeros into
holes); eefetch takes the type's maximum instead (``spec.default_nodata``). Earth Engine
declares each band's value range, so the plan can say whether the maximum lies outside every
band's range (no collision possible) or inside one (a saturated value would read as masked;
``--nodata`` or ``--mask-band`` avoid that). Refusing the download in the second case was
considered and rejected: full-range declarations are the rule for raw uint8/uint16 bands
(Sentinel-2's are 0..65535 although reflectance never gets near it), so eefetch would
refuse most downloads of raw bands for a collision that almost never happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from engine.spec import default_nodata, nodata_value

if TYPE_CHECKING:
    from engine.ee_adapter import BandInfo


def choose_nodata(
    dtype: str, bands: Sequence[BandInfo], given: float | None, *, mask_band: bool = False
) -> tuple[int | float, str]:
    """The fill value of masked pixels and one phrase saying why; SpecError for a given value
    ``dtype`` cannot hold."""
    if mask_band:
        return nodata_value(0, dtype), "none: masked pixels read 0 and the GDAL mask marks them"
    if given is not None:
        return nodata_value(given, dtype), "chosen (--nodata / unmask_value)"
    value = default_nodata(dtype)
    kind = np.dtype(dtype).kind
    if kind in "if":
        return value, f"{dtype}'s lowest value"
    reaching = [b.id for b in bands if _may_reach(b, float(value), dtype)]
    if not reaching:
        return value, f"{dtype}'s maximum, outside every band's valid range"
    more = f" and {len(reaching) - 3} more" if len(reaching) > 3 else ""
    names = ", ".join(reaching[:3]) + more
    return value, (
        f"{dtype}'s maximum (not 0, which is valid data); {names} may hold {value} too: if that "
        "value is real data, choose --nodata or --mask-band"
    )


def _may_reach(band: BandInfo, value: float, dtype: str) -> bool:
    """Whether ``band``'s values, cast to ``dtype``, can equal ``value``."""
    if band.high is None or np.dtype(band.dtype).kind == "f":
        return True  # no declared range, or a float cast (and clamped) into the type
    return band.high >= value
