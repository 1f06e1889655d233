"""Values the emulator's evaluator produces: images, collections, geometries, projections.

Images are lazy: a band carries a function that computes its pixels on a request grid, so
evaluating an expression costs nothing until the server renders it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from engine.emulator import pixels

if TYPE_CHECKING:
    from engine.grid import Grid

Transform = tuple[float, float, float, float, float, float]
Plane = tuple[np.ndarray, np.ndarray]  # (data, valid)
IDENTITY: Transform = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
DEFAULT_CRS = "EPSG:4326"

_INT_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")


class EvaluationError(Exception):
    """EE-style message; the server answers it as 400 INVALID_ARGUMENT."""


@dataclass(frozen=True)
class PixelType:
    """EE's pixel type: a precision and, for integers, a value range."""

    precision: str  # "int" | "float" | "double"
    min: float | None = None
    max: float | None = None

    @classmethod
    def of_dtype(cls, dtype: str) -> PixelType:
        """The pixel type of a numpy dtype name."""
        if dtype == "float32":
            return cls("float")
        if dtype == "float64":
            return cls("double")
        info = np.iinfo(dtype)
        return cls("int", int(info.min), int(info.max))

    @property
    def dtype(self) -> str:
        """The smallest numpy dtype that holds every value of this type."""
        if self.precision == "float":
            return "float32"
        if self.precision == "double":
            return "float64"
        lo, hi = self.min or 0, self.max or 0
        for name in _INT_TYPES:
            info = np.iinfo(name)
            if info.min <= lo and hi <= info.max:
                return name
        return "float64"

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a pixel type."""
        out: dict[str, Any] = {"type": "PixelType", "precision": self.precision}
        if self.precision == "int":
            out["min"] = _plain_number(self.min)
            out["max"] = _plain_number(self.max)
        return out


def _plain_number(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class BandInfo:
    """What getInfo tells about a band."""

    id: str
    dtype: str
    crs: str
    transform: Transform
    dimensions: tuple[int, int] | None


@dataclass
class Rendered:
    """Pixels of some bands on a request grid; ``valid`` is False where a pixel is masked."""

    band_ids: list[str]
    data: list[np.ndarray]
    valid: list[np.ndarray]


@dataclass
class RenderRequest:
    """A request grid plus a per-render memo shared by all bands (one render, one memo)."""

    crs: str
    transform: Transform
    width: int
    height: int
    memo: dict[Any, Any] = field(default_factory=dict)

    @cached_property
    def geographic(self) -> bool:
        """Whether the request CRS is geographic (degrees)."""
        return bool(CRS.from_user_input(self.crs).is_geographic)

    @cached_property
    def lattice(self) -> pixels.Lattice:
        """The lattice indices of the request grid (see ``pixels``)."""
        try:
            return pixels.lattice(self.transform, self.width, self.height, self.geographic)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (height, width)."""
        return (self.height, self.width)


@dataclass(frozen=True, eq=False)
class Band:
    """A band of an image: its metadata, pixel type and a pixel function on request grids."""

    info: BandInfo
    ptype: PixelType
    compute: Callable[[RenderRequest], Plane]

    def plane(self, req: RenderRequest) -> Plane:
        """Pixels on ``req``, computed once per render even when the band is shared."""
        key = ("band", id(self))
        found = req.memo.get(key)
        if found is None:
            found = self.compute(req)
            req.memo[key] = (found, self)  # keep self alive so id() stays unique
            return found
        return found[0]

    def with_info(self, **changes: Any) -> Band:
        """The same pixels under changed metadata."""
        return Band(replace(self.info, **changes), self.ptype, self.compute)


@dataclass(frozen=True)
class Projection:
    """A CRS plus an affine transform from projection units to CRS units."""

    crs: str
    transform: Transform = IDENTITY

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a projection."""
        return {"type": "Projection", "crs": self.crs, "transform": list(self.transform)}

    @property
    def geographic(self) -> bool:
        """Whether the CRS counts in degrees."""
        return bool(CRS.from_user_input(self.crs).is_geographic)

    def nominal_scale(self) -> float:
        """Metres per pixel along x (degrees converted at the equator)."""
        scale = abs(self.transform[0])
        return scale * pixels.METRES_PER_DEGREE if self.geographic else scale


@dataclass(frozen=True, eq=False)
class Geometry:
    """A shapely geometry in the units of ``proj`` (lon/lat degrees by default)."""

    shape: Any
    proj: Projection = Projection(DEFAULT_CRS)

    def in_crs(self, crs: str) -> Any:
        """The geometry in CRS units of ``crs``."""
        a, b, c, d, e, f = self.proj.transform
        shape = self.shape
        if self.proj.transform != IDENTITY:
            shape = shapely.transform(shape, lambda xy: _affine(xy, (a, b, c, d, e, f)))
        if CRS.from_user_input(self.proj.crs) == CRS.from_user_input(crs):
            return shape
        moved = transform_geom(self.proj.crs, crs, shapely.geometry.mapping(shape))
        return shapely.geometry.shape(moved)

    def geojson(self) -> dict[str, Any]:
        """GeoJSON in lon/lat, EE's getInfo shape of a geometry."""
        mapped = shapely.geometry.mapping(self.in_crs(DEFAULT_CRS))
        return _listify(mapped)


