"""The emulator's small asset catalog, defined in code (no data files).

It holds what the tutorial and the tests need: a handful of 2022 Sentinel-2 surface
reflectance scenes over eastern China (two MGRS tiles: one over Nanjing in UTM 50N, one over
Shanghai in UTM 51N), an elevation image and a land-cover image. Pixels come from
``engine.emulator.pixels``; the catalog only gives ids, bands, projections and properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rasterio.warp import transform_geom

S2_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
DEM_ID = "USGS/SRTMGL1_003"
LANDCOVER_COLLECTION = "ESA/WorldCover/v200"
LANDCOVER_ID = "ESA/WorldCover/v200/2021"

S2_BAND_SCALES: tuple[tuple[str, int], ...] = (
    ("B1", 60),
    ("B2", 10),
    ("B3", 10),
    ("B4", 10),
    ("B5", 20),
    ("B6", 20),
    ("B7", 20),
    ("B8", 10),
    ("B8A", 20),
    ("B9", 60),
    ("B11", 20),
    ("B12", 20),
    ("QA60", 60),
)
S2_TILE_SIDE_M = 109800


@dataclass(frozen=True)
class BandSpec:
    """A stored band: its name, numpy dtype and native grid."""

    id: str
    dtype: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    dimensions: tuple[int, int]


@dataclass(frozen=True)
class Asset:
    """A stored image: ``kind`` selects the pixel function (``s2``, ``dem``, ``landcover``)."""

    id: str
    kind: str
    bands: tuple[BandSpec, ...]
    properties: dict[str, Any] = field(hash=False)
    footprint: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def cloud_coverage(self) -> float | None:
        """Fraction of cloudy pixels the pixel function should draw (None: no clouds)."""
        if self.kind != "s2":
            return None
        return float(self.properties["CLOUDY_PIXEL_PERCENTAGE"]) / 100.0

    @property
    def month(self) -> int:
        """Acquisition month (UTC), for the seasonal vegetation signal."""
        start = self.properties.get("system:time_start", 0)
        return datetime.fromtimestamp(start / 1000, tz=UTC).month


@dataclass(frozen=True)
class _Tile:
    name: str
    crs: str
    x0: int
    y0: int


_TILES = (
    _Tile("T50SPA", "EPSG:32650", 600000, 3620000),
    _Tile("T51RUQ", "EPSG:32651", 300000, 3500040),
    _Tile("T50RPV", "EPSG:32650", 600000, 3520000),
)

# (sensing start, generation suffix, tile index, cloudy pixel percentage)
_SCENES: tuple[tuple[str, str, int, float], ...] = (
    ("20220115T025101", "20220115T025957", 0, 3.41),
    ("20220226T024659", "20220226T025431", 0, 47.93),
    ("20220317T024541", "20220317T025102", 0, 7.86),
    ("20220421T024539", "20220421T025508", 1, 1.12),
    ("20220605T024551", "20220605T025233", 0, 63.2),
    ("20220814T024549", "20220814T025820", 0, 5.58),
    ("20221003T024721", "20221003T025318", 1, 8.84),
    ("20221117T025011", "20221117T025604", 0, 9.37),
    ("20221207T025121", "20221207T025744", 1, 12.31),
    ("20220115T025101", "20220115T025957", 2, 4.02),
    ("20220317T024541", "20220317T025102", 2, 6.35),
    ("20220814T024549", "20220814T025820", 2, 8.11),
    ("20221117T025011", "20221117T025604", 2, 22.7),
)


def _tile_footprint(tile: _Tile) -> dict[str, Any]:
    """The tile's square in lon/lat, as a GeoJSON Polygon."""
    x0, y0, side = tile.x0, tile.y0, S2_TILE_SIDE_M
    square = {
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x0 + side, y0], [x0 + side, y0 - side], [x0, y0 - side]]],
    }
    square["coordinates"][0].append(square["coordinates"][0][0])
    return transform_geom(tile.crs, "EPSG:4326", square)


def _millis(stamp: str) -> int:
    when = datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _s2_asset(start: str, generated: str, tile: _Tile, cloudy: float) -> Asset:
    index = f"{start}_{generated}_{tile.name}"
    bands = tuple(
        BandSpec(
            id=name,
            dtype="uint16",
            crs=tile.crs,
            transform=(float(scale), 0.0, float(tile.x0), 0.0, -float(scale), float(tile.y0)),
            dimensions=(S2_TILE_SIDE_M // scale, S2_TILE_SIDE_M // scale),
        )
        for name, scale in S2_BAND_SCALES
    )
    footprint = _tile_footprint(tile)
    time_start = _millis(start)
    properties = {
        "system:index": index,
        "system:time_start": time_start,
        "system:time_end": time_start,
        "system:footprint": {"type": "LinearRing", "coordinates": footprint["coordinates"][0]},
        "CLOUDY_PIXEL_PERCENTAGE": cloudy,
        "CLOUD_COVERAGE_ASSESSMENT": cloudy,
        "MGRS_TILE": tile.name[1:],
        "SPACECRAFT_NAME": "Sentinel-2A" if int(start[6:8]) % 2 else "Sentinel-2B",
        "SENSING_ORBIT_NUMBER": 32,
    }
    return Asset(f"{S2_COLLECTION}/{index}", "s2", bands, properties, footprint)


def _world() -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]],
    }


def _dem() -> Asset:
    step = 1 / 3600
    band = BandSpec(
        "elevation",
        "float32",
        "EPSG:4326",
        (step, 0.0, -180.0 - step / 2, 0.0, -step, 60.0 + step / 2),
        (1296001, 417601),
    )
    return Asset(DEM_ID, "dem", (band,), {"system:index": "SRTMGL1_003"}, _world())


def _landcover() -> Asset:
    step = 1 / 12000
    band = BandSpec(
        "Map", "uint8", "EPSG:4326", (step, 0.0, -180.0, 0.0, -step, 84.0), (4320000, 1728000)
    )
    props = {"system:index": "2021", "system:time_start": _millis("20210101T000000")}
    return Asset(LANDCOVER_ID, "landcover", (band,), props, _world())


def s2_assets() -> list[Asset]:
    """All Sentinel-2 scenes of the catalog, oldest first."""
    return [_s2_asset(start, gen, _TILES[tile], cloudy) for start, gen, tile, cloudy in _SCENES]


def find_image(asset_id: str) -> Asset | None:
    """The image asset with this id, or None."""
    if asset_id == DEM_ID:
        return _dem()
    if asset_id == LANDCOVER_ID:
        return _landcover()
    if asset_id.startswith(S2_COLLECTION + "/"):
        return next((a for a in s2_assets() if a.id == asset_id), None)
    return None


def find_collection(collection_id: str) -> list[Asset] | None:
    """The images of a collection, or None when there is no such collection."""
    if collection_id == S2_COLLECTION:
        return s2_assets()
    if collection_id == LANDCOVER_COLLECTION:
        return [_landcover()]
    return None
