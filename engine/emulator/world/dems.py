"""The static global datasets: SRTM, Copernicus GLO-30 tiles and ESA WorldCover.

SRTM (``USGS/SRTMGL1_003``) and WorldCover 2021 (``ESA/WorldCover/v200/2021``) are single
global images. Copernicus GLO-30 is, as in EE, an image collection of 1 x 1 degree tiles over
land, named like the DGED files (``Copernicus_DSM_COG_10_N31_00_E116_00_DEM``), one arc-second
apart in latitude and 1, 1.5, 2, 3, 5 or 10 arc-seconds in longitude by latitude zone
(as the product handbook specifies), the grid's first pixel centred on the tile's north-west
corner.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from engine.emulator.world import land
from engine.emulator.world.assets import Asset, BandSpec, millis, ring_geojson

SRTM_ID = "USGS/SRTMGL1_003"
SRTM_SOUTH, SRTM_NORTH = -56.0, 60.0
GLO30_COLLECTION = "COPERNICUS/DEM/GLO30"
WORLDCOVER_COLLECTION = "ESA/WorldCover/v200"
WORLDCOVER_ID = "ESA/WorldCover/v200/2021"
WORLDCOVER_SOUTH, WORLDCOVER_NORTH = -60.0, 84.0
ARC_SECOND = 1 / 3600
_GLO30_NAME = re.compile(r"^Copernicus_DSM_COG_10_([NS])(\d\d)_00_([EW])(\d\d\d)_00_DEM$")
GLO30_BANDS: tuple[tuple[str, str], ...] = (
    ("DEM", "float32"),
    ("EDM", "uint8"),
    ("FLM", "uint8"),
    ("HEM", "float32"),
    ("WBM", "uint8"),
)


def srtm() -> Asset:
    """The global SRTM image (int16 metres; masked at sea and outside 56 S - 60 N)."""
    band = BandSpec(
        "elevation",
        "int16",
        "EPSG:4326",
        (ARC_SECOND, 0.0, -180.0 - ARC_SECOND / 2, 0.0, -ARC_SECOND, SRTM_NORTH + ARC_SECOND / 2),
        (1296001, round((SRTM_NORTH - SRTM_SOUTH) * 3600) + 1),
    )
    props = {"system:index": "SRTMGL1_003", "system:time_start": millis(_date(2000, 2, 11))}
    return Asset(SRTM_ID, "srtm", (band,), props, None)


def worldcover() -> Asset:
    """The global WorldCover 2021 map (uint8 class codes 10-100)."""
    step = 1 / 12000
    band = BandSpec(
        "Map",
        "uint8",
        "EPSG:4326",
        (step, 0.0, -180.0, 0.0, -step, WORLDCOVER_NORTH),
        (4320000, round((WORLDCOVER_NORTH - WORLDCOVER_SOUTH) * 12000)),
    )
    props = {
        "system:index": "2021",
        "system:time_start": millis(_date(2021, 1, 1)),
        "system:time_end": millis(_date(2022, 1, 1)),
    }
    return Asset(WORLDCOVER_ID, "worldcover", (band,), props, None)


def _date(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def glo30_lon_step(lat_south: int) -> float:
    """Longitude spacing (degrees) of a GLO-30 tile whose southern edge is ``lat_south``."""
    edge = max(abs(lat_south), abs(lat_south + 1))
    for limit, factor in ((50, 1.0), (60, 1.5), (70, 2.0), (80, 3.0), (85, 5.0)):
        if edge <= limit:
            return factor * ARC_SECOND
    return 10 * ARC_SECOND


def glo30_name(lon0: int, lat0: int) -> str:
    """The tile name of the cell with south-west corner (lon0, lat0)."""
    ns = "N" if lat0 >= 0 else "S"
    ew = "E" if lon0 >= 0 else "W"
    return f"Copernicus_DSM_COG_10_{ns}{abs(lat0):02d}_00_{ew}{abs(lon0):03d}_00_DEM"


def glo30_cell(name: str) -> tuple[int, int] | None:
    """(lon0, lat0) of a tile name, or None."""
    m = _GLO30_NAME.match(name)
    if m is None:
        return None
    lat0 = int(m.group(2)) * (1 if m.group(1) == "N" else -1)
    lon0 = int(m.group(4)) * (1 if m.group(3) == "E" else -1)
    if not -90 <= lat0 < 90 or not -180 <= lon0 < 180:
        return None
    return lon0, lat0


def glo30(lon0: int, lat0: int) -> Asset | None:
    """The GLO-30 tile of a 1 degree cell, or None over open sea."""
    if not land.is_land(lon0, lat0, lon0 + 1, lat0 + 1):
        return None
    name = glo30_name(lon0, lat0)
    dx, dy = glo30_lon_step(lat0), ARC_SECOND
    transform = (dx, 0.0, lon0 - dx / 2, 0.0, -dy, lat0 + 1 + dy / 2)
    dims = (round(1 / dx), 3600)
    bands = tuple(BandSpec(b, t, "EPSG:4326", transform, dims) for b, t in GLO30_BANDS)
    ring = [(lon0, lat0), (lon0 + 1, lat0), (lon0 + 1, lat0 + 1), (lon0, lat0 + 1)]
    footprint = ring_geojson(ring)
    props: dict[str, Any] = {
        "system:index": name,
        "system:time_start": millis(_date(2010, 12, 1)),
        "system:time_end": millis(_date(2015, 1, 31)),
        "system:footprint": {"type": "LinearRing", "coordinates": footprint["coordinates"][0]},
    }
    return Asset(f"{GLO30_COLLECTION}/{name}", "glo30", bands, props, footprint)


def glo30_cells(west: float, south: float, east: float, north: float) -> Iterator[tuple[int, int]]:
    """South-west corners of the 1 degree cells meeting a lon/lat box."""
    for lat0 in range(max(-90, math.floor(south)), min(90, math.ceil(north))):
        for lon0 in range(math.floor(west), math.ceil(east)):
            yield ((lon0 + 180) % 360) - 180, lat0
