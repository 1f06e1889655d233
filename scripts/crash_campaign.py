"""Crash campaign: SIGKILL `eefetch download` at many seeded random moments, re-run after each.

Every kill is followed by the same command again, until a run completes. Kills are aimed by
watching the files (no hooks in the engine): early kills land in start-up and planning, progress
kills at a random fraction of the remaining tiles (so they hit tile renames and state writes at
random), part kills while a tile body is being streamed to its ``.part`` file, and merge kills
once every tile is fetched and the output is being finished. At the aimed moment the process is
frozen (SIGSTOP) before anything is read, so the phase recorded is what it was really doing
when the SIGKILL came, not what it did a poll later.

Two promises are checked from outside the process:
- the final GeoTIFF equals the oracle (the emulator rendering the grid with no limits) pixel
  for pixel;
- no tile that the state recorded as done at the moment of a kill was served again by the
  emulator afterwards (its ``tiles_served`` count never grows after that kill).

    python scripts/crash_campaign.py --kills 40 --size-mb 300 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.windows import Window as RioWindow

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.grid import METRES_PER_DEGREE, Window
from engine.spec import JobSpec
from engine.testing.oracle import oracle_emulator
from state import StateError, Store

REPO = Path(__file__).resolve().parents[1]

MODES = ("early", "progress", "part", "merge")
ORACLE_STRIP_BYTES = 32 << 20
POLL_S = 0.02


@dataclass(frozen=True)
class CampaignConfig:
    """One campaign: the job (a DEM over a square near Nanjing) and how to kill it."""

    workdir: Path
    kills: int = 5
    kills_per_job: int = 5
    merge_kills: int = 1
    size_mb: float = 20.0
    seed: int = 1
    scale: float = 10.0
    max_tile_bytes: int = 1_000_000
    concurrency: int = 4
    latency_s: float = 0.05
    # Bytes per second per connection (None: unlimited): a slower body keeps its .part file
    # on disk long enough to be hit, and bounds how fast a job can run out of tiles to kill.
    conn_bandwidth: float | None = None
    run_timeout_s: float = 600.0
    keep_outputs: bool = True


@dataclass
class Kill:
    """What one kill hit, as seen from outside the process."""

    number: int
    job: int
    mode: str
    after_s: float
    phase: str
    done_at_kill: int
    total_tiles: int


@dataclass
class CampaignResult:
    """Figures of a campaign (sums over its jobs); ``ok`` only if every job completed, every
    output equals the oracle and no done tile was fetched again."""

    kills: list[Kill] = field(default_factory=list)
    jobs: int = 0
    jobs_completed: int = 0
    jobs_equal_to_oracle: int = 0
    runs: int = 0
    job_bytes: int = 0
    tiles: int = 0
    refetched_done: list[str] = field(default_factory=list)
    served_twice: int = 0
    elapsed_s: float = 0.0
    final_stderr: str = ""

    @property
    def completed(self) -> bool:
        return self.jobs > 0 and self.jobs_completed == self.jobs

    @property
    def pixels_equal(self) -> bool:
        return self.jobs > 0 and self.jobs_equal_to_oracle == self.jobs

    @property
    def ok(self) -> bool:
        return self.completed and self.pixels_equal and not self.refetched_done


def region_for(size_mb: float, scale: float) -> str:
    """A lon/lat square whose DEM (int16, as EE's SRTMGL1_003) at ``scale`` metres weighs about
    ``size_mb``."""
    side_px = (size_mb * 1e6 / 2) ** 0.5
    side_deg = side_px * scale / METRES_PER_DEGREE
    west, south = 118.5, 31.8
    return f"{west},{south},{west + side_deg:.6f},{south + side_deg:.6f}"


def command(config: CampaignConfig, url: str, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine.cli",
        "download",
        "--asset",
        "USGS/SRTMGL1_003",
        "--region",
        region_for(config.size_mb, config.scale),
        "--crs",
        "EPSG:4326",
        "--scale",
        str(config.scale),
        "-o",
        str(output),
        "--ee-url",
        url,
        "--max-tile-bytes",
        str(config.max_tile_bytes),
        "--concurrency",
        str(config.concurrency),
        "--quiet",
    ]


def done_count(state: Path) -> tuple[int, int]:
    """(done, leaf tiles) read without writing, while the download runs; (0, 0) if unknown."""
    if not state.exists():
        return 0, 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1)
        ) as conn:
            query = "SELECT status, count(*) FROM tile GROUP BY status"
            rows = dict(conn.execute(query).fetchall())
    except sqlite3.Error:
        return 0, 0
    return rows.get("done", 0), sum(v for k, v in rows.items() if k != "split")


def _merge_temp(output: Path) -> Path:
    return output.with_name(f".{output.name}.eefetch-merge.tmp")


def _written_since(path: Path, since: float) -> bool:
    """``path`` exists and was written by this run (a killed run leaves its temp behind)."""
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _phase(state: Path, output: Path, since: float) -> str:
    """What the process was doing when killed, judged from the files it leaves.

    The output's temporary file exists during the whole download (tiles are merged as they
    come), so "merge" means its last stage: every tile fetched, the output being finished.
    """
    tiles = state.with_name(state.name.removesuffix(".db") + "-tiles")
    if tiles.is_dir() and any(tiles.glob("*.part")):
        return "writing a tile"
    if not state.exists():
        return "start-up"
    done, total = done_count(state)
    if total == 0:
        return "planning"
    if done < total:
        return "download"
    return "merge" if _written_since(_merge_temp(output), since) else "verify/merge"


def _finishing(state: Path, output: Path, since: float) -> bool:
    """Every tile is fetched and the output is being finished."""
    if not _written_since(_merge_temp(output), since):
        return False
    done, total = done_count(state)
    return total > 0 and done == total


def freeze(process: subprocess.Popen[bytes]) -> bool:
    """Stop the process where it is (it stays stopped until killed); False if it ended."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGSTOP)
    return True


