"""The emulator's coarse model of the Earth: land or sea, dry or humid, high or low.

Why: a world-sized catalog needs to know where scenes exist (Sentinel-2 and Landsat image
land) and its pixels should show sea at sea, desert in deserts and mountains where mountains
are. No data set is downloaded or bundled: the hand-drawn outlines of
``engine.emulator.world.outlines`` are rasterised here into three small global grids:

- ``land``: 0.1 degree cells, 1 where the cell centre lies on land (outlines minus the inland
  waters), else 0;
- ``aridity``: 0.25 degree cells, the desert outlines rasterised and smoothed (0 humid .. 1);
- ``relief``: 0.25 degree cells, plateau heights (metres) of the highland outlines, smoothed.

Grids are built on first use (about 0.1 s) and memoised for the process: they are constants
of the code, read-only arrays, the same in every process. Values between cell centres are
bilinear interpolations (``sample``), which only uses IEEE + - * and floor, so a value depends
only on the coordinates asked for, never on how many points are asked at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio import features
from shapely.geometry import Polygon, mapping

from engine.emulator.world import outlines


@dataclass(frozen=True)
class GlobalGrid:
    """A read-only lon/lat grid: row 0 is the northern edge (90 N), column 0 the western (180 W)."""

    values: np.ndarray  # float32 or uint8 (rows, cols); samples are float32
    step: float  # degrees per cell

    def sample(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Bilinear values at points (float32); longitudes wrap, latitudes clamp."""
        rows, cols = self.values.shape
        fx = (np.asarray(lon, dtype=np.float64) + 180.0) / self.step - 0.5
        fy = (90.0 - np.asarray(lat, dtype=np.float64)) / self.step - 0.5
        fy = np.clip(fy, 0.0, rows - 1.0)
        x0 = np.floor(fx)
        y0 = np.minimum(np.floor(fy), rows - 2.0)
        wx = (fx - x0).astype(np.float32)
        wy = (fy - y0).astype(np.float32)
        c0 = x0.astype(np.int64) % cols
        c1 = (c0 + 1) % cols
        r0 = y0.astype(np.int64)
        r1 = r0 + 1
        v = self.values
        top = v[r0, c0] * (np.float32(1) - wx) + v[r0, c1] * wx
        bottom = v[r1, c0] * (np.float32(1) - wx) + v[r1, c1] * wx
        return top * (np.float32(1) - wy) + bottom * wy

    def any_in(self, west: float, south: float, east: float, north: float) -> bool:
        """Whether any cell whose centre lies in the box is non-zero (longitudes may wrap)."""
        rows, cols = self.values.shape
        r0 = max(0, int(np.floor((90.0 - north) / self.step)))
        r1 = min(rows, int(np.ceil((90.0 - south) / self.step)))
        c0 = int(np.floor((west + 180.0) / self.step))
        c1 = int(np.ceil((east + 180.0) / self.step))
        if r1 <= r0 or c1 <= c0:
            return False
        span = np.arange(c0, c1) % cols
        return bool(self.values[r0:r1][:, span].any())


def _polygon(ring: outlines.Ring) -> Polygon:
    return Polygon(ring)


def _rasterize(
    shapes: list[tuple[Polygon, float]], step: float, dtype: str = "float32"
) -> np.ndarray:
    rows, cols = round(180 / step), round(360 / step)
    transform = Affine(step, 0.0, -180.0, 0.0, -step, 90.0)
    return features.rasterize(
        [(mapping(shape), value) for shape, value in shapes],
        out_shape=(rows, cols),
        transform=transform,
        fill=0,
        dtype=dtype,
    )


def _smooth(values: np.ndarray, passes: int) -> np.ndarray:
    """Repeated 3 x 3 box blur (longitudes wrap, latitudes clamp): soft plateau edges."""
    out = values.astype(np.float64)
    for _ in range(passes):
        padded = np.pad(out, ((1, 1), (0, 0)), mode="edge")
        rows = padded[:-2] + padded[1:-1] + padded[2:]
        out = (np.roll(rows, 1, axis=1) + rows + np.roll(rows, -1, axis=1)) / 9.0
    return out.astype(np.float32)


def _frozen(values: np.ndarray, step: float) -> GlobalGrid:
    values.flags.writeable = False
    return GlobalGrid(values, step)


@functools.cache
def land() -> GlobalGrid:
    """1 on land, 0 at sea and on the large inland waters; 0.1 degree cells."""
    masses = [
        outlines.EURASIA,
        outlines.CHUKOTKA_EAST,
        outlines.AFRICA,
        outlines.MADAGASCAR,
        outlines.NORTH_AMERICA,
        outlines.SOUTH_AMERICA,
        outlines.AUSTRALIA,
        outlines.GREENLAND,
        *outlines.ISLANDS,
    ]
    shapes = [(_polygon(r), 1.0) for r in masses]
    shapes += [(_polygon(r), 0.0) for r in outlines.INLAND_WATERS]
    return _frozen(_rasterize(shapes, 0.1, "uint8"), 0.1)


@functools.cache
def aridity() -> GlobalGrid:
    """0 (humid) .. 1 (desert); 0.25 degree cells."""
    grid = _rasterize([(_polygon(r), 1.0) for r in outlines.DESERTS], 0.25)
    return _frozen(_smooth(grid, 4), 0.25)


@functools.cache
def relief() -> GlobalGrid:
    """Plateau height in metres; 0.25 degree cells."""
    grid = _rasterize([(_polygon(r), h) for r, h in outlines.HIGHLANDS], 0.25)
    return _frozen(_smooth(grid, 6), 0.25)


def is_land(west: float, south: float, east: float, north: float) -> bool:
    """Whether a lon/lat box holds any land cell of the coarse model."""
    return land().any_in(west, south, east, north)
