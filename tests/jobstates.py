"""Synthetic state files for the picture and page tests: a grid of tiles in chosen states.

Made through ``state.Store`` (so the file is a real eefetch state file), then moved into the
wanted states with plain SQL that respects the schema's constraints: a done tile has a file,
an in-flight one a claim. SQL is used because 100,000 tiles through ``Store.apply`` would make
a test wait for what it does not test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from engine import __version__
from engine.grid import Grid
from engine.region_input import load_region, simplified_outline
from engine.spec import JobSpec, with_region
from state import NewTile, Store, TileSplit

CHECKSUM = "ab" * 32
GRID_ORIGIN = (118.0, 32.5)
PIXEL = 0.001  # degrees: a 100-pixel tile is 0.1 degree


def grid_of(rows: int, cols: int, tile: int) -> Grid:
    west, north = GRID_ORIGIN
    return Grid("EPSG:4326", (PIXEL, 0.0, west, 0.0, -PIXEL, north), cols * tile, rows * tile)


def make_state(
    path: Path,
    rows: int,
    cols: int,
    tile: int = 100,
    *,
    region: str | None = None,
    bands: int = 1,
) -> Path:
    """A planned job of ``rows`` x ``cols`` tiles of ``tile`` pixels, all pending."""
    grid = grid_of(rows, cols, tile)
    band_ids = tuple(f"b{i}" for i in range(bands))
    spec = JobSpec("{}", grid, band_ids, "uint8", 0, str(path.parent / f"{path.stem}.tif"))
    if region is not None:
        spec = with_region(spec, simplified_outline(load_region(region)))
    tiles = [
        NewTile(r * tile, c * tile, tile, tile, 0, bands) for r in range(rows) for c in range(cols)
    ]
    with Store.open(path) as store:
        store.create_job(spec.fingerprint(), spec.to_dict(), __version__, spec.output, tiles)
    return path


def set_states(
    path: Path,
    where: str,
    status: str,
    *,
    nbytes: int = 1000,
    updated_at: str = "updated_at",
    error: str | None = None,
    attempts: int = 0,
    rate_limited: int = 0,
) -> int:
    """Move the tiles matching the SQL condition ``where`` to ``status``; returns how many."""
    values = {
        "done": "path = 'tile-' || id || '.tif', bytes = :nbytes, checksum = :checksum",
        "in_flight": "claim_owner = 'test', claim_expires = 1e12",
        "failed": "claim_owner = NULL, claim_expires = NULL",
        "pending": "claim_owner = NULL, claim_expires = NULL",
    }[status]
    db = sqlite3.connect(path)
    try:
        with db:
            changed = db.execute(
                f"UPDATE tile SET status = :status, {values}, updated_at = {updated_at}, "
                "last_error = coalesce(:error, last_error), attempts = :attempts, "
                f"rate_limited = :rate_limited WHERE {where}",
                {
                    "status": status,
                    "nbytes": nbytes,
                    "checksum": CHECKSUM,
                    "error": error,
                    "attempts": attempts,
                    "rate_limited": rate_limited,
                },
            ).rowcount
    finally:
        db.close()
    return changed


def split(path: Path, tile_id: int, children: Sequence[NewTile], now: float) -> None:
    """Split a pending tile into ``children`` the way the scheduler does."""
    with Store.open(path, create=False) as store:
        store.apply([TileSplit(tile_id, list(children), "HTTP 400: Total request size")], now)


def tile_window(path: Path, tile_id: int) -> tuple[int, int, int, int]:
    db = sqlite3.connect(path)
    try:
        row = db.execute(
            "SELECT row_off, col_off, height, width FROM tile WHERE id = ?", (tile_id,)
        ).fetchone()
    finally:
        db.close()
    return tuple(row)
