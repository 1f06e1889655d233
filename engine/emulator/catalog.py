"""The emulator's catalog: world-sized, generated on demand, indexed by place and date.

Nothing is stored: a scene is a pure function of its tile (or path/row), its date and the
catalog's seed (``engine.emulator.world``). A query carries what filters pushed down into it
(a date range, the regions every scene must meet, equality on tile or path/row) and is
answered by walking only the tiles under its region and the dates in its range, so a
province-year query looks at a few thousand candidate scenes whatever the size of the world.

Collections: ``COPERNICUS/S2_SR_HARMONIZED``, ``LANDSAT/LC08/C02/T1_L2``,
``LANDSAT/LC09/C02/T1_L2``, ``COPERNICUS/DEM/GLO30`` and ``ESA/WorldCover/v200``; single
images: ``USGS/SRTMGL1_003``, ``ESA/WorldCover/v200/2021`` and every member of the
collections by id. Pixels come from ``engine.emulator.pixels``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from engine.emulator.world import dems, landsat, mgrs, sentinel2
from engine.emulator.world.assets import ARCHIVE_END, Asset, BandSpec, millis

__all__ = [
    "DEM_ID",
    "LANDCOVER_COLLECTION",
    "LANDCOVER_ID",
    "LIST_LIMIT",
    "S2_COLLECTION",
    "Asset",
    "BandSpec",
    "CatalogError",
    "Found",
    "Query",
    "count",
    "find_image",
    "is_collection",
    "per_place",
    "search",
    "template",
]

S2_COLLECTION = sentinel2.COLLECTION
DEM_ID = dems.SRTM_ID
GLO30_COLLECTION = dems.GLO30_COLLECTION
LANDCOVER_COLLECTION = dems.WORLDCOVER_COLLECTION
LANDCOVER_ID = dems.WORLDCOVER_ID
LIST_LIMIT = 5000
CANDIDATE_LIMIT = 250_000
_TEMPLATE_DATE = datetime(2022, 6, 1, tzinfo=UTC)
COLLECTIONS = (S2_COLLECTION, *landsat.MISSIONS, GLO30_COLLECTION, LANDCOVER_COLLECTION)
# The property that names a scene's place, per collection (equality filters on it are indexed).
PLACE_KEYS: dict[str, tuple[str, ...]] = {
    S2_COLLECTION: ("MGRS_TILE",),
    GLO30_COLLECTION: ("system:index",),
}
PLACE_KEYS.update({m: ("WRS_PATH", "WRS_ROW") for m in landsat.MISSIONS})


class CatalogError(ValueError):
    """A query the emulator cannot answer; the message says what to add."""


@dataclass(frozen=True)
class Query:
    """What a collection's filters narrowed it to (a superset: filters are applied after)."""

    collection: str
    start_ms: float = -math.inf
    end_ms: float = math.inf
    regions: tuple[BaseGeometry, ...] = ()  # lon/lat; every scene must meet all of them
    places: tuple[tuple[str, frozenset[object]], ...] = ()  # property, allowed values

    def within(self, start_ms: float, end_ms: float) -> Query:
        """The query limited to ``[start, end)``."""
        return replace(self, start_ms=max(self.start_ms, start_ms), end_ms=min(self.end_ms, end_ms))

    def meeting(self, region: BaseGeometry) -> Query:
        """The query limited to scenes that meet a lon/lat region."""
        return replace(self, regions=(*self.regions, region))

    def placed(self, name: str, values: Iterable[object]) -> Query:
        """The query limited to scenes whose place property takes one of ``values``.

        A filter on ``system:index`` names the place too: a Sentinel-2 index ends with its
        tile, a Landsat one holds its path and row.
        """
        values = list(values)
        if name == "system:index" and self.collection == S2_COLLECTION:
            return self.placed("MGRS_TILE", [str(v).rpartition("_T")[2] for v in values])
        if name == "system:index" and self.collection in landsat.MISSIONS:
            keys = [
                landsat.parse_key(str(v).split("_")[1]) if "_" in str(v) else None for v in values
            ]
            if any(k is None for k in keys):
                return self
            query = self.placed("WRS_PATH", [k[0] for k in keys if k is not None])
            return query.placed("WRS_ROW", [k[1] for k in keys if k is not None])
        if name not in PLACE_KEYS.get(self.collection, ()):
            return self
        return replace(self, places=(*self.places, (name, frozenset(values))))

    @property
    def bounded(self) -> bool:
        """Whether the query names a place, so answering it never walks the whole world."""
        return bool(self.regions) or bool(self.places) or self.collection == LANDCOVER_COLLECTION

    def allowed(self, name: str) -> frozenset[object] | None:
        """The values a place property may take (None: any)."""
        sets = [values for key, values in self.places if key == name]
        if not sets:
            return None
        out = sets[0]
        for values in sets[1:]:
            out &= values
        return out


