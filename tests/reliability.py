"""Helpers shared by the reliability tests: the CLI in a subprocess, the oracle, tile keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import ee
import numpy as np
import rasterio
from rasterio.io import MemoryFile

from engine import ee_adapter
from engine.defaults import DEFAULT_CONCURRENCY
from engine.ee_adapter import Connection
from engine.emulator.server import EmulatorThread
from engine.grid import Window
from engine.request import DownloadRequest, build_job
from engine.spec import JobSpec
from state import Store, TileRecord

REPO = Path(__file__).resolve().parents[1]
SMALL_REGION = "118.70,32.00,118.80,32.06"


def run_cli(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`eefetch ARGS` as a user runs it, in its own process."""
    full_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
        check=False,
    )


def start_cli(args: list[str]) -> subprocess.Popen[str]:
    """`eefetch ARGS` started in the background, for a test that interrupts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def dem_args(url: str, output: Path, *extra: str, region: str = SMALL_REGION) -> list[str]:
    """A small DEM job (a dozen tiles) in UTM."""
    return [
        "download",
        "--asset",
        "USGS/SRTMGL1_003",
        "--region",
        region,
        "--crs",
        "EPSG:32650",
        "--scale",
        "30",
        "-o",
        str(output),
        "--ee-url",
        url,
        "--max-tile-bytes",
        "120000",  # 40000 pixels of the int16 DEM (3 request bytes each)
        *extra,
    ]


def dem_job(
    url: str,
    output: Path,
    image: ee.Image | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    **changes: Any,
) -> JobSpec:
    """The spec ``eefetch download`` builds from ``dem_args(url, output)``, with ``changes``
    (fields of ``DownloadRequest``); the client must be initialised for ``url``."""
    request = DownloadRequest(
        output=output, region=SMALL_REGION, crs="EPSG:32650", scale=30, max_tile_bytes=200_000
    )
    return build_job(
        image or ee.Image("USGS/SRTMGL1_003"),
        replace(request, **changes),
        Connection(url=url),
        concurrency=concurrency,
    )


def state_of(output: Path) -> Path:
    return Path(f"{output}.eefetch.db")


def job_spec(state: Path) -> JobSpec:
    with Store.open(state, create=False) as store:
        job = store.job()
    assert job is not None
    return JobSpec.from_dict(job.spec)


def oracle_render(oracle: EmulatorThread, spec: JobSpec) -> np.ndarray:
    """The whole grid in one request to an emulator with no limits."""
    ee_adapter.initialize(ee_adapter.Connection(url=oracle.url))
    image = ee_adapter.prepared_image(spec)
    with urllib.request.urlopen(ee_adapter.download_url(image, spec.grid), timeout=120) as answer:
        body = answer.read()
    with MemoryFile(body) as memfile, memfile.open() as dataset:
        return dataset.read()


def assert_matches_oracle(output: Path, state: Path, oracle: EmulatorThread) -> None:
    expected = oracle_render(oracle, job_spec(state))
    with rasterio.open(output) as dataset:
        merged = dataset.read()
    assert merged.dtype == expected.dtype
    np.testing.assert_array_equal(merged, expected)


def tile_key(spec: JobSpec, tile: TileRecord) -> tuple[object, ...]:
    """A tile as the emulator's ``tiles_served`` names it (without the CRS)."""
    grid = spec.grid.window_grid(Window(tile.row_off, tile.col_off, tile.height, tile.width))
    bands = tuple(spec.band_ids[tile.band_start : tile.band_stop])
    return (tuple(float(v) for v in grid.transform), grid.width, grid.height, bands)


def served_counts(emulator: EmulatorThread) -> dict[tuple[object, ...], int]:
    counts: dict[tuple[object, ...], int] = {}
    for item in emulator.stats()["tiles_served"]:
        data = json.loads(item["key"])
        key = (
            tuple(float(v) for v in data["transform"]),
            data["width"],
            data["height"],
            tuple(data["bands"]),
        )
        counts[key] = counts.get(key, 0) + item["count"]
    return counts


def one_line_error(stderr: str) -> str:
    """The single line a failing command printed; fails if it printed more or a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    return lines[0]
