"""Pure arithmetic for pixel grids and tiling, as Earth Engine computes them.

Nothing here does I/O or talks to Earth Engine; the only dependency beyond the standard library
is rasterio's CRS parser and coordinate transformer (PROJ), used to bring a region into the
target CRS.

Conventions (see docs/CONTRACTS.md): transforms are 6-tuples in EE order
``(scaleX, shearX, translateX, shearY, scaleY, translateY)``, which is affine ``(a, b, c, d, e, f)``
order; windows are ``(row_off, col_off, height, width)`` in pixels of the job's grid.

Antimeridian: when the target CRS is geographic and the region crosses longitude 180 (a ring
whose consecutive vertices jump by more than 180 degrees, longitudes beyond 180, or RFC 7946
parts that meet at 180 from both sides), the grid is one continuous block whose left edge lies
in [-180, 180) and which extends past 180 (e.g. translateX 179.5, spanning to 180.5), on the
same lattice anchored at longitude 0. Edges that jump by more than 180 (and less than 360)
degrees are taken the short way round, as EE does for its default geodesic geometries; an edge
from -180 to 180 is a deliberate full-width edge. Without a crossing, the region's longitudes
are used as given, shifted by whole turns so that the west edge lies in [-180, 180).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as _warp_transform

from engine.defaults import EE_MAX_REQUEST_BYTES, EE_MAX_SIDE_URLS
from engine.errors import GridError

Transform = tuple[float, float, float, float, float, float]

METRES_PER_DEGREE = 2 * math.pi * 6378137 / 360

EE_MAX_BANDS = 1024

# More tiles than this means the job is almost certainly a mistake (e.g. scale in the wrong
# unit); refusing early beats allocating millions of objects.
MAX_TILES = 2_000_000

# Densify each region edge so that segments are at most this fraction of the region's extent
# before projecting, so curved edges in the target CRS still bound the region.
_DENSIFY_PARTS = 100

_AUTHORITY_CODE = re.compile(r"^[A-Za-z]+:\d+$")


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels of a grid (offsets may lie outside it: the lattice continues)."""

    row_off: int
    col_off: int
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Grid:
    """A pixel grid: CRS, EE-order affine transform and size in pixels.

    The transform is normalised to a tuple of floats so that grids compare and hash reliably
    whatever sequence type (list from JSON, numpy values) they were built from.
    """

    crs: str
    transform: Transform
    width: int
    height: int

    def __post_init__(self) -> None:
        if not isinstance(self.crs, str) or not self.crs:
            raise GridError(f"grid crs must be a non-empty string, got {self.crs!r}")
        values = tuple(float(v) for v in self.transform)
        if len(values) != 6:
            raise GridError(f"grid transform needs 6 numbers, got {len(values)}")
        object.__setattr__(self, "transform", values)
        if int(self.width) != self.width or int(self.height) != self.height:
            raise GridError(f"grid size must be whole pixels, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.width < 1 or self.height < 1:
            raise GridError(f"grid size must be at least 1x1, got {self.width}x{self.height}")

    def window_grid(self, w: Window) -> Grid:
        """The sub-grid covering window ``w``: same lattice, shifted origin, window's size."""
        if w.height < 1 or w.width < 1:
            raise GridError(f"window size must be at least 1x1, got {w.width}x{w.height}")
        a, b, c, d, e, f = self.transform
        return Grid(
            self.crs,
            (a, b, c + w.col_off * a + w.row_off * b, d, e, f + w.row_off * e + w.col_off * d),
            w.width,
            w.height,
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the grid's outer pixel edges in its CRS."""
        a, b, c, d, e, f = self.transform
        xs = [c + a * col + b * row for col, row in self._corners()]
        ys = [f + d * col + e * row for col, row in self._corners()]
        return min(xs), min(ys), max(xs), max(ys)

    def _corners(self) -> tuple[tuple[int, int], ...]:
        return ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))


@dataclass(frozen=True, slots=True)
class TilePlan:
    """One request: a window of the grid and the half-open band range [band_start, band_stop)."""

    window: Window
    band_start: int
    band_stop: int

    @property
    def bands(self) -> int:
        """Number of bands in the request."""
        return self.band_stop - self.band_start


