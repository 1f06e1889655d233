"""Knobs of the Earth Engine emulator: limits, performance model, fault model, profiles.

Every behaviour the engine must survive is a field here, so a test or a benchmark can turn
exactly one thing on. Profiles are named starting points; `from_profile` applies overrides.

Server models (profiles). A tile request is answered after
``latency_fixed_s + latency_per_mpix_s * Mpx`` (the modelled compute, render time included),
then its body is paced at ``conn_bandwidth`` per connection and ``total_bandwidth`` over all
connections together; ``max_concurrent`` requests per EE project (the project in the request
path) are served at once, the next ones get EE's 429. Bandwidths in bytes per second; MB is
10**6 bytes, MiB 2**20.

- ``clean``: no shaping, EE's limits (40 concurrent per project), no faults.
- ``realistic``: 0.7 s + 0.3 s/Mpx, 4 MiB/s per connection, 64 MiB/s in total, 0.2 s per API
  call. The profile eefetch's first benchmarks were tuned on.
- ``flaky``, ``hostile``: ``realistic`` plus seeded faults (10 % / 35 % of tile answers).
- ``per-connection``: 1 s + 0.3 s/Mpx, 4 MB/s per connection, no aggregate cap, 0.2 s per API
  call: the independent server model of issue 12, where only the connections limit.
- ``high-latency``: ``per-connection`` with 3 s per request (3 s + 0.3 s/Mpx).
- ``slow-connections``: ``per-connection`` with 1 MB/s per connection (quota 40 concurrent).
- ``compute-heavy``: ``per-connection`` with 2 s per Mpx (1 s + 2 s/Mpx).
- ``quota-10``: ``per-connection`` allowing 10 concurrent requests per project, 429 beyond.
- ``link-20``: ``per-connection`` behind a link of 20 MB/s in total.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EE_MAX_REQUEST_BYTES = 50_331_648
EE_MAX_DOWNLOAD_SIDE = 10_000
EE_MAX_COMPUTE_SIDE = 32_768
EE_MAX_BANDS = 1024
EE_MAX_CONCURRENT = 40

API_FAULT_KINDS = (
    "rate_limit_retry_after",
    "rate_limit",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
)
# A tile download can also break in the body, which an API call's short JSON answer cannot.
TILE_FAULT_KINDS = (
    *API_FAULT_KINDS,
    "reset",
    "short_body",
    "stall",
    "trickle",
    "html",
    "expired",
)


def _frozen(weights: Mapping[str, float]) -> Mapping[str, float]:
    """A read-only copy, so a frozen config cannot be changed through its weights."""
    return MappingProxyType(dict(weights))


_FLAKY_WEIGHTS = _frozen(
    {
        "rate_limit_retry_after": 2,
        "rate_limit": 1,
        "http_500": 1,
        "http_502": 0.5,
        "http_503": 1,
        "http_504": 0.5,
        "reset": 1.5,
        "short_body": 1,
        "expired": 0.5,
    }
)
_HOSTILE_WEIGHTS = _frozen(
    {
        "rate_limit_retry_after": 2,
        "rate_limit": 1,
        "http_500": 1,
        "http_502": 1,
        "http_503": 1,
        "http_504": 1,
        "reset": 1.5,
        "short_body": 1.5,
        "stall": 1.5,
        "trickle": 1,
        "html": 1,
        "expired": 1,
    }
)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes the emulator's answers; immutable so one server has one model.

    Sizes are bytes, times seconds, bandwidths bytes per second; `None` means "no cap".
    """

    profile: str = "clean"
    seed: int = 0
    no_limits: bool = False

    # Earth Engine's limits.
    max_request_bytes: int = EE_MAX_REQUEST_BYTES
    max_download_side: int = EE_MAX_DOWNLOAD_SIDE
    max_compute_side: int = EE_MAX_COMPUTE_SIDE
    max_bands: int = EE_MAX_BANDS
    max_concurrent: int | None = EE_MAX_CONCURRENT
    memory_budget: int | None = None
    download_ttl_s: float | None = 4 * 3600.0

    # Performance model (applied only while `shaping` is on and limits are).
    shaping: bool = True
    latency_fixed_s: float = 0.0
    latency_per_mpix_s: float = 0.0
    api_latency_s: float = 0.0
    conn_bandwidth: float | None = None
    total_bandwidth: float | None = None
    chunk_size: int = 64 * 1024
    tiff_compress: str | None = None
    # Where pixels are rendered and encoded, always off the event loop: `render_workers`
    # threads of the server process, or `render_processes` worker processes when > 0 (each
    # evaluates the request's JSON expression with the bundled model itself). A
    # `tile_cache_dir` keeps every encoded body on disk by request identity, so a tile is
    # rendered once per directory (give a fresh folder whenever the pixel model may change).
    render_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 4))
    render_processes: int = 0
    tile_cache_dir: str | None = None

    # Fault model.
    fault_rate: float = 0.0
    fault_weights: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    api_fault_rate: float = 0.0
    burst_max: int = 3
    retry_after_s: int = 2
    stall_s: float = 300.0
    trickle_bandwidth: float = 16 * 1024.0

    def __post_init__(self) -> None:
        """Refuse a config that would silently do nothing or crash later."""
        unknown = set(self.fault_weights) - set(TILE_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        if not 0.0 <= self.fault_rate <= 1.0 or not 0.0 <= self.api_fault_rate <= 1.0:
            raise ValueError("fault rates must be within [0, 1]")
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.render_processes < 0 or self.render_workers < 1:
            raise ValueError("render_processes must be >= 0 and render_workers >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1 (or None for no quota)")
        for name in ("conn_bandwidth", "total_bandwidth"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None for no cap)")

    @classmethod
    def from_profile(cls, name: str = "clean", **overrides: Any) -> EmulatorConfig:
        """A profile's settings with some knobs replaced, e.g. `from_profile('flaky', seed=3)`."""
        try:
            base = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}") from None
        values = {**base, **overrides, "profile": name}
        if "fault_weights" in values:
            values["fault_weights"] = _frozen(values["fault_weights"])
        return cls(**values)

    def replace(self, **changes: Any) -> EmulatorConfig:
        """A copy with some knobs changed."""
        return dataclasses.replace(self, **changes)

    @property
    def limits_on(self) -> bool:
        """Whether EE's size, band, memory, quota and expiry limits are enforced."""
        return not self.no_limits

    @property
    def faults_on(self) -> bool:
        """Whether the fault model runs (never with `no_limits`: that is the oracle render)."""
        return not self.no_limits and (self.fault_rate > 0 or self.api_fault_rate > 0)

    @property
    def shaping_on(self) -> bool:
        """Whether latency and bandwidth shaping apply (off to measure the server's capacity)."""
        return self.shaping and not self.no_limits


