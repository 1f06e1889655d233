"""UTM and the Military Grid Reference System, as the Sentinel-2 tiling uses them.

Sentinel-2 L1C/L2A granules are 109.8 km squares on the MGRS 100 km grid: tile ``50SPA`` is
UTM zone 50, latitude band S, 100 km column P and row A. The tile's upper-left corner is the
square's north-west corner snapped outwards to the 60 m grid (so ``x0`` is 99960, 199980,
300000, 399960, 499980, 600000, 699960 or 799980 and ``y0`` lies 0, 20 or 40 m north of the
square's northern edge); it then extends 109.8 km east and south, overlapping its neighbours
by 9.8 km. A 100 km square that straddles a latitude band gets one tile, in the band that
holds the square's centre (``50SPA`` over Nanjing, never ``50RPA``; ``50TMK``, not ``50SMK``,
over northern Beijing, as in the real Sentinel-2 grid).

The lettering is MGRS's "AA" scheme for WGS 84: columns cycle through A-H, J-R, S-Z with the
zone number modulo 3; rows through the 20 letters A-V (no I, O) every 2000 km of northing, the
even zones starting at F. Grid zones follow UTM with the Norway (32V widened to 3-12 E) and
Svalbard (31X, 33X, 35X, 37X only) exceptions.

UTM arithmetic is Krueger's series to third order in n (Karney 2011), good to a few
millimetres inside a zone: enough for footprints, which is all the catalog needs it for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

A_WGS84 = 6378137.0
F_WGS84 = 1 / 298.257223563
K0 = 0.9996
FALSE_EASTING = 500000.0
FALSE_NORTHING_SOUTH = 10000000.0
TILE_SIDE = 109800.0
SQUARE = 100000.0

BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8 degrees each from 80 S; X spans 72-84 N
COLUMN_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"

_N = F_WGS84 / (2 - F_WGS84)
_A = A_WGS84 / (1 + _N) * (1 + _N**2 / 4 + _N**4 / 64)
_ALPHA = (
    _N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16,
    13 * _N**2 / 48 - 3 * _N**3 / 5,
    61 * _N**3 / 240,
)
_BETA = (
    _N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96,
    _N**2 / 48 + _N**3 / 15,
    17 * _N**3 / 480,
)
_DELTA = (
    2 * _N - 2 * _N**2 / 3 - 2 * _N**3,
    7 * _N**2 / 3 - 8 * _N**3 / 5,
    56 * _N**3 / 15,
)
_E2N = 2 * math.sqrt(_N) / (1 + _N)


def central_meridian(zone: int) -> float:
    """Longitude of a zone's central meridian."""
    return zone * 6.0 - 183.0