def request_bytes(width: int, height: int, itemsizes: Sequence[int]) -> int:
    """EE's size of a request: every band of every pixel costs its sample bytes plus a mask byte.

    This reproduces EE's error text: 3072 x 3072 pixels of 2 uint16 bands give 56623104 bytes.
    """
    return width * height * sum(s + 1 for s in itemsizes)


# ---------------------------------------------------------------------------------------------
# CRS and scale


def _crs_text(crs: object, what: str) -> str:
    """The CRS as the string kept in a Grid; 'epsg:4326' and 4326 become 'EPSG:4326'."""
    if isinstance(crs, bool) or not isinstance(crs, str | int):
        raise GridError(f"{what} must be a string such as 'EPSG:4326', got {crs!r}")
    text = f"EPSG:{crs}" if isinstance(crs, int) else crs.strip()
    if _AUTHORITY_CODE.match(text):
        text = text.upper()
    return text


def _parse_crs(text: str, what: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except (CRSError, ValueError, TypeError) as exc:
        raise GridError(
            f"unknown {what} {text!r}: give an EPSG code such as 'EPSG:32650' or a WKT string"
        ) from exc


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.number):
        raise GridError(f"scale must be a number of metres, got {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or value <= 0:
        raise GridError(f"scale must be a positive, finite number of metres, got {scale!r}")
    return value


def _pixel_size(crs: CRS, scale: float) -> float:
    if crs.is_geographic:
        return scale / METRES_PER_DEGREE
    try:
        _, factor = crs.linear_units_factor
    except CRSError:
        return scale
    return scale / factor if factor and math.isfinite(factor) else scale


def scale_to_crs_units(crs: str, scale: float) -> float:
    """Pixel size in CRS units for a nominal ``scale`` in metres, converted as EE does.

    Geographic CRSs use EE's equatorial conversion (10 m -> 8.983152841195214e-05 degrees);
    projected CRSs use their linear unit (metres as is, US survey feet divided by 0.3048006...).
    """
    text = _crs_text(crs, "crs")
    return _pixel_size(_parse_crs(text, "crs"), _check_scale(scale))


# ---------------------------------------------------------------------------------------------
# Regions (GeoJSON) -> coordinate sequences


def _positions(value: object, what: str) -> np.ndarray:
    """An (N, 2) float array from a GeoJSON list of positions, validated."""
    if not isinstance(value, list | tuple) or not value:
        raise GridError(f"region {what} has no coordinates: give a non-empty list of [x, y]")
    xy = []
    for p in value:
        if (
            not isinstance(p, list | tuple)
            or len(p) < 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in p[:2])
        ):
            raise GridError(f"region {what} has a bad position {p!r}: positions are [x, y]")
        xy.append((float(p[0]), float(p[1])))
    arr = np.asarray(xy, dtype=float)
    if not np.isfinite(arr).all():
        raise GridError(f"region {what} has a non-finite coordinate: use finite numbers")
    return arr


def _geometry_sequences(geom: object) -> Iterator[np.ndarray]:
    """The coordinate sequences whose extent is the geometry's: exterior rings, lines, points."""
    if not isinstance(geom, Mapping):
        raise GridError(f"region must be a GeoJSON geometry (a dict), got {type(geom).__name__}")
    kind = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "Point":
        yield _positions([coords], "Point")
    elif kind in ("MultiPoint", "LineString"):
        yield _positions(coords, kind)
    elif kind in ("MultiLineString", "Polygon"):
        lines = _members(coords, f"{kind} has no coordinates: give a non-empty list")
        for part in lines if kind == "MultiLineString" else lines[:1]:
            arr = _positions(part, kind)
            if kind == "Polygon" and len(arr) < 3:
                raise GridError("region Polygon ring has fewer than 3 positions: close a real area")
            yield arr
    elif kind == "MultiPolygon":
        for polygon in _members(coords, "MultiPolygon has no coordinates: give a non-empty list"):
            yield from _geometry_sequences({"type": "Polygon", "coordinates": polygon})
    elif kind == "GeometryCollection":
        empty = "GeometryCollection is empty: give at least one geometry"
        for member in _members(geom.get("geometries"), empty):
            yield from _geometry_sequences(member)
    elif kind == "Feature":
        yield from _geometry_sequences(geom.get("geometry"))
    elif kind == "FeatureCollection":
        empty = "FeatureCollection is empty: give at least one feature"
        for feature in _members(geom.get("features"), empty):
            yield from _geometry_sequences(feature)
    else:
        raise GridError(
            f"region has unknown GeoJSON type {kind!r}: use Polygon, MultiPolygon, Point, ..."
        )


