"""Evaluate serialized Earth Engine expressions into emulator values.

The input is what the ``ee`` client sends on the wire (``{"result": "0", "values": {...}}``,
``ee.serializer.encode(obj, for_cloud_api=True)``). Values are built lazily: an image is a list
of bands whose pixel functions run only when the server renders the image.
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
import shapely
import shapely.geometry
from rasterio.warp import transform as warp_transform

from engine.emulator import catalog, pixels
from engine.emulator.model import (
    DEFAULT_CRS,
    IDENTITY,
    Band,
    BandInfo,
    Date,
    DateRange,
    EvaluationError,
    Feature,
    FeatureCollection,
    Filter,
    Function,
    Geometry,
    Image,
    ImageCollection,
    PixelType,
    Plane,
    Projection,
    Reducer,
    Rendered,
    RenderRequest,
    Transform,
)

__all__ = ["BandInfo", "EvaluationError", "Image", "Rendered", "evaluate", "to_info"]

Args = dict[str, Any]


# --------------------------------------------------------------------------- expressions


class _Scope:
    """Argument bindings of one function call and the value cache that goes with them."""

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.args = dict(args)
        self.cache: dict[str, Any] = {}


class _Evaluator:
    """Walks one expression's value graph."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def reference(self, name: str, scope: _Scope) -> Any:
        if name in scope.cache:
            return scope.cache[name]
        if name not in self.values:
            raise EvaluationError(f"Invalid expression: unknown value reference '{name}'.")
        result = self.node(self.values[name], scope)
        scope.cache[name] = result
        return result

    def node(self, node: Any, scope: _Scope) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise EvaluationError(f"Invalid expression node: {str(node)[:200]}")
        ((kind, body),) = node.items()
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "valueReference":
            return self.reference(body, scope)
        if kind == "argumentReference":
            if body not in scope.args:
                raise EvaluationError(f"Invalid expression: unbound argument '{body}'.")
            return scope.args[body]
        if kind == "arrayValue":
            return [self.node(v, scope) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self.node(v, scope) for k, v in body.get("values", {}).items()}
        if kind == "functionDefinitionValue":
            return self.definition(body)
        if kind == "functionInvocationValue":
            return self.invocation(body, scope)
        if kind == "bytesValue":
            raise EvaluationError("bytesValue is not supported by the emulator.")
        raise EvaluationError(f"Invalid expression node kind: {kind}")

    def definition(self, body: Mapping[str, Any]) -> Function:
        names = tuple(body.get("argumentNames", []))
        result_ref = body["body"]

        def call(args: dict[str, Any]) -> Any:
            return self.reference(result_ref, _Scope(args))

        return Function(names, call)

    def invocation(self, body: Mapping[str, Any], scope: _Scope) -> Any:
        args = {k: self.node(v, scope) for k, v in body.get("arguments", {}).items()}
        if "functionReference" in body:
            fn = self.reference(body["functionReference"], scope)
            if not isinstance(fn, Function):
                raise EvaluationError("Invalid expression: functionReference is not a function.")
            return fn.call(args)
        name = body.get("functionName")
        impl = _FUNCTIONS.get(name or "")
        if impl is None or name is None:
            raise EvaluationError(f"Unknown function: {name}")
        return impl(name, args)


def evaluate(expression: dict[str, Any]) -> object:
    """Evaluate a wire-format expression into an emulator value."""
    if not isinstance(expression, dict) or "result" not in expression:
        raise EvaluationError("Invalid expression: missing 'result'.")
    values = expression.get("values") or {}
    try:
        return _Evaluator(values).reference(expression["result"], _Scope({}))
    except RecursionError as exc:
        raise EvaluationError("Invalid expression: nested too deeply.") from exc
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        # A malformed expression (wrong shapes, missing keys) is the caller's error, as in EE.
        raise EvaluationError(f"Invalid expression: {type(exc).__name__}: {exc}") from exc


