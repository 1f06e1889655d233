"""The emulator's pixel functions: synthetic, deterministic pixels for catalog images.

Why it is built this way: eefetch downloads an image as many tiles and merges them; its tests
compare the merged file with one render of the whole grid, pixel for pixel. A pixel's value
therefore depends only on where the pixel sits on a lattice anchored at the CRS origin, never
on the window it was requested in.

The lattice
-----------
For a request grid with transform ``(a, 0, c, 0, e, f)`` (Earth Engine order; shear must be 0),
the pixel in column ``col`` and row ``row`` has the integer lattice indices::

    ix = floor(c / a + col + 0.5)
    iy = floor(f / |e| + (row + 0.5) * sign(e))

A tile of a grid differs from the whole grid only by a whole number of pixels, so ``ix``/``iy``
agree exactly even when ``c`` and ``f`` carry rounding noise. Every value below is computed from
``(image id, band, ix, iy, a, |e|, request CRS)`` only, with elementwise IEEE operations (+, -,
*, /, floor, abs), wrapping integer arithmetic and table look-ups, whose results do not depend
on array length. No transcendental function runs per pixel; the only one per point is the
CRS-to-lon/lat transform of 1 km cell corners (PROJ, point by point).

Canonical positions
-------------------
The canonical centre of a pixel is ``x = (ix + 0.5) * a``, ``y = (iy + 0.5) * |e|`` in CRS
units. The pattern works on ground positions ``X = x * k`` and ``Y = y * k`` where ``k = 1`` for
a projected CRS and ``k = 111319.49079327357`` metres per degree for a geographic CRS.

Geography (from ``engine.emulator.world.land``)
-----------------------------------------------
Ground cells of 1 km (``gx = floor(X / 1000)``, ``gy = floor(Y / 1000)``) have their corners
brought to lon/lat (``corner = (gx * 1000 / k, gy * 1000 / k)`` in CRS units); the coarse land,
aridity and relief grids and the latitude are sampled there and interpolated bilinearly to each
pixel (weights ``X / 1000 - gx`` and ``Y / 1000 - gy``, float32). A pixel is sea where the land
share is below 0.5.

The landscape (the same for every image, so composites look coherent)
--------------------------------------------------------------------
``tri(u) = |u - floor(u) - 0.5| * 2`` is a triangle wave in [0, 1]. Per column and per row
(float64, then rounded to float32)::

    A(X) = 0.2 * tri(X / 7300 + 0.13) + 0.1 * tri(X / 2300 + 0.71)
    B(Y) = 0.2 * tri(Y / 11900 + 0.59) + 0.1 * tri(Y / 3100 + 0.23)
    C(X) = 0.4 * tri(X / 5700 + 0.37)
    D(Y) = tri(Y / 4100 + 0.83)

and the land index is ``L = (A + B) + C * D`` in float32. Water is ``L < 0.2`` or sea; built-up
is ``L > 0.62`` off the sea; the vegetation density is
``v = clip((L - 0.2) * (1 / 0.42), 0, 1) * (1 - 0.85 * aridity)`` (0 at sea). Snow and ice lie
where ``(|lat| - 60) / 14 + relief / 5200 + (L - 0.4) / 2 > 1`` off the sea.

Texture
-------
``mix(z)`` on uint32 is ``z ^= z >> 16; z *= 0x7FEB352D; z ^= z >> 15`` (wrapping).
Per column ``hx = mix(ix * 0x9E3779B1 + seed)`` and per row ``hy = mix(iy * 0x85EBCA77 +
0x165667B1)``, products taken modulo 2**32, ``seed`` the CRC-32 of the image id. Band ``n``
(0-based position in the image's band list) with ``s = n % 25`` takes the texture byte
``noise = ((hx >> s) & 255) ^ ((hy >> s) & 255)`` (0..255) as float32.

Clouds
------
A pixel lies in the 125 m ground cell ``fx = floor(X / 125)``, ``fy = floor(Y / 125)`` and in
the 2 km cell ``(fx // 16, fy // 16)``. A cell ``(cx, cy)`` hashes to
``H(cx, cy, s) = mix(mix(cx * 0x27D4EB2F + s) ^ mix(cy * 0x165667B1 + 0x9E3779B9)) % 1000``.
With ``c = H(fx // 16, fy // 16, seed)``, the jitter ``j = H(fx, fy, seed ^ 0x5BD1E995)``,
the offsets ``ox = fx % 16 - ((c >> 4) % 7 + 4.5)``, ``oy = fy % 16 - ((c >> 7) % 7 + 4.5)``
and the blob radius ``R = (c % 11) * 0.6 + 3``, a pixel is in a blob when
``c < floor(min(coverage, 0.38) * 1000 / 0.38)`` and ``oy * oy + ox * ox + j * 0.012 < R * R``
(blobs cover 0.38 of their 2 km cell on average). Above 0.38 coverage, 2 km cells are also
overcast whole when ``H(.., seed ^ 0x68E31DA4) < floor((coverage - 0.38) / 0.62 * 1000)``, so
the cloudy share is ``coverage`` whatever it is. ``coverage`` is the scene's cloud
percentage / 100. A cloudy 2 km cell is cirrus when ``H(.., seed ^ 0x1B873593) <
floor(cirrus_share * 1000)``, opaque otherwise. Cloud shadows fall where the cell 6 columns
west and 4 rows north (in ground cells) is cloudy and the pixel itself is not.

Sentinel-2 bands (uint16, reflectance * 10000)
-----------------------------------------------
With the band's reflectances ``water, soil, vegetation, built, boost, sand, snow`` from
``S2_REFLECTANCE`` and ``season = 1 - |month - 7| / 30`` (months shifted by 6 south of the
equator), in float32: ``value = v * ((vegetation - soil) * season) + (soil + sand * aridity -
192)``, replaced by ``water - 192``, ``built - 192`` or ``snow - 192`` on those pixels; then
``value += noise * 1.5``. Cloudy pixels instead take ``noise * 8 + (6500 + boost - 1024)``.
Finally ``uint16(clip(value, 1, 10000) + 0.5)``. QA60 is 1024 (bit 10) on opaque and 2048
(bit 11) on cirrus pixels; SCL, MSK_CLDPRB, MSK_SNWPRB, AOT, WVP and TCI_* follow from the same
quantities (``s2_band``); QA10 and QA20 are 0 ("always empty" in EE's catalog).

Landsat Collection 2 Level 2
----------------------------
``SR_B1..7`` take the Sentinel-2 values of B1, B2, B3, B4, B8A, B11 and B12 (clouds brighter)
as reflectance ``r`` and store ``uint16(clip((r + 0.2) / 2.75e-5, 1, 65455) + 0.5)``.
``QA_PIXEL`` sets bit 6 (clear) with low-confidence bits for clear land (21824), adds bit 7
on water (21952), bits 3 and 1 with high cloud confidence on opaque cloud (22280), bit 2 with
high cirrus confidence on cirrus (54596), bit 4 on cloud shadow (23888) and bit 5 on snow
(30048). ``ST_B10`` holds a surface temperature falling with latitude and height.

Elevation and land cover
------------------------
Elevation (metres) is ``relief + 15 + 600 * L * L * (0.4 + relief / 2500) + (noise - 128) / 64``
with the noise of band 0 (0 at sea): SRTM stores it as int16 (masked at sea and outside
56 S - 60 N), Copernicus GLO-30 as float32 with its EDM/FLM/HEM/WBM bands. Land cover
(uint8, ESA WorldCover codes): 80 water and sea, 50 built-up, 70 snow and ice, 60 bare where
aridity > 0.6, 20 shrubland where aridity > 0.35 (each broken by 125 m patches of the next
wetter class, a quarter of them: ``H(fx, fy, seed ^ 0x2545F491) < 250`` or ``< 300``), 100 moss
and lichen above 62 degrees of
latitude, 90 wetland and (within 25 degrees of the equator, next to the sea) 95 mangroves
where ``0.2 <= L < 0.23``, 10 trees where ``v > 0.6``, 40 cropland where ``v > 0.3``, 30
grassland otherwise.

Masks
-----
Scene pixels are valid when their canonical centre lies inside the scene's footprint (see
``engine.emulator.evaluate``); SRTM and WorldCover are masked outside their latitudes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from rasterio.warp import transform as warp_transform

from engine.emulator.world import land as world_land
from engine.emulator.world.assets import Asset

METRES_PER_DEGREE = 111319.49079327357
_M32 = np.uint32(0x7FEB352D)
WATER_BELOW = 0.2
CLOUD_FILL = 0.38  # mean share of a cloudy 2 km cell that its blob covers
BUILT_ABOVE = 0.62
GEO_CELL_M = 1000.0
SHADOW_SHIFT = (6, -4)  # ground cells (x, y) from a cloud to its shadow

# Per band: (water, soil, vegetation, built-up, cloud boost, sand, snow); reflectance * 10000.
S2_REFLECTANCE: dict[str, tuple[float, ...]] = {
    "B1": (900.0, 1100.0, 700.0, 1300.0, 800.0, 900.0, 8500.0),
    "B2": (700.0, 1200.0, 450.0, 1500.0, 700.0, 1100.0, 8800.0),
    "B3": (650.0, 1400.0, 800.0, 1600.0, 500.0, 1400.0, 8800.0),
    "B4": (400.0, 1700.0, 450.0, 1800.0, 400.0, 1800.0, 8600.0),
    "B5": (350.0, 1900.0, 1200.0, 1900.0, 300.0, 1900.0, 8300.0),
    "B6": (300.0, 2100.0, 2800.0, 2000.0, 200.0, 2000.0, 8000.0),
    "B7": (280.0, 2200.0, 3300.0, 2050.0, 200.0, 2050.0, 7800.0),
    "B8": (250.0, 2300.0, 3600.0, 2100.0, 100.0, 2100.0, 7600.0),
    "B8A": (230.0, 2400.0, 3700.0, 2150.0, 100.0, 2150.0, 7400.0),
    "B9": (150.0, 800.0, 1100.0, 900.0, 0.0, 700.0, 5000.0),
    "B11": (120.0, 2800.0, 1900.0, 2600.0, 0.0, 2300.0, 900.0),
    "B12": (100.0, 2300.0, 900.0, 2300.0, 0.0, 2000.0, 600.0),
}
LANDSAT_FROM_S2 = {
    "SR_B1": "B1",
    "SR_B2": "B2",
    "SR_B3": "B3",
    "SR_B4": "B4",
    "SR_B5": "B8A",
    "SR_B6": "B11",
    "SR_B7": "B12",
}
QA_CLEAR, QA_WATER, QA_CLOUD, QA_CIRRUS, QA_SHADOW, QA_SNOW = (
    21824,
    21952,
    22280,
    54596,
    23888,
    30048,
)


# --------------------------------------------------------------------------- lattice


@dataclass(frozen=True)
class Lattice:
    """Integer lattice indices of a request grid and the ground scale of its CRS units."""

    ix: np.ndarray  # int64, shape (width,)
    iy: np.ndarray  # int64, shape (height,)
    a: float
    abs_e: float
    k: float

    @property
    def x_centres(self) -> np.ndarray:
        """Canonical pixel-centre x in CRS units, shape (width,)."""
        return (self.ix.astype(np.float64) + 0.5) * self.a

    @property
    def y_centres(self) -> np.ndarray:
        """Canonical pixel-centre y in CRS units, shape (height,)."""
        return (self.iy.astype(np.float64) + 0.5) * self.abs_e

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (height, width)."""
        return (self.iy.size, self.ix.size)


