"""The seeded fault model: which request fails, and how.

Requests arrive concurrently, so a shared random stream would make faults depend on timing.
Instead each decision is a hash of (seed, endpoint, the request's identity, the attempt number
for that identity): the same tile asked for the same number of times meets the same faults,
whatever the order of the other requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.emulator.config import API_FAULT_KINDS, TILE_FAULT_KINDS, EmulatorConfig


@dataclass(frozen=True)
class Fault:
    """One injected fault; `fraction` places cuts and stalls within the body."""

    kind: str
    fraction: float = 0.0


def digest(value: Any) -> str:
    """A stable digest of JSON-like data (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _uniforms(seed: int, endpoint: str, identity: str, attempt: int) -> tuple[float, ...]:
    """Four independent numbers in [0, 1) drawn from the hash of the decision's inputs."""
    raw = hashlib.blake2b(
        f"{seed}\x1f{endpoint}\x1f{identity}\x1f{attempt}".encode(), digest_size=32
    ).digest()
    return tuple(int.from_bytes(raw[i : i + 8], "big") / 2**64 for i in range(0, 32, 8))


def _pick(weights: Sequence[tuple[str, float]], u: float) -> str | None:
    """The kind whose share of the total weight contains `u`."""
    total = sum(w for _, w in weights)
    if total <= 0:
        return None
    target = u * total
    for kind, weight in weights:
        target -= weight
        if target < 0:
            return kind
    return weights[-1][0]


class FaultModel:
    """Pure decisions over a config; holds no per-request state (the server counts attempts)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._weights = {
            kind: float(config.fault_weights.get(kind, 0.0)) for kind in TILE_FAULT_KINDS
        }

    def _start(
        self, endpoint: str, identity: str, attempt: int, kinds: Sequence[str], rate: float
    ) -> tuple[Fault | None, int]:
        """The fault that starts at this attempt, and how many attempts it lasts."""
        u_hit, u_kind, u_frac, u_len = _uniforms(self._config.seed, endpoint, identity, attempt)
        if u_hit >= rate:
            return None, 0
        kind = _pick([(k, self._weights[k]) for k in kinds if self._weights[k] > 0], u_kind)
        if kind is None:
            kind = _pick([(k, 1.0) for k in kinds], u_kind)
        assert kind is not None
        length = 1
        if kind.startswith("rate_limit"):
            length = 1 + int(u_len * max(1, self._config.burst_max))
        return Fault(kind, round(u_frac, 6)), length

    def decide(self, endpoint: str, identity: str, attempt: int, *, tile: bool) -> Fault | None:
        """The fault for this attempt (0-based) at an identity, or None for a clean answer.

        Tile endpoints draw from all configured kinds at `fault_rate`; API calls draw only
        429/5xx at `api_fault_rate`. A 429 burst that started at an earlier attempt covers
        the following ones, so a tile can meet several 429s in a row.
        """
        if not self._config.faults_on:
            return None
        rate = self._config.fault_rate if tile else self._config.api_fault_rate
        if rate <= 0:
            return None
        kinds: Sequence[str] = TILE_FAULT_KINDS if tile else API_FAULT_KINDS
        if endpoint != "getPixels":
            kinds = [k for k in kinds if k != "expired"]
        for earlier in range(max(0, attempt - self._config.burst_max + 1), attempt):
            fault, length = self._start(endpoint, identity, earlier, kinds, rate)
            if (
                fault is not None
                and fault.kind.startswith("rate_limit")
                and earlier + length > attempt
            ):
                return fault
        fault, _ = self._start(endpoint, identity, attempt, kinds, rate)
        return fault


def fault_schedule(
    config: EmulatorConfig, endpoint: str, identity: str, attempts: int, *, tile: bool = True
) -> list[str | None]:
    """The kinds met by attempts 0..attempts-1 at one identity (for tests and docs)."""
    model = FaultModel(config)
    out: list[str | None] = []
    for attempt in range(attempts):
        fault = model.decide(endpoint, identity, attempt, tile=tile)
        out.append(None if fault is None else fault.kind)
    return out
