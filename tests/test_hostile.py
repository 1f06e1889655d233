"""Every fault kind of the emulator's hostile profile, at its full 35 % rate, ends in a
correct file. ``scripts/fault_sweep.py`` sweeps the rate and writes docs/RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.emulator.config import TILE_FAULT_KINDS
from engine.scheduler import SchedulerOptions
from engine.testing.campaigns import run_under_faults
from engine.testing.oracle import assert_matches_oracle
from engine.transport import TransportOptions

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = pytest.mark.slow

# The fault schedule is a pure function of the seed, the tile and the attempt number (see
# engine/emulator/faults.py), so which kinds a job meets changes only when the retry flow does.
# Each of these seeds alone met all twelve kinds with this job of 57 tiles (2026-11-30); the
# test asks that the two together do, so that a small change of the flow does not make it
# miss a kind by chance. If it ever does, pick seeds again (a search over 2..15 found 5).
SEEDS = (2, 4)


def test_every_hostile_fault_kind_at_35_percent_ends_in_a_correct_file(tmp_path: Path) -> None:
    met: set[str] = set()
    for seed in SEEDS:
        met |= _one_job(tmp_path / f"seed{seed}", seed)
    assert met == set(TILE_FAULT_KINDS)


def _one_job(folder: Path, seed: int) -> set[str]:
    folder.mkdir()
    report = run_under_faults(
        folder,
        rate=0.35,
        seed=seed,
        scheduler=SchedulerOptions(
            concurrency=6, backoff_base=0.2, backoff_cap=2.0, first_probe_interval=0.5
        ),
        transport=TransportOptions(connect_timeout=5.0, first_byte_timeout=5.0, idle_timeout=1.5),
        max_tile_bytes=7_200,  # 2400 pixels of the int16 DEM (3 request bytes each)
        budget_s=120.0,
    )
    assert report.complete, (report.failed, report.faults)
    assert report.failed == 0
    assert report.tiles >= 50
    # Stalls last 30 s at the emulator; the idle timeout must cut them, not wait them out.
    assert report.wall_s < 30
    assert report.tile_requests > report.tiles
    assert_matches_oracle(report.output, report.state_path)
    return set(report.faults)
