"""What the catalog hands the evaluator: stored images with bands, properties and footprints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Transform = tuple[float, float, float, float, float, float]

# The generated archive ends here (a fixed date, so the catalog never changes with the clock).
ARCHIVE_END = datetime(2027, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BandSpec:
    """A stored band: its name, numpy dtype and native grid (``dimensions`` is width, height)."""

    id: str
    dtype: str
    crs: str
    transform: Transform
    dimensions: tuple[int, int] | None


@dataclass(frozen=True)
class Asset:
    """A stored image. ``kind`` selects the pixel function (see ``engine.emulator.pixels``).

    ``footprint`` is a lon/lat GeoJSON Polygon outside which the pixels are masked (None: the
    image is valid wherever its pixel function says so).
    """

    id: str
    kind: str
    bands: tuple[BandSpec, ...]
    properties: dict[str, Any] = field(hash=False)
    footprint: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def cloud_coverage(self) -> float | None:
        """Fraction of cloudy pixels the pixel function draws (None: no clouds)."""
        for key in ("CLOUDY_PIXEL_PERCENTAGE", "CLOUD_COVER"):
            if key in self.properties:
                return float(self.properties[key]) / 100.0
        return None

    @property
    def month(self) -> int:
        """Acquisition month (UTC), for the seasonal vegetation signal."""
        start = self.properties.get("system:time_start", 0)
        return datetime.fromtimestamp(start / 1000, tz=UTC).month

    @property
    def cirrus_share(self) -> float:
        """Share of the cloudy pixels that are cirrus rather than opaque cloud."""
        cloudy = float(self.properties.get("CLOUDY_PIXEL_PERCENTAGE", 0.0))
        thin = float(self.properties.get("THIN_CIRRUS_PERCENTAGE", 0.0))
        return thin / cloudy if cloudy > 0 else 0.0


def millis(when: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return round(when.timestamp() * 1000)


def utc(ms: float) -> datetime:
    """The aware UTC datetime of milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ring_geojson(ring: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """A closed GeoJSON Polygon from an unclosed lon/lat ring."""
    coords = [[float(x), float(y)] for x, y in ring]
    if coords and coords[0] != coords[-1]:
        coords.append(coords[0])
    return {"type": "Polygon", "coordinates": [coords]}
