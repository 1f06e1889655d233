"""The small DEM job the reliability tests and scripts run, and reading its state file."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ee

from engine import ee_adapter
from engine.defaults import DEFAULT_CONCURRENCY
from engine.ee_adapter import Connection
from engine.request import DownloadRequest, build_job
from engine.spec import JobSpec
from state import StateError, Store

SMALL_REGION = "118.70,32.00,118.80,32.06"
DEM_ASSET = "USGS/SRTMGL1_003"


def dem_args(
    url: str,
    output: Path | None,
    *extra: str,
    command: str = "download",
    region: str = SMALL_REGION,
    crs: str | None = "EPSG:32650",
    scale: float = 30,
    max_tile_bytes: int | None = 120_000,
) -> list[str]:
    """``eefetch COMMAND`` of the DEM: by default a small job in UTM (a dozen tiles of 40000
    pixels of the int16 DEM, 3 request bytes each). None leaves an option to its default;
    ``extra`` goes last."""
    args = [command, "--asset", DEM_ASSET, "--region", region, "--scale", f"{scale:g}"]
    if crs is not None:
        args += ["--crs", crs]
    if output is not None:
        args += ["-o", str(output)]
    args += ["--ee-url", url]
    if max_tile_bytes is not None:
        args += ["--max-tile-bytes", str(max_tile_bytes)]
    return [*args, *extra]


def tutorial_args(region: str, output: Path, url: str, *extra: str, scale: float = 10) -> list[str]:
    """``eefetch composite`` of the README's tutorial (the 2022 Sentinel-2 median, clouds
    masked by QA60, bands 1 to 8) over ``region`` in EPSG:4326; ``extra`` goes last."""
    return [
        "composite",
        "--collection",
        "COPERNICUS/S2_SR_HARMONIZED",
        "--start",
        "2022-01-01",
        "--end",
        "2022-12-31",
        "--max-cloud",
        "10",
        "--cloud-mask",
        "qa60",
        "--bands",
        "B[1-8]",
        "--reducer",
        "median",
        "--region",
        region,
        "--scale",
        f"{scale:g}",
        "--crs",
        "EPSG:4326",
        "-o",
        str(output),
        "--ee-url",
        url,
        *extra,
    ]


def dem_job(
    url: str,
    output: Path,
    image: Any = None,
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
        image if image is not None else ee.Image(DEM_ASSET),
        replace(request, **changes),
        Connection(url=url),
        concurrency=concurrency,
    )


def download_dem(
    url: str,
    output: Path,
    *,
    region: str = SMALL_REGION,
    crs: str = "EPSG:32650",
    scale: float = 30,
    **options: Any,
) -> Path:
    """The DEM job through the Python API from the emulator at ``url`` (``options`` are more
    keywords of ``download_ee_image``); returns the output it wrote."""
    from engine.api import download_ee_image

    ee_adapter.initialize(Connection(url=url))
    result = download_ee_image(
        ee.Image(DEM_ASSET),
        output,
        region=region,
        crs=crs,
        scale=scale,
        ee_url=url,
        max_tile_bytes=120_000,
        quiet=True,
        **options,
    )
    assert result.output is not None, result
    return result.output


def dem_spec(output: Path, url: str, concurrency: int, max_tile_bytes: int = 24_000) -> JobSpec:
    """A job of about 18 tiles of the DEM in UTM (the client must be initialised).

    ``max_tile_bytes`` counts 3 request bytes per pixel of the int16 DEM."""
    return dem_job(
        url,
        output,
        region=[118.70, 32.00, 118.84, 32.08],
        max_tile_bytes=max_tile_bytes,
        concurrency=concurrency,
    )


def state_of(output: Path) -> Path:
    """Where a job writing ``output`` keeps its state by default."""
    return Path(f"{output}.eefetch.db")


def job_spec(state: Path) -> JobSpec:
    """The spec of the job the state file holds."""
    with Store.open(state, create=False) as store:
        job = store.job()
    assert job is not None, f"{state} holds no job"
    return JobSpec.from_dict(job.spec)


def done_tiles(state: Path) -> int:
    """Tiles done so far; 0 while the state file is still being created."""
    try:
        with Store.open(state, create=False) as store:
            return store.counts()["done"]
    except StateError:
        return 0


def wait_for_done_tiles(
    state: Path, at_least: int, process: subprocess.Popen[str], timeout: float = 120
) -> int:
    """Tiles done once at least ``at_least`` are; fails if the process ends first or time
    runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the download finished before it could be interrupted"
        done = done_tiles(state) if state.exists() else 0
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} tiles done within {timeout} s")


def quiet_dem_args(url: str, output: Path, *extra: str) -> list[str]:
    """``dem_args`` cut finer (12000 pixels a tile, so many requests cross the network under
    test) and quiet: the download the proxy and TLS tests run."""
    return dem_args(url, output, "--quiet", *extra, max_tile_bytes=36_000)