def to_utm(
    lon: np.ndarray, lat: np.ndarray, zone: int, south: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Easting and northing (metres) of lon/lat points in a UTM zone."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64) - central_meridian(zone))
    lam = (lam + np.pi) % (2 * np.pi) - np.pi
    s = np.sin(phi)
    t = np.sinh(np.arctanh(s) - _E2N * np.arctanh(_E2N * s))
    xi = np.arctan2(t, np.cos(lam))
    eta = np.arctanh(np.sin(lam) / np.sqrt(1 + t * t))
    x = eta.copy()
    y = xi.copy()
    for j, a in enumerate(_ALPHA, start=1):
        x += a * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        y += a * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    easting = FALSE_EASTING + K0 * _A * x
    northing = K0 * _A * y + (FALSE_NORTHING_SOUTH if south else 0.0)
    return easting, northing


def from_utm(
    easting: np.ndarray, northing: np.ndarray, zone: int, south: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of UTM points."""
    n0 = FALSE_NORTHING_SOUTH if south else 0.0
    xi = (np.asarray(northing, dtype=np.float64) - n0) / (K0 * _A)
    eta = (np.asarray(easting, dtype=np.float64) - FALSE_EASTING) / (K0 * _A)
    xp = xi.copy()
    ep = eta.copy()
    for j, b in enumerate(_BETA, start=1):
        xp -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        ep -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xp) / np.cosh(ep))
    phi = chi.copy()
    for j, d in enumerate(_DELTA, start=1):
        phi += d * np.sin(2 * j * chi)
    lam = np.arctan2(np.sinh(ep), np.cos(xp))
    return np.degrees(lam) + central_meridian(zone), np.degrees(phi)


def utm_epsg(zone: int, south: bool) -> int:
    """EPSG code of a WGS 84 UTM zone."""
    return (32700 if south else 32600) + zone


def band_of(lat: float) -> str:
    """The MGRS latitude band letter of a latitude (80 S to 84 N)."""
    if lat < -80 or lat > 84:
        raise ValueError(f"latitude {lat} is outside MGRS's UTM bands (80 S to 84 N)")
    index = min(int((lat + 80) // 8), len(BANDS) - 1)
    return BANDS[min(index, 9)] if lat < 0 else BANDS[index]  # -1e-300 is south (M), not N


def band_range(band: str) -> tuple[float, float]:
    """South and north latitude of a band."""
    i = BANDS.index(band)
    south = -80.0 + 8 * i
    return south, (84.0 if band == "X" else south + 8)


def zone_range(zone: int, band: str) -> tuple[float, float] | None:
    """West and east longitude of a grid zone, or None where the exceptions remove it."""
    west, east = zone * 6.0 - 186.0, zone * 6.0 - 180.0
    if band == "V" and zone == 31:
        return 0.0, 3.0
    if band == "V" and zone == 32:
        return 3.0, 12.0
    if band == "X":
        special = {31: (0.0, 9.0), 33: (9.0, 21.0), 35: (21.0, 33.0), 37: (33.0, 42.0)}
        if zone in (32, 34, 36):
            return None
        if zone in special:
            return special[zone]
    return west, east


def zone_of(lon: float, lat: float) -> int:
    """The UTM zone of a point, with the Norway and Svalbard exceptions."""
    lon = (lon + 180.0) % 360.0 - 180.0
    zone = min(int((lon + 180) // 6) + 1, 60)
    if -80 <= lat <= 84:
        band = band_of(lat)
        for z in (zone - 1, zone, zone + 1):
            if 1 <= z <= 60:
                rng = zone_range(z, band)
                if rng is not None and rng[0] <= lon < rng[1]:
                    return z
    return zone


def square_letters(zone: int, easting: float, northing: float) -> str:
    """The two 100 km square letters of a UTM position (northing with false northing)."""
    col = int(easting // SQUARE)
    if not 1 <= col <= 8:
        raise ValueError(f"easting {easting} has no MGRS column")
    column = COLUMN_SETS[(zone - 1) % 3][col - 1]
    offset = 5 if zone % 2 == 0 else 0
    row = ROW_LETTERS[(int(northing // SQUARE) + offset) % 20]
    return column + row


@dataclass(frozen=True)
class Tile:
    """A Sentinel-2 tile: its MGRS id and its 109.8 km square in its UTM zone."""

    zone: int
    band: str
    column: int  # 1..8: the square spans easting [column, column + 1) x 100 km
    row: int  # the square spans northing [row, row + 1) x 100 km (false northing included)

    @property
    def south(self) -> bool:
        """Whether the zone is a southern-hemisphere one (false northing 10000 km)."""
        return self.band < "N"

    @cached_property
    def name(self) -> str:
        """The MGRS id, e.g. ``50SPA``."""
        letters = square_letters(self.zone, self.column * SQUARE, self.row * SQUARE)
        return f"{self.zone:02d}{self.band}{letters}"

    @property
    def epsg(self) -> int:
        """EPSG code of the tile's projection."""
        return utm_epsg(self.zone, self.south)

    @property
    def origin(self) -> tuple[float, float]:
        """Upper-left corner (x0, y0) of the tile's pixel grid."""
        x0 = math.floor(self.column * SQUARE / 60.0) * 60.0
        y0 = math.ceil((self.row + 1) * SQUARE / 60.0) * 60.0
        return x0, y0

    def outline(self, side: float = TILE_SIDE, per_edge: int = 4) -> list[tuple[float, float]]:
        """The tile square in lon/lat, counter-clockwise from the south-west, unclosed.

        ``per_edge`` points per edge keep the ring close to the projected square's edges.
        """
        x0, y0 = self.origin
        xs, ys = _square_ring(x0, y0 - side, x0 + side, y0, per_edge)
        lon, lat = from_utm(xs, ys, self.zone, self.south)
        return list(zip(lon.tolist(), lat.tolist(), strict=True))


def _square_ring(
    x0: float, y0: float, x1: float, y1: float, per_edge: int
) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(per_edge) / per_edge
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(per_edge, x1), x1 - (x1 - x0) * t,
                         np.full(per_edge, x0)])  # fmt: skip
    ys = np.concatenate([np.full(per_edge, y0), y0 + (y1 - y0) * t, np.full(per_edge, y1),
                         y1 - (y1 - y0) * t])  # fmt: skip
    return xs, ys


