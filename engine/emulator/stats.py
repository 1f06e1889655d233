"""Accounting of what the emulator served, so tests and benchmarks can check the engine's
behaviour from the server side (requests, concurrency, bytes, faults, tiles served twice).

Concurrency is counted per EE project (the project in the request path), as Earth Engine's
quota is: `projects[P]` holds the requests of P in flight now, the most ever in flight at
once since the last reset, and how many were answered 429 because P was at its quota.

All mutation happens on the server's event loop; readers take a `snapshot()` there.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any


def tile_key(
    crs: str, transform: Sequence[float], width: int, height: int, band_ids: Sequence[str]
) -> str:
    """Canonical string for a tile grid: the same pixels asked twice give the same key."""
    return json.dumps(
        {
            "crs": crs,
            "transform": [float(v) for v in transform],
            "width": int(width),
            "height": int(height),
            "bands": list(band_ids),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


class EmulatorStats:
    """Counters of one emulator instance."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter (in-flight gauges keep counting live requests, and the maxima
        restart from them)."""
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()
        self.tiles: Counter[str] = Counter()
        self.workload_tags: Counter[str] = Counter()  # by endpoint and tag: "endpoint tag"
        self.bytes_served = 0
        self.client_aborts = 0
        self.quota_rejections = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.loop_lag_max_s = 0.0
        self.loop_lags_over_50ms = 0
        in_flight = getattr(self, "in_flight", 0)
        self.in_flight: int = in_flight
        self.max_in_flight: int = in_flight
        self.in_flight_by_project: Counter[str] = (
            getattr(self, "in_flight_by_project", None) or Counter()
        )
        self.max_in_flight_by_project: Counter[str] = Counter(self.in_flight_by_project)
        self.quota_rejections_by_project: Counter[str] = Counter()

    def record_request(self, endpoint: str, status: int) -> None:
        """Count one answer by endpoint and the status line it carried."""
        self.requests[endpoint][str(status)] += 1

    def record_fault(self, kind: str) -> None:
        """Count one injected fault by kind."""
        self.faults[kind] += 1

    def record_bytes(self, count: int) -> None:
        """Count body bytes actually written to a socket."""
        self.bytes_served += count

    def record_tile(self, key: str) -> None:
        """A tile's body went out completely with a 200."""
        self.tiles[key] += 1

    def record_workload_tag(self, endpoint: str, tag: Any) -> None:
        """A request carried a workload tag (``workloadTag``), as Cloud Monitoring would see."""
        if tag:
            self.workload_tags[f"{endpoint} {tag}"] += 1

    def record_cache(self, hit: bool) -> None:
        """A tile body came from the tile cache (hit) or had to be rendered (miss)."""
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1

    def record_loop_lag(self, seconds: float) -> None:
        """How late the event loop woke a timer: its work delays every paced answer by this."""
        self.loop_lag_max_s = max(self.loop_lag_max_s, seconds)
        if seconds > 0.05:
            self.loop_lags_over_50ms += 1

    def admit(self, project: str, quota: int | None) -> bool:
        """Count a quota-counted request in if `project` is below `quota`, else count a 429.

        Check and increment happen in one call on the event loop, so the maximum in flight
        can never pass the quota, whatever the interleaving of requests.
        """
        if quota is not None and self.in_flight_by_project[project] >= quota:
            self.quota_rejections += 1
            self.quota_rejections_by_project[project] += 1
            return False
        self.enter(project)
        return True

    def enter(self, project: str) -> None:
        """A quota-counted request started."""
        self.in_flight += 1
        self.in_flight_by_project[project] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_by_project[project] = max(
            self.max_in_flight_by_project[project], self.in_flight_by_project[project]
        )

    def leave(self, project: str) -> None:
        """A quota-counted request ended (answered, failed or abandoned)."""
        self.in_flight -= 1
        self.in_flight_by_project[project] -= 1
        if self.in_flight_by_project[project] <= 0:
            del self.in_flight_by_project[project]

    def projects(self) -> dict[str, dict[str, int]]:
        """Per project: requests in flight now, the most at once, 429s for concurrency."""
        names = set(self.max_in_flight_by_project) | set(self.quota_rejections_by_project)
        return {
            name: {
                "in_flight": self.in_flight_by_project.get(name, 0),
                "max_in_flight": self.max_in_flight_by_project.get(name, 0),
                "quota_rejections": self.quota_rejections_by_project.get(name, 0),
            }
            for name in sorted(names)
        }

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view of the counters."""
        return {
            "requests": {ep: dict(c) for ep, c in sorted(self.requests.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "bytes_served": self.bytes_served,
            "client_aborts": self.client_aborts,
            "quota_rejections": self.quota_rejections,
            "projects": self.projects(),
            "tile_cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "loop_lag": {
                "max_s": round(self.loop_lag_max_s, 4),
                "over_50ms": self.loop_lags_over_50ms,
            },
            "faults": dict(self.faults),
            "workload_tags": dict(self.workload_tags),
            "tiles_served": [
                {"key": key, "count": count} for key, count in sorted(self.tiles.items())
            ],
        }
