"""Sentinel-2 SR harmonized scenes, generated on demand for any MGRS tile and date range.

The acquisition plan follows the real mission's geometry:

- 143 relative orbits repeat every 10 days per satellite; Sentinel-2B flies the same tracks 5
  days after Sentinel-2A, so every track is revisited every 5 days (Sentinel-2C takes over
  2A's slot from 2025-01-21). Consecutive relative orbits are consecutive orbits
  (``period = 10 days / 143``), each node 25.17 degrees west of the previous one.
- The timing anchor is a real acquisition: Sentinel-2A's relative orbit 41 over tile 23XML
  (about 80.8 N) at 2021-06-03T18:00:13Z; node longitudes follow from the 10:30 mean local
  solar time of the descending node. Times come out within a minute or so of real scenes.
- A tile gets a scene from every track whose 290 km swath meets it; where the swath covers
  part of the tile the footprint is clipped to the swath (``NODATA_PIXEL_PERCENTAGE``), and
  where two tracks overlap the tile has scenes from both orbits.
- Scenes exist only for tiles that touch land (``engine.emulator.world.land``), from
  2017-03-28 (the collection's start) on, between 56 S and 84 N.

Ids follow EE's pattern ``<datatake start>_<datastrip start>_T<tile>``: the datatake is taken
to start where the pass crossed the nearest of the latitudes 82, 57, 32, 7, -18, -43 N north
of the tile (so neighbouring tiles of one pass share it), the second stamp a few seconds to
minutes later. ``system:time_start`` is when the satellite passed over the tile's centre.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from shapely.geometry import Polygon

from engine.emulator.world import land, mgrs, weather
from engine.emulator.world.assets import ARCHIVE_END, Asset, BandSpec, millis, ring_geojson, utc
from engine.emulator.world.orbit import KM_PER_DEGREE, Orbit, solar_zenith

COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
ORBIT = Orbit(inclination=98.62, period_s=10 * 86400 / 143, swath_km=290.0)
RELATIVE_ORBITS = 143
REVISIT_MS = 5 * 86400 * 1000
START = datetime(2017, 3, 28, tzinfo=UTC)
S2C_FROM = datetime(2025, 1, 21, tzinfo=UTC)
SOUTH_LIMIT, NORTH_LIMIT = -56.0, 84.0
_ANCHOR_ORBIT = 41
_ANCHOR_LAT = 80.8
_ANCHOR_TIME = datetime(2021, 6, 3, 18, 0, 13, tzinfo=UTC)
_LTDN_HOURS = 10.5
_SEGMENT_STARTS = (82.0, 57.0, 32.0, 7.0, -18.0, -43.0)
_JITTER_MS = 12_000.0
_MIN_COVER = 0.005  # scenes with less data than this share of the tile are not produced

# (band, numpy dtype, pixel size in metres), in EE's band order.
BANDS: tuple[tuple[str, str, int], ...] = (
    ("B1", "uint16", 60),
    ("B2", "uint16", 10),
    ("B3", "uint16", 10),
    ("B4", "uint16", 10),
    ("B5", "uint16", 20),
    ("B6", "uint16", 20),
    ("B7", "uint16", 20),
    ("B8", "uint16", 10),
    ("B8A", "uint16", 20),
    ("B9", "uint16", 60),
    ("B11", "uint16", 20),
    ("B12", "uint16", 20),
    ("AOT", "uint16", 10),
    ("WVP", "uint16", 10),
    ("SCL", "uint8", 20),
    ("TCI_R", "uint8", 10),
    ("TCI_G", "uint8", 10),
    ("TCI_B", "uint8", 10),
    ("MSK_CLDPRB", "uint8", 20),
    ("MSK_SNWPRB", "uint8", 10),
    ("QA10", "uint16", 10),
    ("QA20", "uint16", 20),
    ("QA60", "uint16", 60),
)


def _node_anchor() -> tuple[float, float]:
    """(node time in ms, node longitude) of the anchor pass of relative orbit 41."""
    _, dt = ORBIT.offset(_ANCHOR_LAT)
    node = _ANCHOR_TIME - timedelta(seconds=dt)
    hours = node.hour + node.minute / 60 + node.second / 3600
    lon = (15.0 * (_LTDN_HOURS - hours) + 180.0) % 360.0 - 180.0
    return float(millis(node)), lon


def node_of(relative_orbit: int) -> tuple[float, float]:
    """(a Sentinel-2A node time in ms, node longitude) of a relative orbit."""
    t41, lon41 = _node_anchor()
    k = relative_orbit - _ANCHOR_ORBIT
    lon = (lon41 - k * ORBIT.node_shift() + 180.0) % 360.0 - 180.0
    return t41 + k * ORBIT.period_s * 1000.0, lon


@dataclass(frozen=True)
class Pass:
    """One relative orbit over one tile: what every scene of that pair shares."""

    tile: mgrs.Tile
    orbit: int
    footprint: tuple[tuple[float, float], ...]  # lon/lat ring, unclosed
    cover: float  # share of the tile with data
    lon: float  # tile centre
    lat: float

    @cached_property
    def after_node_ms(self) -> float:
        """How long after the node the satellite passes the tile centre."""
        return ORBIT.offset(self.lat)[1] * 1000.0

    @property
    def first_ms(self) -> float:
        """A Sentinel-2A time over the tile centre (any cycle)."""
        node_ms, _ = node_of(self.orbit)
        return node_ms + self.after_node_ms

    @cached_property
    def bands(self) -> tuple[BandSpec, ...]:
        """The tile's bands (the same for every scene)."""
        return band_specs(self.tile)

    @cached_property
    def geojson(self) -> dict[str, Any]:
        """The footprint as a GeoJSON Polygon (shared by the pass's scenes; never mutated)."""
        return ring_geojson(list(self.footprint))

    @cached_property
    def cloudiness(self) -> float:
        """The mean cloud fraction of the tile's climate."""
        return weather.mean_cloudiness(self.lon, self.lat)