def lattice(transform: tuple[float, ...], width: int, height: int, geographic: bool) -> Lattice:
    """The lattice indices of a grid, as documented in the module docstring."""
    a, b, c, d, e, f = (float(v) for v in transform)
    if b != 0 or d != 0:
        raise ValueError("The emulator does not support sheared transforms.")
    if a == 0 or e == 0:
        raise ValueError("Pixel size must not be zero.")
    abs_e = abs(e)
    ix = np.floor(c / a + np.arange(width, dtype=np.float64) + 0.5).astype(np.int64)
    sign = 1.0 if e > 0 else -1.0
    iy = np.floor(f / abs_e + (np.arange(height, dtype=np.float64) + 0.5) * sign)
    k = METRES_PER_DEGREE if geographic else 1.0
    return Lattice(ix=ix, iy=iy.astype(np.int64), a=a, abs_e=abs_e, k=k)


def seed_of(image_id: str) -> int:
    """A stable 32-bit seed for an image id."""
    return zlib.crc32(image_id.encode())


def _mix(z: np.ndarray) -> np.ndarray:
    """An integer finaliser on uint32, in place (wrapping arithmetic is exact and order-free)."""
    z ^= z >> np.uint32(16)
    z *= _M32
    z ^= z >> np.uint32(15)
    return z