def _members(value: object, problem: str) -> Sequence[Any]:
    """A GeoJSON list member that must hold at least one item; else "region <problem>"."""
    if not isinstance(value, list | tuple) or not value:
        raise GridError(f"region {problem}")
    return value


def _member_crs(region: Mapping[str, Any]) -> str | None:
    """The CRS named by a GeoJSON (2008) ``crs`` member, as EE writes it for projected shapes."""
    member = region.get("crs")
    if member is None:
        return None
    if isinstance(member, str):
        return member
    if isinstance(member, Mapping) and member.get("type") == "name":
        name = (member.get("properties") or {}).get("name")
        if isinstance(name, str):
            return name
    raise GridError(
        f"region 'crs' member {member!r} is not understood: use "
        '{"type": "name", "properties": {"name": "EPSG:32650"}}'
    )


def _region_sequences(
    region: Mapping[str, Any], region_crs: str | None = None
) -> tuple[list[np.ndarray], CRS]:
    """Validate a GeoJSON region; return its coordinate sequences and its CRS.

    The region's CRS is ``region_crs`` if given, else its ``crs`` member, else EPSG:4326
    (longitude, latitude). Only the extent matters for a grid, so holes are dropped and
    self-intersections are accepted.
    """
    sequences = list(_geometry_sequences(region))
    text = region_crs if region_crs is not None else _member_crs(region)
    src = _parse_crs(_crs_text(text or "EPSG:4326", "region crs"), "region crs")
    if src.is_geographic:
        worst = max(float(np.abs(s[:, 1]).max()) for s in sequences)
        if worst > 90 + 1e-9:
            raise GridError(
                f"region latitude {worst} is outside [-90, 90]: positions are [longitude, latitude]"
            )
    return sequences, src


def _unwrap_longitudes(seq: np.ndarray) -> np.ndarray:
    """Shift longitudes so that edges jumping by 180-360 degrees go the short way round.

    A jump of exactly 360 (-180 to 180) is a deliberate full-width edge and is kept.
    """
    if len(seq) < 2:
        return seq
    jumps = np.diff(seq[:, 0])
    turns = np.where((np.abs(jumps) > 180) & (np.abs(jumps) < 360), np.sign(jumps), 0.0)
    if not turns.any():
        return seq
    out = seq.copy()
    out[1:, 0] -= 360.0 * np.cumsum(turns)
    return out


def _densify(seq: np.ndarray, max_len: float) -> np.ndarray:
    """Insert points along each edge so that no segment is longer than ``max_len``."""
    if len(seq) < 2 or not max_len > 0:
        return seq
    steps = np.maximum(np.ceil(np.hypot(*np.diff(seq, axis=0).T) / max_len), 1).astype(int)
    if (steps == 1).all():
        return seq
    starts = np.repeat(seq[:-1], steps, axis=0)
    deltas = np.repeat(np.diff(seq, axis=0) / steps[:, None], steps, axis=0)
    offsets = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
    return np.vstack([starts + deltas * offsets[:, None], seq[-1:]])


def _longitude_range(sequences: list[np.ndarray]) -> tuple[float, float]:
    """West and east edge of the longitudes, continuous across 180 if the region crosses it."""
    spans = []
    for seq in sequences:
        lo, hi = float(seq[:, 0].min()), float(seq[:, 0].max())
        shift = 360.0 * math.floor((lo + 180.0) / 360.0)
        spans.append((lo - shift, hi - shift))
    eps = 1e-9
    crosses = any(hi > 180 + eps for _, hi in spans) or (
        any(hi >= 180 - eps for _, hi in spans) and any(lo <= -180 + eps for lo, _ in spans)
    )
    if crosses:
        return _smallest_arc(spans)
    west = min(float(seq[:, 0].min()) for seq in sequences)
    east = max(float(seq[:, 0].max()) for seq in sequences)
    shift = 360.0 * math.floor((west + 180.0) / 360.0)
    return west - shift, east - shift


