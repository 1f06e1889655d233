"""Nothing slow runs on the event loop (issue 10, item 7).

In a collection, several jobs share one event loop: a job that closes a multi-GB output, hashes
adopted tiles or deletes its tile folder on the loop thread stalls every other image's reads
until they hit their idle timeout. The command line runs here under tests/loop_watch_cli.py,
which times every callback the loop runs, minus the time the operating system kept the thread
waiting for a CPU: there must be no callback holding the loop for 100 ms or more, through a
download that is interrupted (the unfinished output is closed and kept), resumed (tiles are
re-checked and adopted, the output reopened) and finished (tiles removed), and through a
collection of two images.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import REPO, start_cli
from engine.testing.jobs import dem_args, done_tiles, state_of

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = pytest.mark.slow


def cli(log: Path, *args: str) -> subprocess.Popen[str]:
    return start_cli(
        args,
        wrapper=REPO / "tests" / "loop_watch_cli.py",
        env={"EEFETCH_TEST_LOOP_LOG": str(log)},
        stdout=subprocess.DEVNULL,
    )


def slow_callbacks(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def emulator() -> EmulatorThread:
    with EmulatorThread(EmulatorConfig.from_profile("clean")) as running:
        yield running


@pytest.fixture
def paced_emulator() -> EmulatorThread:
    # 3 MB/s in all: the 15 MB download lasts 5 s of wall time however fast the machine, so
    # the interruption after 6 of its 35 tiles always finds most of it left.
    with EmulatorThread(EmulatorConfig.from_profile("clean", total_bandwidth=3e6)) as running:
        yield running


def test_an_interrupted_and_resumed_download_never_holds_the_loop(
    tmp_path: Path, paced_emulator: EmulatorThread
) -> None:
    emulator = paced_emulator
    output = tmp_path / "dem.tif"
    state = state_of(output)
    args = dem_args(
        emulator.url,
        output,
        "--concurrency",
        "4",
        "--quiet",
        region="118.50,31.90,118.80,32.10",
        crs="EPSG:4326",
        scale=10,
        max_tile_bytes=1_000_000,
    )
    log = tmp_path / "loop.jsonl"
    first = cli(log, *args)
    deadline = time.monotonic() + 120
    while done_tiles(state) < 6:
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, interrupted = first.communicate(timeout=120)
    assert first.returncode == 130, interrupted
    assert (tmp_path / ".dem.tif.eefetch-merge.json").exists()  # the output was kept
    second = cli(log, *args)
    _, resumed = second.communicate(timeout=300)
    assert second.returncode == 0, resumed
    assert output.exists()
    assert slow_callbacks(log) == []


def test_a_collection_of_two_images_never_holds_the_loop(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    folder = tmp_path / "scenes"
    log = tmp_path / "loop.jsonl"
    run = cli(
        log,
        "collection",
        "--start",
        "2022-01-01",
        "--end",
        "2022-12-31",
        "--bands",
        "B4,B3,B2",
        "--limit",
        "2",
        "--region",
        "118.70,32.00,118.80,32.06",
        "--crs",
        "EPSG:4326",
        "--scale",
        "10",
        "-o",
        str(folder),
        "--ee-url",
        emulator.url,
        "--max-tile-bytes",
        "2000000",
        "--quiet",
    )
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert len(list(folder.glob("*.tif"))) == 2
    assert slow_callbacks(log) == []
