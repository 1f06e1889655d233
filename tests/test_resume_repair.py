"""When the state and the tile files disagree, resume notices, fetches again, and says so.

Also: a second eefetch on the same job refuses with a clear message and spoils nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import one_line_error, run_cli, start_cli
from engine.testing.emulators import paced_emulator
from engine.testing.jobs import dem_args, job_spec, state_of
from engine.testing.oracle import assert_matches_oracle, served_counts, tile_key
from state import Store

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = pytest.mark.slow


def test_deleted_truncated_corrupted_and_partial_tiles_are_fetched_again_and_reported(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    output = tmp_path / "dem.tif"
    state = state_of(output)
    tiles = tmp_path / "dem.tif.eefetch-tiles"
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=1)) as emulator:
        args = dem_args(emulator.url, output, "--keep-tiles")
        first = run_cli(*args)
        assert first.returncode == 0, first.stderr
        with Store.open(state, create=False) as store:
            done = store.tiles("done")
        assert len(done) >= 6
        deleted, truncated, corrupted = done[1], done[3], done[5]
        (tiles / deleted.path).unlink()
        path = tiles / truncated.path
        path.write_bytes(path.read_bytes()[: truncated.bytes // 2])
        path = tiles / corrupted.path
        body = bytearray(path.read_bytes())
        middle = len(body) // 2
        body[middle : middle + 64] = bytes(255 - b for b in body[middle : middle + 64])
        path.write_bytes(bytes(body))  # same size: only the checksum can tell
        (tiles / (done[0].path + ".part")).write_bytes(b"II*\x00half a tile")

        again = run_cli("resume", str(state), "--overwrite")
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    assert "removed 1 partial tile file(s)" in again.stderr
    assert f"tile {deleted.id}: tile file missing" in again.stderr
    assert f"tile {truncated.id}: tile file is {truncated.bytes // 2} bytes" in again.stderr
    assert f"tile {corrupted.id} will be fetched again: checksum mismatch" in again.stderr
    spec = job_spec(state)
    refetched = {deleted.id, truncated.id, corrupted.id}
    for tile in done:
        expected = 2 if tile.id in refetched else 1
        assert served[tile_key(spec, tile)] == expected, f"tile {tile.id}"
    assert not list(tiles.glob("*.part"))
    assert_matches_oracle(output, state, oracle)
    before = output.read_bytes()
    (tiles / done[4].path).unlink()
    merge = run_cli("merge", str(state), "--overwrite")
    assert merge.returncode == 1
    line = one_line_error(merge.stderr)
    assert f"1 tile file(s) are gone or changed (tile {done[4].id} will be fetched again" in line
    assert f"run `eefetch resume {state}`" in line
    assert output.read_bytes() == before


def test_a_done_tile_whose_file_vanished_before_the_merge_is_fetched_again(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """The state says done, the file is gone, and the output was never written."""
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=2)) as emulator:
        args = dem_args(emulator.url, output, "--keep-tiles")
        assert run_cli(*args).returncode == 0
        output.unlink()  # as if killed just before the merge
        with Store.open(state, create=False) as store:
            store.set_job_status("downloaded")
            victim = store.tiles("done")[2]
        (tmp_path / "dem.tif.eefetch-tiles" / victim.path).unlink()
        again = run_cli(*args)
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    assert f"1 finished tile(s) will be fetched again: tile {victim.id}: tile file missing" in (
        again.stderr
    )
    assert served[tile_key(job_spec(state), victim)] == 2
    assert_matches_oracle(output, state, oracle)


def test_a_second_process_on_the_same_job_refuses_and_spoils_nothing(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with paced_emulator(seed=3, latency_s=3.0) as emulator:
        args = dem_args(emulator.url, output, "--concurrency", "2", max_tile_bytes=50_000)
        first = start_cli(args)
        deadline = time.monotonic() + 60
        while not Path(f"{state}.lock").exists() or not state.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        second = run_cli(*args)
        third = run_cli("resume", str(state))
        assert first.poll() is None, "the first run ended before the second was started"
        _, first_err = first.communicate(timeout=240)
    assert first.returncode == 0, first_err
    for other in (second, third):
        assert other.returncode == 1
        line = one_line_error(other.stderr)
        assert f"another eefetch process (pid {first.pid}) is already working on this job" in line
        assert "wait for it to finish or stop it" in line
    assert_matches_oracle(output, state, oracle)
    with Store.open(state, create=False) as store:
        counts = store.counts()
    assert counts["pending"] == counts["in_flight"] == counts["failed"] == 0
