"""eefetch's persistent state: the job store (SQLite or PostgreSQL through SQLAlchemy), the
shared Earth Engine quota, and the file locks of a one-machine job."""

from state.db import is_database_url
from state.errors import (
    EefetchError,
    IncompleteError,
    JobExistsError,
    JobLockedError,
    NoJobError,
    StateError,
    UserError,
)
from state.lock import JobLock, OutputLock
from state.quota import DEFAULT_PROJECT_QUOTA, Quota, QuotaStatus, default_quota_path, quota_target
from state.schema import JOB_STATUSES, SCHEMA_VERSION, TILE_STATUSES, default_job_name
from state.store import (
    JobRecord,
    JobView,
    MergeLease,
    NewTile,
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
    WorkerRecord,
)

__all__ = [
    "DEFAULT_PROJECT_QUOTA",
    "JOB_STATUSES",
    "SCHEMA_VERSION",
    "TILE_STATUSES",
    "EefetchError",
    "IncompleteError",
    "JobExistsError",
    "JobLock",
    "JobLockedError",
    "JobRecord",
    "JobView",
    "MergeLease",
    "NewTile",
    "NoJobError",
    "OutputLock",
    "Quota",
    "QuotaStatus",
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
    "WorkerRecord",
    "default_job_name",
    "default_quota_path",
    "is_database_url",
    "quota_target",
]