@dataclass
class Found:
    """Scenes answering a query, oldest first, and how many candidates were generated."""

    assets: list[Asset] = field(default_factory=list)
    candidates: int = 0


def is_collection(collection_id: str) -> bool:
    """Whether the catalog has this image collection."""
    return collection_id in COLLECTIONS


def search(query: Query, window: BaseGeometry | None = None) -> Found:
    """The scenes of a query (meeting ``window`` too, when given), oldest first.

    Raises CatalogError when neither the query nor the window says where to look.
    """
    regions = list(query.regions)
    if window is not None:
        regions.append(window)
    if not regions and not query.places and query.collection != LANDCOVER_COLLECTION:
        raise CatalogError(
            f"The emulator generates {query.collection} scenes on demand and needs a place to "
            "look: add filterBounds(region) (or a filter on "
            f"{' / '.join(PLACE_KEYS.get(query.collection, ('system:index',)))})."
        )
    area = _intersection(regions)
    found = Found()
    if area is not None and area.is_empty:
        return found
    if query.collection == S2_COLLECTION:
        _search_s2(query, area, found)
    elif query.collection in landsat.MISSIONS:
        _search_landsat(query, landsat.MISSIONS[query.collection], area, found)
    elif query.collection == GLO30_COLLECTION:
        _search_glo30(query, area, found)
    elif query.collection == LANDCOVER_COLLECTION:
        wc = dems.worldcover()
        found.candidates = 1
        if _in_range(query, wc.properties["system:time_start"]):
            found.assets.append(wc)
    else:
        raise CatalogError(f"ImageCollection asset '{query.collection}' not found.")
    found.assets.sort(key=lambda a: (a.properties["system:time_start"], a.id))
    return found


def _intersection(regions: list[BaseGeometry]) -> BaseGeometry | None:
    if not regions:
        return None
    out = regions[0]
    for region in regions[1:]:
        out = out.intersection(region)
    return out


def _in_range(query: Query, t_ms: float) -> bool:
    return query.start_ms <= t_ms < query.end_ms


def _count(found: Found, more: int) -> None:
    found.candidates += more
    if found.candidates > CANDIDATE_LIMIT:
        raise CatalogError(
            f"The query would generate more than {CANDIDATE_LIMIT} scenes in the emulator; "
            "narrow it with filterBounds or filterDate."
        )


def _bounds(area: BaseGeometry) -> tuple[float, float, float, float]:
    west, south, east, north = area.bounds
    return west, south, east, north


def _meets(outline: BaseGeometry, area: BaseGeometry | None) -> bool:
    """Whether a footprint meets the (prepared) search area."""
    return area is None or bool(area.intersects(outline))


def _search_s2(query: Query, area: BaseGeometry | None, found: Found) -> None:
    names = query.allowed("MGRS_TILE")
    if names is not None:
        tiles: Iterator[mgrs.Tile] = iter(_parse_tiles(names))
    elif area is not None:
        tiles = mgrs.tiles_in(*_bounds(area))
    else:  # pragma: no cover - search() refuses unbounded queries
        return
    prepared = area
    if prepared is not None:
        shapely.prepare(prepared)
    for tile in tiles:
        outline = sentinel2.tile_outline(tile)
        if not _meets(outline, prepared):
            continue
        for p in sentinel2.passes(tile):
            if not _meets(shapely.Polygon(p.footprint), prepared):
                continue
            stamps = list(sentinel2.times(p, query.start_ms, query.end_ms))
            _count(found, len(stamps))
            found.assets.extend(sentinel2.asset(p, t, slot) for t, slot in stamps)


