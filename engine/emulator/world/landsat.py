"""Landsat 8 and 9 Collection 2 Level 2 scenes on the WRS-2 grid, generated on demand.

WRS-2 has 233 paths, numbered east to west, path 1 crossing the equator at 64.60 W on the
descending (daytime) pass; rows count 248 per orbit along the track, row 60 on the equator,
so daytime rows run from 1 (about 81 N) to 122 (about 81 S). A scene is about 185 km across
the track and 180 km along it, centred on its nominal path/row centre.

Each satellite repeats every 16 days (233 orbits); consecutive orbits are 16 paths apart, so
path p + 1 is imaged 7 days after path p. The calendar is anchored on a real acquisition,
Landsat 8 over path 44 row 34 on 2014-03-18 (EE's ``LC08_044034_20140318``), with the node
at 10:11 mean local solar time; Landsat 9 flies 8 days behind Landsat 8 and is in the
collection from 2021-10-31, Landsat 8 from 2013-03-18. Scenes exist where their footprint
touches land.

The image grid is the UTM zone of the scene centre, always a northern zone (negative
northings south of the equator, as USGS delivers Collection 2), 30 m pixels whose centres
lie on multiples of 30 m, sized to hold the footprint; pixels outside the footprint are masked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from shapely.geometry import Polygon

from engine.emulator.world import land, mgrs, weather
from engine.emulator.world.assets import ARCHIVE_END, Asset, BandSpec, millis, ring_geojson, utc
from engine.emulator.world.orbit import KM_PER_DEGREE, Orbit, solar_zenith

ORBIT = Orbit(inclination=98.2, period_s=16 * 86400 / 233, swath_km=185.0)
PATHS = 233
ROWS_PER_ORBIT = 248
DAY_ROWS = range(1, 123)
CYCLE_MS = 16 * 86400 * 1000
PATH1_NODE_LON = -64.60
_ANCHOR_PATH = 44
_ANCHOR_DATE = datetime(2014, 3, 18, tzinfo=UTC)
_LTDN_HOURS = 10 + 11 / 60
_HALF_ACROSS_KM = 92.5
_HALF_ALONG_KM = 90.0


@dataclass(frozen=True)
class Mission:
    """One satellite's collection."""

    collection: str
    prefix: str  # LC08 / LC09
    spacecraft: str
    start: datetime
    lag_days: int  # behind Landsat 8's calendar


MISSIONS: dict[str, Mission] = {
    "LANDSAT/LC08/C02/T1_L2": Mission(
        "LANDSAT/LC08/C02/T1_L2", "LC08", "LANDSAT_8", datetime(2013, 3, 18, tzinfo=UTC), 0
    ),
    "LANDSAT/LC09/C02/T1_L2": Mission(
        "LANDSAT/LC09/C02/T1_L2", "LC09", "LANDSAT_9", datetime(2021, 10, 31, tzinfo=UTC), 8
    ),
}

# (band, numpy dtype), in EE's order; every band is 30 m.
BANDS: tuple[tuple[str, str], ...] = (
    ("SR_B1", "uint16"),
    ("SR_B2", "uint16"),
    ("SR_B3", "uint16"),
    ("SR_B4", "uint16"),
    ("SR_B5", "uint16"),
    ("SR_B6", "uint16"),
    ("SR_B7", "uint16"),
    ("SR_QA_AEROSOL", "uint8"),
    ("ST_B10", "uint16"),
    ("ST_ATRAN", "int16"),
    ("ST_CDIST", "int16"),
    ("ST_DRAD", "int16"),
    ("ST_EMIS", "int16"),
    ("ST_EMSD", "int16"),
    ("ST_QA", "int16"),
    ("ST_TRAD", "int16"),
    ("ST_URAD", "int16"),
    ("QA_PIXEL", "uint16"),
    ("QA_RADSAT", "uint16"),
)
SR_SCALE, SR_OFFSET = 2.75e-05, -0.2
ST_SCALE, ST_OFFSET = 0.00341802, 149.0


def node_lon(path: int) -> float:
    """Equator crossing longitude of a path's descending node."""
    lon = PATH1_NODE_LON - (path - 1) * 360.0 / PATHS
    return (lon + 180.0) % 360.0 - 180.0


def row_argument(row: int) -> float:
    """Argument of latitude (degrees) of a row's centre."""
    return 180.0 + (row - 60) * 360.0 / ROWS_PER_ORBIT


