"""Ground tracks of a circular sun-synchronous orbit, for acquisition plans.

Why: Sentinel-2 and Landsat image a place when one of their ground tracks passes over it; a
model of the tracks gives each tile its orbits, its revisit dates and its times of day, so
the catalog can generate scenes on demand instead of storing them.

The model is a circle of inclination ``i`` around a spherical Earth. On the descending pass the
argument of latitude ``u`` (0 at the ascending node) runs from 90 to 270 degrees and
``sin(lat) = sin(i) sin(u)``. Relative to the descending node (``u`` = 180), the sub-satellite
point is ``dt = (u - 180) / 360 * period`` seconds later and ``atan2(cos i sin u, cos u) - 180``
degrees further east in inertial longitude, less the Earth's rotation relative to the orbit
plane (360 degrees per mean solar day for a sun-synchronous orbit). Track positions are good
to a few kilometres; times to a minute or so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

KM_PER_DEGREE = 111.32
SOLAR_DAY_S = 86400.0


@dataclass(frozen=True)
class Orbit:
    """A sun-synchronous repeat orbit, descending passes only."""

    inclination: float  # degrees
    period_s: float  # nodal period
    swath_km: float

    @property
    def max_latitude(self) -> float:
        """The highest latitude the ground track reaches."""
        return 180.0 - self.inclination if self.inclination > 90 else self.inclination

    def argument(self, lat: float) -> float:
        """The argument of latitude (degrees) at which the descending pass crosses ``lat``."""
        s = math.sin(math.radians(lat)) / math.sin(math.radians(self.inclination))
        s = max(-1.0, min(1.0, s))
        return 180.0 - math.degrees(math.asin(s))

    def at_argument(self, u: float) -> tuple[float, float, float]:
        """(latitude, longitude east of the node, seconds after the node) at argument ``u``."""
        ur = math.radians(u)
        inc = math.radians(self.inclination)
        lat = math.degrees(math.asin(math.sin(inc) * math.sin(ur)))
        inertial = math.degrees(math.atan2(math.cos(inc) * math.sin(ur), math.cos(ur))) - 180.0
        inertial = (inertial + 180.0) % 360.0 - 180.0
        dt = (u - 180.0) / 360.0 * self.period_s
        return lat, inertial - 360.0 * dt / SOLAR_DAY_S, dt

    def offset(self, lat: float) -> tuple[float, float]:
        """(longitude east of the node, seconds after the node) where the pass crosses ``lat``."""
        _, lon, dt = self.at_argument(self.argument(lat))
        return lon, dt

    def node_shift(self) -> float:
        """Degrees by which each orbit's node lies west of the previous one's."""
        return 360.0 * self.period_s / SOLAR_DAY_S

    def heading_cos(self, lat: float) -> float:
        """cos of the angle between the track and the meridian at ``lat`` (for swath widths)."""
        step = 0.25
        lo, hi = max(-89.0, lat - step), min(89.0, lat + step)
        lo = max(lo, -self.max_latitude + 0.01)
        hi = min(hi, self.max_latitude - 0.01)
        if hi <= lo:
            return 1.0
        east = (self.offset(hi)[0] - self.offset(lo)[0]) * math.cos(math.radians(lat))
        north = hi - lo
        return max(north / math.hypot(north, east), 0.2)

    def cross_track_km(self, lon: float, lat: float, node_lon: float) -> float:
        """Signed distance (km, east positive) of a point from the track of a node longitude."""
        track = node_lon + self.offset(lat)[0]
        d = (lon - track + 180.0) % 360.0 - 180.0
        return d * math.cos(math.radians(lat)) * KM_PER_DEGREE * self.heading_cos(lat)

    def half_swath_degrees(self, lat: float) -> float:
        """Half the swath, in degrees of longitude at ``lat``."""
        cos_lat = max(math.cos(math.radians(lat)), 0.01)
        return self.swath_km / 2 / (KM_PER_DEGREE * cos_lat * self.heading_cos(lat))


def solar_zenith(when: datetime, lon: float, lat: float) -> float:
    """Approximate solar zenith angle (degrees) at a time and place, for scene properties."""
    day = when.timetuple().tm_yday
    decl = math.radians(-23.44 * math.cos(math.radians(360.0 / 365.0 * (day + 10))))
    hours = when.hour + when.minute / 60 + when.second / 3600 + lon / 15.0
    hour_angle = math.radians(15.0 * (hours - 12.0))
    phi = math.radians(lat)
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))
