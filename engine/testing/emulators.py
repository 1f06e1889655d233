"""Emulators with the pace a test needs, for downloads a test interrupts part way."""

from __future__ import annotations

from typing import Any

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread


def paced_emulator(
    seed: int, latency_s: float, profile: str = "clean", **overrides: Any
) -> EmulatorThread:
    """An emulator (not yet started) that answers each tile after ``latency_s`` whatever its
    size, so a test can stop a download part way on any machine."""
    config = EmulatorConfig.from_profile(
        profile, seed=seed, latency_fixed_s=latency_s, latency_per_mpix_s=0.0, **overrides
    )
    return EmulatorThread(config)