def _u32(values: np.ndarray, mult: int, add: int) -> np.ndarray:
    """``values * mult + add`` reduced to uint32 without overflow warnings."""
    wrapped = (values.astype(np.int64) * mult + add) & 0xFFFFFFFF
    return wrapped.astype(np.uint32)


def _tri(u: np.ndarray) -> np.ndarray:
    """Triangle wave with period 1, values in [0, 1]."""
    return np.abs(u - np.floor(u) - 0.5) * 2.0


def _cell_hash(cx: np.ndarray, cy: np.ndarray, seed: int) -> np.ndarray:
    """``mix(mix(cx * 0x27D4EB2F + seed) ^ mix(cy * 0x165667B1 + 0x9E3779B9)) % 1000``."""
    hx = _mix(_u32(cx, 0x27D4EB2F, seed))
    hy = _mix(_u32(cy, 0x165667B1, 0x9E3779B9))
    return _mix(hx[np.newaxis, :] ^ hy[:, np.newaxis]) % np.uint32(1000)


# --------------------------------------------------------------------------- the canvas


class Canvas:
    """A request grid and the per-render memo: what every image on the grid shares."""

    def __init__(self, lat: Lattice, crs: str, geographic: bool, memo: MutableMapping) -> None:
        self.lat = lat
        self.crs = crs
        self.geographic = geographic
        self.memo = memo

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (height, width)."""
        return self.lat.shape

    def shared(self, key: Any, build: Any) -> Any:
        """``build()`` once per render under ``key``."""
        full = ("pixels", key)
        found = self.memo.get(full)
        if found is None:
            found = build()
            self.memo[full] = found
        return found

    @property
    def geo(self) -> Geo:
        """Land share, aridity, relief and latitude per pixel."""
        return self.shared("geo", lambda: _geo(self))

    @property
    def landscape(self) -> Landscape:
        """The shared landscape."""
        return self.shared("landscape", lambda: _landscape(self))


@dataclass(frozen=True)
class _Axis:
    """One axis of the 1 km cell interpolation: corner indices and weights per pixel."""

    corners: np.ndarray  # int64 cell-corner indices (sorted, unique)
    lo: np.ndarray  # per pixel, index into ``corners`` of the corner below
    weight: np.ndarray  # float32 weight of the corner above


def _axis(ground: np.ndarray) -> _Axis:
    cells = np.floor(ground / GEO_CELL_M)
    weight = (ground / GEO_CELL_M - cells).astype(np.float32)
    cells = cells.astype(np.int64)
    corners = np.unique(np.concatenate([cells, cells + 1]))
    return _Axis(corners, np.searchsorted(corners, cells), weight)


def _interpolate(values: np.ndarray, ax: _Axis, ay: _Axis) -> np.ndarray:
    """Bilinear interpolation of corner values (rows = y corners) to every pixel."""
    wx = ax.weight
    along = values[:, ax.lo] * (np.float32(1) - wx) + values[:, ax.lo + 1] * wx
    wy = ay.weight[:, np.newaxis]
    return along[ay.lo] * (np.float32(1) - wy) + along[ay.lo + 1] * wy


@dataclass(frozen=True)
class Geo:
    """Geography per pixel (float32): land share, aridity, relief (m), latitude."""

    land: np.ndarray
    arid: np.ndarray
    relief: np.ndarray
    lat: np.ndarray

    @cached_property
    def sea(self) -> np.ndarray:
        """Where the pixel is sea."""
        return self.land < np.float32(0.5)


def _corner_lonlat(canvas: Canvas, ax: _Axis, ay: _Axis) -> tuple[np.ndarray, np.ndarray]:
    k = canvas.lat.k
    xs = ax.corners.astype(np.float64) * GEO_CELL_M / k
    ys = ay.corners.astype(np.float64) * GEO_CELL_M / k
    gx, gy = np.meshgrid(xs, ys)
    if canvas.geographic:
        return gx, gy
    lon, lat = warp_transform(canvas.crs, "EPSG:4326", gx.ravel(), gy.ravel())
    lon = np.nan_to_num(np.asarray(lon, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lat = np.nan_to_num(np.asarray(lat, dtype=np.float64), nan=90.0, posinf=90.0, neginf=90.0)
    return lon.reshape(gx.shape), lat.reshape(gx.shape)


def _geo(canvas: Canvas) -> Geo:
    lat = canvas.lat
    ax = _axis(lat.x_centres * lat.k)
    ay = _axis(lat.y_centres * lat.k)
    lon_c, lat_c = _corner_lonlat(canvas, ax, ay)
    values = []
    for grid in (world_land.land(), world_land.aridity(), world_land.relief()):
        values.append(grid.sample(lon_c, lat_c).astype(np.float32))
    values.append(lat_c.astype(np.float32))
    return Geo(*(_interpolate(v, ax, ay) for v in values))


# --------------------------------------------------------------------------- the landscape


@dataclass(frozen=True)
class Landscape:
    """Per-pixel quantities shared by every image on one request grid."""

    index: np.ndarray  # float32 L
    water: np.ndarray  # bool, lakes and rivers (L < 0.2) or sea
    built: np.ndarray  # bool
    snow: np.ndarray  # bool
    veg: np.ndarray  # float32 v in [0, 1]
    arid: np.ndarray  # float32 aridity
    sea: np.ndarray  # bool


def _landscape(canvas: Canvas) -> Landscape:
    lat = canvas.lat
    gx = lat.x_centres * lat.k
    gy = lat.y_centres * lat.k
    a = (0.2 * _tri(gx / 7300.0 + 0.13) + 0.1 * _tri(gx / 2300.0 + 0.71)).astype(np.float32)
    b = (0.2 * _tri(gy / 11900.0 + 0.59) + 0.1 * _tri(gy / 3100.0 + 0.23)).astype(np.float32)
    c = (0.4 * _tri(gx / 5700.0 + 0.37)).astype(np.float32)
    d = _tri(gy / 4100.0 + 0.83).astype(np.float32)
    index = a[np.newaxis, :] + b[:, np.newaxis]
    index += c[np.newaxis, :] * d[:, np.newaxis]
    geo = canvas.geo
    sea = geo.sea
    water = (index < np.float32(WATER_BELOW)) | sea
    built = (index > np.float32(BUILT_ABOVE)) & ~sea
    veg = index - np.float32(WATER_BELOW)
    veg *= np.float32(1.0 / (BUILT_ABOVE - WATER_BELOW))
    np.clip(veg, np.float32(0), np.float32(1), out=veg)
    veg *= np.float32(1) - np.float32(0.85) * geo.arid
    veg[sea] = 0
    cold = (np.abs(geo.lat) - np.float32(60)) * np.float32(1 / 14)
    cold += geo.relief * np.float32(1 / 5200)
    cold += (index - np.float32(0.4)) * np.float32(0.5)
    snow = (cold > np.float32(1)) & ~sea
    return Landscape(index, water, built & ~snow, snow, veg, geo.arid, sea)


# --------------------------------------------------------------------------- per image


class Scene:
    """Per-image quantities (texture, clouds) on one request grid, computed on demand."""

    def __init__(self, canvas: Canvas, image_id: str, coverage: float, cirrus: float) -> None:
        self.canvas = canvas
        self.seed = seed_of(image_id)
        self.coverage = coverage
        self.cirrus = cirrus

    @cached_property
    def hx(self) -> np.ndarray:
        """Per-column texture hash."""
        return _mix(_u32(self.canvas.lat.ix, 0x9E3779B1, self.seed))

    @cached_property
    def hy(self) -> np.ndarray:
        """Per-row texture hash."""
        return _mix(_u32(self.canvas.lat.iy, 0x85EBCA77, 0x165667B1))

    def noise(self, band_index: int) -> np.ndarray:
        """Band-specific texture byte in [0, 255] as float32."""
        shift = np.uint32(band_index % 25)
        bx = ((self.hx >> shift) & np.uint32(255)).astype(np.uint8)
        by = ((self.hy >> shift) & np.uint32(255)).astype(np.uint8)
        return (bx[np.newaxis, :] ^ by[:, np.newaxis]).astype(np.float32)

    @cached_property
    def code(self) -> np.ndarray:
        """0 clear, 1 opaque cloud, 2 cirrus (uint8, per pixel)."""
        return _cloud_codes(self.canvas.lat, self.seed, self.coverage, self.cirrus, (0, 0))

    @cached_property
    def cloud(self) -> np.ndarray:
        """Where the pixel is cloudy."""
        return self.code != 0

    @cached_property
    def shadow(self) -> np.ndarray:
        """Where a cloud's shadow falls on a clear pixel."""
        shifted = _cloud_codes(self.canvas.lat, self.seed, self.coverage, 0.0, SHADOW_SHIFT)
        return (shifted == 1) & ~self.cloud

    @cached_property
    def jitter(self) -> np.ndarray:
        """A per-125 m-cell number in [0, 1000) (float32), for probabilities and edges."""
        return _cells(self.canvas.lat, lambda ux, uy: _cell_hash(ux, uy, self.seed ^ 0x2545F491))


