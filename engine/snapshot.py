"""One state file at one instant, read without writing a byte and without the job's lock.

``eefetch status --map`` and ``eefetch serve`` look at jobs that may be running. The state
store (``state.Store``) opens files to work on them: it may switch the journal mode, upgrade
an old schema or fix permissions. This module opens the SQLite file read-only instead
(``mode=ro``), reads everything it needs in one short transaction (a consistent snapshot that
never blocks the writer: WAL readers do not), and closes the connection at once, so no read
transaction is left open to hold back the WAL's checkpoints.

Tiles come back as numpy columns, so a picture of 100,000 tiles costs array operations, not
100,000 Python objects. Download URLs (bearer capabilities) are never selected.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from engine import inventory
from engine.spec import REGION_EXTRA
from state.schema import APPLICATION, SCHEMA_VERSION, TILE_STATUSES
from state.store import StateError

_BUSY_TIMEOUT_S = 5.0
_LEAF = tuple(i for i, s in enumerate(TILE_STATUSES) if s != "split")
_UNRESOLVED = ("pending", "in_flight", "failed")  # as Store.last_errors: errors still to act on
_STATUS_CODE = (
    "CASE status "
    + " ".join(f"WHEN '{name}' THEN {code}" for code, name in enumerate(TILE_STATUSES))
    + " END"
)
_TILE_SQL = (
    "SELECT id, coalesce(parent_id, -1), row_off, col_off, height, width, band_start, "
    f"band_stop, {_STATUS_CODE}, attempts, {{rate_limited}}, coalesce(bytes, 0), updated_at "
    "FROM tile ORDER BY id"
)
_ERRORS_SQL = (
    "SELECT id, updated_at, last_error FROM tile WHERE status IN "
    f"({', '.join(repr(s) for s in _UNRESOLVED)}) AND last_error IS NOT NULL "
    "ORDER BY updated_at DESC, id DESC LIMIT ?"
)
_COUNTS_SQL = "SELECT status, count(*), sum(bytes) FROM tile GROUP BY status"
_CAUSES_SQL = (
    "SELECT last_error, status, count(*), sum(attempts), sum({rate_limited}) FROM tile "
    "WHERE last_error IS NOT NULL GROUP BY last_error, status"
)


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


class EmptyState(StateError):
    """The state file holds no job yet."""


def read_facts(
    state_path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
) -> JobFacts:
    """The job and its counts: two aggregate queries, whatever the number of tiles."""
    return _read(Path(state_path), clock, None)[0]


def read_snapshot(
    state_path: str | os.PathLike[str],
    *,
    recent_errors: int = 10,
    clock: Callable[[], float] = time.time,
) -> Snapshot:
    """The job and its tiles as they are now; StateError (one line) if the file is not a
    readable eefetch state file, EmptyState if it holds no job."""
    facts, rows, recent, causes = _read(Path(state_path), clock, recent_errors)
    return Snapshot(
        facts=facts,
        tiles=_columns(rows),
        recent_errors=[(int(t), float(w), str(e)) for t, w, e in recent],
        errors=[
            ErrorCount(str(e), str(s), int(n), int(a or 0), int(r or 0)) for e, s, n, a, r in causes
        ],
    )


def _read(
    path: Path, clock: Callable[[], float], recent_errors: int | None
) -> tuple[JobFacts, list[Any], list[Any], list[Any]]:
    """One read-only connection, one transaction: the facts, and with ``recent_errors`` (not
    None) the tile rows, that many recent errors and the error counts."""
    if not path.is_file():
        raise StateError(f"state file {path} does not exist; check the path")
    running = inventory.is_running(path)
    run_started_at = _lock_time(path) if running else None
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode=ro",
            uri=True,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise StateError(f"cannot open state file {path} read-only ({exc}); check it") from exc
    rows: list[Any] = []
    recent: list[Any] = []
    causes: list[Any] = []
    try:
        conn.execute("BEGIN")
        try:
            # Schema 1 had no 429 count: its tiles have none.
            columns = {"rate_limited": "rate_limited" if _schema(conn, path) > 1 else "0"}
            job = conn.execute(
                "SELECT status, spec, output_path, created_at FROM job ORDER BY id LIMIT 1"
            ).fetchone()
            if job is None:
                raise EmptyState(f"{path} holds no job yet; start one with `eefetch download`")
            counted = conn.execute(_COUNTS_SQL).fetchall()
            if recent_errors is not None:
                rows = conn.execute(_TILE_SQL.format(**columns)).fetchall()
                recent = conn.execute(_ERRORS_SQL, (recent_errors,)).fetchall()
                causes = conn.execute(_CAUSES_SQL.format(**columns)).fetchall()
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StateError(
            f"{path} cannot be read as an eefetch state file ({exc}); give the state file "
            "a download made (NAME.eefetch.db)"
        ) from exc
    finally:
        conn.close()
    status, spec_text, output_path, created_at = job
    counts = dict.fromkeys(TILE_STATUSES, 0)
    counts.update({name: int(n) for name, n, _ in counted if name in counts})
    facts = JobFacts(
        path=path,
        job_status=status,
        spec=json.loads(spec_text),
        output_path=output_path,
        created_at=float(created_at),
        counts=counts,
        bytes_done=int(sum(int(b or 0) for name, _, b in counted if name == "done")),
        running=running,
        run_started_at=run_started_at,
        read_at=clock(),
    )
    return facts, rows, recent, causes


def _schema(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; StateError for a file that is not eefetch's or is newer."""
    if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise EmptyState(f"{path} holds no job yet (a download is creating it?)")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error:
        meta = {}
    if meta.get("application") != APPLICATION:
        raise StateError(
            f"{path} is not an eefetch state file; give the state file a download made "
            "(NAME.eefetch.db)"
        )
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        version = 0
    if not 1 <= version <= SCHEMA_VERSION:
        raise StateError(
            f"state file {path} has state schema {meta.get('schema_version')!r}, which this "
            f"eefetch cannot read (it reads 1 to {SCHEMA_VERSION}); use the eefetch that made it"
        )
    return version


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