def tile_outline(tile: mgrs.Tile) -> Polygon:
    """The tile's 109.8 km square as a lon/lat polygon."""
    return Polygon(tile.outline())


def has_land(outline: Polygon) -> bool:
    """Whether a tile touches land and lies within the mission's latitudes."""
    west, south, east, north = outline.bounds
    if north < SOUTH_LIMIT or south > NORTH_LIMIT:
        return False
    if east - west > 180:  # the outline crosses the antimeridian: test both sides
        lons = [x if x > 0 else x + 360 for x, _ in outline.exterior.coords]
        west, east = min(lons), max(lons)
    return land.is_land(west, south, east, north)


def passes(tile: mgrs.Tile) -> list[Pass]:
    """The relative orbits whose swath meets the tile, with the footprint each one leaves."""
    outline = tile_outline(tile)
    if not has_land(outline):
        return []
    centre = outline.centroid
    lon_c, lat_c = centre.x, centre.y
    spacing = 360.0 / RELATIVE_ORBITS
    _, lon41 = _node_anchor()
    needed = lon_c - ORBIT.offset(lat_c)[0]
    k_star = ((lon41 - needed) % 360.0) / spacing
    reach_km = ORBIT.swath_km / 2 + 90.0
    reach = reach_km / (KM_PER_DEGREE * max(math.cos(math.radians(lat_c)), 0.05) * spacing)
    reach /= ORBIT.heading_cos(lat_c)
    found: list[Pass] = []
    for k in range(math.floor(k_star - reach) - 1, math.ceil(k_star + reach) + 2):
        orbit = (_ANCHOR_ORBIT - 1 + 43 * k) % RELATIVE_ORBITS + 1
        footprint = _swath_cut(outline, orbit)
        if footprint is not None and not any(p.orbit == orbit for p in found):
            ring, cover = footprint
            found.append(Pass(tile, orbit, ring, cover, lon_c, lat_c))
    return sorted(found, key=lambda p: p.orbit)