def parse_tile(name: str) -> Tile:
    """The tile of an MGRS id such as ``50SPA`` or ``T50SPA``."""
    text = name[1:] if name[:1] in ("T", "t") else name
    text = text.upper()
    if len(text) != 5 or not text[:2].isdigit():
        raise ValueError(f"{name!r} is not an MGRS tile id like 50SPA")
    zone, band, col_letter, row_letter = int(text[:2]), text[2], text[3], text[4]
    if not 1 <= zone <= 60 or band not in BANDS or zone_range(zone, band) is None:
        raise ValueError(f"{name!r} names no UTM grid zone")
    letters = COLUMN_SETS[(zone - 1) % 3]
    if col_letter not in letters or row_letter not in ROW_LETTERS:
        raise ValueError(f"{name!r} has no such 100 km square letters")
    column = letters.index(col_letter) + 1
    offset = 5 if zone % 2 == 0 else 0
    residue = (ROW_LETTERS.index(row_letter) - offset) % 20
    for row in _band_rows(zone, band):
        if row % 20 == residue:
            tile = Tile(zone, band, column, row)
            if _square_in_zone(tile):
                return tile
    raise ValueError(f"{name!r} is not a square of grid zone {zone}{band}")


def _band_rows(zone: int, band: str) -> range:
    """The 100 km rows whose squares can meet a band (checked at the centre and the edges)."""
    south, north = band_range(band)
    west, east = zone_range(zone, band) or (0.0, 0.0)
    lons = np.array([west, (west + east) / 2, east])
    hemisphere_south = band < "N"
    _, n_south = to_utm(lons, np.full(3, south), zone, hemisphere_south)
    _, n_north = to_utm(lons, np.full(3, north), zone, hemisphere_south)
    first = int(min(n_south.min(), n_north.min()) // SQUARE)
    last = int(max(n_south.max(), n_north.max()) // SQUARE)
    return range(first, last + 1)


def _square_in_zone(tile: Tile) -> bool:
    """Whether the tile's 100 km square overlaps its grid zone (the MGRS validity rule)."""
    return bool(_squares_in_zone(tile.zone, tile.band, [(tile.column, tile.row)])[0])


def _squares_in_zone(zone: int, band: str, squares: list[tuple[int, int]]) -> list[bool]:
    """For each (column, row) of a grid zone, whether its 100 km square overlaps the zone."""
    from shapely.geometry import Polygon, box

    rng = zone_range(zone, band)
    if rng is None or not squares:
        return [False] * len(squares)
    south, north = band_range(band)
    per_edge = 8
    cols = np.array([c for c, _ in squares], dtype=np.float64)[:, np.newaxis]
    rows = np.array([r for _, r in squares], dtype=np.float64)[:, np.newaxis]
    xs, ys = _square_ring(0.0, 0.0, SQUARE, SQUARE, per_edge)
    lon, lat = from_utm(cols * SQUARE + xs, rows * SQUARE + ys, zone, band < "N")
    inside = np.asarray(
        ((lon > rng[0]) & (lon < rng[1]) & (lat > south) & (lat < north)).all(axis=1)
    )
    outside = np.asarray(
        (lon <= rng[0]).all(axis=1)
        | (lon >= rng[1]).all(axis=1)
        | (lat <= south).all(axis=1)
        | (lat >= north).all(axis=1)
    )
    # A square across a band edge is named (and tiled) once, in the band of its centre.
    _, centre_lat = from_utm((cols + 0.5) * SQUARE, (rows + 0.5) * SQUARE, zone, band < "N")
    centred: np.ndarray = ((centre_lat >= south) & (centre_lat < north)).ravel()
    if band == "X":
        centred |= centre_lat.ravel() >= north
    if band == "C":
        centred |= centre_lat.ravel() < south
    result = []
    zone_box = box(rng[0], south, rng[1], north)
    for i in range(len(squares)):
        if not centred[i] or inside[i] or outside[i]:
            result.append(bool(centred[i] and inside[i]))
            continue
        square = Polygon(zip(lon[i].tolist(), lat[i].tolist(), strict=True))
        result.append(square.intersection(zone_box).area > 1e-9)
    return result


def tile_of(lon: float, lat: float) -> Tile:
    """The Sentinel-2 tile whose 100 km square holds a point (80 S to 84 N)."""
    zone = zone_of(lon, lat)
    band = band_of(lat)
    x, y = to_utm(np.array([lon]), np.array([lat]), zone, band < "N")
    column, row = int(x[0] // SQUARE), int(y[0] // SQUARE)
    i = BANDS.index(band)
    for near in (band, *BANDS[i + 1 : i + 2], *BANDS[max(0, i - 1) : i]):
        if (near < "N") == (band < "N") and _squares_in_zone(zone, near, [(column, row)])[0]:
            return Tile(zone, near, column, row)
    raise ValueError(f"no Sentinel-2 tile holds ({lon}, {lat})")


def tiles_in(west: float, south: float, east: float, north: float) -> Iterator[Tile]:
    """Every tile whose 109.8 km square may meet a lon/lat box (a superset; callers test).

    Works zone by zone and band by band: the box (grown by a tile's width) is brought into the
    zone's UTM and only the squares under it are looked at, so the cost follows the box's
    area, never the world's.
    """
    south = max(south, -80.0)
    north = min(north, 84.0)
    if north < south:
        return
    grow_lat = TILE_SIDE / 111000.0 + 0.1
    poleward = min(89.0, max(abs(south), abs(north)) + grow_lat)
    grow_lon = min(180.0, TILE_SIDE / (111000.0 * math.cos(math.radians(poleward))) + 0.1)
    first_band = BANDS.index(band_of(max(-80.0, south - grow_lat)))
    last_band = BANDS.index(band_of(min(84.0, north + grow_lat)))
    zones = _zones_between(west - grow_lon, east + grow_lon)
    for band in BANDS[first_band : last_band + 1]:
        for zone in zones:
            rng = zone_range(zone, band)
            if rng is None:
                continue
            yield from _zone_tiles(zone, band, west, south, east, north)


def _zones_between(west: float, east: float) -> list[int]:
    if east - west >= 360:
        return list(range(1, 61))
    first = math.floor((west + 180) / 6)
    last = math.floor((east + 180) / 6)
    return sorted({(z % 60) + 1 for z in range(first, last + 1)})


def _zone_tiles(
    zone: int, band: str, west: float, south: float, east: float, north: float
) -> Iterator[Tile]:
    south_hemisphere = band < "N"
    cm = central_meridian(zone)
    # Sample the box's edges (longitudes relative to the zone, kept within +-90 degrees).
    lons = np.linspace(west, east, 9)
    lats = np.linspace(max(south, -80.0), min(north, 84.0), 9)
    grid_lon, grid_lat = np.meshgrid(lons, lats)
    rel = (grid_lon - cm + 180.0) % 360.0 - 180.0
    near = np.abs(rel) < 30.0
    if not near.any():
        return
    xs, ys = to_utm(cm + rel[near], grid_lat[near], zone, south_hemisphere)
    x_lo, x_hi = xs.min() - TILE_SIDE, xs.max()
    y_lo, y_hi = ys.min(), ys.max() + TILE_SIDE
    rows = set(_band_rows(zone, band))
    squares = [
        (column, row)
        for column in range(max(1, int(x_lo // SQUARE)), min(8, int(x_hi // SQUARE)) + 1)
        for row in range(int(y_lo // SQUARE) - 1, int(y_hi // SQUARE) + 1)
        if row in rows
    ]
    for (column, row), valid in zip(squares, _squares_in_zone(zone, band, squares), strict=True):
        if valid:
            yield Tile(zone, band, column, row)
