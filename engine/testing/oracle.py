"""The oracle: an emulator with no limits renders a job's whole grid in one request, which is
what every tile of the job must add up to; and which tiles an emulator served, by key."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.grid import Window
from engine.spec import JobSpec
from engine.testing.jobs import job_spec
from state import TileRecord

TileKey = tuple[object, ...]


@contextmanager
def oracle_emulator() -> Iterator[EmulatorThread]:
    """A started emulator with no limits (no faults, no memory or size cap)."""
    with EmulatorThread(EmulatorConfig.from_profile("clean", no_limits=True)) as emulator:
        yield emulator


def oracle_render(oracle: EmulatorThread, spec: JobSpec) -> np.ndarray:
    """The job's whole grid in one request to ``oracle`` (never through a proxy)."""
    ee_adapter.initialize(ee_adapter.Connection(url=oracle.url))
    image = ee_adapter.prepared_image(spec)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(ee_adapter.download_url(image, spec.grid), timeout=120) as answer:
        body = answer.read()
    with MemoryFile(body) as memfile, memfile.open() as dataset:
        pixels: np.ndarray = dataset.read()
    return pixels


def assert_matches_oracle(
    output: Path, state: Path, oracle: EmulatorThread | None = None
) -> np.ndarray:
    """The GeoTIFF ``output`` is the job's grid (CRS, transform, band names, nodata) holding
    exactly the oracle's pixels; ``oracle`` None starts one for this check. Returns the pixels."""
    spec = job_spec(state)
    if oracle is None:
        with oracle_emulator() as started:
            expected = oracle_render(started, spec)
    else:
        expected = oracle_render(oracle, spec)
    with rasterio.open(output) as dataset:
        merged: np.ndarray = dataset.read()
        assert dataset.crs.to_string() == spec.grid.crs or dataset.crs == CRS.from_user_input(
            spec.grid.crs
        )
        assert tuple(dataset.transform)[:6] == tuple(spec.grid.transform)
        assert list(dataset.descriptions) == list(spec.band_ids)
        assert dataset.nodata == spec.nodata
    assert merged.shape == expected.shape
    assert merged.dtype == expected.dtype
    np.testing.assert_array_equal(merged, expected)
    return merged


def tile_key(spec: JobSpec, tile: TileRecord) -> TileKey:
    """A tile as the emulator's ``tiles_served`` names it (without the CRS)."""
    grid = spec.grid.window_grid(Window(tile.row_off, tile.col_off, tile.height, tile.width))
    bands = tuple(spec.band_ids[tile.band_start : tile.band_stop])
    return (tuple(float(v) for v in grid.transform), grid.width, grid.height, bands)


def served_counts(emulator: EmulatorThread) -> dict[TileKey, int]:
    """How many times the emulator served each tile, by ``tile_key``."""
    counts: dict[TileKey, int] = {}
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


def served(emulator: EmulatorThread, route: str) -> int:
    """How many requests of one route (``getPixels``, ``value:compute``...) the emulator
    answered, whatever their status."""
    return sum(emulator.stats()["requests"].get(route, {}).values())