def _wait_for(condition: object, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll ``condition()`` until true; False if the process ended or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(POLL_S)
    return False


def _aim(
    mode: str,
    rng: random.Random,
    process: subprocess.Popen[bytes],
    state: Path,
    output: Path,
    since: float,
) -> bool:
    """Wait for the moment ``mode`` aims at and freeze the process there; False if the run
    ended first (it then completed, and the kill did not happen)."""
    tiles = state.with_name(state.name.removesuffix(".db") + "-tiles")
    if mode == "early":
        _wait_for(lambda: False, process, rng.uniform(0.05, 3.0))
        return freeze(process)
    if mode == "merge":
        if not _wait_for(lambda: _finishing(state, output, since), process, 600):
            return False
        time.sleep(rng.uniform(0.0, 0.4))
        return freeze(process)
    if mode == "part":  # or the merge, if every tile was already fetched

        def writing() -> bool:
            if tiles.is_dir() and any(tiles.glob("*.part")):
                return True
            return _finishing(state, output, since)

        return _wait_for(writing, process, 600) and freeze(process)
    start, _ = done_count(state)
    fraction = rng.uniform(0.05, 0.8)

    def reached() -> bool:
        now_done, now_total = done_count(state)
        return now_total > 0 and now_done >= start + fraction * (now_total - start)

    return _wait_for(reached, process, 600) and freeze(process)


def served_counts(url: str) -> dict[str, int]:
    """The emulator's count of complete tile bodies, keyed by grid and bands (no CRS)."""
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=30) as answer:
        stats = json.load(answer)
    counts: dict[str, int] = {}
    for item in stats["tiles_served"]:
        key = _grid_key(json.loads(item["key"]))
        counts[key] = counts.get(key, 0) + item["count"]
    return counts


def _grid_key(data: dict[str, object]) -> str:
    return json.dumps(
        [
            [float(v) for v in data["transform"]],
            data["width"],
            data["height"],
            list(data["bands"]),
        ]
    )


