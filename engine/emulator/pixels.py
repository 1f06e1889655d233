"""The emulator's pixel function: synthetic, deterministic pixels for catalog images.

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
``(image id, band, ix, iy, a, |e|)`` only, with elementwise IEEE operations (+, -, *, /,
floor, abs) and wrapping integer arithmetic, whose results do not depend on array length.
No transcendental function is used.

Canonical positions
-------------------
The canonical centre of a pixel is ``x = (ix + 0.5) * a``, ``y = (iy + 0.5) * |e|`` in CRS
units. The pattern works on ground positions ``X = x * k`` and ``Y = y * k`` where ``k = 1`` for
a projected CRS and ``k = 111319.49079327357`` metres per degree for a geographic CRS.

The landscape (the same for every image, so composites look coherent)
--------------------------------------------------------------------
``tri(u) = |u - floor(u) - 0.5| * 2`` is a triangle wave in [0, 1]. Per column and per row
(float64, then rounded to float32)::

    A(X) = 0.2 * tri(X / 7300 + 0.13) + 0.1 * tri(X / 2300 + 0.71)
    B(Y) = 0.2 * tri(Y / 11900 + 0.59) + 0.1 * tri(Y / 3100 + 0.23)
    C(X) = 0.4 * tri(X / 5700 + 0.37)
    D(Y) = tri(Y / 4100 + 0.83)

and the land index is ``L = (A + B) + C * D`` in float32. ``L < 0.2`` is water, ``L > 0.62``
is built-up, and the vegetation density is
``v = clip((L - float32(0.2)) * float32(1 / (0.62 - 0.2)), 0, 1)``.

Texture
-------
``mix(z)`` on uint32 is ``z ^= z >> 16; z *= 0x7FEB352D; z ^= z >> 15`` (wrapping).
Per column ``hx = mix(ix * 0x9E3779B1 + seed)`` and per row ``hy = mix(iy * 0x85EBCA77 +
0x165667B1)``, products taken modulo 2**32, ``seed`` the CRC-32 of the image id. Band ``n``
(0-based position in the catalog's band list) with ``s = n % 25`` takes the texture byte
``noise = ((hx >> s) & 255) ^ ((hy >> s) & 255)`` (0..255) as float32.

Sentinel-2 bands (uint16, reflectance * 10000)
-----------------------------------------------
With the band's reflectances ``water, soil, vegetation, built, boost`` from
``S2_REFLECTANCE`` and ``season = 1 - |month - 7| / 30`` of the acquisition month (UTC), in
float32 and in this order: ``value = v * float32((vegetation - soil) * season) + (soil - 192)``,
replaced by ``water - 192`` on water and ``built - 192`` on built-up pixels; then
``value += noise * 1.5``. Cloudy pixels instead take ``noise * 8 + (6500 + boost - 1024)``.
Finally ``uint16(clip(value, 1, 10000) + 0.5)``. (The texture thus spans -192..+190.5.)

Clouds: a pixel lies in the 125 m ground cell ``fx = floor(X / 125)``, ``fy = floor(Y / 125)``
and in the 2 km cell ``(fx // 16, fy // 16)``. A cell ``(cx, cy)`` hashes to
``H(cx, cy, s) = mix(mix(cx * 0x27D4EB2F + s) ^ mix(cy * 0x165667B1 + 0x9E3779B9)) % 1000``.
With ``c = H(fx // 16, fy // 16, seed)``, the jitter ``j = H(fx, fy, seed ^ 0x5BD1E995)``,
the offsets ``ox = fx % 16 - ((c >> 4) % 7 + 4.5)``, ``oy = fy % 16 - ((c >> 7) % 7 + 4.5)``
and the blob radius ``R = (c % 11) * 0.6 + 3`` (float64, in this order), a pixel is cloudy
when ``c < floor(coverage * 1000 / 0.38)`` and ``oy * oy + ox * ox + j * 0.012 < R * R``: blobs
with ragged edges, one per cloudy 2 km cell, covering about ``coverage`` of the pixels.
``coverage`` is the image's ``CLOUDY_PIXEL_PERCENTAGE / 100`` clamped to [0.05, 0.38]. QA60 is
2048 (cirrus, bit 11) on cloudy pixels whose ``c`` has bit 3 set, 1024 (opaque cloud, bit 10)
on the other cloudy pixels, and 0 elsewhere.

Other images
------------
Elevation (float32): ``20 + 600 * L * L + (noise - 128) / 64`` with the noise of band 0.
Land cover (uint8, ESA WorldCover codes): 80 water, 50 built-up, 10 trees where ``v > 0.6``,
40 cropland where ``v > 0.3``, 30 grassland otherwise.

Masks
-----
A Sentinel-2 pixel is valid when its canonical centre lies in the interior of the scene's
``system:footprint`` (a lon/lat polygon, transformed into the request CRS with
``rasterio.warp.transform_geom``; the point test is shapely's ``contains_xy``). Elevation and
land-cover pixels are always valid. ``Image.clip`` uses the same centre-in-geometry test.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

METRES_PER_DEGREE = 111319.49079327357
_M32 = np.uint32(0x7FEB352D)
WATER_BELOW = 0.2
CLOUD_FILL = 0.38  # mean share of a cloudy 2 km cell that its blob covers
BUILT_ABOVE = 0.62

# Per band: (water, soil, vegetation, built-up, cloud boost); reflectance * 10000.
S2_REFLECTANCE: dict[str, tuple[float, float, float, float, float]] = {
    "B1": (900.0, 1100.0, 700.0, 1300.0, 800.0),
    "B2": (700.0, 1200.0, 450.0, 1500.0, 700.0),
    "B3": (650.0, 1400.0, 800.0, 1600.0, 500.0),
    "B4": (400.0, 1700.0, 450.0, 1800.0, 400.0),
    "B5": (350.0, 1900.0, 1200.0, 1900.0, 300.0),
    "B6": (300.0, 2100.0, 2800.0, 2000.0, 200.0),
    "B7": (280.0, 2200.0, 3300.0, 2050.0, 200.0),
    "B8": (250.0, 2300.0, 3600.0, 2100.0, 100.0),
    "B8A": (230.0, 2400.0, 3700.0, 2150.0, 100.0),
    "B9": (150.0, 800.0, 1100.0, 900.0, 0.0),
    "B11": (120.0, 2800.0, 1900.0, 2600.0, 0.0),
    "B12": (100.0, 2300.0, 900.0, 2300.0, 0.0),
}


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


@dataclass(frozen=True)
class Field:
    """Per-image quantities shared by all bands of one image on one request grid."""

    land: np.ndarray  # float32 L, (height, width)
    water: np.ndarray  # bool
    built: np.ndarray  # bool
    veg: np.ndarray  # float32 v (clipped to [0, 1])
    hx: np.ndarray  # uint32, (width,)
    hy: np.ndarray  # uint32, (height,)
    code: np.ndarray | None  # uint8: 0 clear, 1 opaque cloud, 2 cirrus
    cloud: np.ndarray | None  # bool, code != 0


def _cell_hash(cx: np.ndarray, cy: np.ndarray, seed: int) -> np.ndarray:
    """``mix(mix(cx * 0x27D4EB2F + seed) ^ mix(cy * 0x165667B1 + 0x9E3779B9)) % 1000``."""
    hx = _mix(_u32(cx, 0x27D4EB2F, seed))
    hy = _mix(_u32(cy, 0x165667B1, 0x9E3779B9))
    return _mix(hx[np.newaxis, :] ^ hy[:, np.newaxis]) % np.uint32(1000)


def _cloud_codes(lat: Lattice, seed: int, coverage: float) -> np.ndarray:
    """Per-pixel cloud code (see the module docstring).

    Everything is decided on the few distinct 125 m cells of the request and then gathered,
    which is much cheaper than working per pixel; a cell's code depends only on its indices.
    """
    fx = np.floor(lat.x_centres * lat.k / 125.0).astype(np.int64)
    fy = np.floor(lat.y_centres * lat.k / 125.0).astype(np.int64)
    ux, xi = np.unique(fx, return_inverse=True)
    uy, yi = np.unique(fy, return_inverse=True)
    coarse = _cell_hash(ux // 16, uy // 16, seed)
    jitter = _cell_hash(ux, uy, seed ^ 0x5BD1E995).astype(np.float64)
    shift_x = ((coarse >> np.uint32(4)) % np.uint32(7)).astype(np.float64) + 4.5
    shift_y = ((coarse >> np.uint32(7)) % np.uint32(7)).astype(np.float64) + 4.5
    ox = (ux % 16).astype(np.float64)[np.newaxis, :] - shift_x
    oy = (uy % 16).astype(np.float64)[:, np.newaxis] - shift_y
    radius = (coarse % np.uint32(11)).astype(np.float64) * 0.6 + 3.0
    dist = oy * oy + ox * ox + jitter * 0.012
    cover = min(max(coverage, 0.05), CLOUD_FILL)
    limit = np.uint32(math.floor(cover * 1000 / CLOUD_FILL))
    cloudy = (coarse < limit) & (dist < radius * radius)
    small = cloudy.astype(np.uint8) * (1 + ((coarse & np.uint32(8)) != 0)).astype(np.uint8)
    return np.take(np.take(small, yi.ravel(), axis=0), xi.ravel(), axis=1)


def field(lat: Lattice, image_id: str, coverage: float | None) -> Field:
    """Compute the shared per-image quantities; ``coverage`` None means a cloud-free image."""
    seed = seed_of(image_id)
    gx = lat.x_centres * lat.k
    gy = lat.y_centres * lat.k
    a = (0.2 * _tri(gx / 7300.0 + 0.13) + 0.1 * _tri(gx / 2300.0 + 0.71)).astype(np.float32)
    b = (0.2 * _tri(gy / 11900.0 + 0.59) + 0.1 * _tri(gy / 3100.0 + 0.23)).astype(np.float32)
    c = (0.4 * _tri(gx / 5700.0 + 0.37)).astype(np.float32)
    d = _tri(gy / 4100.0 + 0.83).astype(np.float32)
    land = a[np.newaxis, :] + b[:, np.newaxis]
    land += c[np.newaxis, :] * d[:, np.newaxis]
    water = land < np.float32(WATER_BELOW)
    built = land > np.float32(BUILT_ABOVE)
    veg = land - np.float32(WATER_BELOW)
    veg *= np.float32(1.0 / (BUILT_ABOVE - WATER_BELOW))
    np.clip(veg, np.float32(0), np.float32(1), out=veg)
    hx = _mix(_u32(lat.ix, 0x9E3779B1, seed))
    hy = _mix(_u32(lat.iy, 0x85EBCA77, 0x165667B1))
    code = cloud = None
    if coverage is not None:
        code = _cloud_codes(lat, seed, coverage)
        cloud = code != 0
    return Field(land, water, built, veg, hx, hy, code, cloud)


def _noise(fld: Field, band_index: int) -> np.ndarray:
    """Band-specific texture byte ``n`` in [0, 255] as float32."""
    shift = np.uint32(band_index % 25)
    bx = ((fld.hx >> shift) & np.uint32(255)).astype(np.uint8)
    by = ((fld.hy >> shift) & np.uint32(255)).astype(np.uint8)
    return (bx[np.newaxis, :] ^ by[:, np.newaxis]).astype(np.float32)


def season_of(month: int) -> float:
    """Vegetation vigour by month (northern hemisphere), in [0.8, 1.0]."""
    return 1.0 - abs(month - 7) / 30.0


def s2_band(fld: Field, band: str, band_index: int, season: float) -> np.ndarray:
    """A Sentinel-2 surface-reflectance band (uint16) or QA60."""
    if band == "QA60":
        if fld.code is None:
            return np.zeros(fld.land.shape, dtype=np.uint16)
        qa = fld.code.astype(np.uint16)
        qa *= np.uint16(1024)
        return qa
    water, soil, vegetation, built, boost = S2_REFLECTANCE[band]
    noise = _noise(fld, band_index)
    value = fld.veg * np.float32((vegetation - soil) * season)
    value += np.float32(soil - 192)
    np.copyto(value, np.float32(water - 192), where=fld.water)
    np.copyto(value, np.float32(built - 192), where=fld.built)
    if fld.cloud is not None:
        cloudy = noise * np.float32(8)
        cloudy += np.float32(6500 + boost - 1024)
    noise *= np.float32(1.5)
    value += noise
    if fld.cloud is not None:
        np.copyto(value, cloudy, where=fld.cloud)
    np.clip(value, np.float32(1), np.float32(10000), out=value)
    value += np.float32(0.5)
    return value.astype(np.uint16)


def elevation(fld: Field) -> np.ndarray:
    """A float32 elevation band in metres."""
    noise = _noise(fld, 0)
    noise -= np.float32(128)
    return np.float32(20) + np.float32(600) * fld.land * fld.land + noise / np.float32(64)


def land_cover(fld: Field) -> np.ndarray:
    """A uint8 land-cover band with ESA WorldCover class codes."""
    out = np.full(fld.land.shape, 30, dtype=np.uint8)
    out[fld.veg > np.float32(0.3)] = 40
    out[fld.veg > np.float32(0.6)] = 10
    out[fld.built] = 50
    out[fld.water] = 80
    return out