def _swath_cut(
    outline: Polygon, orbit: int
) -> tuple[tuple[tuple[float, float], ...], float] | None:
    """The part of the tile inside the orbit's swath, or None when too little is."""
    _, node_lon = node_of(orbit)
    coords = list(outline.exterior.coords)[:-1]
    distances = [ORBIT.cross_track_km(x, y, node_lon) for x, y in coords]
    half = ORBIT.swath_km / 2
    if min(distances) >= half or max(distances) <= -half:
        return None
    if max(distances) < half and min(distances) > -half:
        return tuple((float(x), float(y)) for x, y in coords), 1.0
    _, south, _, north = outline.bounds
    lats = [south - 0.05 + (north - south + 0.1) * i / 4 for i in range(5)]
    edges = []
    for lat in lats:
        centre = node_lon + ORBIT.offset(lat)[0]
        centre = outline.centroid.x + ((centre - outline.centroid.x + 180.0) % 360.0 - 180.0)
        edges.append((centre, ORBIT.half_swath_degrees(lat)))
    strip = Polygon(
        [(c - w, y) for (c, w), y in zip(edges, lats, strict=True)]
        + [(c + w, y) for (c, w), y in reversed(list(zip(edges, lats, strict=True)))]
    )
    cut = outline.intersection(strip)
    if cut.is_empty or not isinstance(cut, Polygon):
        return None
    cover = cut.area / outline.area
    if cover < _MIN_COVER:
        return None
    return tuple((float(x), float(y)) for x, y in cut.exterior.coords)[:-1], cover


def times(p: Pass, start_ms: float, end_ms: float) -> Iterator[tuple[float, int]]:
    """(time over the tile centre in ms, slot) of the pass's scenes in ``[start, end)``.

    Slot 0 is Sentinel-2A's (2C's) overpass, slot 1 Sentinel-2B's five days later. Each pass
    runs up to ``_JITTER_MS`` early or late, the same for every tile it crosses.
    """
    first = p.first_ms
    lo = max(start_ms, float(millis(START)))
    end = min(end_ms, float(millis(ARCHIVE_END)))
    n = math.ceil((lo - first - _JITTER_MS) / REVISIT_MS)
    while True:
        t = first + n * REVISIT_MS + (weather.unit("pass", p.orbit, n) * 2 - 1) * _JITTER_MS
        if t >= end + _JITTER_MS:
            return
        if lo <= t < end:
            yield t, n % 2
        n += 1


def spacecraft(slot: int, when_ms: float) -> str:
    """The satellite flying a slot at a time."""
    if slot == 1:
        return "Sentinel-2B"
    return "Sentinel-2C" if when_ms >= millis(S2C_FROM) else "Sentinel-2A"


def _baseline(when: datetime) -> str:
    """The processing baseline of products sensed at a time (roughly as ESA's history)."""
    for since, name in (
        (datetime(2024, 7, 23, tzinfo=UTC), "05.11"),
        (datetime(2022, 12, 6, tzinfo=UTC), "05.09"),
        (datetime(2022, 1, 25, tzinfo=UTC), "04.00"),
        (datetime(2021, 3, 30, tzinfo=UTC), "03.00"),
        (datetime(2019, 12, 10, tzinfo=UTC), "02.14"),
        (datetime(2018, 11, 6, tzinfo=UTC), "02.10"),
    ):
        if when >= since:
            return name
    return "02.07"


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S")


def index_of(p: Pass, t_ms: float) -> tuple[str, datetime, datetime]:
    """(system:index, datatake start, datastrip start) of the scene at ``t_ms``."""
    node_ms = t_ms - p.after_node_ms
    seg = next((s for s in reversed(_SEGMENT_STARTS) if s >= p.lat), _SEGMENT_STARTS[0])
    seg = min(seg, ORBIT.max_latitude - 1.0)
    datatake = utc(node_ms + ORBIT.offset(seg)[1] * 1000.0).replace(microsecond=0)
    lag = int(weather.unit("datastrip", p.orbit, _stamp(datatake)) * 180)
    datastrip = datatake + timedelta(seconds=lag)
    return f"{_stamp(datatake)}_{_stamp(datastrip)}_T{p.tile.name}", datatake, datastrip


