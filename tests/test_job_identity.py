"""No job ever takes another job's pixels (issue 10, items 1, 3 and 8).

- A new job on the same output never adopts the tile files or the unfinished output another
  job left behind, even when the user deleted that job's state file as our messages suggest.
- A wall clock that jumps past the lease (a suspend, an NTP step) never makes a process fetch
  its own in-flight tiles a second time.
- Two jobs with different state files never write the same output at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import ee
import pytest

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.job import RunOptions, run_job
from engine.progress import SilentProgress
from engine.scheduler import SchedulerOptions
from engine.testing.cli import one_line_error, run_cli, start_cli
from engine.testing.jobs import dem_args, dem_job, done_tiles, state_of
from engine.testing.oracle import assert_matches_oracle, served_counts
from state import OutputLock

# A few hundred metres of Nanjing: a composite of about 30 small tiles.
REGION = "118.760,32.040,118.775,32.052"


def composite_args(url: str, output: Path, reducer: str) -> list[str]:
    return [
        "composite",
        "--start",
        "2022-01-01",
        "--end",
        "2022-12-31",
        "--max-cloud",
        "30",
        "--cloud-mask",
        "qa60",
        "--bands",
        "B2,B3,B4",
        "--reducer",
        reducer,
        "--region",
        REGION,
        "--crs",
        "EPSG:4326",
        "--scale",
        "10",
        "-o",
        str(output),
        "--ee-url",
        url,
        "--max-tile-bytes",
        "20000",
        "--concurrency",
        "2",
        "--quiet",
    ]


def kill_when(process: subprocess.Popen[str], state: Path, done: int) -> int:
    """SIGKILL ``process`` once ``done`` tiles are recorded; returns how many were."""
    deadline = time.monotonic() + 120
    while (count := done_tiles(state)) < done:
        assert process.poll() is None, f"finished before {done} tiles were done"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)  # reaps it and closes its pipes
    return count


@pytest.mark.slow
def test_a_new_job_on_the_same_output_never_adopts_the_files_of_the_one_before(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """Job A (a mean) is killed with tiles on disk; its state file is deleted, as our error
    message for a changed job suggests; job B (a median: same grid, same output, other
    pixels) is killed once early and resumed. B's file must be B's pixels, all of them."""
    output = tmp_path / "city.tif"
    state = state_of(output)
    tiles = tmp_path / "city.tif.eefetch-tiles"
    config = EmulatorConfig.from_profile("clean", latency_fixed_s=0.15, latency_per_mpix_s=0.0)
    with EmulatorThread(config) as emulator:
        job_a = start_cli(composite_args(emulator.url, output, "mean"))
        left_by_a = kill_when(job_a, state, 8)
        assert len(list(tiles.glob("*.tif"))) >= left_by_a >= 8
        state.unlink()  # what the user does; the -wal and -shm files stay behind

        job_b = start_cli(composite_args(emulator.url, output, "median"))
        kill_when(job_b, state, 1)  # early: most of A's files are still there
        resumed = run_cli(*composite_args(emulator.url, output, "median"))
    assert resumed.returncode == 0, resumed.stderr
    assert_matches_oracle(output, state, oracle)


@pytest.mark.slow
def test_an_unfinished_output_of_another_job_is_not_continued(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """A stopped job keeps its unfinished output and a checkpoint; a new job on the same
    output (its state deleted) writes the output anew instead of continuing it."""
    output = tmp_path / "city.tif"
    state = state_of(output)
    config = EmulatorConfig.from_profile("clean", latency_fixed_s=0.15, latency_per_mpix_s=0.0)
    with EmulatorThread(config) as emulator:
        job_a = start_cli(composite_args(emulator.url, output, "mean"))
        deadline = time.monotonic() + 120
        while done_tiles(state) < 8:
            assert job_a.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        job_a.send_signal(signal.SIGINT)  # Ctrl-C: the output is kept with its checkpoint
        job_a.communicate(timeout=60)
        assert job_a.returncode == 130
        assert (tmp_path / ".city.tif.eefetch-merge.json").exists()
        state.unlink()
        again = run_cli(*composite_args(emulator.url, output, "median"))
    assert again.returncode == 0, again.stderr
    assert_matches_oracle(output, state, oracle)


@pytest.mark.slow
def test_a_finished_job_whose_output_another_download_replaced_does_not_call_it_complete(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """Job A finishes; job B, another region on the same -o, is refused, then given its own
    --state and --overwrite as our messages say, and replaces the file. A's command again must
    not answer "already complete" over B's file, nor may A's merge write over it unasked;
    with --overwrite A writes its own file again."""
    output = tmp_path / "out.tif"
    state_a = state_of(output)
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=5)) as emulator:
        job_a = dem_args(emulator.url, output, "--keep-tiles", "--quiet")
        job_b = dem_args(emulator.url, output, "--quiet", region="118.73,32.00,118.75,32.02")
        assert run_cli(*job_a).returncode == 0
        refused = run_cli(*job_b)
        assert refused.returncode != 0 and "give this download its own --state" in refused.stderr
        state_b = tmp_path / "b.db"
        replaced = run_cli(*job_b, "--state", str(state_b), "--overwrite")
        assert replaced.returncode == 0, replaced.stderr
        assert_matches_oracle(output, state_b, oracle)

        again = run_cli(*job_a)
        assert again.returncode == 1
        assert one_line_error(again.stderr) == (
            f"Error: {output} is no longer the output this job wrote (another download has "
            "replaced it); pass --overwrite to write this job's again (its tiles are fetched "
            "again unless kept), or choose another output with -o"
        )
        merged = run_cli("merge", str(state_a))
        assert merged.returncode == 1
        assert f"{output} already exists; pass overwrite=True / --overwrite" in merged.stderr
        assert_matches_oracle(output, state_b, oracle)  # B's file, untouched

        rewritten = run_cli(*job_a, "--overwrite")
        assert rewritten.returncode == 0, rewritten.stderr
        assert_matches_oracle(output, state_a, oracle)
        fetched = sum(served_counts(emulator).values())
        assert run_cli(*job_a).returncode == 0  # its own file again: complete, nothing fetched
        assert sum(served_counts(emulator).values()) == fetched


@pytest.mark.slow
def test_a_state_file_keeps_one_job_and_a_second_one_touches_none_of_its_tiles(
    tmp_path: Path,
) -> None:
    """Another --job name in a state file that holds a job is refused before anything is
    planned: the file's tile folder is the first job's, which a new job would clear."""
    output = tmp_path / "c.tif"
    state = state_of(output)
    tiles = tmp_path / "c.tif.eefetch-tiles"
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=6)) as emulator:
        first = run_cli(*dem_args(emulator.url, output, "--keep-tiles", "--quiet"))
        assert first.returncode == 0, first.stderr
        kept = sorted(tiles.glob("*.tif"))
        elsewhere = "118.73,32.00,118.75,32.02"
        other = dem_args(emulator.url, tmp_path / "d.tif", "--job", "d", region=elsewhere)
        refused = run_cli(*other, "--state", str(state))
    assert refused.returncode == 1
    assert one_line_error(refused.stderr) == (
        f"Error: state file {state} holds job 'c' (for {output}); a state file keeps one job: "
        "give this download its own --state (a PostgreSQL --state keeps several jobs, each "
        "under its --job name)"
    )
    assert kept and sorted(tiles.glob("*.tif")) == kept
    assert not (tmp_path / "d.tif").exists()
    status = run_cli("status", str(tmp_path))
    assert status.returncode == 0 and "c.tif" in status.stdout


@pytest.mark.slow
def test_two_jobs_never_write_one_output_at_once(tmp_path: Path, oracle: EmulatorThread) -> None:
    """While one job holds the output (here: this test, as a stand-in for a running job with
    another state file), a second job on the same output stops before fetching anything."""
    output = tmp_path / "dem.tif"
    with EmulatorThread(EmulatorConfig.from_profile("clean")) as emulator:
        with OutputLock(output):
            second = run_cli(*dem_args(emulator.url, output, "--state", str(tmp_path / "2.db")))
            assert served_counts(emulator) == {}
            assert not list(tmp_path.glob(".dem.tif.eefetch-merge*"))
        line = one_line_error(second.stderr)
        assert second.returncode == 1
        assert f"another eefetch job (pid {os.getpid()}) is writing {output}" in line
        assert "give this download another output with -o" in line
        again = run_cli(*dem_args(emulator.url, output, "--state", str(tmp_path / "2.db")))
    assert again.returncode == 0, again.stderr
    assert_matches_oracle(output, tmp_path / "2.db", oracle)


class Jump:
    """A wall clock that leaps two hours ahead once ``after`` tiles are done."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.done = 0

    def __call__(self) -> float:
        return time.time() + (7200.0 if self.done >= self.after else 0.0)


