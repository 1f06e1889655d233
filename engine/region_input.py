"""Read a region as users give it: a GeoJSON file, a GeoJSON object, or a bounding box.

Region files are untrusted input: every failure is a :class:`engine.grid.GridError` whose
message says what is wrong and what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import GridError

GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}
MAX_REGION_FILE_BYTES = 256 * 1024 * 1024


def load_region(region: Any) -> dict[str, Any]:
    """A GeoJSON geometry from a file path, a 'west,south,east,north' string, a bbox
    sequence, or a GeoJSON Geometry / Feature / FeatureCollection mapping."""
    if isinstance(region, Mapping):
        return geometry_from_geojson(region, "the region")
    if isinstance(region, Sequence) and not isinstance(region, str | bytes):
        return bbox_polygon(region, "the region")
    if isinstance(region, Path | str):
        text = str(region).strip()
        if not text:
            raise GridError("the region is empty; give a GeoJSON file or west,south,east,north")
        if _looks_like_bbox(text):
            return bbox_polygon(text.split(","), f"region {text!r}")
        return geometry_from_file(Path(text))
    raise GridError(
        f"cannot read a region from a {type(region).__name__}; give a GeoJSON file, "
        "a GeoJSON dict or west,south,east,north"
    )


def geometry_from_file(path: Path) -> dict[str, Any]:
    name = _file_name(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GridError(
            f"region file {name} does not exist; give a GeoJSON file or "
            "west,south,east,north in degrees"
        ) from None
    except OSError as exc:
        raise GridError(f"cannot read region file {name}: {exc.strerror}") from None
    except ValueError:  # a name with a NUL byte: no file can have it
        raise GridError(
            f"region {str(path)!r} is not a file name, a GeoJSON dict or west,south,east,north"
        ) from None
    if size > MAX_REGION_FILE_BYTES:
        raise GridError(f"region file {name} is {size} bytes; simplify the outline first")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GridError(
            f"region file {name} is not GeoJSON ({_short(exc)}); give a GeoJSON "
            "Polygon, Feature or FeatureCollection"
        ) from None
    except RecursionError:
        raise GridError(f"region file {name} is nested too deeply to be GeoJSON") from None
    return geometry_from_geojson(data, f"region file {name}")


def geometry_from_geojson(
    data: Any, what: str, *, containers: tuple[str, ...] = ("FeatureCollection", "Feature")
) -> dict[str, Any]:
    """The geometry of a Geometry, a Feature, or a FeatureCollection (all its features).

    ``containers`` are the wrapper types allowed at this level: a FeatureCollection holds
    Features, a Feature holds a Geometry, as GeoJSON says. Nesting them otherwise is refused,
    which also bounds the recursion on a hostile file.
    """
    if not isinstance(data, Mapping):
        raise GridError(f"{what} is not a GeoJSON object")
    kind = data.get("type")
    if kind in ("FeatureCollection", "Feature") and kind not in containers:
        raise GridError(
            f"{what} has a {kind} where a geometry belongs; give a GeoJSON Polygon, "
            "Feature or FeatureCollection"
        )
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise GridError(f"{what} is a FeatureCollection with no features")
        geometries = [geometry_from_geojson(f, what, containers=("Feature",)) for f in features]
        if len(geometries) == 1:
            return geometries[0]
        return _with_crs({"type": "GeometryCollection", "geometries": geometries}, data)
    if kind == "Feature":
        geometry = data.get("geometry")
        if geometry is None:
            raise GridError(f"{what} is a Feature with no geometry")
        return _with_crs(geometry_from_geojson(geometry, what, containers=()), data)
    if kind not in GEOMETRY_TYPES:
        raise GridError(
            f"{what} has GeoJSON type {kind!r}; expected a Polygon, Feature or FeatureCollection"
        )
    if kind == "GeometryCollection":
        members = data.get("geometries")
        if not isinstance(members, list) or not members:
            raise GridError(f"{what} is an empty GeometryCollection")
    elif not data.get("coordinates"):
        raise GridError(f"{what} is a {kind} with no coordinates")
    return dict(data)


def bbox_polygon(values: Sequence[Any], what: str) -> dict[str, Any]:
    """A lon/lat rectangle from west, south, east, north."""
    try:
        west, south, east, north = (float(v) for v in values)
    except (TypeError, ValueError):
        raise GridError(f"{what} must be four numbers: west,south,east,north") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise GridError(f"{what} has a number that is not finite")
    if not (-90 <= south < north <= 90):
        raise GridError(f"{what}: south must be below north, both within -90..90 degrees")
    if west == east:
        raise GridError(f"{what}: west and east are equal; the box has no width")
    if east < west:  # crosses the antimeridian, e.g. 179,-10,-179,10
        east += 360
    return {
        "type": "Polygon",
        "coordinates": [
            [[west, south], [east, south], [east, north], [west, north], [west, south]]
        ],
    }


def _with_crs(geometry: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    if "crs" in source and "crs" not in geometry:
        return {**geometry, "crs": source["crs"]}
    return geometry


def _looks_like_bbox(text: str) -> bool:
    parts = text.split(",")
    if len(parts) != 4:
        return False
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return True


def _file_name(path: Path) -> str:
    """A path as a message shows it: quoted when it holds a newline or another character that
    would break the one-line message (a region string that was meant as coordinates)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120]


MAX_REGION_POINTS = 4000  # vertices of the outline kept in the job spec


def simplified_outline(geometry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The region's outline to keep in a job spec: at most MAX_REGION_POINTS vertices.

    A region file may hold millions of vertices; the map needs the outline to about a
    thousandth of its extent. A ``crs`` member (projected regions) is kept.
    """
    if not geometry:
        return None
    import shapely
    from shapely.geometry import mapping, shape

    outline = shape(dict(geometry))
    if outline.is_empty:
        return None
    minx, miny, maxx, maxy = outline.bounds
    tolerance = max(maxx - minx, maxy - miny) / 2000
    while shapely.get_num_coordinates(outline) > MAX_REGION_POINTS and tolerance > 0:
        outline = shapely.simplify(outline, tolerance, preserve_topology=False)
        tolerance *= 4
    kept: dict[str, Any] = dict(mapping(outline))
    if "crs" in geometry:
        kept["crs"] = geometry["crs"]
    return kept