def _cells(lat: Lattice, per_cell: Any) -> np.ndarray:
    """Evaluate a function of 125 m cell indices once per distinct cell, then gather."""
    fx = np.floor(lat.x_centres * lat.k / 125.0).astype(np.int64)
    fy = np.floor(lat.y_centres * lat.k / 125.0).astype(np.int64)
    ux, xi = np.unique(fx, return_inverse=True)
    uy, yi = np.unique(fy, return_inverse=True)
    small = per_cell(ux, uy)
    return np.take(np.take(small, yi.ravel(), axis=0), xi.ravel(), axis=1)


def _cloud_codes(
    lat: Lattice, seed: int, coverage: float, cirrus: float, shift: tuple[int, int]
) -> np.ndarray:
    """Per-pixel cloud code (see the module docstring); ``shift`` moves the cloud field."""
    cover = min(max(coverage, 0.0), 1.0)
    blob_limit = np.uint32(math.floor(min(cover, CLOUD_FILL) * 1000 / CLOUD_FILL))
    overcast = (cover - CLOUD_FILL) / (1 - CLOUD_FILL) if cover > CLOUD_FILL else 0.0
    overcast_limit = np.uint32(math.floor(overcast * 1000))
    cirrus_limit = np.uint32(math.floor(cirrus * 1000))

    def per_cell(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        ux = ux - shift[0]
        uy = uy - shift[1]
        coarse = _cell_hash(ux // 16, uy // 16, seed)
        jitter = _cell_hash(ux, uy, seed ^ 0x5BD1E995).astype(np.float64)
        shift_x = ((coarse >> np.uint32(4)) % np.uint32(7)).astype(np.float64) + 4.5
        shift_y = ((coarse >> np.uint32(7)) % np.uint32(7)).astype(np.float64) + 4.5
        ox = (ux % 16).astype(np.float64)[np.newaxis, :] - shift_x
        oy = (uy % 16).astype(np.float64)[:, np.newaxis] - shift_y
        radius = (coarse % np.uint32(11)).astype(np.float64) * 0.6 + 3.0
        dist = oy * oy + ox * ox + jitter * 0.012
        cloudy = (coarse < blob_limit) & (dist < radius * radius)
        if overcast_limit > 0:
            cloudy |= _cell_hash(ux // 16, uy // 16, seed ^ 0x68E31DA4) < overcast_limit
        is_cirrus = _cell_hash(ux // 16, uy // 16, seed ^ 0x1B873593) < cirrus_limit
        return cloudy.astype(np.uint8) * (np.uint8(1) + is_cirrus.astype(np.uint8))

    return _cells(lat, per_cell)


def scene_of(canvas: Canvas, asset: Asset) -> Scene:
    """The per-image quantities of an asset on a canvas, once per render."""
    coverage = asset.cloud_coverage
    return canvas.shared(
        ("scene", asset.id),
        lambda: Scene(canvas, asset.id, coverage or 0.0, asset.cirrus_share),
    )


def season_of(month: int, south: bool = False) -> float:
    """Vegetation vigour by month, in [0.8, 1.0] (peaking in July, January south)."""
    if south:
        month = (month + 5) % 12 + 1
    return 1.0 - abs(month - 7) / 30.0


def _season(asset: Asset) -> float:
    footprint = asset.footprint
    south = False
    if footprint is not None:
        lats = [y for _, y in footprint["coordinates"][0]]
        south = sum(lats) / len(lats) < 0
    return season_of(asset.month, south)


# --------------------------------------------------------------------------- Sentinel-2


def _reflectance(canvas: Canvas, band: str, season: float) -> np.ndarray:
    """Cloud-free reflectance * 10000 minus the texture's 192 offset, shared per season."""

    def build() -> np.ndarray:
        water, soil, vegetation, built, _, sand, snow = S2_REFLECTANCE[band]
        land = canvas.landscape
        value = land.veg * np.float32((vegetation - soil) * season)
        value += land.arid * np.float32(sand - soil)
        value += np.float32(soil - 192)
        np.copyto(value, np.float32(water - 192), where=land.water)
        np.copyto(value, np.float32(built - 192), where=land.built)
        np.copyto(value, np.float32(snow - 192), where=land.snow)
        return value

    return canvas.shared(("reflectance", band, season), build)


def _optical(canvas: Canvas, asset: Asset, band: str, band_index: int) -> np.ndarray:
    """Reflectance * 10000 (float32, unclipped) with texture and clouds."""
    scene = scene_of(canvas, asset)
    noise = scene.noise(band_index)
    boost = S2_REFLECTANCE[band][4]
    cloudy = None
    if scene.coverage > 0:
        cloudy = noise * np.float32(8)
        cloudy += np.float32(6500 + boost - 1024)
    noise *= np.float32(1.5)
    noise += _reflectance(canvas, band, _season(asset))
    if cloudy is not None:
        np.copyto(noise, cloudy, where=scene.cloud)
    return noise


def _to_uint16(value: np.ndarray, top: float) -> np.ndarray:
    np.clip(value, np.float32(1), np.float32(top), out=value)
    value += np.float32(0.5)
    return value.astype(np.uint16)


def s2_band(canvas: Canvas, asset: Asset, band: str, band_index: int) -> np.ndarray:
    """A Sentinel-2 SR band (reflectance bands, QA, SCL, probabilities, TCI)."""
    if band in S2_REFLECTANCE:
        return _to_uint16(_optical(canvas, asset, band, band_index), 10000)
    scene = scene_of(canvas, asset)
    shape = canvas.shape
    if band == "QA60":
        qa = scene.code.astype(np.uint16)
        qa *= np.uint16(1024)
        return qa
    if band in ("QA10", "QA20"):
        return np.zeros(shape, dtype=np.uint16)
    if band == "SCL":
        return _scl(canvas, scene)
    if band == "MSK_CLDPRB":
        prob = np.where(scene.code == 1, 70 + scene.jitter * 0.03, scene.jitter * 0.005)
        prob = np.where(scene.code == 2, 35 + scene.jitter * 0.02, prob)
        return prob.astype(np.uint8)
    if band == "MSK_SNWPRB":
        snow = canvas.landscape.snow & ~scene.cloud
        return np.where(snow, 80 + scene.jitter * 0.02, 0).astype(np.uint8)
    if band == "AOT":
        value = np.float32(120) + canvas.geo.arid * np.float32(180) + scene.noise(band_index)
        return value.astype(np.uint16)
    if band == "WVP":
        value = np.float32(2500) - canvas.geo.arid * np.float32(1800)
        value += scene.noise(band_index) * np.float32(4)
        return value.astype(np.uint16)
    if band.startswith("TCI_"):
        source = {"TCI_R": ("B4", 3), "TCI_G": ("B3", 2), "TCI_B": ("B2", 1)}[band]
        value = _optical(canvas, asset, *source)
        value *= np.float32(255 / 2000)
        np.clip(value, np.float32(1), np.float32(255), out=value)
        return value.astype(np.uint8)
    raise ValueError(f"no pixel function for Sentinel-2 band {band}")


def _scl(canvas: Canvas, scene: Scene) -> np.ndarray:
    land = canvas.landscape
    out = np.where(land.veg > np.float32(0.35), np.uint8(4), np.uint8(5))
    out[land.water] = 6
    out[land.snow] = 11
    out[scene.shadow] = 3
    opaque = scene.code == 1
    out[opaque] = np.where(scene.jitter[opaque] < 300, np.uint8(8), np.uint8(9))
    out[scene.code == 2] = 10
    return out


# --------------------------------------------------------------------------- Landsat


def landsat_band(canvas: Canvas, asset: Asset, band: str, band_index: int) -> np.ndarray:
    """A Landsat 8/9 Collection 2 Level 2 band."""
    scene = scene_of(canvas, asset)
    shape = canvas.shape
    if band in LANDSAT_FROM_S2:
        value = _optical(canvas, asset, LANDSAT_FROM_S2[band], band_index)
        value *= np.float32(1 / 10000 / 2.75e-5)
        value += np.float32(0.2 / 2.75e-5)
        return _to_uint16(value, 65455)
    if band == "QA_PIXEL":
        land = canvas.landscape
        qa = np.where(land.water, np.uint16(QA_WATER), np.uint16(QA_CLEAR))
        qa[land.snow] = QA_SNOW
        qa[scene.shadow] = QA_SHADOW
        qa[scene.code == 1] = QA_CLOUD
        qa[scene.code == 2] = QA_CIRRUS
        return qa
    if band == "QA_RADSAT":
        return np.zeros(shape, dtype=np.uint16)
    if band == "SR_QA_AEROSOL":
        water = canvas.landscape.water.astype(np.uint8) * np.uint8(4)
        return water + np.uint8(66)
    if band == "ST_B10":
        geo = canvas.geo
        kelvin = np.float32(303) - np.abs(geo.lat) * np.float32(0.35)
        kelvin -= geo.relief * np.float32(0.0065)
        kelvin -= canvas.landscape.veg * np.float32(4)
        kelvin += scene.noise(band_index) * np.float32(0.02)
        np.copyto(kelvin, np.float32(255) + scene.noise(band_index) * 0.05, where=scene.cloud)
        dn = (kelvin - np.float32(149.0)) * np.float32(1 / 0.00341802)
        return dn.astype(np.uint16)
    levels = {"ST_ATRAN": 8000, "ST_CDIST": 500, "ST_DRAD": 900, "ST_EMIS": 9800}
    levels.update({"ST_EMSD": 60, "ST_QA": 200, "ST_TRAD": 9000, "ST_URAD": 1600})
    value = np.float32(levels.get(band, 0)) + scene.noise(band_index)
    return value.astype(np.int16)


# --------------------------------------------------------------------------- elevation, cover


def elevation(canvas: Canvas, asset: Asset) -> np.ndarray:
    """Elevation in metres (float32), 0 at sea."""
    geo = canvas.geo
    land = canvas.landscape
    noise = scene_of(canvas, asset).noise(0)
    noise -= np.float32(128)
    rugged = np.float32(0.4) + geo.relief * np.float32(1 / 2500)
    height = land.index * land.index * np.float32(600) * rugged
    height += geo.relief + np.float32(15)
    height += noise / np.float32(64)
    height[land.sea] = 0
    return height


def srtm_band(canvas: Canvas, asset: Asset) -> tuple[np.ndarray, np.ndarray]:
    """SRTM elevation (int16) and where it is valid (land between 56 S and 60 N)."""
    height = np.round(elevation(canvas, asset)).astype(np.int16)
    lat = canvas.geo.lat
    valid = ~canvas.landscape.sea & (lat >= np.float32(-56)) & (lat <= np.float32(60))
    return height, valid


def glo30_band(canvas: Canvas, asset: Asset, band: str) -> np.ndarray:
    """A Copernicus GLO-30 band."""
    land = canvas.landscape
    if band == "DEM":
        return elevation(canvas, asset)
    if band == "HEM":
        return np.float32(0.6) + scene_of(canvas, asset).noise(3) * np.float32(0.01)
    lake = land.water & ~land.sea
    if band == "WBM":
        out = np.zeros(canvas.shape, dtype=np.uint8)
        out[land.sea] = 1
        out[lake] = 2
        return out
    if band == "EDM":
        out = np.ones(canvas.shape, dtype=np.uint8)
        out[land.sea] = 8
        out[lake] = 9
        return out
    return np.full(canvas.shape, 2, dtype=np.uint8)  # FLM: not edited / not filled


def land_cover(canvas: Canvas, asset: Asset) -> tuple[np.ndarray, np.ndarray]:
    """ESA WorldCover class codes (uint8) and where they are valid (60 S to 84 N)."""
    land = canvas.landscape
    geo = canvas.geo
    patches = scene_of(canvas, asset).jitter  # 125 m patches of sparse cover in dry land
    out = np.full(canvas.shape, 30, dtype=np.uint8)
    out[land.veg > np.float32(0.3)] = 40
    out[land.veg > np.float32(0.6)] = 10
    marsh = (land.index >= np.float32(WATER_BELOW)) & (land.index < np.float32(0.23))
    out[marsh] = 90
    coast = (geo.land < np.float32(0.8)) & (np.abs(geo.lat) < np.float32(25))
    out[marsh & coast] = 95
    out[(np.abs(geo.lat) > np.float32(62)) & (land.veg < np.float32(0.5))] = 100
    out[(geo.arid > np.float32(0.35)) & (patches >= 300)] = 20
    out[(geo.arid > np.float32(0.6)) & (patches >= 250)] = 60
    out[land.built] = 50
    out[land.snow] = 70
    out[land.water] = 80
    valid = (geo.lat >= np.float32(-60)) & (geo.lat <= np.float32(84))
    return out, valid
