"""Accounting of what the emulator served, so tests and benchmarks can check the engine's
behaviour from the server side (requests, concurrency, bytes, faults, tiles served twice).

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
        """Zero every counter (in-flight gauges keep counting live requests)."""
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()
        self.tiles: Counter[str] = Counter()
        self.workload_tags: Counter[str] = Counter()  # by endpoint and tag: "endpoint tag"
        self.bytes_served = 0
        self.client_aborts = 0
        self.quota_rejections = 0
        in_flight = getattr(self, "in_flight", 0)
        self.in_flight: int = in_flight
        self.max_in_flight: int = in_flight
        self.in_flight_by_project: Counter[str] = (
            getattr(self, "in_flight_by_project", None) or Counter()
        )

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

    def enter(self, project: str) -> None:
        """A quota-counted request started."""
        self.in_flight += 1
        self.in_flight_by_project[project] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, project: str) -> None:
        """A quota-counted request ended (answered, failed or abandoned)."""
        self.in_flight -= 1
        self.in_flight_by_project[project] -= 1
        if self.in_flight_by_project[project] <= 0:
            del self.in_flight_by_project[project]

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view of the counters."""
        return {
            "requests": {ep: dict(c) for ep, c in sorted(self.requests.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "bytes_served": self.bytes_served,
            "client_aborts": self.client_aborts,
            "quota_rejections": self.quota_rejections,
            "faults": dict(self.faults),
            "workload_tags": dict(self.workload_tags),
            "tiles_served": [
                {"key": key, "count": count} for key, count in sorted(self.tiles.items())
            ],
        }