def done_tile_keys(state: Path) -> set[str]:
    """Keys (as the emulator counts them) of the tiles the state records as done."""
    try:
        store = Store.open(state, create=False)
    except StateError:
        if done_count(state) == (0, 0):
            return set()  # killed while the state file was being created
        raise
    with store:
        job = store.job()
        if job is None:
            return set()
        spec = JobSpec.from_dict(job.spec)
        done = store.tiles("done")
    keys = set()
    for tile in done:
        grid = spec.grid.window_grid(Window(tile.row_off, tile.col_off, tile.height, tile.width))
        bands = list(spec.band_ids[tile.band_start : tile.band_stop])
        keys.add(
            _grid_key(
                {
                    "transform": grid.transform,
                    "width": grid.width,
                    "height": grid.height,
                    "bands": bands,
                }
            )
        )
    return keys


def _strips(height: int, width: int, row_bytes: int) -> Iterator[Window]:
    rows = max(1, ORACLE_STRIP_BYTES // max(row_bytes, 1))
    for top in range(0, height, rows):
        yield Window(top, 0, min(rows, height - top), width)


def oracle_mismatches(
    output: Path, state: Path, oracle_url: str, windows: Sequence[Window] | None = None
) -> list[Window]:
    """The windows of the job's grid where the output differs from the oracle's render (all of
    them when the output's shape is wrong). ``windows`` defaults to the whole grid, strip by
    strip (bounded memory); a campaign over a job of many GB passes a sample."""
    with Store.open(state, create=False) as store:
        job = store.job()
    assert job is not None
    spec = JobSpec.from_dict(job.spec)
    ee_adapter.initialize(ee_adapter.Connection(url=oracle_url))
    image = ee_adapter.prepared_image(spec)
    grid = spec.grid
    row_bytes = grid.width * len(spec.band_ids) * np.dtype(spec.dtype).itemsize
    todo = (
        list(windows) if windows is not None else list(_strips(grid.height, grid.width, row_bytes))
    )
    with rasterio.open(output) as merged:
        if (merged.width, merged.height, merged.count) != (
            grid.width,
            grid.height,
            len(spec.band_ids),
        ):
            return todo
        wrong = []
        for window in todo:
            url = ee_adapter.download_url(image, grid.window_grid(window))
            with urllib.request.urlopen(url, timeout=300) as answer:
                body = answer.read()
            with MemoryFile(body) as memfile, memfile.open() as dataset:
                expected = dataset.read()
            actual = merged.read(
                window=RioWindow(window.col_off, window.row_off, window.width, window.height)
            )
            if actual.dtype != expected.dtype or not np.array_equal(actual, expected):
                wrong.append(window)
    return wrong


def equals_oracle(output: Path, state: Path, oracle: EmulatorThread) -> bool:
    """Compare the whole output with the oracle's render, strip by strip (bounded memory)."""
    return not oracle_mismatches(output, state, oracle.url)


def _plan_modes(kills: int, merge_kills: int, rng: random.Random) -> list[str]:
    """An early kill first (while most of the job is left, so the run cannot finish before
    it), then mid-download kills of both kinds, then the merge kills."""
    download = max(0, kills - merge_kills)
    modes = rng.choices(("progress", "part"), weights=(0.7, 0.3), k=max(0, download - 1))
    return [*(["early"] if download else []), *modes, *["merge"] * (kills - download)]


def reset_stats(url: str) -> None:
    request = urllib.request.Request(f"{url}/_emulator/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass


def run_campaign(
    config: CampaignConfig, emulator: EmulatorThread, oracle: EmulatorThread
) -> CampaignResult:
    """Jobs one after another, each killed ``kills_per_job`` times and then run to the end,
    until ``kills`` kills are spent; every job's output and served counts are checked."""
    rng = random.Random(config.seed)
    result = CampaignResult()
    started = time.monotonic()
    job = 0
    while len(result.kills) < config.kills:
        job += 1
        budget = min(config.kills_per_job, config.kills - len(result.kills))
        merge_kills = min(config.merge_kills, max(0, budget - 1))
        _run_job(config, job, _plan_modes(budget, merge_kills, rng), rng, emulator, oracle, result)
        if not result.ok:
            break
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def _run_job(
    config: CampaignConfig,
    job: int,
    modes: list[str],
    rng: random.Random,
    emulator: EmulatorThread,
    oracle: EmulatorThread,
    result: CampaignResult,
) -> None:
    """One job: a kill per mode, one run to the end, then the two checks into ``result``."""
    workdir = config.workdir / f"job{job}"
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "dem.tif"
    state = Path(f"{output}.eefetch.db")
    argv = command(config, emulator.url, output)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    reset_stats(emulator.url)
    seen_done: dict[str, int] = {}
    completed = False
    for mode in modes:
        launched = time.monotonic()
        since = time.time() - 0.01  # file times may be a little coarser than time.time()
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        result.runs += 1
        hit = _aim(mode, rng, process, state, output, since)
        after = time.monotonic() - launched
        phase = _phase(state, output, since)
        if hit:
            process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=config.run_timeout_s)
        if process.returncode == 0:
            completed = True
            result.final_stderr = stderr.decode(errors="replace")
            break
        if process.returncode != -signal.SIGKILL:
            raise RuntimeError(
                f"job {job} run failed by itself ({process.returncode}): "
                f"{stderr.decode(errors='replace')[-800:]}"
            )
        time.sleep(0.2)  # let the emulator finish the accounting of bodies already sent
        served = served_counts(emulator.url)
        for key in done_tile_keys(state) if state.exists() else set():
            seen_done.setdefault(key, served.get(key, 0))
        done, total = done_count(state)
        number = len(result.kills) + 1
        result.kills.append(Kill(number, job, mode, round(after, 3), phase, done, total))
    if not completed:
        final = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, timeout=config.run_timeout_s, check=False
        )
        result.runs += 1
        completed = final.returncode == 0
        result.final_stderr = final.stderr.decode(errors="replace")
    served = served_counts(emulator.url)
    result.jobs += 1
    result.refetched_done.extend(
        f"job {job}: {key}"
        for key, count in sorted(seen_done.items())
        if count < 1 or served.get(key, 0) != count
    )
    result.served_twice += sum(1 for count in served.values() if count > 1)
    if not completed:
        return
    result.jobs_completed += 1
    result.jobs_equal_to_oracle += equals_oracle(output, state, oracle)
    with Store.open(state, create=False) as store:
        result.tiles += store.counts()["done"]
        result.job_bytes += store.bytes_done()
    if not config.keep_outputs:
        shutil.rmtree(workdir)


