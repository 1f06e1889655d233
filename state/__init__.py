"""eefetch's persistent state: the job store (SQLite through SQLAlchemy) and the job lock."""

from state.errors import EefetchError, IncompleteError, UserError
from state.lock import JobLock, OutputLock
from state.schema import JOB_STATUSES, SCHEMA_VERSION, TILE_STATUSES
from state.store import (
    JobLockedError,
    JobRecord,
    NewTile,
    StateError,
    Store,
    TileDone,
    TileFailed,
    TileRecord,
    TileReleased,
    TileReset,
    TileRetry,
    TileSplit,
    TileUpdate,
    TileUrl,
)

__all__ = [
    "JOB_STATUSES",
    "SCHEMA_VERSION",
    "TILE_STATUSES",
    "EefetchError",
    "IncompleteError",
    "JobLock",
    "JobLockedError",
    "JobRecord",
    "NewTile",
    "OutputLock",
    "StateError",
    "Store",
    "TileDone",
    "TileFailed",
    "TileRecord",
    "TileReleased",
    "TileReset",
    "TileRetry",
    "TileSplit",
    "TileUpdate",
    "TileUrl",
    "UserError",
]