def _smallest_arc(spans: list[tuple[float, float]]) -> tuple[float, float]:
    """The shortest longitude arc covering every span (each span's west edge in [-180, 180))."""
    merged: list[list[float]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    while len(merged) > 1 and merged[-1][1] >= merged[0][0] + 360.0:
        last = merged.pop()
        merged[0] = [last[0] - 360.0, max(merged[0][1], last[1] - 360.0)]
    if merged[0][1] - merged[0][0] >= 360.0:
        return -180.0, 180.0
    best_gap = merged[0][0] + 360.0 - merged[-1][1]
    west, east = merged[0][0], merged[-1][1]
    for left, right in itertools.pairwise(merged):
        gap = right[0] - left[1]
        if gap > best_gap:
            best_gap, west, east = gap, right[0], left[1] + 360.0
    shift = 360.0 * math.floor((west + 180.0) / 360.0)
    return west - shift, east - shift


# ---------------------------------------------------------------------------------------------
# Grids


def _snap_tolerance(q: float) -> float:
    return max(1e-9, 8 * math.ulp(q))


def _floor_snapped(q: float) -> int:
    """floor(q), except that a value within float noise of a lattice line snaps to it."""
    r = round(q)
    return int(r) if abs(q - r) <= _snap_tolerance(q) else math.floor(q)


def _ceil_snapped(q: float) -> int:
    r = round(q)
    return int(r) if abs(q - r) <= _snap_tolerance(q) else math.ceil(q)


def grid_from_region(
    region: Mapping[str, Any], crs: str, scale: float, *, region_crs: str | None = None
) -> Grid:
    """EE's grid for a download of ``region`` with ``crs`` and ``scale`` (metres).

    Pixel size is ``scale`` converted to CRS units (``scale_to_crs_units``), north-up. The
    lattice is anchored at the CRS origin, so pixel edges fall on whole multiples of the pixel
    size, and the grid covers every pixel that the region's bounds in ``crs`` touch. Region
    edges are densified before projecting so curved edges are bounded. A bound within ~1e-9
    pixel of a lattice line snaps to it (no spurious row from float noise); a point or a region
    smaller than a pixel gives a 1x1 grid (a point on a lattice corner gets the pixel to its
    north-east: floor on both axes). See the module docstring for the antimeridian.
    ``region_crs`` overrides the region's ``crs`` member; without either, EPSG:4326.
    """
    size = _check_scale(scale)
    crs_text = _crs_text(crs, "crs")
    dst = _parse_crs(crs_text, "crs")
    pixel = _pixel_size(dst, size)
    sequences = _sequences_in(region, dst, region_crs)

    if dst.is_geographic:
        minx, maxx = _longitude_range(sequences)
    else:
        minx = min(float(s[:, 0].min()) for s in sequences)
        maxx = max(float(s[:, 0].max()) for s in sequences)
    miny = min(float(s[:, 1].min()) for s in sequences)
    maxy = max(float(s[:, 1].max()) for s in sequences)

    col0, col1 = _floor_snapped(minx / pixel), _ceil_snapped(maxx / pixel)
    row0, row1 = _floor_snapped(miny / pixel), _ceil_snapped(maxy / pixel)
    width, height = max(col1 - col0, 1), max(row1 - row0, 1)
    top = max(row1, row0 + 1)
    return Grid(crs_text, (pixel, 0.0, col0 * pixel, 0.0, -pixel, top * pixel), width, height)


def region_outline(region: Mapping[str, Any], crs: str) -> list[np.ndarray]:
    """The region's outline (exterior rings, lines, points) as (N, 2) arrays in ``crs``.

    The coordinates ``grid_from_region`` measures: edges densified before projecting, and
    longitudes in a geographic ``crs`` unwrapped the short way round.
    """
    return _sequences_in(region, _parse_crs(_crs_text(crs, "crs"), "crs"), None)


def _sequences_in(region: Mapping[str, Any], dst: CRS, region_crs: str | None) -> list[np.ndarray]:
    sequences, src = _region_sequences(region, region_crs)
    if src != dst:
        if src.is_geographic:
            sequences = [_unwrap_longitudes(s) for s in sequences]
        extent = np.vstack(sequences)
        span = float(np.ptp(extent, axis=0).max())
        sequences = [_densify(s, span / _DENSIFY_PARTS) for s in sequences]
        sequences = [_project(src, dst, s) for s in sequences]
    if dst.is_geographic:
        sequences = [_unwrap_longitudes(s) for s in sequences]
    return sequences


def _project(src: CRS, dst: CRS, seq: np.ndarray) -> np.ndarray:
    try:
        xs, ys = _warp_transform(src, dst, seq[:, 0].tolist(), seq[:, 1].tolist())
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise GridError(
            f"region cannot be transformed to {dst.to_string()} ({reason}): choose a CRS that "
            "covers the region"
        ) from exc
    out = np.column_stack([np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)])
    if not np.isfinite(out).all():
        raise GridError(
            f"region lies (partly) outside the area of {dst.to_string()}: choose a CRS that "
            "covers it, or a smaller region"
        )
    return out