def emulator_config(config: CampaignConfig) -> EmulatorConfig:
    """A clean emulator with a little latency, so a tile is in flight long enough to be hit."""
    return EmulatorConfig.from_profile(
        "clean",
        seed=config.seed,
        latency_fixed_s=config.latency_s,
        latency_per_mpix_s=0.0,
        conn_bandwidth=config.conn_bandwidth,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--kills-per-job", type=int, default=8)
    parser.add_argument("--merge-kills", type=int, default=1, help="per job")
    parser.add_argument("--size-mb", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-tile-bytes", type=int, default=4_000_000)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    # Every option but --workdir and --json is a CampaignConfig field of the same name.
    given = {k: v for k, v in vars(args).items() if k not in ("workdir", "json")}
    with tempfile.TemporaryDirectory(prefix="eefetch-crash-") as scratch:
        config = CampaignConfig(workdir=args.workdir or Path(scratch), keep_outputs=False, **given)
        with (
            EmulatorThread(emulator_config(config)) as emulator,
            oracle_emulator() as oracle,
        ):
            result = run_campaign(config, emulator, oracle)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "config": {k: str(v) for k, v in asdict(config).items()},
        "kills": len(result.kills),
        "jobs": result.jobs,
        "phases": _count(k.phase for k in result.kills),
        "modes": _count(k.mode for k in result.kills),
        "runs": result.runs,
        "tiles": result.tiles,
        "bytes": result.job_bytes,
        "served_twice": result.served_twice,
        "refetched_done": len(result.refetched_done),
        "pixels_equal": result.pixels_equal,
        "elapsed_s": result.elapsed_s,
        "ok": result.ok,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result.ok else 1


def _count(items: Iterator[str] | list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


if __name__ == "__main__":
    sys.exit(main())
