"""status (one job or a folder), list, clean, and the CLI's help, version, completion, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import __version__
from engine.cli import main
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.grid import grid_from_region
from engine.region_input import load_region
from engine.spec import JobSpec
from engine.testing.jobs import dem_args
from state import NewTile, Store

DEM_REGION = "118.70,32.00,118.80,32.06"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with one merged job (tiles kept) in a subfolder."""
    folder = tmp_path_factory.mktemp("jobs")
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=8)) as emulator:
        result = CliRunner().invoke(
            main,
            dem_args(
                emulator.url,
                folder / "dem" / "dem.tif",
                "--keep-tiles",
                "--concurrency",
                "2",
                "--quiet",
                region=DEM_REGION,
                crs=None,
                max_tile_bytes=100_000,
            ),
        )
        assert result.exit_code == 0, result.output
    yield folder


def unfinished_job(folder: Path, name: str = "half.tif") -> Path:
    """A state file with a job whose tiles were never fetched (and one failure recorded)."""
    grid = grid_from_region(load_region(DEM_REGION), "EPSG:4326", 30)
    spec = JobSpec("{}", grid, ("elevation",), "int16", -32768, str(folder / name))
    state = folder / f"{name}.eefetch.db"
    with Store.open(state) as store:
        store.create_job(
            spec.fingerprint(),
            spec.to_dict(),
            __version__,
            spec.output,
            [NewTile(0, 0, 10, 10, 0, 1), NewTile(0, 10, 10, 10, 0, 1)],
        )
    return state


def test_status_of_one_job_reads_like_a_report_and_as_json(finished: Path) -> None:
    state = finished / "dem" / "dem.tif.eefetch.db"
    text = CliRunner().invoke(main, ["status", str(state)])
    assert text.exit_code == 0, text.output
    assert "state:   done (merged)" in text.stdout
    assert "0 failed" in text.stdout and "(100% done)" in text.stdout
    data = json.loads(CliRunner().invoke(main, ["status", str(state), "--json"]).stdout)
    for key in ("state", "output", "status", "tiles", "bytes_done", "last_errors"):
        assert key in data
    assert data["status"] == "merged" and data["tiles"]["done"] >= 2
    assert data["output"].endswith("dem.tif") and data["running"] is False


def test_status_of_a_folder_is_a_table_with_one_row_per_job(finished: Path, tmp_path: Path) -> None:
    half = unfinished_job(finished)
    try:
        table = CliRunner().invoke(main, ["status", str(finished)])
        assert table.exit_code == 0, table.output
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["JOB", "STATE", "TILES", "DONE", "FETCHED", "SIZE", "FAILED"]
        rows = {line.split()[0]: line for line in lines[1:-1]}
        assert set(rows) == {"dem.tif", "half.tif"}
        assert " done " in rows["dem.tif"] and "100%" in rows["dem.tif"]
        assert "not started" in rows["half.tif"] and "0/2" in rows["half.tif"]
        assert lines[-1].startswith("1/2 jobs finished")
        one = CliRunner().invoke(main, ["status", str(half)])
        assert "next:    eefetch resume" in one.stdout
        listed = json.loads(CliRunner().invoke(main, ["list", str(finished), "--json"]).stdout)
        assert sorted(Path(r["output"]).name for r in listed) == ["dem.tif", "half.tif"]
    finally:
        half.unlink()
    empty = CliRunner().invoke(main, ["list", str(tmp_path)])
    assert empty.exit_code == 0 and "no eefetch jobs" in empty.stdout


def test_clean_removes_tiles_of_finished_jobs_only(finished: Path) -> None:
    tiles = finished / "dem" / "dem.tif.eefetch-tiles"
    half = unfinished_job(finished / "dem", "other.tif")
    other_tiles = finished / "dem" / "other.tif.eefetch-tiles"
    other_tiles.mkdir()
    (other_tiles / "keep.tif").write_bytes(b"x")
    assert tiles.is_dir() and any(tiles.iterdir())
    dry = CliRunner().invoke(main, ["clean", str(finished), "--dry-run"])
    assert dry.exit_code == 0 and "would remove" in dry.stdout and tiles.is_dir()
    done = CliRunner().invoke(main, ["clean", str(finished)])
    assert done.exit_code == 0, done.output
    assert not tiles.exists() and other_tiles.is_dir() and half.exists()
    assert "not finished; kept" in done.stderr
    status = json.loads(
        CliRunner()
        .invoke(main, ["status", str(finished / "dem" / "dem.tif.eefetch.db"), "--json"])
        .stdout
    )
    assert status["status"] == "merged" and status["tiles_on_disk"] == 0


def test_version_help_examples_and_completion() -> None:
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    for command in ("download", "composite", "collection", "preview", "status"):
        text = runner.invoke(main, [command, "--help"]).output
        assert "Examples" in text and "eefetch " + command in text
    assert "_EEFETCH_COMPLETE=bash_source" in runner.invoke(main, ["--help"]).output
    script = Path(sys.executable).with_name("eefetch")
    completion = subprocess.run(
        [str(script)],
        env={**os.environ, "_EEFETCH_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completion.returncode == 0 and "_eefetch_completion" in completion.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["download", "--asset", "X", "--region", "1,2"], "west,south,east,north"),
        (["status", "/nonexistent/x.db"], "does not exist"),
        (["preview"], "give a GeoTIFF file"),
        (["collection", "-o", "x"], "give --start and --end"),
    ],
)
def test_errors_are_one_line_with_what_to_do(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(
        main, [*args, "--ee-url", "http://127.0.0.1:9"] if args[0] == "download" else args
    )
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output


def test_a_reader_that_stops_reading_ends_the_command_quietly(finished: Path) -> None:
    """`eefetch status | head -1`: the pipe's reader goes away (here before anything is
    written, so the outcome does not depend on timing); no error line, SIGPIPE's exit status."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "status", str(finished)],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (141, "")
