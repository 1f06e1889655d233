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
    """A request grid plus a per-render memo shared by all bands (one render, one memo).

    Planes are kept only while someone still needs them: ``declare`` counts, over the bands'
    declared inputs, how many consumers each band has; a band with more than one keeps its
    plane until the last consumer took it (``Band.plane``). Other shared per-render values
    (landscape, clouds, masks) live in ``memo``.
    """

    crs: str
    transform: Transform
    width: int
    height: int
    memo: dict[Any, Any] = field(default_factory=dict)
    uses: dict[int, int] = field(default_factory=dict)
    planes: dict[int, list[Any]] = field(default_factory=dict)
    seen: dict[int, Band] = field(default_factory=dict)

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

    @cached_property
    def canvas(self) -> pixels.Canvas:
        """The request grid as the pixel functions see it."""
        return pixels.Canvas(self.lattice, self.crs, self.geographic, self.memo)

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (height, width)."""
        return (self.height, self.width)

    def release(self) -> None:
        """Drop everything this request computed."""
        self.memo.clear()
        self.planes.clear()
        self.seen.clear()

    def declare(self, roots: list[Band]) -> None:
        """Count one more consumer for each root, and (once per band) for its inputs."""
        stack = list(roots)
        for band in roots:
            self.uses[id(band)] = self.uses.get(id(band), 0) + 1
        while stack:
            band = stack.pop()
            if id(band) in self.seen:
                continue
            self.seen[id(band)] = band  # keeps the band alive, so its id stays unique
            for source in band.inputs:
                self.uses[id(source)] = self.uses.get(id(source), 0) + 1
                stack.append(source)


@dataclass(frozen=True, eq=False)
class Band:
    """A band of an image: its metadata, pixel type, a pixel function on request grids and the
    bands that function reads (each ``plane`` call of an input is declared once)."""

    info: BandInfo
    ptype: PixelType
    compute: Callable[[RenderRequest], Plane]
    inputs: tuple[Band, ...] = ()
    derived: dict[str, Band] = field(default_factory=dict, repr=False)  # memo of views

    def plane(self, req: RenderRequest) -> Plane:
        """Pixels on ``req``, computed once per render even when the band is shared."""
        uses = req.uses.get(id(self), 0)
        if uses <= 1:
            return self.compute(req)
        entry = req.planes.get(id(self))
        if entry is None:
            entry = [self.compute(req), uses]
            req.planes[id(self)] = entry
        entry[1] -= 1
        if entry[1] <= 0:
            del req.planes[id(self)]
        return entry[0]

    def with_info(self, **changes: Any) -> Band:
        """The same pixels under changed metadata."""
        return Band(replace(self.info, **changes), self.ptype, self.compute, self.inputs)


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
        if self.proj.crs == crs or CRS.from_user_input(self.proj.crs) == CRS.from_user_input(crs):
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
    """A lazy image: bands with pixel functions, properties and the grid it is bounded to.

    ``footprint`` is the geometry filters see (``.geo``); ``extent``, when not None, is a
    lon/lat geometry outside which no pixel of the image is valid (a scene's footprint,
    kept through masks and arithmetic, dropped by ``unmask``): composites use it to leave out
    images that cannot touch a request. ``source_count`` overrides ``len(sources)`` in
    ``work`` when the sources are only known per request; ``source_estimate(request)``, when
    set, says how many sources can reach a given request (it sizes the render's strips).
    """

    def __init__(
        self,
        bands: list[Band] | Callable[[], list[Band]],
        properties: dict[str, Any] | None = None,
        *,
        sources: frozenset[str] = frozenset(),
        image_id: str | None = None,
        grid: Grid | None = None,
        footprint: Geometry | None = None,
        extent: Geometry | None = None,
        source_count: int | None = None,
        source_estimate: Callable[[RenderRequest], int] | None = None,
    ) -> None:
        self._bands = bands if callable(bands) else list(bands)
        self.properties = dict(properties or {})
        self.sources = sources
        self.image_id = image_id
        self.grid = grid
        self.footprint = footprint
        self.extent = extent
        self.source_count = source_count
        self.source_estimate = source_estimate

    @property
    def band_list(self) -> list[Band]:
        """The bands, built on first use when the image was given a band factory (catalog
        scenes are filtered by their properties long before anyone asks for pixels)."""
        if callable(self._bands):
            self._bands = list(self._bands())
        return self._bands

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
            "extent": self.extent,
            "source_count": self.source_count,
            "source_estimate": self.source_estimate,
        }
        attrs.update(changes)
        props = self.properties if keep_properties else {}
        return Image(bands, props, **attrs)

    def bounded_grid(self) -> Grid | None:
        """The pixel grid fixed by clipToBoundsAndScale, else None."""
        return self.grid

    @property
    def sources_fed(self) -> int:
        """How many source images feed a pixel (at least 1)."""
        count = self.source_count if self.source_count is not None else len(self.sources)
        return max(1, count)

    def work(self, width: int, height: int) -> int:
        """Cost estimate: pixels x bands x source images feeding them."""
        return width * height * max(1, len(self.band_list)) * self.sources_fed

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
        width, height = int(width), int(height)
        bands = [by_id[name] for name in chosen]
        data = [np.empty((height, width), dtype=b.info.dtype) for b in bands]
        valid = [np.empty((height, width), dtype=bool) for _ in bands]
        sources = self.sources_fed
        if self.source_estimate is not None:
            whole = RenderRequest(crs, (a, b, c, d, e, f), width, height)
            sources = max(1, self.source_estimate(whole))
        rows = strip_rows(width, height, sources)
        for top in range(0, height, rows):
            # A strip is a window of the grid: the same lattice, so the same pixels.
            strip = min(rows, height - top)
            req = RenderRequest(crs, (a, b, c + top * b, d, e, f + top * e), width, strip)
            req.declare(bands)
            for band, out, ok_out in zip(bands, data, valid, strict=True):
                values, ok = band.plane(req)
                rows_out, ok_rows = out[top : top + strip], ok_out[top : top + strip]
                ok_rows[...] = np.broadcast_to(ok, req.shape)
                if ok.shape == (1, 1) and not ok[0, 0]:
                    rows_out[...] = 0
                    continue
                rows_out[...] = np.broadcast_to(values, req.shape)
                if ok.shape != (1, 1):
                    # Masked pixels read 0 whichever window computed them.
                    np.copyto(rows_out, 0, where=~ok_rows)
            # The memo holds cycles (per-image values point back at the canvas); free the
            # strip's planes now rather than whenever the garbage collector runs.
            req.release()
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


STRIP_BYTES = 96 * 2**20
_BYTES_PER_SOURCE_PIXEL = 24
_BYTES_PER_PIXEL = 96


def strip_rows(width: int, height: int, sources: int) -> int:
    """Rows per strip so that one strip's working set stays near ``STRIP_BYTES``.

    A composite of n images holds a few planes per image while it reduces a band; a strip of
    the request bounds that, whatever the request's size.
    """
    per_pixel = _BYTES_PER_PIXEL + _BYTES_PER_SOURCE_PIXEL * max(1, sources)
    return max(1, min(height, STRIP_BYTES // (per_pixel * max(1, width))))


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
    """A predicate on collection elements; ``spec`` says what a catalog query may narrow by
    (``("date", start, end)``, ``("region", lon/lat shape)``, ``("in", property, values)``,
    ``("and", specs)``), None when nothing can be pushed down."""

    test: Callable[[Any], bool]
    spec: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Reducer:
    """A named per-pixel reducer (median, mean, min, max, ...)."""

    name: str


@dataclass(frozen=True, eq=False)
class Function:
    """A user function (functionDefinitionValue) closed over its expression values."""

    argument_names: tuple[str, ...]
    call: Callable[[dict[str, Any]], Any]
