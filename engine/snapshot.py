"""One job at one instant, read without writing a byte and without the job's lock.

``eefetch status --map`` and ``eefetch serve`` look at jobs that may be running. They read
through the state store's reader (``Store.open_reader``): an SQLite file is opened read-only
(``mode=ro``: no journal switch, no upgrade, no permission fix; a file of an older schema is
read from an upgraded copy in memory), a PostgreSQL database without creating anything.
Everything is read in one short transaction (``Store.view``: a consistent snapshot that never
blocks the writer, WAL readers do not), and the store is closed at once, so no read
transaction is left open to hold back the WAL's checkpoints. The job is the state's only one,
or the one named by ``job``, like every other command.

Tiles come back as numpy columns, so a picture of 100,000 tiles costs array operations, not
100,000 Python objects. Download URLs (bearer capabilities) are never selected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import inventory
from engine.spec import REGION_EXTRA
from state import NoJobError, Store, is_database_url
from state.schema import TILE_STATUSES

_LEAF = tuple(i for i, s in enumerate(TILE_STATUSES) if s != "split")


@dataclass(frozen=True, slots=True)
class Tiles:
    """The tile table as columns, split parents included, in id order.

    ``status`` holds indexes into ``state.schema.TILE_STATUSES``; ``parent_id`` is -1 for a
    planned tile; ``bytes`` is 0 where no file is recorded.
    """

    id: np.ndarray
    parent_id: np.ndarray
    row_off: np.ndarray
    col_off: np.ndarray
    height: np.ndarray
    width: np.ndarray
    band_start: np.ndarray
    band_stop: np.ndarray
    status: np.ndarray
    attempts: np.ndarray
    rate_limited: np.ndarray
    bytes: np.ndarray
    updated_at: np.ndarray

    def is_status(self, name: str) -> np.ndarray:
        return np.asarray(self.status == TILE_STATUSES.index(name))

    def leaves(self) -> np.ndarray:
        """Mask of the tiles that are fetched (all but split parents)."""
        return np.isin(self.status, _LEAF)


@dataclass(frozen=True, slots=True)
class ErrorCount:
    """Tiles in ``status`` whose last error is ``error``, and their attempt counts."""

    error: str
    status: str
    tiles: int
    attempts: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class JobFacts:
    """The job row and its tile counts at ``read_at`` (wall clock, like the times it stores)."""

    path: Path
    job_status: str
    spec: dict[str, Any]
    output_path: str
    created_at: float
    counts: dict[str, int]  # tiles per status, every status present (as Store.counts)
    bytes_done: int  # bytes of the tile files recorded done (as Store.bytes_done)
    running: bool
    run_started_at: float | None  # when the running process took the job's lock
    read_at: float

    @property
    def name(self) -> str:
        return Path(self.output_path).name

    @property
    def region(self) -> dict[str, Any] | None:
        """The region's outline the job keeps for pictures (jobs made before it: None)."""
        return self.spec.get("extra", {}).get(REGION_EXTRA) or None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The job, every tile and the errors, all read in one transaction."""

    facts: JobFacts
    tiles: Tiles
    recent_errors: list[tuple[int, float, str]]  # (tile id, when, error), newest first
    errors: list[ErrorCount]


EmptyState = NoJobError
"""The state holds no job yet (or none of the name asked for)."""


def read_facts(
    state_path: str | os.PathLike[str],
    *,
    clock: Callable[[], float] = time.time,
    job: str | None = None,
) -> JobFacts:
    """The job and its counts: two aggregate queries, whatever the number of tiles."""
    return _read(state_path, clock, None, job)[0]


def read_snapshot(
    state_path: str | os.PathLike[str],
    *,
    recent_errors: int = 10,
    clock: Callable[[], float] = time.time,
    job: str | None = None,
) -> Snapshot:
    """The job and its tiles as they are now; StateError (one line) if the file is not a
    readable eefetch state file, EmptyState if it holds no job."""
    facts, rows, recent, causes = _read(state_path, clock, recent_errors, job)
    return Snapshot(
        facts=facts,
        tiles=_columns(rows),
        recent_errors=[(int(t), float(w), str(e)) for t, w, e in recent],
        errors=[
            ErrorCount(str(e), str(s), int(n), int(a or 0), int(r or 0)) for e, s, n, a, r in causes
        ],
    )


def _read(
    target: str | os.PathLike[str],
    clock: Callable[[], float],
    recent_errors: int | None,
    job: str | None,
) -> tuple[JobFacts, list[Any], list[Any], list[Any]]:
    """The facts, and with ``recent_errors`` (not None) the tile rows, that many recent errors
    and the error counts, from one read transaction. A job on a server is running while one
    of its workers is alive (its run started when the earliest live one did); a job in a file
    while a process holds its lock."""
    server = is_database_url(target)
    with Store.open_reader(target, job=job) as store:
        view = store.view(recent_errors)
        if view is None:
            what = "no job yet" if job is None else f"no job named {job}"
            raise EmptyState(f"{store.target} holds {what}; start one with `eefetch download`")
        workers = store.workers() if server else []
        read_at = store.now() if server else clock()
    if server:
        alive = [w.started_at for w in workers if w.alive]
        running = bool(alive)
        run_started_at = min(alive) if alive else None
        path = Path(view.job.name)
    else:
        path = Path(target)
        running = inventory.is_running(path)
        run_started_at = _lock_time(path) if running else None
    counts = dict.fromkeys(TILE_STATUSES, 0)
    counts.update({name: n for name, n, _ in view.counts if name in counts})
    facts = JobFacts(
        path=path,
        job_status=view.job.status,
        spec=view.job.spec,
        output_path=view.job.output_path,
        created_at=view.job.created_at,
        counts=counts,
        bytes_done=sum(b for name, _, b in view.counts if name == "done"),
        running=running,
        run_started_at=run_started_at,
        read_at=read_at,
    )
    return facts, view.tiles, view.recent, view.causes


def _columns(rows: list[tuple[Any, ...]]) -> Tiles:
    """Thirteen numpy columns from the rows of _TILE_SQL (one C-level conversion)."""
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 13)
    ints = [table[:, i].astype(np.int64) for i in range(12)]
    ints[8] = ints[8].astype(np.int8)  # the status column
    (tile_id, parent, row, col, height, width, b0, b1, status, attempts, limited, size) = ints
    return Tiles(
        tile_id, parent, row, col, height, width, b0, b1, status, attempts, limited, size,
        table[:, 12].copy(),
    )  # fmt: skip


def _lock_time(path: Path) -> float | None:
    """When the running process took the job: it writes its pid into the lock file then."""
    try:
        return Path(f"{path}.lock").stat().st_mtime
    except OSError:
        return None