def _parse_tiles(names: Iterable[object]) -> list[mgrs.Tile]:
    tiles = []
    for name in names:
        try:
            tiles.append(mgrs.parse_tile(str(name)))
        except ValueError:
            continue
    return tiles


def _search_landsat(
    query: Query, mission: landsat.Mission, area: BaseGeometry | None, found: Found
) -> None:
    paths = query.allowed("WRS_PATH")
    rows = query.allowed("WRS_ROW")
    scenes: Iterable[landsat.Scene]
    if area is not None:
        scenes = landsat.scenes_in(*_bounds(area))
    else:
        path_list = sorted(int(str(p)) for p in paths) if paths is not None else range(1, 234)
        row_list = sorted(int(str(r)) for r in rows) if rows is not None else landsat.DAY_ROWS
        scenes = (
            landsat.scene(p, r)
            for p in path_list
            for r in row_list
            if 1 <= p <= landsat.PATHS and r in landsat.DAY_ROWS
        )
    prepared = area
    if prepared is not None:
        shapely.prepare(prepared)
    for s in scenes:
        if paths is not None and s.path not in paths:
            continue
        if rows is not None and s.row not in rows:
            continue
        if not _meets(landsat.outline(s), prepared) or not landsat.has_land(s):
            continue
        stamps = list(landsat.times(s, mission, query.start_ms, query.end_ms))
        _count(found, len(stamps))
        found.assets.extend(landsat.asset(s, mission, t) for t in stamps)


def _search_glo30(query: Query, area: BaseGeometry | None, found: Found) -> None:
    names = query.allowed("system:index")
    if names is not None:
        cells = [c for c in (dems.glo30_cell(str(n)) for n in names) if c is not None]
    elif area is not None:
        cells = list(dems.glo30_cells(*_bounds(area)))
    else:  # pragma: no cover - search() refuses unbounded queries
        return
    _count(found, len(cells))
    for lon0, lat0 in cells:
        if area is not None and not box(lon0, lat0, lon0 + 1, lat0 + 1).intersects(area):
            continue
        tile = dems.glo30(lon0, lat0)
        if tile is not None and _in_range(query, tile.properties["system:time_start"]):
            found.assets.append(tile)


def find_image(asset_id: str) -> Asset | None:
    """The image asset with this id, or None."""
    if asset_id == DEM_ID:
        return dems.srtm()
    if asset_id == LANDCOVER_ID:
        return dems.worldcover()
    collection, _, index = asset_id.rpartition("/")
    if collection == S2_COLLECTION:
        return sentinel2.find(index)
    if collection in landsat.MISSIONS:
        return landsat.find(landsat.MISSIONS[collection], index)
    if collection == GLO30_COLLECTION:
        cell = dems.glo30_cell(index)
        return dems.glo30(*cell) if cell is not None else None
    return None


def count(query: Query, window: BaseGeometry) -> int:
    """How many scenes of a query meet a window."""
    return len(search(query, window).assets)


def per_place(query: Query) -> int:
    """About how many scenes of the query a single place sees (for cost estimates)."""
    if query.collection in (GLO30_COLLECTION, LANDCOVER_COLLECTION):
        return 1
    start = max(query.start_ms, float(millis(sentinel2.START)))
    end = min(query.end_ms, float(millis(ARCHIVE_END)))
    days = max(0.0, (end - start) / 86400000.0)
    revisit = 5.0 if query.collection == S2_COLLECTION else 16.0
    return max(1, math.ceil(days / revisit) * 2)


def template(collection_id: str) -> Asset:
    """A representative member of a collection (its bands and properties, any date)."""
    if collection_id == S2_COLLECTION:
        tile = mgrs.parse_tile("31UDQ")
        p = sentinel2.passes(tile)[0]
        t, slot = next(sentinel2.times(p, float(millis(_TEMPLATE_DATE)), math.inf))
        return sentinel2.asset(p, t, slot)
    if collection_id in landsat.MISSIONS:
        mission = landsat.MISSIONS[collection_id]
        s = landsat.scene(199, 26)
        return landsat.asset(s, mission, next(landsat.times(s, mission, 0.0, math.inf)))
    if collection_id == GLO30_COLLECTION:
        dem = dems.glo30(2, 48)
        assert dem is not None
        return dem
    return dems.worldcover()
