"""Disks and files: full during the download and during the merge, an output that cannot be
written or already exists, a state file that is not this job's. Clear errors, nothing lost or
overwritten, and a re-run completes once the user fixed the cause.

The full disk is a real 20 MB tmpfs mounted by the test (root needed: the test fails, it does
not skip, if it cannot mount).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import one_line_error, run_cli
from engine.testing.jobs import SMALL_REGION, dem_args, job_spec, state_of
from engine.testing.oracle import assert_matches_oracle, served_counts, tile_key
from state import Store

# 1485 x 1114 float32 pixels: 6.6 MB of tiles in 17 requests.
JOB_REGION = "118.7,32.0,118.9,32.15"
LIBTIFF_NOISE = "_tiffWriteProc: No space left on device."


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=1)) as running:
        yield running


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=20m", *options)), "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {folder} (these tests need root): {done.stderr}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB file system of its own."""
    folder = tmp_path / "small"
    _mount(folder)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "readonly"
    _mount(folder, "ro")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free, as another program would."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
    return filler


def job(url: str, output: Path, *extra: str) -> list[str]:
    args = dem_args(url, output, *extra, region=JOB_REGION)
    args[args.index("EPSG:32650")] = "EPSG:4326"
    args[args.index("30")] = "15"
    args[args.index("120000")] = "300000"
    return args


