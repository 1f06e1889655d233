"""Every fault kind of the emulator's hostile profile, at its full 35 % rate, ends in a
correct file. ``scripts/fault_sweep.py`` sweeps the rate and writes docs/RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path

from peers import assert_equals_oracle, run_under_faults

from engine.emulator.config import TILE_FAULT_KINDS
from engine.scheduler import SchedulerOptions
from engine.transport import TransportOptions

# Chosen so that this job of 57 tiles meets every kind of fault (the schedule is a pure
# function of the seed, the tile and the attempt number: see engine/emulator/faults.py).
SEED = 1


def test_every_hostile_fault_kind_at_35_percent_ends_in_a_correct_file(tmp_path: Path) -> None:
    report = run_under_faults(
        tmp_path,
        rate=0.35,
        seed=SEED,
        scheduler=SchedulerOptions(
            concurrency=6, backoff_base=0.2, backoff_cap=2.0, first_probe_interval=0.5
        ),
        transport=TransportOptions(connect_timeout=5.0, first_byte_timeout=5.0, idle_timeout=1.5),
        max_tile_bytes=7_200,  # 2400 pixels of the int16 DEM (3 request bytes each)
        budget_s=120.0,
    )
    assert report.complete, (report.failed, report.faults)
    assert set(report.faults) == set(TILE_FAULT_KINDS), report.faults
    assert report.failed == 0
    assert report.tiles >= 50
    # Stalls last 30 s at the emulator; the idle timeout must cut them, not wait them out.
    assert report.wall_s < 30
    assert report.tile_requests > report.tiles
    assert_equals_oracle(report.output, report.state_path)