@dataclass(frozen=True)
class Scene:
    """A WRS-2 path/row: its centre, footprint and the offset of its time from the node."""

    path: int
    row: int
    lon: float
    lat: float
    dt_s: float
    footprint: tuple[tuple[float, float], ...]

    @property
    def key(self) -> str:
        """``PPPRRR`` as in the scene ids."""
        return f"{self.path:03d}{self.row:03d}"


def scene(path: int, row: int) -> Scene:
    """The nominal geometry of a path/row."""
    u = row_argument(row)
    lat, dlon, dt = ORBIT.at_argument(u)
    lon = (node_lon(path) + dlon + 180.0) % 360.0 - 180.0
    lat1, dlon1, _ = ORBIT.at_argument(u + 0.05)
    east = ((dlon1 - dlon + 180.0) % 360.0 - 180.0) * math.cos(math.radians(lat))
    north = lat1 - lat
    norm = math.hypot(east, north)
    along = (east / norm, north / norm)
    across = (along[1], -along[0])
    corners = []
    for sa, sc in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
        de = sa * _HALF_ALONG_KM * along[0] + sc * _HALF_ACROSS_KM * across[0]
        dn = sa * _HALF_ALONG_KM * along[1] + sc * _HALF_ACROSS_KM * across[1]
        clat = lat + dn / KM_PER_DEGREE
        clon = lon + de / (KM_PER_DEGREE * max(math.cos(math.radians(lat)), 0.05))
        corners.append((clon, clat))
    return Scene(path, row, lon, lat, dt, tuple(corners))


def parse_key(key: str) -> tuple[int, int] | None:
    """(path, row) of ``PPPRRR``, or None."""
    if len(key) != 6 or not key.isdigit():
        return None
    path, row = int(key[:3]), int(key[3:])
    if not 1 <= path <= PATHS or row not in DAY_ROWS:
        return None
    return path, row


def scenes_in(west: float, south: float, east: float, north: float) -> Iterator[Scene]:
    """Daytime path/rows over land that may meet a lon/lat box (callers test footprints)."""
    spacing = 360.0 / PATHS
    for row in DAY_ROWS:
        lat, dlon, _ = ORBIT.at_argument(row_argument(row))
        if lat < south - 1.5 or lat > north + 1.5:
            continue
        cos_lat = max(math.cos(math.radians(lat)), 0.05)
        reach = (_HALF_ACROSS_KM + 60.0) / (KM_PER_DEGREE * cos_lat) / spacing + 1
        span = (east - west) / spacing
        needed = west - dlon
        k0 = (PATH1_NODE_LON - needed) / spacing  # path - 1 for a node right under ``west``
        for k in range(math.floor(k0 - span - reach), math.ceil(k0 + reach) + 1):
            path = k % PATHS + 1
            found = scene(path, row)
            if has_land(found):
                yield found


def has_land(s: Scene) -> bool:
    """Whether a scene's footprint touches land."""
    lons = [x for x, _ in s.footprint]
    lats = [y for _, y in s.footprint]
    west, east = min(lons), max(lons)
    if east - west > 180:
        shifted = [x + 360 if x < 0 else x for x in lons]
        west, east = min(shifted), max(shifted)
    return land.is_land(west, min(lats), east, max(lats))


def times(s: Scene, mission: Mission, start_ms: float, end_ms: float) -> Iterator[float]:
    """Scene centre times (ms) of a path/row in ``[start, end)``."""
    anchor_node = _anchor_node_ms()
    k = (102 * (s.path - _ANCHOR_PATH)) % PATHS  # orbits from path 44 to this path
    first = anchor_node + k * ORBIT.period_s * 1000.0 + s.dt_s * 1000.0
    first += mission.lag_days * 86400 * 1000
    lo = max(start_ms, float(millis(mission.start)))
    end = min(end_ms, float(millis(ARCHIVE_END)))
    n = math.ceil((lo - first) / CYCLE_MS)
    while True:
        t = first + n * CYCLE_MS
        if t >= end:
            return
        if t >= lo:
            yield t
        n += 1


def _anchor_node_ms() -> float:
    """Node time of Landsat 8's pass over path 44 on 2014-03-18 (10:11 local solar time)."""
    hours = _LTDN_HOURS - node_lon(_ANCHOR_PATH) / 15.0
    return float(millis(_ANCHOR_DATE + timedelta(hours=hours)))


