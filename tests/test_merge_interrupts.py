"""Stops that land inside the merge, at exact moments (issue 10, item 2).

A stop while the output is being finished used to be tested only when the timing happened to
land there. Here a wrapper pauses the merge at a chosen moment (tests/paused_cli.py), the test
sends SIGTERM or SIGKILL while it is paused, and lets it go on where a process would. In every
case the next run of the same command ends with the oracle's pixels, and no tile recorded as
done is fetched again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.live_merge import checkpoint_path
from engine.merge import OutputBuilder
from engine.testing.cli import REPO, run_cli, start_cli
from engine.testing.jobs import dem_args, job_spec, state_of
from engine.testing.oracle import assert_matches_oracle, served_counts, tile_key
from state import Store

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = pytest.mark.slow


class Paused:
    """The CLI under tests/paused_cli.py, paused at ``moment`` of its merge."""

    def __init__(self, folder: Path, moment: str, args: list[str]) -> None:
        self.paused = folder / "paused"
        self.release = folder / "release"
        env = {
            "EEFETCH_TEST_PAUSE": moment,
            "EEFETCH_TEST_PAUSED": str(self.paused),
            "EEFETCH_TEST_RELEASE": str(self.release),
        }
        wrapper = REPO / "tests" / "paused_cli.py"
        self.process = start_cli(args, wrapper=wrapper, env=env, stdout=subprocess.DEVNULL)

    def wait_paused(self) -> None:
        deadline = time.monotonic() + 120
        while not self.paused.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"ended before the pause: {self.process.communicate()[1]}")
            assert time.monotonic() < deadline, "never reached the pause"
            time.sleep(0.01)

    def signal_then_release(self, sig: signal.Signals) -> tuple[int, str]:
        self.process.send_signal(sig)
        time.sleep(0.3)  # the signal is handled (the run is cancelled) while the merge waits
        self.release.write_text("go")
        _, stderr = self.process.communicate(timeout=120)
        return self.process.returncode, stderr

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)  # reaps it and closes its pipes


@contextmanager
def paused_job(folder: Path, moment: str) -> Iterator[tuple[EmulatorThread, list[str], Paused]]:
    """The DEM job into ``folder/dem.tif`` from a fresh emulator, paused at ``moment`` of its
    merge: yields the emulator, the job's arguments and the paused run."""
    with EmulatorThread(EmulatorConfig.from_profile("clean")) as emulator:
        args = dem_args(emulator.url, folder / "dem.tif")
        run = Paused(folder, moment, args)
        run.wait_paused()
        yield emulator, args, run


def _done(state: Path) -> dict[int, str]:
    with Store.open(state, create=False) as store:
        return {t.id: str(t.checksum) for t in store.tiles("done")}


def _status(state: Path) -> str:
    with Store.open(state, create=False) as store:
        job = store.job()
    assert job is not None
    return job.status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_before_the_output_is_finished_keeps_it_for_the_next_run(
    tmp_path: Path, oracle: EmulatorThread, sig: signal.Signals
) -> None:
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with paused_job(tmp_path, "finish") as (emulator, args, run):
        code, stderr = run.signal_then_release(sig)
        assert code == 130, stderr
        assert "stopped; run the same command again to resume" in stderr
        assert not output.exists()
        assert _status(state) == "downloaded"
        done = _done(state)
        kept = json.loads(checkpoint_path(output).read_text())["tiles"]
        assert {int(k): v for k, v in kept.items()} == done  # every tile is in the kept output
        again = run_cli(*args)
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    spec = job_spec(state)
    with Store.open(state, create=False) as store:
        assert all(served[tile_key(spec, t)] == 1 for t in store.tiles("done"))
    assert_matches_oracle(output, state, oracle)
    assert not OutputBuilder.temp_for(output).exists()


def test_a_stop_while_the_output_is_published_is_recorded(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """SIGTERM arrives just before the rename; the merge thread cannot be stopped there, so it
    publishes, and the state must say so: the next run finds the job complete."""
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with paused_job(tmp_path, "publish") as (emulator, args, run):
        code, stderr = run.signal_then_release(signal.SIGTERM)
        assert code == 130, stderr
        assert output.exists()
        assert _status(state) == "merged"
        again = run_cli(*args)
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    assert "0 tiles fetched" in again.stderr
    assert sorted(set(served.values())) == [1]
    assert_matches_oracle(output, state, oracle)


@pytest.mark.parametrize("moment", ["finish", "publish", "published"])
def test_a_sigkill_inside_the_merge_ends_in_the_oracle_file(
    tmp_path: Path, oracle: EmulatorThread, moment: str
) -> None:
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with paused_job(tmp_path, moment) as (emulator, args, run):
        run.kill()
        assert output.exists() == (moment == "published")
        again = run_cli(*args)
        served = served_counts(emulator)
    assert again.returncode == 0, again.stderr
    assert sorted(set(served.values())) == [1], "a tile done before the kill was fetched again"
    assert_matches_oracle(output, state, oracle)
    assert _status(state) == "merged"
    assert not OutputBuilder.temp_for(output).exists()
    assert not checkpoint_path(output).exists()
    assert not (tmp_path / "dem.tif.eefetch-tiles").exists()