def _affine(xy: np.ndarray, t: Transform) -> np.ndarray:
    a, b, c, d, e, f = t
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([a * x + b * y + c, d * x + e * y + f])


def _listify(value: Any) -> Any:
    """Tuples to lists, recursively, for JSON."""
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Feature:
    """A geometry with properties."""

    geometry: Geometry | None
    properties: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a feature."""
        geo = self.geometry.geojson() if self.geometry is not None else None
        return {"type": "Feature", "geometry": geo, "properties": dict(self.properties)}


class Image:
    """A lazy image: bands with pixel functions, properties and the grid it is bounded to."""

    def __init__(
        self,
        bands: list[Band],
        properties: dict[str, Any] | None = None,
        *,
        sources: frozenset[str] = frozenset(),
        image_id: str | None = None,
        grid: Grid | None = None,
        footprint: Geometry | None = None,
    ) -> None:
        self.band_list = list(bands)
        self.properties = dict(properties or {})
        self.sources = sources
        self.image_id = image_id
        self.grid = grid
        self.footprint = footprint

    @property
    def bands(self) -> list[BandInfo]:
        """Metadata of the bands, in order."""
        return [b.info for b in self.band_list]

    def derive(self, bands: list[Band], *, keep_properties: bool = True, **changes: Any) -> Image:
        """A new image from this one with other bands (and optionally other attributes)."""
        attrs: dict[str, Any] = {
            "sources": self.sources,
            "image_id": None,
            "grid": self.grid,
            "footprint": self.footprint,
        }
        attrs.update(changes)
        props = self.properties if keep_properties else {}
        return Image(bands, props, **attrs)

    def bounded_grid(self) -> Grid | None:
        """The pixel grid fixed by clipToBoundsAndScale, else None."""
        return self.grid

    def work(self, width: int, height: int) -> int:
        """Cost estimate: pixels x bands x source images feeding them."""
        return width * height * max(1, len(self.band_list)) * max(1, len(self.sources))

    def render(
        self,
        crs: str,
        transform: tuple[float, ...],
        width: int,
        height: int,
        band_ids: list[str] | None = None,
    ) -> Rendered:
        """Compute pixels of the selected bands on a request grid."""
        by_id = {b.info.id: b for b in self.band_list}
        chosen = list(by_id) if band_ids is None else list(band_ids)
        missing = [b for b in chosen if b not in by_id]
        if missing:
            names = ", ".join(by_id)
            raise EvaluationError(
                f"Image.select: Pattern '{missing[0]}' did not match any bands. "
                f"Available bands: [{names}]"
            )
        a, b, c, d, e, f = (float(v) for v in transform)
        req = RenderRequest(crs, (a, b, c, d, e, f), int(width), int(height))
        data: list[np.ndarray] = []
        valid: list[np.ndarray] = []
        for name in chosen:
            band = by_id[name]
            values, ok = band.plane(req)
            # Fresh arrays: planes may be shared between bands within one render.
            data.append(np.array(np.broadcast_to(values, req.shape), dtype=band.info.dtype))
            valid.append(np.array(np.broadcast_to(ok, req.shape), dtype=bool))
        return Rendered(chosen, data, valid)

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of an image."""
        bands = []
        for b in self.band_list:
            entry: dict[str, Any] = {
                "id": b.info.id,
                "data_type": b.ptype.info(),
                "crs": b.info.crs,
                "crs_transform": list(b.info.transform),
            }
            if b.info.dimensions is not None:
                entry["dimensions"] = list(b.info.dimensions)
            bands.append(entry)
        out: dict[str, Any] = {"type": "Image", "bands": bands}
        if self.image_id is not None:
            out["id"] = self.image_id
            out["version"] = 1700000000000000
        out["properties"] = _listify(self.properties)
        return out


@dataclass(frozen=True, eq=False)
class ImageCollection:
    """An ordered list of images with collection properties."""

    images: tuple[Image, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    collection_id: str | None = None

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of an image collection."""
        out: dict[str, Any] = {"type": "ImageCollection", "bands": []}
        if self.collection_id is not None:
            out["id"] = self.collection_id
        out["features"] = [img.info() for img in self.images]
        out["properties"] = _listify(self.properties)
        return out


@dataclass(frozen=True, eq=False)
class FeatureCollection:
    """An ordered list of features."""

    features: tuple[Feature, ...]

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a feature collection."""
        return {"type": "FeatureCollection", "features": [f.info() for f in self.features]}


@dataclass(frozen=True)
class DateRange:
    """A half-open range of milliseconds since the epoch."""

    start: float
    end: float

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a date range."""
        return {"type": "DateRange", "dates": [_plain_number(self.start), _plain_number(self.end)]}


@dataclass(frozen=True)
class Date:
    """A point in time in milliseconds since the epoch."""

    millis: float

    def info(self) -> dict[str, Any]:
        """EE's getInfo shape of a date."""
        return {"type": "Date", "value": _plain_number(self.millis)}


@dataclass(frozen=True, eq=False)
class Filter:
    """A predicate on collection elements."""

    test: Callable[[Any], bool]


@dataclass(frozen=True)
class Reducer:
    """A named per-pixel reducer (median, mean, min, max, ...)."""

    name: str


@dataclass(frozen=True, eq=False)
class Function:
    """A user function (functionDefinitionValue) closed over its expression values."""

    argument_names: tuple[str, ...]
    call: Callable[[dict[str, Any]], Any]