@pytest.mark.slow
def test_disk_full_during_the_download_stops_cleanly_and_resumes_after_space_is_freed(
    small_disk: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    output = small_disk / "dem.tif"
    state = state_of(output)
    filler = fill(small_disk, 2_000_000)
    args = job(emulator.url, output)
    full = run_cli(*args)
    assert full.returncode == 1
    line = full.stderr.splitlines()[-1]
    assert "Traceback" not in full.stderr, full.stderr
    # Tiles, the state file and the output being merged share the disk: whichever write
    # fails first ends the run, in one line that says the disk is full and what to do.
    if line.startswith("Error: cannot write state file "):
        assert "(database or disk is full); free disk space" in line
        assert "run the command again" in line
    else:
        assert line.startswith("Error: cannot write tile files in ")
        assert "No space left on device; free some space" in line
        assert "run the same command again" in line
    with Store.open(state, create=False) as store:  # the state is readable and consistent
        counts = store.counts()
        done = store.tiles("done")
    assert counts["in_flight"] == 0 and counts["failed"] == 0, full.stderr
    # Not finished; how many tiles were done before the disk filled depends on which of the
    # three writers (tiles, state, the output being merged) met the limit first.
    assert counts["done"] < counts["pending"] + counts["done"]
    spec = job_spec(state)
    tiles = state.with_name(state.name.removesuffix(".db") + "-tiles")
    for tile in done:
        assert (tiles / tile.path).stat().st_size == tile.bytes
    assert not list(tiles.glob("*.part"))

    filler.unlink()  # what the user does: make room
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    # A tile stored just before the state write failed is adopted, not fetched again.
    adopted = re.search(r"kept (\d+) tile file\(s\) written just before", again.stderr)
    resumed_with = len(done) + (int(adopted.group(1)) if adopted else 0)
    if resumed_with:
        assert f"resuming: {resumed_with}/" in again.stderr
    served = served_counts(emulator)
    for tile in done:
        assert served[tile_key(spec, tile)] == 1, f"finished tile {tile.id} was fetched again"
    assert_matches_oracle(output, state, oracle)


@pytest.mark.slow
def test_a_state_file_that_cannot_be_created_on_a_full_disk_is_one_clear_line(
    small_disk: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    output = small_disk / "dem.tif"
    filler = fill(small_disk, 0)
    args = dem_args(emulator.url, output)
    full = run_cli(*args)
    assert full.returncode == 1
    line = one_line_error(full.stderr)
    assert line.startswith(f"Error: cannot write state file {state_of(output)} (")
    assert "free disk space or fix the disk, then run the command again" in line
    filler.unlink()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert_matches_oracle(output, state_of(output), oracle)


@pytest.mark.slow
def test_disk_full_during_the_merge_publishes_nothing_and_a_rerun_only_merges(
    tmp_path: Path, small_disk: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    """The output goes to the small disk, the state and tiles to a roomy one."""
    output = small_disk / "dem.tif"
    state = tmp_path / "dem.eefetch.db"
    filler = fill(small_disk, 300_000)  # the merged int16 DEM needs about 0.7 MB
    args = job(emulator.url, output, "--state", str(state))
    full = run_cli(*args)
    assert full.returncode == 1
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if not line.startswith("eefetch: ")]
    # libtiff prints its own complaint before GDAL returns; eefetch adds exactly one line.
    assert set(errors[:-1]) <= {LIBTIFF_NOISE}
    assert errors[-1].startswith(f"Error: cannot write {output}: the disk is full (0.3 MB free")
    assert "free some space there and run the same command again" in errors[-1]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no output, no temp
    with Store.open(state, create=False) as store:
        counts = store.counts()
        assert store.job().status == "downloaded"
    assert counts["pending"] == counts["in_flight"] == counts["failed"] == 0

    filler.unlink()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "0 tiles fetched" in again.stderr
    assert all(count == 1 for count in served_counts(emulator).values())
    assert_matches_oracle(output, state, oracle)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_fetch(
    tmp_path: Path, read_only_disk: Path, emulator: EmulatorThread
) -> None:
    output = read_only_disk / "dem.tif"
    done = run_cli(*dem_args(emulator.url, output, "--state", str(tmp_path / "s.db")))
    assert done.returncode == 1
    assert one_line_error(done.stderr) == (
        f"Error: cannot write {output}: folder {read_only_disk} is not writable (read-only or "
        "no permission); choose another output with -o"
    )
    assert emulator.stats()["tiles_served"] == []


def test_an_existing_output_is_not_overwritten_and_no_state_is_left(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    output = tmp_path / "dem.tif"
    output.write_bytes(b"precious")
    done = run_cli(*dem_args(emulator.url, output))
    assert done.returncode == 1
    assert one_line_error(done.stderr) == (
        f"Error: {output} already exists; pass --overwrite to replace it, or choose another "
        "output with -o"
    )
    assert output.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dem.tif"]
    assert emulator.stats()["tiles_served"] == []


def _future_schema(path: Path) -> None:
    with Store.open(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()


def _other_job(path: Path, url: str, tmp_path: Path) -> None:
    done = run_cli(*dem_args(url, tmp_path / "other.tif", "--state", str(path)))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("another job", "holds another job (for "),
        ("future schema", "was written by a newer eefetch (state schema 99"),
        ("not a database", "is not an eefetch state file (not an SQLite database)"),
        ("foreign database", "is an SQLite database that eefetch did not create"),
    ],
)
def test_a_state_file_that_is_not_this_job_is_refused_byte_for_byte_unchanged(
    tmp_path: Path, emulator: EmulatorThread, kind: str, says: str
) -> None:
    state = tmp_path / "given.db"
    if kind == "another job":
        _other_job(state, emulator.url, tmp_path)
    elif kind == "future schema":
        _future_schema(state)
    elif kind == "not a database":
        state.write_text("my notes, not a database\n" * 100)
    else:
        with sqlite3.connect(state) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("INSERT INTO photos (name) VALUES ('cat.jpg')")
        conn.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    served_before = len(emulator.stats()["tiles_served"])
    output = tmp_path / "dem.tif"
    commands = [dem_args(emulator.url, output, "--state", str(state), "--region", SMALL_REGION)]
    if kind in ("future schema", "not a database"):
        commands.append(["resume", str(state)])
    for args in commands:
        done = run_cli(*args)
        assert done.returncode == 1, done.stderr
        line = one_line_error(done.stderr)
        assert says in line, line
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    assert len(emulator.stats()["tiles_served"]) == served_before