_REALISTIC: dict[str, Any] = {
    "latency_fixed_s": 0.7,
    "latency_per_mpix_s": 0.3,
    "api_latency_s": 0.2,
    "conn_bandwidth": 4 * 1024 * 1024.0,
    "total_bandwidth": 64 * 1024 * 1024.0,
}

# The independent server model of issue 12, and the family of one-knob variations around it.
_PER_CONNECTION: dict[str, Any] = {
    "latency_fixed_s": 1.0,
    "latency_per_mpix_s": 0.3,
    "api_latency_s": 0.2,
    "conn_bandwidth": 4e6,
    "total_bandwidth": None,
    "max_concurrent": EE_MAX_CONCURRENT,
}

PROFILES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "clean": MappingProxyType({}),
        "realistic": MappingProxyType(dict(_REALISTIC)),
        "flaky": MappingProxyType(
            {
                **_REALISTIC,
                "fault_rate": 0.10,
                "fault_weights": _FLAKY_WEIGHTS,
                "api_fault_rate": 0.02,
            }
        ),
        "hostile": MappingProxyType(
            {
                **_REALISTIC,
                "fault_rate": 0.35,
                "fault_weights": _HOSTILE_WEIGHTS,
                "api_fault_rate": 0.05,
                "stall_s": 300.0,
            }
        ),
        "per-connection": MappingProxyType(dict(_PER_CONNECTION)),
        "high-latency": MappingProxyType({**_PER_CONNECTION, "latency_fixed_s": 3.0}),
        "slow-connections": MappingProxyType(
            {**_PER_CONNECTION, "conn_bandwidth": 1e6, "max_concurrent": 40}
        ),
        "compute-heavy": MappingProxyType({**_PER_CONNECTION, "latency_per_mpix_s": 2.0}),
        "quota-10": MappingProxyType({**_PER_CONNECTION, "max_concurrent": 10}),
        "link-20": MappingProxyType({**_PER_CONNECTION, "total_bandwidth": 20e6}),
    }
)
SERVER_MODELS = (
    "realistic",
    "per-connection",
    "high-latency",
    "slow-connections",
    "compute-heavy",
    "quota-10",
    "link-20",
)
"""The profiles that differ only in their performance model (no faults): the benchmark sweep's."""
