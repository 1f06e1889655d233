"""Deterministic draws for the catalog: hashes to uniform numbers, and a cloud climate.

Everything the catalog invents (cloud cover, timing jitter) is a pure function of ``SEED`` and
the scene's identity (tile or path/row, date, orbit), so every process, every request and every
run generates the same catalog.
"""

from __future__ import annotations

import hashlib

import numpy as np

from engine.emulator.world import land

SEED = 20170328  # the catalog's seed; changing it changes every generated scene


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the hash of ``SEED`` and ``parts``."""
    text = "\x1f".join(str(p) for p in (SEED, *parts))
    raw = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big") / 2**64


def mean_cloudiness(lon: float, lat: float) -> float:
    """Mean cloud fraction of a scene at a place: humid ~0.45, deserts ~0.08, polar ~0.55."""
    arid = float(land.aridity().sample(np.array([lon]), np.array([lat]))[0])
    mean = 0.45 - 0.37 * arid
    if abs(lat) > 55:
        mean += 0.1
    if abs(lat) < 10:
        mean += 0.1
    return min(max(mean, 0.05), 0.65)


def cloud_percentage(mean: float, *parts: object) -> float:
    """A scene's cloud percentage: ``100 * u ** ((1 - mean) / mean)`` has mean ``100 * mean``."""
    u = unit("cloud", *parts)
    return round(100.0 * u ** ((1.0 - mean) / mean), 6)