def band_specs(s: Scene) -> tuple[BandSpec, ...]:
    """The 30 m grid holding the footprint, in the UTM (north) zone of the scene centre."""
    zone = min(int((s.lon + 180.0) // 6) + 1, 60)
    lons = np.array([x for x, _ in s.footprint])
    lats = np.array([y for _, y in s.footprint])
    lons = mgrs.central_meridian(zone) + ((lons - mgrs.central_meridian(zone) + 180) % 360 - 180)
    xs, ys = mgrs.to_utm(lons, lats, zone, south=False)
    x0 = math.floor((xs.min() - 15.0) / 30.0) * 30.0 + 15.0
    y0 = math.ceil((ys.max() - 15.0) / 30.0) * 30.0 + 15.0
    width = math.ceil((xs.max() - x0) / 30.0)
    height = math.ceil((y0 - ys.min()) / 30.0)
    crs = f"EPSG:{mgrs.utm_epsg(zone, False)}"
    transform = (30.0, 0.0, x0, 0.0, -30.0, y0)
    return tuple(BandSpec(name, dtype, crs, transform, (width, height)) for name, dtype in BANDS)


def index_of(s: Scene, mission: Mission, t_ms: float) -> str:
    """``LC08_PPPRRR_YYYYMMDD``."""
    return f"{mission.prefix}_{s.key}_{utc(t_ms):%Y%m%d}"


def asset(s: Scene, mission: Mission, t_ms: float) -> Asset:
    """The scene of a path/row at a time."""
    when = utc(t_ms)
    index = index_of(s, mission, t_ms)
    mean = weather.mean_cloudiness(s.lon, s.lat)
    cover = weather.cloud_percentage(mean, mission.prefix, s.key, f"{when:%Y%m%d}")
    processed = when + timedelta(days=int(5 + 20 * weather.unit("processed", index)))
    footprint = ring_geojson(list(s.footprint))
    properties: dict[str, Any] = {
        "system:index": index,
        "system:time_start": round(t_ms),
        "system:time_end": round(t_ms),
        "system:footprint": {"type": "LinearRing", "coordinates": footprint["coordinates"][0]},
        "CLOUD_COVER": round(cover, 2),
        "CLOUD_COVER_LAND": round(cover, 2),
        "WRS_PATH": s.path,
        "WRS_ROW": s.row,
        "SPACECRAFT_ID": mission.spacecraft,
        "SENSOR_ID": "OLI_TIRS",
        "COLLECTION_CATEGORY": "T1",
        "PROCESSING_LEVEL": "L2SP",
        "DATE_ACQUIRED": f"{when:%Y-%m-%d}",
        "SCENE_CENTER_TIME": f"{when:%H:%M:%S}.{when.microsecond:06d}0Z",
        "LANDSAT_SCENE_ID": (
            f"L{'C8' if mission.prefix == 'LC08' else 'C9'}{s.key}{when:%Y%j}LGN00"
        ),
        "LANDSAT_PRODUCT_ID": (
            f"{mission.prefix}_L2SP_{s.key}_{when:%Y%m%d}_{processed:%Y%m%d}_02_T1"
        ),
        "DATE_PRODUCT_GENERATED": millis(processed),
        "SUN_ELEVATION": round(90.0 - solar_zenith(when, s.lon, s.lat), 6),
    }
    for band in range(1, 8):
        properties[f"REFLECTANCE_MULT_BAND_{band}"] = SR_SCALE
        properties[f"REFLECTANCE_ADD_BAND_{band}"] = SR_OFFSET
    properties["TEMPERATURE_MULT_BAND_ST_B10"] = ST_SCALE
    properties["TEMPERATURE_ADD_BAND_ST_B10"] = ST_OFFSET
    return Asset(f"{mission.collection}/{index}", "landsat", band_specs(s), properties, footprint)


def outline(s: Scene) -> Polygon:
    """The footprint as a lon/lat polygon."""
    return Polygon(s.footprint)


def find(mission: Mission, index: str) -> Asset | None:
    """The scene with this system:index, or None when the plan has no such scene."""
    parts = index.split("_")
    if len(parts) != 3 or parts[0] != mission.prefix:
        return None
    pr = parse_key(parts[1])
    try:
        day = datetime.strptime(parts[2], "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    if pr is None:
        return None
    s = scene(*pr)
    if not has_land(s):
        return None
    for t in times(s, mission, millis(day), millis(day + timedelta(days=1))):
        return asset(s, mission, t)
    return None