def grid_from_transform(crs: str, transform: Sequence[float], height: int, width: int) -> Grid:
    """A grid given exactly (EE's ``crs_transform`` + ``dimensions``), validated.

    Accepts 6 numbers in EE order, or the 9 of an ``affine.Affine`` whose last row is 0 0 1.
    """
    crs_text = _crs_text(crs, "crs")
    _parse_crs(crs_text, "crs")
    try:
        values = list(transform)
    except TypeError as exc:
        raise GridError(f"crs_transform must be a list of 6 numbers, got {transform!r}") from exc
    if len(values) == 9 and values[6:] == [0, 0, 1]:
        values = values[:6]
    if len(values) != 6:
        raise GridError(
            f"crs_transform needs 6 numbers (scaleX, shearX, translateX, shearY, scaleY, "
            f"translateY), got {len(values)}"
        )
    if any(isinstance(v, bool) or not isinstance(v, int | float | np.number) for v in values):
        raise GridError(f"crs_transform must hold numbers, got {values!r}")
    if not all(math.isfinite(float(v)) for v in values):
        raise GridError(f"crs_transform must hold finite numbers, got {values!r}")
    a, b, c, d, e, f = (float(v) for v in values)
    if a * e - b * d == 0:
        raise GridError(f"crs_transform {values!r} is singular: pixel size must not be 0")
    for name, n in (("height", height), ("width", width)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise GridError(f"{name} must be a whole number of pixels >= 1, got {n!r}")
    return Grid(crs_text, (a, b, c, d, e, f), int(width), int(height))


# ---------------------------------------------------------------------------------------------
# Tiling


def _band_groups(
    costs: Sequence[int], unit_px: int, max_bytes: int, max_bands: int
) -> list[tuple[int, int]]:
    """Fewest contiguous band ranges whose unit tile fits, as equal in count as possible."""
    n = len(costs)
    if n <= max_bands and unit_px * sum(costs) <= max_bytes:
        return [(0, n)]
    cap = max_bytes // unit_px
    greedy: list[tuple[int, int]] = []
    start, load = 0, 0
    for i, cost in enumerate(costs):
        if i > start and (load + cost > cap or i - start >= max_bands):
            greedy.append((start, i))
            start, load = i, 0
        load += cost
    greedy.append((start, n))
    g = len(greedy)
    bounds = [0]
    for i in range(g):
        bounds.append(bounds[-1] + n // g + (1 if i < n % g else 0))
    even = list(itertools.pairwise(bounds))
    if all(hi - lo <= max_bands and sum(costs[lo:hi]) <= cap for lo, hi in even):
        return even
    return greedy


def _align_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _choose_shape(
    height: int, width: int, max_px: int, max_side: int, step: int, target: int
) -> tuple[int, int] | None:
    """Tile (height, width) giving the fewest tiles >= target, or None if nothing fits."""
    widths = list(range(step, min(width, max_side) // step * step + 1, step))
    if width <= max_side and (not widths or widths[-1] != width):
        widths.append(width)
    best_key: tuple[int, int, float, int] | None = None
    best: tuple[int, int] | None = None
    for tw in widths:
        th_cap = min(max_side, max_px // tw)
        if th_cap < 1:
            continue
        th_max = height if height <= th_cap else th_cap // step * step
        if th_max < 1:
            continue
        ncols = -(-width // tw)
        rows = -(-height // th_max)
        wanted = max(rows, -(-target // ncols))
        if wanted > rows:
            th = (-(-height // (wanted - 1)) - 1) // step * step
            th = min(max(th, step), th_max, height)
            rows = -(-height // th)
        th = min(_align_up(-(-height // rows), step), height)
        tw_even = min(_align_up(-(-width // ncols), step), width)
        count = rows * ncols
        aspect = max(th, tw_even) / min(th, tw_even)
        rank = (0, count) if count >= target else (1, -count)
        key = (*rank, aspect, -tw_even)
        if best_key is None or key < best_key:
            best_key, best = key, (th, tw_even)
    return best


def plan_tiles(
    grid: Grid,
    itemsizes: Sequence[int],
    *,
    max_bytes: int = EE_MAX_REQUEST_BYTES,
    max_side: int = EE_MAX_SIDE_URLS,
    max_bands: int = EE_MAX_BANDS,
    min_tiles: int = 1,
    block: int = 512,
) -> list[TilePlan]:
    """Cut ``grid`` into requests within EE's limits: few, large, block-aligned tiles.

    Every tile satisfies ``request_bytes <= max_bytes``, sides ``<= max_side`` and bands
    ``<= max_bands``. Bands stay together unless a block x block tile (clipped to the grid)
    with all of them is too big; then they are cut into the fewest contiguous, equal-ish
    groups. Tile sides are multiples of ``block`` (except the last row/column, or a side equal
    to the whole grid), so tiles line up with the output's internal blocks.

    Shape: among block-aligned shapes, the one giving the fewest tiles wins (fewest requests,
    fewest per-request latencies); ties go to the most nearly square tile (least edge per area,
    so EE reads the fewest source tiles and reprojects the least border per request), and a
    narrow grid thereby gets full-width strips. Rows and columns are then evened out without
    changing their count, so no tile is a thin sliver. If that yields fewer than ``min_tiles``
    tiles (idle concurrency slots), the smallest count >= ``min_tiles`` is chosen instead,
    tiles shrinking no further than ``block``. If no aligned tile fits even one band (a tiny
    ``max_bytes``), alignment is dropped.

    Order is row-major; the band groups of a window are adjacent. The result is deterministic.
    """
    n = len(itemsizes)
    if n < 1:
        raise GridError("image has no bands: select at least one band")
    if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1 for s in itemsizes):
        raise GridError(f"band item sizes must be positive whole bytes, got {list(itemsizes)!r}")
    for name, v in (
        ("max_bytes", max_bytes),
        ("max_side", max_side),
        ("max_bands", max_bands),
        ("min_tiles", min_tiles),
        ("block", block),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise GridError(f"{name} must be a whole number >= 1, got {v!r}")
    costs = [int(s) + 1 for s in itemsizes]
    if max(costs) > max_bytes:
        raise GridError(
            f"one pixel of one band needs {max(costs)} bytes, more than max_bytes={max_bytes}"
        )
    height, width = grid.height, grid.width

    step = min(block, max_side)
    unit_px = min(step, height) * min(step, width)
    if max(costs) * unit_px > max_bytes:
        step, unit_px = 1, 1
    groups = _band_groups(costs, unit_px, max_bytes, max_bands)
    heaviest = max(sum(costs[lo:hi]) for lo, hi in groups)
    target = -(-min_tiles // len(groups))
    shape = _choose_shape(height, width, max_bytes // heaviest, max_side, step, target)
    if shape is None:
        shape = _choose_shape(height, width, max_bytes // heaviest, max_side, 1, target)
    if shape is None:
        raise GridError("no tile fits the limits: raise max_bytes or max_side")
    th, tw = shape

    total = -(-height // th) * -(-width // tw) * len(groups)
    if total > MAX_TILES:
        raise GridError(
            f"the grid ({width}x{height} pixels, {n} bands) needs {total} requests, more than "
            f"{MAX_TILES}: check the scale (metres) and region, or export instead"
        )
    rows = [(r, min(th, height - r)) for r in range(0, height, th)]
    cols = [(c, min(tw, width - c)) for c in range(0, width, tw)]
    return [
        TilePlan(window, lo, hi)
        for window in [Window(r, c, h, w) for r, h in rows for c, w in cols]
        for lo, hi in groups
    ]


def _split_point(offset: int, size: int, block: int) -> int:
    """Length of the first half of a side: an aligned cut near the middle, else the middle."""
    middle = offset + size / 2
    lower = math.floor(middle / block) * block
    candidates = [
        p for p in (lower, lower + block) if offset + size / 4 <= p <= offset + 3 * size / 4
    ]
    candidates = [p for p in candidates if offset < p < offset + size]
    if candidates:
        cut = min(candidates, key=lambda p: (abs(p - middle), p))
        return cut - offset
    return (size + 1) // 2


def split_tile(
    tile: TilePlan, itemsizes: Sequence[int] | None = None, block: int = 256
) -> list[TilePlan]:
    """Two children that exactly cover a tile EE rejected (too big, out of memory, timed out).

    Halves the longer side, cutting on a multiple of ``block`` (in grid pixels) when one lies
    near the middle, down to 1 px. Once both sides are at most ``block``, a multi-band tile
    has its bands halved first instead: that keeps windows aligned and also lightens EE's
    computation. A 1x1 tile is split by bands. ``itemsizes`` (of all the image's bands) makes
    the band cut balance bytes rather than band counts. A 1x1 single-band tile cannot be split.
    """
    if block < 1:
        raise GridError(f"block must be >= 1, got {block!r}")
    w = tile.window
    if w.height < 1 or w.width < 1 or tile.band_stop <= tile.band_start:
        raise GridError(f"tile {tile!r} is empty: nothing to split")
    bands = tile.band_stop - tile.band_start
    spatial = w.height > 1 or w.width > 1
    if bands > 1 and (not spatial or max(w.height, w.width) <= block):
        return _split_bands(tile, itemsizes)
    if not spatial:
        raise GridError("tile is one pixel of one band and still rejected: it cannot be split")
    if w.width >= w.height:
        first = _split_point(w.col_off, w.width, block)
        parts = [
            Window(w.row_off, w.col_off, w.height, first),
            Window(w.row_off, w.col_off + first, w.height, w.width - first),
        ]
    else:
        first = _split_point(w.row_off, w.height, block)
        parts = [
            Window(w.row_off, w.col_off, first, w.width),
            Window(w.row_off + first, w.col_off, w.height - first, w.width),
        ]
    return [TilePlan(p, tile.band_start, tile.band_stop) for p in parts]


def split_for_slots(
    tiles: Sequence[TilePlan],
    itemsizes: Sequence[int],
    slots: int,
    *,
    min_part_bytes: int,
    block: int = 512,
) -> list[list[TilePlan]]:
    """Cut the last tiles of a job so that ``slots`` connections have one part each.

    At a job's end a few large tiles would keep a few connections busy while the others idle.
    The largest part is halved (on a multiple of ``block``, so parts stay block-aligned in the
    output) until there are ``slots`` parts, or no part is larger than two of
    ``min_part_bytes`` (below that a request's latency costs more than it saves), or no part
    has a side longer than two blocks. Bands are never cut. Returns each tile's parts, in the
    order given (a tile left whole is a list of itself).
    """
    parts = [[tile] for tile in tiles]
    count = len(tiles)

    def size(plan: TilePlan) -> int:
        bytes_per_pixel = sum(itemsizes[plan.band_start : plan.band_stop])
        return plan.window.height * plan.window.width * bytes_per_pixel

    while count < slots:
        candidates = [
            (size(p), i, j)
            for i, group in enumerate(parts)
            for j, p in enumerate(group)
            if size(p) >= 2 * min_part_bytes and max(p.window.height, p.window.width) > 2 * block
        ]
        if not candidates:
            break
        _, i, j = max(candidates)
        parts[i][j : j + 1] = split_tile(parts[i][j], itemsizes, block)
        count += 1
    return parts


def _split_bands(tile: TilePlan, itemsizes: Sequence[int] | None) -> list[TilePlan]:
    lo, hi = tile.band_start, tile.band_stop
    mid = lo + (hi - lo + 1) // 2
    if itemsizes is not None and len(itemsizes) >= hi:
        costs = [int(s) + 1 for s in itemsizes[lo:hi]]
        half = sum(costs) / 2
        running, best = 0, None
        for i, cost in enumerate(costs[:-1]):
            running += cost
            score = abs(running - half)
            if best is None or score < best[0]:
                best = (score, lo + i + 1)
        if best is not None:
            mid = best[1]
    return [TilePlan(tile.window, lo, mid), TilePlan(tile.window, mid, hi)]
