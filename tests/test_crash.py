"""A seeded handful of SIGKILLs at random moments of a ~20 MB job (the CI crash campaign).

The larger campaign is ``scripts/crash_campaign.py``; this runs the same code with 5 kills.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import ModuleType

import pytest

from engine.emulator.server import EmulatorThread
from engine.testing.cli import load_script, run_cli, start_cli
from engine.testing.emulators import paced_emulator
from engine.testing.jobs import dem_args, job_spec, state_of, wait_for_done_tiles
from engine.testing.oracle import assert_matches_oracle, served_counts, tile_key
from state import Store

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    return load_script("crash_campaign")


def test_five_sigkills_end_in_the_oracle_file_and_no_done_tile_is_fetched_again(
    tmp_path: Path, campaign: ModuleType, oracle: EmulatorThread
) -> None:
    """Whatever moments the kills land on, the promises hold. The emulator sends each tile
    no faster than 0.1 s + 2 MB/s, so a run of this 100-tile job outlasts the early kill and
    every progress kill finds tiles left; the process is frozen before its phase is read."""
    config = campaign.CampaignConfig(
        workdir=tmp_path,
        kills=5,
        merge_kills=1,
        size_mb=20,
        seed=11,
        max_tile_bytes=200_000,
        latency_s=0.1,
        conn_bandwidth=2_000_000.0,
    )
    with EmulatorThread(campaign.emulator_config(config)) as emulator:
        result = campaign.run_campaign(config, emulator, oracle)
    assert result.completed, result.final_stderr
    assert len(result.kills) == 5, f"fewer kills than planned: {result.kills}"
    assert result.refetched_done == [], f"tiles done at a kill were fetched again: {result}"
    assert result.pixels_equal
    assert result.tiles >= 100
    mid_download = [k for k in result.kills if k.total_tiles and k.done_at_kill < k.total_tiles]
    assert mid_download, f"no kill while tiles were left to fetch: {result.kills}"


def test_ctrl_c_stops_within_seconds_and_the_same_command_resumes(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with paced_emulator(seed=12, latency_s=0.5) as emulator:
        args = dem_args(emulator.url, output, "--concurrency", "3", max_tile_bytes=60_000)
        process = start_cli(args)
        wait_for_done_tiles(state, 2, process, timeout=60)
        pressed = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        stopped_after = time.monotonic() - pressed
        with Store.open(state, create=False) as store:
            counts = store.counts()
            done = store.tiles("done")
        again = run_cli(*args)
        served = served_counts(emulator)
    assert process.returncode == 130
    assert stopped_after < 5, f"took {stopped_after:.1f} s to stop"
    assert "stopped; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert counts["in_flight"] == 0 and counts["pending"] > 0
    assert again.returncode == 0, again.stderr
    spec = job_spec(state)
    assert all(served[tile_key(spec, tile)] == 1 for tile in done)
    assert_matches_oracle(output, state, oracle)