def to_info(value: object) -> object:
    """The JSON-able result of value:compute for a value, in EE's shapes."""
    if isinstance(value, LazyCollection):
        value = value.generated
        if len(_elements(value)) > catalog.LIST_LIMIT:
            raise EvaluationError(
                f"Collection query aborted after accumulating over {catalog.LIST_LIMIT} elements."
            )
    if isinstance(value, Geometry):
        return value.geojson()
    if isinstance(value, Image | ImageCollection | FeatureCollection | Feature):
        return value.info()
    if isinstance(value, Projection | DateRange | Date):
        return value.info()
    if isinstance(value, list | tuple):
        return [to_info(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_info(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    kind = type(value).__name__
    raise EvaluationError(f"A {kind} cannot be returned by the emulator's value:compute.")


# --------------------------------------------------------------------------- arguments


def _arg(fname: str, args: Args, name: str, default: Any = None, *, required: bool = False) -> Any:
    if name in args and args[name] is not None:
        return args[name]
    if required:
        raise EvaluationError(f"{fname}, argument '{name}': Parameter '{name}' is required.")
    return default


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "List"
    return type(value).__name__


def _bad_type(fname: str, name: str, expected: str, value: Any) -> EvaluationError:
    return EvaluationError(
        f"{fname}, argument '{name}': Invalid type.\nExpected type: {expected}.\n"
        f"Actual type: {_type_name(value)}."
    )


def _image_arg(fname: str, args: Args, name: str) -> Image:
    value = _arg(fname, args, name, required=True)
    if isinstance(value, Image):
        return value
    if isinstance(value, bool | int | float) or (
        isinstance(value, list) and all(isinstance(v, int | float) for v in value)
    ):
        return _constant_image(value)
    raise _bad_type(fname, name, "Image<unknown bands>", value)


def _collection_arg(fname: str, args: Args, name: str = "collection") -> Any:
    value = _arg(fname, args, name, required=True)
    if not isinstance(value, ImageCollection | FeatureCollection | LazyCollection):
        raise _bad_type(fname, name, "FeatureCollection", value)
    return value


def _geometry_arg(fname: str, args: Args, name: str, *, required: bool = True) -> Geometry | None:
    value = _arg(fname, args, name, required=required)
    if value is None:
        return None
    if isinstance(value, Geometry):
        return value
    if isinstance(value, Feature) and value.geometry is not None:
        return value.geometry
    if isinstance(value, dict) and "type" in value:
        return Geometry(shapely.geometry.shape(value))
    raise _bad_type(fname, name, "Geometry", value)


def _required_geometry(fname: str, args: Args, name: str) -> Geometry:
    geometry = _geometry_arg(fname, args, name)
    if geometry is None:
        raise EvaluationError(f"{fname}, argument '{name}': Parameter '{name}' is required.")
    return geometry


def _projection_arg(fname: str, args: Args, name: str) -> Projection | None:
    value = _arg(fname, args, name)
    if value is None:
        return None
    if isinstance(value, Projection):
        return value
    if isinstance(value, str):
        return Projection(value)
    raise _bad_type(fname, name, "Projection", value)


def _transform_arg(fname: str, value: Any) -> Transform:
    if not isinstance(value, list | tuple) or len(value) != 6:
        raise EvaluationError(f"{fname}: crsTransform must be a list of 6 numbers.")
    a, b, c, d, e, f = (float(v) for v in value)
    return (a, b, c, d, e, f)


# --------------------------------------------------------------------------- images: loading


def _ones(req: RenderRequest) -> np.ndarray:
    return np.ones((1, 1), dtype=bool)


def _empty(dtype: str) -> Plane:
    return np.zeros((1, 1), dtype=dtype), np.zeros((1, 1), dtype=bool)


def _source_compute(
    asset: catalog.Asset, index: int, footprint: Geometry | None, key: Any
) -> Callable[[RenderRequest], Plane]:
    """Pixels of a stored band, masked outside the asset's footprint (no work where it is
    all masked)."""
    spec = asset.bands[index]
    name = spec.id

    def compute(req: RenderRequest) -> Plane:
        ok = _footprint_mask(footprint, key, req) if footprint is not None else _ones(req)
        if ok.shape == (1, 1) and not ok[0, 0]:
            return _empty(spec.dtype)
        canvas = req.canvas
        if asset.kind == "s2":
            data = pixels.s2_band(canvas, asset, name, index)
        elif asset.kind == "landsat":
            data = pixels.landsat_band(canvas, asset, name, index)
        elif asset.kind == "glo30":
            data = pixels.glo30_band(canvas, asset, name)
        elif asset.kind == "srtm":
            data, ok = pixels.srtm_band(canvas, asset)
        elif asset.kind == "worldcover":
            data, ok = pixels.land_cover(canvas, asset)
        else:
            raise EvaluationError(f"No pixels for asset kind {asset.kind}.")
        return data, ok

    return compute


def _asset_image(asset: catalog.Asset) -> Image:
    footprint = None
    key = None
    if asset.footprint is not None:
        footprint = Geometry(shapely.geometry.shape(asset.footprint))
        # Scenes of one tile and orbit share a footprint: their masks are computed once.
        key = ("footprint", tuple(tuple(p) for p in asset.footprint["coordinates"][0]))

    def bands() -> list[Band]:
        return [
            Band(
                BandInfo(spec.id, spec.dtype, spec.crs, spec.transform, spec.dimensions),
                PixelType.of_dtype(spec.dtype),
                _source_compute(asset, i, footprint, key),
            )
            for i, spec in enumerate(asset.bands)
        ]

    return Image(
        bands,
        asset.properties,
        sources=frozenset({asset.id}),
        image_id=asset.id,
        footprint=footprint,
        extent=footprint,
    )


def _image_load(fname: str, args: Args) -> Image:
    asset_id = _arg(fname, args, "id", required=True)
    asset = catalog.find_image(str(asset_id))
    if asset is None:
        raise EvaluationError(
            f"Image.load: Image asset '{asset_id}' not found "
            "(does not exist or caller does not have access)."
        )
    return _asset_image(asset)


def _collection_load(fname: str, args: Args) -> LazyCollection:
    asset_id = str(_arg(fname, args, "id", required=True))
    if not catalog.is_collection(asset_id):
        raise EvaluationError(
            f"ImageCollection.load: ImageCollection asset '{asset_id}' not found "
            "(does not exist or caller does not have access)."
        )
    return LazyCollection(catalog.Query(asset_id))


def _constant_ptype(value: float) -> PixelType:
    if isinstance(value, (bool, int)) or float(value).is_integer():
        return PixelType("int", int(value), int(value))
    return PixelType("double", float(value), float(value))


def _constant_image(value: Any) -> Image:
    values = value if isinstance(value, list) else [value]
    bands = []
    for i, v in enumerate(values):
        ptype = _constant_ptype(v)
        name = "constant" if i == 0 else f"constant_{i}"
        scalar = np.full((1, 1), v, dtype=ptype.dtype)

        def compute(req: RenderRequest, scalar: np.ndarray = scalar) -> Plane:
            return scalar, _ones(req)

        bands.append(Band(BandInfo(name, ptype.dtype, DEFAULT_CRS, IDENTITY, None), ptype, compute))
    return Image(bands, {})


def _image_constant(fname: str, args: Args) -> Image:
    value = _arg(fname, args, "value", required=True)
    if not isinstance(value, int | float | list):
        raise _bad_type(fname, "value", "Object", value)
    return _constant_image(value)


# --------------------------------------------------------------------------- images: bands


def _select(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "input")
    selectors = _arg(fname, args, "bandSelectors", required=True)
    if not isinstance(selectors, list):
        selectors = [selectors]
    names = [b.info.id for b in image.band_list]
    chosen: list[int] = []
    for sel in selectors:
        if isinstance(sel, int) and not isinstance(sel, bool):
            if not -len(names) <= sel < len(names):
                raise EvaluationError(f"Image.select: Band index out of bounds: {sel}.")
            chosen.append(sel % len(names))
            continue
        if not isinstance(sel, str):
            raise EvaluationError(f"Image.select: Invalid band selector: {sel!r}.")
        try:
            pattern = re.compile(sel)
        except re.error as exc:
            raise EvaluationError(f"Image.select: Invalid band pattern '{sel}': {exc}") from exc
        hits = [i for i, n in enumerate(names) if pattern.fullmatch(n)]
        if not hits:
            raise EvaluationError(
                f"Image.select: Pattern '{sel}' did not match any bands. "
                f"Available bands: [{', '.join(names)}]"
            )
        chosen.extend(hits)
    bands = [image.band_list[i] for i in chosen]
    new_names = _arg(fname, args, "newNames")
    if new_names is not None:
        bands = _renamed(fname, bands, new_names)
    return image.derive(bands)


def _renamed(fname: str, bands: list[Band], names: Any) -> list[Band]:
    if not isinstance(names, list) or len(names) != len(bands):
        count = len(names) if isinstance(names, list) else 1
        raise EvaluationError(
            f"{fname}: The number of band names ({count}) does not match the number "
            f"of bands ({len(bands)})."
        )
    return [b.with_info(id=str(n)) for b, n in zip(bands, names, strict=True)]


def _rename(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "input")
    names = _arg(fname, args, "names", required=True)
    return image.derive(_renamed(fname, image.band_list, names))


def _slice(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "image")
    start = int(_arg(fname, args, "start", required=True))
    end = _arg(fname, args, "end")
    bands = image.band_list[start : None if end is None else int(end)]
    return image.derive(bands)


def _add_bands(fname: str, args: Args) -> Image:
    dst = _image_arg(fname, args, "dstImg")
    src = _image_arg(fname, args, "srcImg")
    overwrite = bool(_arg(fname, args, "overwrite", False))
    names = _arg(fname, args, "names")
    extra = src.band_list
    if names is not None:
        wanted = set(names)
        extra = [b for b in extra if b.info.id in wanted]
    bands = list(dst.band_list)
    for b in extra:
        same = [i for i, old in enumerate(bands) if old.info.id == b.info.id]
        if same and not overwrite:
            raise EvaluationError(
                f"Image.addBands: Can't add a band named '{b.info.id}' to image because a band "
                "with this name already exists. Existing bands: "
                f"[{', '.join(x.info.id for x in bands)}]."
            )
        if same:
            bands[same[0]] = b
        else:
            bands.append(b)
    return dst.derive(bands, sources=dst.sources | src.sources)


def _band_names(fname: str, args: Args) -> list[str]:
    return [b.info.id for b in _image_arg(fname, args, "image").band_list]


# --------------------------------------------------------------------------- images: masks


def _pair_bands(fname: str, one: Image, two: Image) -> list[tuple[Band, Band, Band]]:
    """Pairs of bands to combine, plus the band whose metadata the result keeps."""
    n1, n2 = len(one.band_list), len(two.band_list)
    if n1 == n2:
        return [(a, b, a) for a, b in zip(one.band_list, two.band_list, strict=True)]
    if n2 == 1:
        return [(a, two.band_list[0], a) for a in one.band_list]
    if n1 == 1:
        return [(one.band_list[0], b, b) for b in two.band_list]
    raise EvaluationError(
        f"{fname}: Images must contain the same number of bands or only 1 band. Got {n1} and {n2}."
    )


def _both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a & b`` for validity planes, skipping the work when one side is 1 x 1."""
    if b.shape == (1, 1):
        return a if b[0, 0] else b
    if a.shape == (1, 1):
        return b if a[0, 0] else a
    return a & b


def _nonzero(mband: Band) -> Band:
    """The band "valid and non-zero" of a mask band: one per mask band, so every band masked by
    it shares its plane within a render."""
    found = mband.derived.get("nonzero")
    if found is None:

        def compute(req: RenderRequest) -> Plane:
            mdata, mok = mband.plane(req)
            return _both(mok, mdata != 0), _ones(req)

        info = replace(mband.info, dtype="uint8")
        found = Band(info, PixelType("int", 0, 1), compute, (mband,))
        mband.derived["nonzero"] = found
    return found


def _update_mask(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "image")
    mask = _image_arg(fname, args, "mask")
    n1, n2 = len(image.band_list), len(mask.band_list)
    if n2 not in (1, n1):
        raise EvaluationError(
            f"{fname}: Mask must have the same number of bands as the image, or 1 band. "
            f"Got {n2} mask bands for {n1} image bands."
        )
    bands = []
    for i, band in enumerate(image.band_list):
        mband = mask.band_list[0 if n2 == 1 else i]

        keep = _nonzero(mband)

        def compute(req: RenderRequest, band: Band = band, keep: Band = keep) -> Plane:
            data, ok = band.plane(req)
            return data, _both(ok, keep.plane(req)[0])

        bands.append(Band(band.info, band.ptype, compute, (band, keep)))
    return image.derive(bands, sources=image.sources | mask.sources)


def _each_band(
    image: Image,
    plane: Callable[[Band, RenderRequest], Plane],
    *,
    dtype: str | None = None,
    ptype: PixelType | None = None,
) -> Image:
    """An image made band by band from ``image``'s: ``plane(band, req)`` renders each, with
    the band's type unless ``dtype``/``ptype`` say otherwise."""
    bands = []
    for band in image.band_list:

        def compute(req: RenderRequest, band: Band = band) -> Plane:
            return plane(band, req)

        info = band.info if dtype is None else replace(band.info, dtype=dtype)
        bands.append(Band(info, ptype or band.ptype, compute, (band,)))
    return image.derive(bands)


def _mask_of(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "image")
    if args.get("mask") is not None:
        return _update_mask(fname, args)

    def plane(band: Band, req: RenderRequest) -> Plane:
        _, ok = band.plane(req)
        return np.broadcast_to(ok, req.shape).astype(np.uint8), _ones(req)

    return _each_band(image, plane, dtype="uint8", ptype=PixelType("int", 0, 1))


def _self_mask(fname: str, args: Args) -> Image:

    def plane(band: Band, req: RenderRequest) -> Plane:
        data, ok = band.plane(req)
        return data, ok & (data != 0)

    return _each_band(_image_arg(fname, args, "image"), plane)


def _unmask(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "input")
    value = _image_arg(fname, {"value": args.get("value", 0) or 0}, "value")
    bands = []
    for band, vband, _ in _pair_bands(fname, image, value):
        ptype = _union(band.ptype, vband.ptype)
        dtype = ptype.dtype

        def compute(
            req: RenderRequest, band: Band = band, vband: Band = vband, dtype: str = dtype
        ) -> Plane:
            data, ok = band.plane(req)
            vdata, vok = vband.plane(req)
            out = np.where(ok, data.astype(dtype), vdata.astype(dtype))
            return out, ok | vok

        bands.append(Band(replace(band.info, dtype=dtype), ptype, compute, (band, vband)))
    return image.derive(bands, sources=image.sources | value.sources, extent=None)


def _inside(shape: Any, req: RenderRequest) -> np.ndarray:
    """True where a pixel's canonical centre lies in the interior of ``shape`` (request CRS).

    Every shortcut gives exactly what ``contains_xy`` would give pixel by pixel, so a tile
    and the whole grid agree whichever path each one takes.
    """
    lat = req.lattice
    xs, ys = lat.x_centres, lat.y_centres
    if req.width > 1 and req.height > 1:
        centres = shapely.box(xs.min(), ys.min(), xs.max(), ys.max())
        if shape.contains_properly(centres):
            return np.ones((1, 1), dtype=bool)
        if shape.disjoint(centres):
            return np.zeros((1, 1), dtype=bool)
    minx, miny, maxx, maxy = shape.bounds
    if shape.geom_type == "Polygon" and shape.equals(shapely.box(minx, miny, maxx, maxy)):
        rows = (ys > miny) & (ys < maxy)
        cols = (xs > minx) & (xs < maxx)
        return rows[:, np.newaxis] & cols[np.newaxis, :]
    mask = np.zeros(req.shape, dtype=bool)
    cols = np.flatnonzero((xs >= minx) & (xs <= maxx))
    rows = np.flatnonzero((ys >= miny) & (ys <= maxy))
    if cols.size and rows.size:
        shapely.prepare(shape)
        gx, gy = np.meshgrid(xs[cols], ys[rows])
        mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = shapely.contains_xy(shape, gx, gy)
    return mask


def _clip_mask(geometry: Geometry, req: RenderRequest) -> np.ndarray:
    """Pixels of ``req`` inside ``geometry``, computed once per render."""
    key = ("clip", id(geometry))
    found = req.memo.get(key)
    if found is None:
        found = (_inside(geometry.in_crs(req.crs), req), geometry)
        req.memo[key] = found
    return found[0]


def _clip(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "input")
    geometry = _required_geometry(fname, args, "geometry")

    def plane(band: Band, req: RenderRequest) -> Plane:
        data, ok = band.plane(req)
        return data, _both(ok, _clip_mask(geometry, req))

    return _each_band(image, plane)


def _scanline(ring: np.ndarray, req: RenderRequest) -> np.ndarray:
    """Pixels whose canonical centre is inside a simple polygon ring (request CRS units).

    Even-odd crossings per row: an edge from (x0, y0) to (x1, y1) crosses a row at height y
    when exactly one end lies above it, at ``x0 + (y - y0) * (x1 - x0) / (y1 - y0)``; a pixel is
    inside between the first and second crossing, the third and fourth, and so on. A row's
    crossings depend only on its own y, so a tile and the whole grid agree pixel for pixel.
    """
    lat = req.lattice
    xs, ys = lat.x_centres, lat.y_centres
    west, south = ring.min(axis=0)
    east, north = ring.max(axis=0)
    if xs.max() < west or xs.min() > east or ys.max() < south or ys.min() > north:
        return np.zeros((1, 1), dtype=bool)
    x0, y0 = ring[:-1, 0], ring[:-1, 1]
    x1, y1 = ring[1:, 0], ring[1:, 1]
    row_y = ys[:, np.newaxis]
    crosses = (y0 > row_y) != (y1 > row_y)
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    at = np.where(crosses, x0 + (row_y - y0) * (x1 - x0) / dy, np.inf)
    at.sort(axis=1)
    inside = np.zeros(req.shape, dtype=bool)
    for k in range(0, at.shape[1] - 1, 2):
        lo, hi = at[:, k], at[:, k + 1]
        if not np.isfinite(hi).any():
            break
        inside |= (xs[np.newaxis, :] > lo[:, np.newaxis]) & (xs[np.newaxis, :] < hi[:, np.newaxis])
    return inside


def _footprint_mask(footprint: Geometry, key: Any, req: RenderRequest) -> np.ndarray:
    """A scene's validity from its footprint, once per render for every scene sharing it."""
    found = req.memo.get(key)
    if found is None:
        shape = footprint.in_crs(req.crs)
        if shape.geom_type == "Polygon" and not shape.interiors:
            found = _scanline(np.asarray(shape.exterior.coords, dtype=np.float64), req)
        else:
            found = _inside(shape, req)
        req.memo[key] = found
    return found


def _window_lonlat(req: RenderRequest) -> Any:
    """A lon/lat polygon holding every pixel centre of the request (prepared, memoised)."""
    key = ("window", "lonlat")
    found = req.memo.get(key)
    if found is None:
        lat = req.lattice
        xs, ys = lat.x_centres, lat.y_centres
        pad_x, pad_y = lat.a, lat.abs_e
        x0, x1 = xs.min() - pad_x, xs.max() + pad_x
        y0, y1 = ys.min() - pad_y, ys.max() + pad_y
        t = np.linspace(0.0, 1.0, 9)
        ring_x = np.concatenate([x0 + (x1 - x0) * t, np.full(9, x1), x1 - (x1 - x0) * t,
                                 np.full(9, x0)])  # fmt: skip
        ring_y = np.concatenate([np.full(9, y0), y0 + (y1 - y0) * t, np.full(9, y1),
                                 y1 - (y1 - y0) * t])  # fmt: skip
        if not req.geographic:
            lon, lat_ = warp_transform(req.crs, DEFAULT_CRS, ring_x.tolist(), ring_y.tolist())
            ring_x, ring_y = np.asarray(lon), np.asarray(lat_)
        if not (np.isfinite(ring_x).all() and np.isfinite(ring_y).all()):
            found = shapely.box(-180.0, -90.0, 180.0, 90.0)
        else:
            found = shapely.Polygon(np.column_stack([ring_x, ring_y])).buffer(0.001)
        shapely.prepare(found)
        req.memo[key] = found
    return found


def _reaches(image: Image, req: RenderRequest) -> bool:
    """Whether an image can have valid pixels in the request (False only when certain)."""
    if image.extent is None:
        return True
    key = ("reaches", id(image.extent))
    found = req.memo.get(key)
    if found is None:
        shape = image.extent.in_crs(DEFAULT_CRS)
        found = (bool(_window_lonlat(req).intersects(shape)), image.extent)
        req.memo[key] = found
    return found[0]


# --------------------------------------------------------------------------- images: arithmetic


def _union(a: PixelType, b: PixelType) -> PixelType:
    """The smallest type holding both (EE's rule for combining pixel types)."""
    if a.precision == "int" and b.precision == "int":
        return PixelType("int", min(a.min or 0, b.min or 0), max(a.max or 0, b.max or 0))
    if "double" in (a.precision, b.precision):
        return PixelType("double")
    return PixelType("float")


def _float_of(a: PixelType, b: PixelType) -> PixelType:
    return PixelType("double") if "double" in (a.precision, b.precision) else PixelType("float")


def _range_type(a: PixelType, b: PixelType, op: Callable[[float, float], float]) -> PixelType:
    if a.precision != "int" or b.precision != "int":
        return _float_of(a, b)
    corners = [op(x, y) for x in (a.min or 0, a.max or 0) for y in (b.min or 0, b.max or 0)]
    return PixelType("int", min(corners), max(corners))


def _bitwise_type(a: PixelType, b: PixelType, kind: str) -> PixelType:
    if (a.min or 0) >= 0 and (b.min or 0) >= 0:
        if kind == "and":
            return PixelType("int", 0, min(a.max or 0, b.max or 0))
        top = max(a.max or 0, b.max or 0)
        return PixelType("int", 0, (1 << int(top).bit_length()) - 1)
    return PixelType("int", -(2**63), 2**63 - 1)


_BOOL = PixelType("int", 0, 1)
_RANGE_OPS: Mapping[str, Callable[[float, float], float]] = MappingProxyType(
    {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul}
)


def _arith(kind: str) -> Callable[[np.ndarray, np.ndarray, str], np.ndarray]:
    def run(x: np.ndarray, y: np.ndarray, dtype: str) -> np.ndarray:
        work = np.result_type(dtype, x.dtype, y.dtype) if dtype[0] != "f" else np.dtype(dtype)
        xa, ya = x.astype(work, copy=False), y.astype(work, copy=False)
        if kind == "add":
            return xa + ya
        if kind == "subtract":
            return xa - ya
        if kind == "multiply":
            return xa * ya
        if ya.shape == (1, 1) and ya[0, 0] != 0:
            return np.divide(x, ya[0, 0], dtype=work)
        shape = np.broadcast_shapes(xa.shape, ya.shape)
        return np.divide(xa, ya, out=np.zeros(shape, dtype=work), where=ya != 0)

    return run


def _compare(kind: str) -> Callable[[np.ndarray, np.ndarray, str], np.ndarray]:
    ops: dict[str, Callable[[Any, Any], np.ndarray]] = {
        "eq": np.equal,
        "neq": np.not_equal,
        "lt": np.less,
        "lte": np.less_equal,
        "gt": np.greater,
        "gte": np.greater_equal,
        "and": np.logical_and,
        "or": np.logical_or,
        "bitwiseAnd": np.bitwise_and,
        "bitwiseOr": np.bitwise_or,
    }
    op = ops[kind]

    def run(x: np.ndarray, y: np.ndarray, dtype: str) -> np.ndarray:
        return op(x, y)

    return run


def _binary(kind: str) -> Callable[[str, Args], Image]:
    """An EE binary image operator; band pairing and pixel types follow EE's rules."""

    def impl(fname: str, args: Args) -> Image:
        one = _image_arg(fname, args, "image1")
        two = _image_arg(fname, args, "image2")
        bands = []
        for a, b, meta in _pair_bands(fname, one, two):
            if kind in ("add", "subtract", "multiply"):
                ptype = _range_type(a.ptype, b.ptype, _RANGE_OPS[kind])
                run = _arith(kind)
            elif kind == "divide":
                ptype = _float_of(a.ptype, b.ptype)
                run = _arith(kind)
            elif kind in ("bitwiseAnd", "bitwiseOr"):
                if a.ptype.precision != "int" or b.ptype.precision != "int":
                    raise EvaluationError(f"{fname}: Bitwise operators need integer inputs.")
                ptype = _bitwise_type(a.ptype, b.ptype, kind[7:].lower())
                run = _compare(kind)
            else:
                ptype = _BOOL
                run = _compare(kind)
            dtype = ptype.dtype

            def compute(
                req: RenderRequest, a: Band = a, b: Band = b, run: Any = run, dtype: str = dtype
            ) -> Plane:
                x, xok = a.plane(req)
                y, yok = b.plane(req)
                return run(x, y, dtype).astype(dtype, copy=False), _both(xok, yok)

            info = BandInfo(
                meta.info.id, dtype, meta.info.crs, meta.info.transform, meta.info.dimensions
            )
            bands.append(Band(info, ptype, compute, (a, b)))
        base = one if len(one.band_list) >= len(two.band_list) else two
        # Valid only where both are: either side's extent bounds the result.
        extent = one.extent if one.extent is not None else two.extent
        return base.derive(
            bands, keep_properties=False, sources=one.sources | two.sources, extent=extent
        )

    return impl


def _not(fname: str, args: Args) -> Image:

    def plane(band: Band, req: RenderRequest) -> Plane:
        data, ok = band.plane(req)
        return (data == 0).astype(np.uint8), ok

    return _each_band(_image_arg(fname, args, "value"), plane, dtype="uint8", ptype=_BOOL)


def _cast(dtype: str) -> Callable[[str, Args], Image]:
    """EE's casts: values are truncated toward zero and clamped to the target's range."""
    ptype = PixelType.of_dtype(dtype)

    def plane(band: Band, req: RenderRequest) -> Plane:
        data, ok = band.plane(req)
        if ptype.precision != "int":
            return data.astype(dtype), ok
        values = data
        if values.dtype.kind == "f":
            values = np.nan_to_num(np.trunc(values), nan=0.0)
        info = np.iinfo(dtype)
        clipped = np.clip(values, max(info.min, -(2**63)), min(info.max, 2**63 - 1))
        return clipped.astype(dtype), ok

    def impl(fname: str, args: Args) -> Image:
        return _each_band(_image_arg(fname, args, "value"), plane, dtype=dtype, ptype=ptype)

    return impl


# --------------------------------------------------------------------------- visualisation

_UINT8 = PixelType("int", 0, 255)


def _numbers(fname: str, name: str, value: Any) -> list[float] | None:
    """EE's visualisation numbers: a number, a list, or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise EvaluationError(f"{fname}: Invalid value for '{name}': {value!r}.") from None


def _visualize(fname: str, args: Args) -> Image:
    """``Image.visualize``: 1 or 3 bands stretched min..max (with gamma or a palette) to RGB."""
    from engine import imaging

    image = _image_arg(fname, args, "image")
    wanted = _arg(fname, args, "bands")
    if isinstance(wanted, str):
        wanted = [part.strip() for part in wanted.split(",") if part.strip()]
    by_id = {b.info.id: b for b in image.band_list}
    if wanted is None:
        chosen = image.band_list[:3] if len(image.band_list) >= 3 else image.band_list[:1]
    else:
        missing = [b for b in wanted if b not in by_id]
        if missing:
            raise EvaluationError(
                f"{fname}: Pattern '{missing[0]}' did not match any bands. "
                f"Available bands: [{', '.join(by_id)}]"
            )
        chosen = [by_id[b] for b in wanted]
    if len(chosen) not in (1, 3):
        raise EvaluationError(f"{fname}: Expected 1 or 3 bands but got {len(chosen)}.")
    palette = _arg(fname, args, "palette")
    if isinstance(palette, str):
        palette = [part.strip() for part in palette.split(",") if part.strip()]
    if palette and len(chosen) != 1:
        raise EvaluationError(
            f"{fname}: Cannot provide a palette when visualizing more than one band."
        )
    count = len(chosen)
    gains = _numbers(fname, "gain", _arg(fname, args, "gain"))
    biases = _numbers(fname, "bias", _arg(fname, args, "bias"))
    try:
        if gains is not None or biases is not None:
            gain = imaging.per_band(gains, count, 1.0)
            bias = imaging.per_band(biases, count, 0.0)
            lows = [-b / g for g, b in zip(gain, bias, strict=True)]
            highs = [255.0 / g + lo for g, lo in zip(gain, lows, strict=True)]
        else:
            lows = imaging.per_band(_numbers(fname, "min", _arg(fname, args, "min")), count, 0.0)
            highs = imaging.per_band(_numbers(fname, "max", _arg(fname, args, "max")), count, 1.0)
        gammas = _numbers(fname, "gamma", _arg(fname, args, "gamma"))
        gamma = imaging.per_band(gammas, count, 1.0)[0]
        if palette:
            imaging.palette_colours(palette)
        for low, high in zip(lows, highs, strict=True):
            imaging.stretch(np.zeros((1, 1)), low, high, gamma)
    except ValueError as exc:
        raise EvaluationError(f"{fname}: {exc}") from None

    def levels(req: RenderRequest) -> tuple[list[np.ndarray], np.ndarray]:
        key = ("visualize", id(levels))
        found = req.memo.get(key)
        if found is None:
            planes, valid = [], np.ones((1, 1), dtype=bool)
            for band, low, high in zip(chosen, lows, highs, strict=True):
                data, ok = band.plane(req)
                planes.append(imaging.stretch(np.broadcast_to(data, req.shape), low, high, gamma))
                valid = _both(valid, ok)
            if palette:
                planes = imaging.apply_palette(planes[0], palette)
            found = (planes, valid)
            req.memo[key] = found
        return found

    names = ["vis-red", "vis-green", "vis-blue"] if count == 3 or palette else ["vis-gray"]
    bands = []
    for index, name in enumerate(names):

        def compute(req: RenderRequest, index: int = index) -> Plane:
            planes, valid = levels(req)
            return planes[index], valid

        info = replace(chosen[min(index, count - 1)].info, id=name, dtype="uint8")
        # ``levels`` reads the chosen bands once per render, whichever band asks first.
        bands.append(Band(info, _UINT8, compute, tuple(chosen) if index == 0 else ()))
    return image.derive(bands)


# --------------------------------------------------------------------------- projections, grids


def _projection_of(fname: str, image: Image) -> Projection:
    if not image.band_list:
        return Projection(DEFAULT_CRS, IDENTITY)
    first = image.band_list[0].info
    for band in image.band_list[1:]:
        if (band.info.crs, band.info.transform) != (first.crs, first.transform):
            raise EvaluationError(
                f"{fname}: The bands of the specified image contains different projections. "
                "Use Image.select to pick a single band."
            )
    return Projection(first.crs, first.transform)


def _image_projection(fname: str, args: Args) -> Projection:
    return _projection_of(fname, _image_arg(fname, args, "image"))


def _projection(fname: str, args: Args) -> Projection:
    crs = _arg(fname, args, "crs", required=True)
    transform = _arg(fname, args, "transform")
    if isinstance(crs, Projection):
        base = crs
    elif isinstance(crs, str):
        base = Projection(crs)
    else:
        raise _bad_type(fname, "crs", "Object", crs)
    if transform is not None:
        return Projection(base.crs, _transform_arg(fname, transform))
    return base


def _nominal_scale(fname: str, args: Args) -> float:
    proj = _projection_arg(fname, args, "proj")
    if proj is None:
        raise EvaluationError(f"{fname}, argument 'proj': Parameter 'proj' is required.")
    return proj.nominal_scale()


def _scaled_projection(fname: str, args: Args) -> Projection:
    proj = _projection_arg(fname, args, "crs")
    if proj is None:
        raise EvaluationError(f"{fname}, argument 'crs': Parameter 'crs' is required.")
    transform = _arg(fname, args, "crsTransform")
    scale = _arg(fname, args, "scale")
    if transform is not None:
        return Projection(proj.crs, _transform_arg(fname, transform))
    if scale is not None:
        size = float(scale)
        if proj.geographic:
            size /= pixels.METRES_PER_DEGREE
        return Projection(proj.crs, (size, 0.0, 0.0, 0.0, -size, 0.0))
    return proj


def _reproject(fname: str, args: Args) -> Image:
    """Changes band projections; pixels are always rendered directly on the request grid."""
    image = _image_arg(fname, args, "image")
    proj = _scaled_projection(fname, args)
    bands = [
        b.with_info(crs=proj.crs, transform=proj.transform, dimensions=None)
        for b in image.band_list
    ]
    return image.derive(bands, grid=None)


def _grid_for(fname: str, image: Image, args: Args) -> Any:
    from engine import grid as gridmod

    proj = _projection_of(fname, image)
    geometry = _geometry_arg(fname, args, "geometry", required=False)
    scale = _arg(fname, args, "scale")
    width = _arg(fname, args, "width")
    height = _arg(fname, args, "height")
    max_dim = _arg(fname, args, "maxDimension")
    if geometry is None:
        dims = image.band_list[0].info.dimensions if image.band_list else None
        if dims is None:
            raise EvaluationError(f"{fname}: Unable to compute bounds of an unbounded image.")
        return gridmod.grid_from_transform(proj.crs, proj.transform, dims[1], dims[0])
    same_proj = geometry.proj == proj
    if same_proj and scale is None and width is None and height is None and max_dim is None:
        x0, y0, x1, y1 = geometry.shape.bounds
        c0, r0 = math.floor(x0 + 1e-9), math.floor(y0 + 1e-9)
        c1, r1 = math.ceil(x1 - 1e-9), math.ceil(y1 - 1e-9)
        a, b, c, d, e, f = proj.transform
        transform = (a, b, c + c0 * a + r0 * b, d, e, f + c0 * d + r0 * e)
        return gridmod.grid_from_transform(proj.crs, transform, max(r1 - r0, 1), max(c1 - c0, 1))
    if width is None and height is None and max_dim is None:
        size = float(scale) if scale is not None else proj.nominal_scale()
        return gridmod.grid_from_region(geometry.geojson(), proj.crs, size)
    minx, miny, maxx, maxy = geometry.in_crs(proj.crs).bounds
    span_x, span_y = maxx - minx, maxy - miny
    if width is None or height is None:
        if width is None and height is None:
            longest = max(span_x, span_y) or 1.0
            width = max(1, round(int(max_dim) * span_x / longest))
            height = max(1, round(int(max_dim) * span_y / longest))
        elif width is None:
            width = max(1, round(int(height) * span_x / (span_y or 1.0)))
        else:
            height = max(1, round(int(width) * span_y / (span_x or 1.0)))
    w, h = int(width), int(height)
    transform = (span_x / w, 0.0, minx, 0.0, -span_y / h, maxy)
    return gridmod.grid_from_transform(proj.crs, transform, h, w)


def _clip_to_bounds_and_scale(fname: str, args: Args) -> Image:
    image = _image_arg(fname, args, "input")
    try:
        grid = _grid_for(fname, image, args)
    except ValueError as exc:
        raise EvaluationError(f"{fname}: {exc}") from exc
    transform = tuple(float(v) for v in grid.transform)
    dims = (int(grid.width), int(grid.height))
    bands = [
        b.with_info(crs=grid.crs, transform=transform, dimensions=dims) for b in image.band_list
    ]
    return image.derive(bands, grid=grid)


# --------------------------------------------------------------------------- geometry


def _crs_of(fname: str, args: Args) -> Projection:
    return _projection_arg(fname, args, "crs") or Projection(DEFAULT_CRS)


def _polygon_rings(coords: Any) -> list[Any]:
    if coords and isinstance(coords[0], int | float):
        coords = [list(zip(coords[0::2], coords[1::2], strict=True))]
    elif coords and coords[0] and isinstance(coords[0][0], int | float):
        coords = [coords]
    return coords


def _polygon(fname: str, args: Args) -> Geometry:
    rings = _polygon_rings(_arg(fname, args, "coordinates", required=True))
    try:
        shape = shapely.Polygon(rings[0], rings[1:])
    except (ValueError, TypeError, IndexError) as exc:
        raise EvaluationError(f"{fname}: Invalid polygon coordinates: {exc}") from exc
    return Geometry(shape, _crs_of(fname, args))


def _multipolygon(fname: str, args: Args) -> Geometry:
    coords = _arg(fname, args, "coordinates", required=True)
    try:
        parts = [shapely.Polygon(p[0], p[1:]) for p in (_polygon_rings(c) for c in coords)]
    except (ValueError, TypeError, IndexError) as exc:
        raise EvaluationError(f"{fname}: Invalid polygon coordinates: {exc}") from exc
    return Geometry(shapely.MultiPolygon(parts), _crs_of(fname, args))


def _rectangle(fname: str, args: Args) -> Geometry:
    coords = _arg(fname, args, "coordinates", required=True)
    flat = [float(v) for v in np.asarray(coords, dtype=float).ravel()]
    if len(flat) != 4:
        raise EvaluationError(f"{fname}: Rectangle needs two corners, got {coords!r}.")
    x0, y0, x1, y1 = flat
    return Geometry(
        shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), _crs_of(fname, args)
    )


def _bbox(fname: str, args: Args) -> Geometry:
    west, south, east, north = (
        float(_arg(fname, args, k, required=True)) for k in ("west", "south", "east", "north")
    )
    return Geometry(shapely.box(west, south, east, north))


def _point(fname: str, args: Args) -> Geometry:
    coords = _arg(fname, args, "coordinates", required=True)
    return Geometry(shapely.Point(float(coords[0]), float(coords[1])), _crs_of(fname, args))


def _line_string(fname: str, args: Args) -> Geometry:
    coords = _arg(fname, args, "coordinates", required=True)
    return Geometry(shapely.LineString(coords), _crs_of(fname, args))


def _bounds(fname: str, args: Args) -> Geometry:
    geometry = _required_geometry(fname, args, "geometry")
    proj = _projection_arg(fname, args, "proj") or Projection(DEFAULT_CRS)
    minx, miny, maxx, maxy = geometry.in_crs(proj.crs).bounds
    return Geometry(shapely.box(minx, miny, maxx, maxy), Projection(proj.crs))


def _feature(fname: str, args: Args) -> Feature:
    geometry = _geometry_arg(fname, args, "geometry", required=False)
    metadata = _arg(fname, args, "metadata", {})
    return Feature(geometry, dict(metadata))


# --------------------------------------------------------------------------- dates, filters


def _millis(fname: str, value: Any) -> float:
    if isinstance(value, Date):
        return value.millis
    if isinstance(value, bool):
        raise _bad_type(fname, "value", "Date", value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(text)
        except ValueError as exc:
            raise EvaluationError(f"{fname}: Unable to parse date '{value}'.") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp() * 1000.0
    raise _bad_type(fname, "value", "Date", value)


def _date(fname: str, args: Args) -> Date:
    return Date(_millis(fname, _arg(fname, args, "value", required=True)))


def _date_range(fname: str, args: Args) -> DateRange:
    start = _millis(fname, _arg(fname, args, "start", required=True))
    end_value = _arg(fname, args, "end")
    end = start + 1 if end_value is None else _millis(fname, end_value)
    return DateRange(start, end)


def _element_value(element: Any, name: str) -> Any:
    if name in (".all", ".geo"):
        if isinstance(element, Image):
            return element.footprint
        if isinstance(element, Feature):
            return element.geometry
        return None
    props = getattr(element, "properties", {})
    return props.get(name)


def _sides(fname: str, args: Args) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def side(field: str, value: str) -> Callable[[Any], Any]:
        if args.get(field) is not None:
            name = str(args[field])
            return lambda el: _element_value(el, name)
        constant = args.get(value)
        return lambda el: constant

    return side("leftField", "leftValue"), side("rightField", "rightValue")


def _comparable(x: Any) -> Any:
    if isinstance(x, Date):
        return x.millis
    return x


def _field_filter(op: Callable[[Any, Any], bool]) -> Callable[[str, Args], Filter]:
    def impl(fname: str, args: Args) -> Filter:
        left, right = _sides(fname, args)

        def test(element: Any) -> bool:
            x, y = _comparable(left(element)), _comparable(right(element))
            if x is None or y is None:
                return False
            try:
                return bool(op(x, y))
            except TypeError:
                return False

        return Filter(test, _filter_spec(fname, args))

    return impl


def _field_and_value(args: Args) -> tuple[str, Any] | None:
    """(property, constant) of a two-sided filter, whichever side holds which."""
    if args.get("leftField") is not None and args.get("rightValue") is not None:
        return str(args["leftField"]), args["rightValue"]
    if args.get("rightField") is not None and args.get("leftValue") is not None:
        return str(args["rightField"]), args["leftValue"]
    return None


def _filter_spec(fname: str, args: Args) -> tuple[Any, ...] | None:
    """What a catalog query can narrow by for this filter (see ``Filter.spec``)."""
    pair = _field_and_value(args)
    if pair is None:
        return None
    name, value = pair
    if fname == "Filter.dateRangeContains" and name == "system:time_start":
        if isinstance(value, DateRange):
            return ("date", value.start, value.end)
    elif fname == "Filter.intersects" and name in (".all", ".geo"):
        shape = _as_shape(value)
        if shape is not None:
            return ("region", shape)
    elif fname == "Filter.equals" and isinstance(value, str | int | float):
        return ("in", name, (value,))
    elif fname in ("Filter.inList", "Filter.listContains") and isinstance(value, list):
        return ("in", name, tuple(value))
    return None


def _contains_date(rng: Any, t: Any) -> bool:
    if not isinstance(rng, DateRange) or not isinstance(t, int | float):
        return False
    return rng.start <= t < rng.end


def _in_list(x: Any, y: Any) -> bool:
    return isinstance(y, list) and x in y


def _list_contains(x: Any, y: Any) -> bool:
    return isinstance(x, list) and y in x


def _as_shape(value: Any) -> Any:
    if isinstance(value, Feature):
        value = value.geometry
    if isinstance(value, Geometry):
        return value.in_crs(DEFAULT_CRS)
    return None


def _intersects(x: Any, y: Any) -> bool:
    a, b = _as_shape(x), _as_shape(y)
    return a is not None and b is not None and bool(a.intersects(b))


def _filter_and(fname: str, args: Args) -> Filter:
    filters = _arg(fname, args, "filters", required=True)
    specs = tuple(f.spec for f in filters if isinstance(f, Filter) and f.spec is not None)
    return Filter(lambda el: all(f.test(el) for f in filters), ("and", specs) if specs else None)


def _filter_or(fname: str, args: Args) -> Filter:
    filters = _arg(fname, args, "filters", required=True)
    return Filter(lambda el: any(f.test(el) for f in filters))


def _filter_not(fname: str, args: Args) -> Filter:
    inner = _arg(fname, args, "filter", required=True)
    return Filter(lambda el: not inner.test(el))


# --------------------------------------------------------------------------- collections


@dataclass(frozen=True, eq=False)
class LazyCollection:
    """A catalog collection not generated yet: a query, then per-element steps (filters and
    maps, in order). Filters met before any map narrow the query itself (``Filter.spec``);
    every filter is still tested on every element, so narrowing never changes the answer.
    """

    query: catalog.Query
    steps: tuple[tuple[str, Any, bool], ...] = ()

    @property
    def collection_id(self) -> str:
        """The collection's asset id."""
        return self.query.collection

    @property
    def properties(self) -> dict[str, Any]:
        """Collection properties (none in the emulator)."""
        return {}

    def filtered(self, flt: Filter) -> LazyCollection:
        """The collection with one more filter."""
        query = self.query
        if all(kind == "filter" for kind, _, _ in self.steps):
            query = _narrow(query, flt.spec)
        return LazyCollection(query, (*self.steps, ("filter", flt, False)))

    def mapped(self, fn: Function, drop_nulls: bool) -> LazyCollection:
        """The collection with a function applied to every element."""
        return LazyCollection(self.query, (*self.steps, ("map", fn, drop_nulls)))

    def elements(self, window: Any = None) -> list[Any]:
        """The elements, oldest first; with ``window`` only scenes that meet it."""
        try:
            found = catalog.search(self.query, window)
        except catalog.CatalogError as exc:
            raise EvaluationError(str(exc)) from None
        out = []
        for asset in found.assets:
            element = self.through_steps(_asset_image(asset))
            if element is not None:
                out.append(element)
        return out

    def through_steps(self, element: Any) -> Any:
        """An element after the steps, or None when a filter (or a dropped null) removes it."""
        for kind, step, drop_nulls in self.steps:
            if kind == "filter":
                if not step.test(element):
                    return None
                continue
            result = step.call({step.argument_names[0]: element})
            if result is None and drop_nulls:
                return None
            element = _keep_index(element, result)
        return element

    @cached_property
    def generated(self) -> ImageCollection | FeatureCollection:
        """Every element, as a plain collection."""
        return _rebuild(ImageCollection((), {}, self.collection_id), self.elements())

    @property
    def images(self) -> tuple[Any, ...]:
        """Every element (generated on first use)."""
        return _elements(self.generated)


def _narrow(query: catalog.Query, spec: tuple[Any, ...] | None) -> catalog.Query:
    """The query narrowed by what a filter spec allows (unknown specs leave it as it is)."""
    if spec is None:
        return query
    if spec[0] == "and":
        for part in spec[1]:
            query = _narrow(query, part)
        return query
    if spec[0] == "date":
        return query.within(spec[1], spec[2])
    if spec[0] == "region":
        return query.meeting(spec[1])
    if spec[0] == "in":
        return query.placed(spec[1], spec[2])
    return query


def _elements(collection: Any) -> tuple[Any, ...]:
    if isinstance(collection, LazyCollection):
        collection = collection.generated
    if isinstance(collection, ImageCollection):
        return collection.images
    return collection.features


def _rebuild(collection: Any, elements: list[Any]) -> Any:
    if isinstance(collection, LazyCollection | ImageCollection) and all(
        isinstance(e, Image) for e in elements
    ):
        return ImageCollection(tuple(elements), collection.properties, collection.collection_id)
    if all(isinstance(e, Image) for e in elements) and elements:
        return ImageCollection(tuple(elements), {})
    return FeatureCollection(tuple(elements))


def _collection_filter(fname: str, args: Args) -> Any:
    collection = _collection_arg(fname, args)
    flt = _arg(fname, args, "filter", required=True)
    if not isinstance(flt, Filter):
        raise _bad_type(fname, "filter", "Filter", flt)
    if isinstance(collection, LazyCollection):
        return collection.filtered(flt)
    return _rebuild(collection, [e for e in _elements(collection) if flt.test(e)])


def _collection_map(fname: str, args: Args) -> Any:
    collection = _collection_arg(fname, args)
    fn = _arg(fname, args, "baseAlgorithm", required=True)
    if not isinstance(fn, Function) or len(fn.argument_names) != 1:
        raise EvaluationError(f"{fname}: baseAlgorithm must be a function of one argument.")
    drop_nulls = bool(_arg(fname, args, "dropNulls", False))
    if isinstance(collection, LazyCollection):
        return collection.mapped(fn, drop_nulls)
    out = []
    for element in _elements(collection):
        result = fn.call({fn.argument_names[0]: element})
        if result is None and drop_nulls:
            continue
        out.append(_keep_index(element, result))
    return _rebuild(collection, out)


def _keep_index(source: Any, result: Any) -> Any:
    """EE's map keeps each element's system:index, even when the function's result (an
    arithmetic result, say) lost its other properties."""
    index = getattr(source, "properties", {}).get("system:index")
    if index is None or not isinstance(result, Image | Feature):
        return result
    if result.properties.get("system:index") == index:
        return result
    return _set_properties(result, {"system:index": index})


def _collection_first(fname: str, args: Args) -> Any:
    elements = _elements(_collection_arg(fname, args))
    return elements[0] if elements else None


def _collection_size(fname: str, args: Args) -> int:
    collection = _collection_arg(fname, args)
    if isinstance(collection, LazyCollection):
        # A map keeps every element (unless it drops nulls): the trailing ones need not run.
        steps = list(collection.steps)
        while steps and steps[-1][0] == "map" and not steps[-1][2]:
            steps.pop()
        return len(LazyCollection(collection.query, tuple(steps)).elements())
    return len(_elements(collection))


def _collection_limit(fname: str, args: Args) -> Any:
    collection = _collection_arg(fname, args)
    elements = list(_elements(collection))
    key = _arg(fname, args, "key")
    if key is not None:
        ascending = bool(_arg(fname, args, "ascending", True))
        present = [e for e in elements if _element_value(e, key) is not None]
        present.sort(key=lambda e: _element_value(e, key), reverse=not ascending)
        elements = present + [e for e in elements if _element_value(e, key) is None]
    limit = _arg(fname, args, "limit")
    if limit is not None:
        elements = elements[: int(limit)]
    return _rebuild(collection, elements)


def _from_images(fname: str, args: Args) -> ImageCollection:
    images = _arg(fname, args, "images", required=True)
    if not all(isinstance(i, Image) for i in images):
        raise EvaluationError(f"{fname}: Every element must be an Image.")
    return ImageCollection(tuple(images), {})


def _set_properties(element: Any, props: Mapping[str, Any]) -> Any:
    if isinstance(element, Image):
        out = element.derive(element.band_list, image_id=element.image_id)
        out.properties.update(props)
        return out
    if isinstance(element, Feature):
        return Feature(element.geometry, {**element.properties, **props})
    raise EvaluationError("Element.set: the object is not an Element.")


def _element_set(fname: str, args: Args) -> Any:
    key = _arg(fname, args, "key", required=True)
    return _set_properties(_arg(fname, args, "object", required=True), {key: args.get("value")})


def _element_set_multi(fname: str, args: Args) -> Any:
    props = _arg(fname, args, "properties", required=True)
    return _set_properties(_arg(fname, args, "object", required=True), props)


def _element_get(fname: str, args: Args) -> Any:
    element = _arg(fname, args, "object", required=True)
    return _element_value(element, str(_arg(fname, args, "property", required=True)))


# --------------------------------------------------------------------------- composites


# Optimal compare-exchange networks (Knuth, TAOCP 5.3.4) for few planes; bubble beyond.
_NETWORKS: Mapping[int, tuple[tuple[int, int], ...]] = MappingProxyType(
    {
        2: ((0, 1),),
        3: ((0, 2), (0, 1), (1, 2)),
        4: ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)),
        5: ((0, 1), (3, 4), (2, 4), (2, 3), (1, 4), (0, 3), (0, 2), (1, 3), (1, 2)),
        6: (
            (1, 2), (4, 5), (0, 2), (3, 5), (0, 1), (3, 4),
            (2, 5), (0, 3), (1, 4), (2, 4), (1, 3), (2, 3),
        ),
        7: (
            (1, 2), (3, 4), (5, 6), (0, 2), (3, 5), (4, 6), (0, 1), (4, 5),
            (2, 6), (0, 4), (1, 5), (0, 3), (2, 5), (1, 3), (2, 4), (2, 3),
        ),
        8: (
            (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3),
            (4, 5), (6, 7), (2, 4), (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6),
        ),
    }
)  # fmt: skip
_NETWORK_MAX = 16


def _network(n: int) -> tuple[tuple[int, int], ...]:
    if n in _NETWORKS:
        return _NETWORKS[n]
    return tuple((j, j + 1) for i in range(n) for j in range(n - 1 - i))


def _sorted_planes(values: list[np.ndarray]) -> list[np.ndarray]:
    """Sort per pixel across planes (ascending), reusing the given arrays (the caller's own).

    The sorted values do not depend on the method, so results stay exact either way.
    """
    if len(values) > _NETWORK_MAX:
        return list(np.sort(np.stack(values), axis=0))
    out = list(values)
    for i, j in _network(len(out)):
        low = np.minimum(out[i], out[j])
        np.maximum(out[i], out[j], out=out[j])
        out[i] = low
    return out


def _pick(planes: list[np.ndarray], index: np.ndarray, top: int) -> np.ndarray:
    """Per pixel, the value of plane ``index`` (``index`` never exceeds ``top``)."""
    out = planes[0].copy()
    for j in range(1, min(top, len(planes) - 1) + 1):
        np.copyto(out, planes[j], where=index == j)
    return out


def _middle_values(
    planes: list[Plane], count: np.ndarray, work: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the lower and upper middle of the valid values (in ``work`` precision).

    Few planes go through a sorting network. Many are sorted per pixel as integer keys laid
    out pixel by pixel: a float's bits, its lower bits flipped when it is negative, order as
    signed integers exactly as the floats do, and integers sort faster. Masked values sort
    last as +inf.
    """
    shape = count.shape
    n = len(planes)
    if n <= _NETWORK_MAX:
        values = []
        for d, v in planes:
            arr = np.where(v, d.astype(work, copy=False), work.type(np.inf))
            values.append(arr if arr.shape == shape else np.broadcast_to(arr, shape).copy())
        ordered = _sorted_planes(values)
        return _pick(ordered, (count - 1) // 2, (n - 1) // 2), _pick(ordered, count // 2, n // 2)
    itype = np.dtype(np.int32) if work == np.float32 else np.dtype(np.int64)
    sign = itype.itemsize * 8 - 1
    low_bits = itype.type(np.iinfo(itype).max)
    keys = np.empty((*shape, n), dtype=itype)
    keys[...] = np.array(np.inf, dtype=work).view(itype)
    for i, (d, v) in enumerate(planes):
        plane = np.broadcast_to(d, shape).astype(work, copy=False)
        key = plane.view(itype)
        if plane.min(initial=0) < 0:  # only negative values need their bits turned
            key = key ^ ((key >> sign) & low_bits)
        np.copyto(keys[..., i], key, where=np.broadcast_to(v, shape))
    keys.sort(axis=-1)
    flat = keys.reshape(-1)
    base = np.arange(0, flat.size, n, dtype=np.intp).reshape(shape)
    seen = count.astype(np.intp)
    middles = []
    for index in (np.maximum(seen - 1, 0) // 2, np.minimum(seen // 2, n - 1)):
        key = flat[base + index]
        key ^= (key >> sign) & low_bits
        middles.append(key.view(work))
    return middles[0], middles[1]


def _reduce_planes(how: str, planes: list[Plane], shape: tuple[int, int], dtype: str) -> Plane:
    """Per-pixel reduction over the valid inputs; no valid input leaves the pixel masked.

    The median equals numpy's median of the valid values (the mean of the two middle values
    for an even count, computed in the working precision).
    """
    if not planes:
        return np.zeros((1, 1), dtype=dtype), np.zeros((1, 1), dtype=bool)
    if how == "mosaic":
        out = np.zeros(shape, dtype=dtype)
        ok = np.zeros(shape, dtype=bool)
        for d, v in planes:
            v2 = np.broadcast_to(v, shape)
            np.copyto(out, np.broadcast_to(d, shape).astype(dtype, copy=False), where=v2)
            ok |= v2
        return out, ok
    work = np.dtype(dtype if dtype in ("float32", "float64") else "float64")
    count = np.zeros(shape, dtype=np.uint8 if len(planes) < 256 else np.int32)
    for _, v in planes:
        count += v
    ok = count > 0
    if how == "median":
        lo, hi = _middle_values(planes, count, work)
        lo += hi
        result = lo / work.type(2)
        return np.where(ok, result, work.type(0)).astype(dtype, copy=False), ok
    fill = work.type({"min": np.inf, "max": -np.inf}.get(how, 0.0))
    values = []
    for d, v in planes:
        arr = np.where(v, d.astype(work, copy=False), fill)
        values.append(arr if arr.shape == shape else np.broadcast_to(arr, shape).copy())
    if how == "min":
        result = np.minimum.reduce(values)
    elif how == "max":
        result = np.maximum.reduce(values)
    else:
        total = np.zeros(shape, dtype=np.float64)
        for arr in values:
            total += arr
        result = total / np.maximum(count, 1) if how == "mean" else total
    result = np.where(ok, result, work.type(0))
    return result.astype(dtype, copy=False), ok


def _composite_type(how: str, types: list[PixelType]) -> PixelType:
    merged = types[0]
    for t in types[1:]:
        merged = _union(merged, t)
    if how in ("mosaic", "min", "max"):
        return merged
    if how == "sum" and merged.precision == "int":
        return PixelType("double")
    if merged.precision == "int":
        return PixelType("double")
    return merged


def _masked_out(plane: Plane) -> bool:
    return plane[1].shape == (1, 1) and not plane[1][0, 0]


def _member_planes(req: RenderRequest, pairs: list[tuple[Image, Band]]) -> list[Plane]:
    """The planes of the members that can reach the request (the others are all masked)."""
    planes = [m.plane(req) for img, m in pairs if _reaches(img, req)]
    return [p for p in planes if not _masked_out(p)]


def _composite(collection: Any, how: str, suffix: str = "") -> Image:
    if isinstance(collection, LazyCollection):
        if not collection.query.bounded:
            return _lazy_composite(collection, how, suffix)
        collection = collection.generated
    images = collection.images
    sources = frozenset().union(*(img.sources for img in images)) if images else frozenset()
    if not images:
        return Image([], {}, sources=sources)
    bands = []
    for band in images[0].band_list:
        members = [
            next((b for b in img.band_list if b.info.id == band.info.id), None) for img in images
        ]
        pairs = [(img, m) for img, m in zip(images, members, strict=True) if m is not None]
        ptype = _composite_type(how, [m.ptype for _, m in pairs])
        dtype = ptype.dtype

        def compute(req: RenderRequest, pairs: list[Any] = pairs, dtype: str = dtype) -> Plane:
            return _reduce_planes(how, _member_planes(req, pairs), req.shape, dtype)

        info = BandInfo(band.info.id + suffix, dtype, DEFAULT_CRS, IDENTITY, None)
        bands.append(Band(info, ptype, compute, tuple(m for _, m in pairs)))

    def reach(req: RenderRequest) -> int:
        return sum(1 for img in images if _reaches(img, req))

    return Image(bands, {}, sources=sources, source_estimate=reach)


def _lazy_composite(collection: LazyCollection, how: str, suffix: str) -> Image:
    """A composite of a collection too big to generate: each request generates only the
    scenes that meet it. Exact when every element stays within its scene's footprint, which
    the first template scene, mapped, shows; otherwise the emulator asks for filterBounds."""
    source = _asset_image(catalog.template(collection.collection_id))
    template = source
    for kind, step, _ in collection.steps:
        if kind == "map":
            template = _keep_index(template, step.call({step.argument_names[0]: template}))
    if not isinstance(template, Image) or template.extent is not source.extent:
        raise EvaluationError(
            f"{collection.collection_id}: the emulator composes images outside a region only "
            "when each image stays inside its footprint (no unmask in map); add "
            "filterBounds(region) to the collection."
        )
    cbands: list[Band] = []

    def elements(req: RenderRequest) -> list[Image]:
        key = ("lazy-elements", id(collection))
        found = req.memo.get(key)
        if found is None:
            found = (collection.elements(_window_lonlat(req)), collection)
            req.memo[key] = found
            wanted = {b.info.id for b in cbands if req.uses.get(id(b), 0) > 0}
            req.declare([b for img in found[0] for b in img.band_list if b.info.id in wanted])
        return found[0]

    for band in template.band_list:
        ptype = _composite_type(how, [band.ptype])
        dtype = ptype.dtype
        name = band.info.id

        def compute(req: RenderRequest, name: str = name, dtype: str = dtype) -> Plane:
            pairs = [(img, m) for img in elements(req) for m in img.band_list if m.info.id == name]
            return _reduce_planes(how, _member_planes(req, pairs), req.shape, dtype)

        info = BandInfo(name + suffix, dtype, DEFAULT_CRS, IDENTITY, None)
        cbands.append(Band(info, ptype, compute))

    def reach(req: RenderRequest) -> int:
        return catalog.count(collection.query, _window_lonlat(req))

    return Image(
        cbands,
        {},
        source_count=catalog.per_place(collection.query),
        source_estimate=reach,
    )


def _reduce_fn(how: str) -> Callable[[str, Args], Image]:
    def impl(fname: str, args: Args) -> Image:
        collection = _collection_arg(fname, args)
        if not isinstance(collection, ImageCollection | LazyCollection):
            raise _bad_type(fname, "collection", "ImageCollection", collection)
        return _composite(collection, how)

    return impl


def _collection_reduce(fname: str, args: Args) -> Image:
    collection = _collection_arg(fname, args)
    reducer = _arg(fname, args, "reducer", required=True)
    if not isinstance(collection, ImageCollection | LazyCollection) or not isinstance(
        reducer, Reducer
    ):
        raise EvaluationError(f"{fname}: expects an ImageCollection and a Reducer.")
    return _composite(collection, reducer.name, "_" + reducer.name)


_BAND_REDUCERS: Mapping[str, Callable[..., Any]] = {
    "min": np.nanmin,
    "max": np.nanmax,
    "sum": np.nansum,
    "mean": np.nanmean,
}


def _image_reduce(fname: str, args: Args) -> Image:
    """`Image.reduce`: one band from all of an image's bands, pixel by pixel, over the valid
    ones (masked where none is)."""
    image = _image_arg(fname, args, "image")
    reducer = _arg(fname, args, "reducer", required=True)
    if not isinstance(reducer, Reducer) or reducer.name not in _BAND_REDUCERS:
        raise EvaluationError(
            f"{fname}: this emulator reduces bands with min, max, sum or mean only."
        )
    inputs = list(image.band_list)
    ptype = inputs[0].ptype
    for band in inputs[1:]:
        ptype = _union(ptype, band.ptype)
    if reducer.name in ("sum", "mean"):
        ptype = _float_of(ptype, ptype) if reducer.name == "mean" else PixelType("double")
    dtype = ptype.dtype
    how = _BAND_REDUCERS[reducer.name]

    def compute(req: RenderRequest) -> Plane:
        planes = [band.plane(req) for band in inputs]
        data = np.stack([np.broadcast_to(d, req.shape).astype("float64") for d, _ in planes])
        ok = np.stack([np.broadcast_to(v, req.shape) for _, v in planes])
        valid = np.asarray(ok.any(axis=0))
        fill = np.where(ok, data, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels give NaN
            out = how(fill, axis=0)
        return np.where(valid, out, 0).astype(dtype), valid

    first = inputs[0].info
    info = BandInfo(reducer.name, dtype, first.crs, first.transform, first.dimensions)
    return image.derive([Band(info, ptype, compute, tuple(inputs))], keep_properties=False)


def _reducer(name: str) -> Callable[[str, Args], Reducer]:
    return lambda fname, args: Reducer(name)


# --------------------------------------------------------------------------- the function table


def _function_table() -> dict[str, Callable[[str, Args], Any]]:
    table: dict[str, Callable[[str, Args], Any]] = {
        "Image.load": _image_load,
        "ImageCollection.load": _collection_load,
        "ImageCollection.fromImages": _from_images,
        "ImageCollection.mosaic": _reduce_fn("mosaic"),
        "ImageCollection.reduce": _collection_reduce,
        "Image.constant": _image_constant,
        "Image.select": _select,
        "Image.rename": _rename,
        "Image.slice": _slice,
        "Image.addBands": _add_bands,
        "Image.bandNames": _band_names,
        "Image.clip": _clip,
        "Image.updateMask": _update_mask,
        "Image.mask": _mask_of,
        "Image.selfMask": _self_mask,
        "Image.unmask": _unmask,
        "Image.not": _not,
        "Image.projection": _image_projection,
        "Image.reproject": _reproject,
        "Image.setDefaultProjection": _reproject,
        "Image.clipToBoundsAndScale": _clip_to_bounds_and_scale,
        "Image.visualize": _visualize,
        "Image.reduce": _image_reduce,
        "Projection": _projection,
        "Projection.nominalScale": _nominal_scale,
        "Geometry.bounds": _bounds,
        "GeometryConstructors.Polygon": _polygon,
        "GeometryConstructors.MultiPolygon": _multipolygon,
        "GeometryConstructors.Rectangle": _rectangle,
        "GeometryConstructors.BBox": _bbox,
        "GeometryConstructors.Point": _point,
        "GeometryConstructors.LineString": _line_string,
        "Feature": _feature,
        "Date": _date,
        "DateRange": _date_range,
        "Filter.and": _filter_and,
        "Filter.or": _filter_or,
        "Filter.not": _filter_not,
        "Filter.equals": _field_filter(lambda x, y: x == y),
        "Filter.notEquals": _field_filter(lambda x, y: x != y),
        "Filter.lessThan": _field_filter(lambda x, y: x < y),
        "Filter.lessThanOrEquals": _field_filter(lambda x, y: x <= y),
        "Filter.greaterThan": _field_filter(lambda x, y: x > y),
        "Filter.greaterThanOrEquals": _field_filter(lambda x, y: x >= y),
        "Filter.dateRangeContains": _field_filter(_contains_date),
        "Filter.inList": _field_filter(_in_list),
        "Filter.listContains": _field_filter(_list_contains),
        "Filter.intersects": _field_filter(_intersects),
        "Collection.filter": _collection_filter,
        "Collection.map": _collection_map,
        "Collection.first": _collection_first,
        "Collection.size": _collection_size,
        "Collection.limit": _collection_limit,
        "Element.set": _element_set,
        "Element.setMulti": _element_set_multi,
        "Element.get": _element_get,
    }
    for how in ("median", "mean", "min", "max", "sum"):
        table[f"reduce.{how}"] = _reduce_fn(how)
        table[f"Reducer.{how}"] = _reducer(how)
    for kind in ("add", "subtract", "multiply", "divide", "eq", "neq", "lt", "lte", "gt", "gte"):
        table[f"Image.{kind}"] = _binary(kind)
    for kind in ("and", "or", "bitwiseAnd", "bitwiseOr"):
        table[f"Image.{kind}"] = _binary(kind)
    casts = {
        "uint8": ("toUint8", "uint8", "toByte"),
        "int8": ("toInt8", "int8"),
        "uint16": ("toUint16", "uint16"),
        "int16": ("toInt16", "int16", "toShort"),
        "uint32": ("toUint32", "uint32"),
        "int32": ("toInt32", "int32", "toInt", "int"),
        "int64": ("toInt64", "int64", "toLong", "long"),
        "float32": ("toFloat", "float"),
        "float64": ("toDouble", "double"),
    }
    for dtype, names in casts.items():
        for name in names:
            table[f"Image.{name}"] = _cast(dtype)
    return table


_FUNCTIONS: Mapping[str, Callable[[str, Args], Any]] = MappingProxyType(_function_table())