def band_specs(tile: mgrs.Tile) -> tuple[BandSpec, ...]:
    """The scene bands on the tile's 10, 20 and 60 m grids."""
    x0, y0 = tile.origin
    crs = f"EPSG:{tile.epsg}"
    return tuple(
        BandSpec(
            name,
            dtype,
            crs,
            (float(size), 0.0, x0, 0.0, -float(size), y0),
            (int(mgrs.TILE_SIDE) // size, int(mgrs.TILE_SIDE) // size),
        )
        for name, dtype, size in BANDS
    )


def asset(p: Pass, t_ms: float, slot: int) -> Asset:
    """The scene of a pass at a time."""
    index, datatake, datastrip = index_of(p, t_ms)
    when = utc(t_ms)
    craft = spacecraft(slot, t_ms)
    mean = p.cloudiness
    taken = _stamp(datatake)
    cloudy = weather.cloud_percentage(mean, p.tile.name, taken)
    cirrus = weather.unit("cirrus", p.tile.name, taken) * 0.35
    high = round(cloudy * (1 - cirrus) * 0.65, 6)
    thin = round(cloudy * cirrus, 6)
    medium = round(cloudy - high - thin, 6)
    generated = datastrip + timedelta(hours=2 + 6 * weather.unit("generated", index))
    absolute = _absolute_orbit(p, t_ms, slot)
    baseline = _baseline(when)
    mission = {"Sentinel-2A": "S2A", "Sentinel-2B": "S2B", "Sentinel-2C": "S2C"}[craft]
    footprint = p.geojson
    properties: dict[str, Any] = {
        "system:index": index,
        "system:time_start": round(t_ms),
        "system:time_end": round(t_ms),
        "system:footprint": {"type": "LinearRing", "coordinates": footprint["coordinates"][0]},
        "CLOUDY_PIXEL_PERCENTAGE": cloudy,
        "CLOUD_COVERAGE_ASSESSMENT": weather.cloud_percentage(mean, p.orbit, taken),
        "HIGH_PROBA_CLOUDS_PERCENTAGE": high,
        "MEDIUM_PROBA_CLOUDS_PERCENTAGE": medium,
        "THIN_CIRRUS_PERCENTAGE": thin,
        "NODATA_PIXEL_PERCENTAGE": round(100.0 * (1.0 - p.cover), 6),
        "MGRS_TILE": p.tile.name,
        "SPACECRAFT_NAME": craft,
        "SENSING_ORBIT_NUMBER": p.orbit,
        "SENSING_ORBIT_DIRECTION": "DESCENDING",
        "PROCESSING_BASELINE": baseline,
        "DATATAKE_TYPE": "INS-NOBS",
        "DATATAKE_IDENTIFIER": f"G{mission}_{taken}_{absolute:06d}_N{baseline}",
        "GRANULE_ID": f"L2A_T{p.tile.name}_A{absolute:06d}_{_stamp(datastrip)}",
        "PRODUCT_ID": (
            f"{mission}_MSIL2A_{taken}_N{baseline.replace('.', '')}"
            f"_R{p.orbit:03d}_T{p.tile.name}_{_stamp(generated)}"
        ),
        "GENERATION_TIME": millis(generated),
        "MEAN_SOLAR_ZENITH_ANGLE": round(solar_zenith(when, p.lon, p.lat), 6),
    }
    return Asset(f"{COLLECTION}/{index}", "s2", p.bands, properties, footprint)


def _absolute_orbit(p: Pass, t_ms: float, slot: int) -> int:
    """An absolute orbit number consistent with the relative one.

    ESA's rule is ``relative = (absolute - 3) % 143 + 1`` for 2A and ``(absolute + 27) % 143
    + 1`` for 2B; the counts are anchored near the real ones in mid-2021. 2C's count reuses
    2A's rule, shifted back to its 2024 launch (inferred).
    """
    t41, _ = _node_anchor()
    node_ms = t_ms - p.after_node_ms
    base, ref = (22178, t41 + REVISIT_MS) if slot == 1 else (31074, t41)
    absolute = base + round((node_ms - ref) / (ORBIT.period_s * 1000.0))
    if spacecraft(slot, t_ms) == "Sentinel-2C":
        absolute -= 337 * RELATIVE_ORBITS
    return absolute


def find(index: str) -> Asset | None:
    """The scene with this system:index, or None when the plan has no such scene."""
    parts = index.split("_")
    if len(parts) != 3 or not parts[2].startswith("T"):
        return None
    try:
        tile = mgrs.parse_tile(parts[2])
        datatake = datetime.strptime(parts[0], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    lo = millis(datatake - timedelta(hours=1))
    hi = millis(datatake + timedelta(hours=1))
    for p in passes(tile):
        for t, slot in times(p, lo, hi):
            if index_of(p, t)[0] == index:
                return asset(p, t, slot)
    return None