class CountingProgress(SilentProgress):
    def __init__(self, clock: Jump) -> None:
        self.clock = clock

    def tile_done(self, nbytes: int) -> None:
        self.clock.done += 1


def test_a_clock_jump_past_the_lease_fetches_no_tile_twice(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    """A suspend or an NTP step longer than the lease (600 s) while tiles are in flight: the
    process must not take its own in-flight tiles for abandoned ones and fetch them again."""
    config = EmulatorConfig.from_profile("clean", latency_fixed_s=0.3, latency_per_mpix_s=0.0)
    output = tmp_path / "dem.tif"
    state = state_of(output)
    with EmulatorThread(config) as emulator:
        ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
        image = ee.Image("USGS/SRTMGL1_003")
        spec = dem_job(
            emulator.url,
            output,
            image,
            region=[118.70, 32.00, 118.80, 32.06],
            max_tile_bytes=20_000,
            concurrency=4,
        )
        clock = Jump(after=2)
        options = RunOptions(concurrency=4, scheduler=SchedulerOptions(concurrency=4), clock=clock)
        with ee_adapter.client_settings():
            result = asyncio.run(run_job(spec, state, options, CountingProgress(clock)))
        served = served_counts(emulator)
    assert result.complete
    assert clock.done == result.counts["done"] >= 8
    assert sorted(set(served.values())) == [1], "a tile was fetched twice"
    assert_matches_oracle(output, state, oracle)
