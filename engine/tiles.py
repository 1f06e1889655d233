"""A tile's identity: its file name, its window and bands, and what its file must contain.

One place for the conversions between a stored tile row (``state.TileRecord``), the planner's
``TilePlan`` and a row to insert (``state.NewTile``), so that no module spells out
(row, col, height, width, band range) again. Nothing here imports ``ee``: naming a file or
checking one needs no Earth Engine client.

Tile files are named after the job's random uid as well as the tile's id. A file is taken as a
tile of a job only if its name carries that job's uid, so the files another job left in the same
folder (a deleted state file, then a new job on the same output) can never be adopted.
"""

from __future__ import annotations

import re

from engine.grid import Grid, TilePlan, Window
from engine.spec import JobSpec
from engine.tilestore import TileExpectation
from state import NewTile, TileRecord

_TILE_FILE = re.compile(r"^t(\d{8,})(?:-([0-9a-f]{12}))?\.tif$")


def tile_name(job_uid: str, tile_id: int) -> str:
    """The file name of tile ``tile_id`` of the job whose uid is ``job_uid``."""
    return f"t{tile_id:08d}-{job_uid}.tif"


def is_tile_file(name: str) -> bool:
    """Whether ``name`` looks like a tile file of some eefetch job (this one or another)."""
    return _TILE_FILE.fullmatch(name) is not None


def tile_plan(tile: TileRecord) -> TilePlan:
    """The planner's view of a stored tile."""
    return TilePlan(
        Window(tile.row_off, tile.col_off, tile.height, tile.width), tile.band_start, tile.band_stop
    )


def new_tile(plan: TilePlan, parent_id: int | None = None) -> NewTile:
    """A planned tile (or a child of ``parent_id`` after a split) as a row to insert."""
    window = plan.window
    return NewTile(
        window.row_off,
        window.col_off,
        window.height,
        window.width,
        plan.band_start,
        plan.band_stop,
        parent_id,
    )


def tile_grid(spec: JobSpec, tile: TileRecord) -> Grid:
    """The pixel grid of a tile: the job's grid cut to the tile's window."""
    return spec.grid.window_grid(tile_plan(tile).window)


def tile_expectation(spec: JobSpec, tile: TileRecord) -> TileExpectation:
    """What the tile's GeoTIFF must be: size, band count, type and transform."""
    grid = tile_grid(spec, tile)
    return TileExpectation(
        width=grid.width,
        height=grid.height,
        count=tile.band_stop - tile.band_start,
        dtype=spec.dtype,
        crs=None,
        transform=grid.transform,
    )
