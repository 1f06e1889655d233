"""One job at one instant, read without writing a byte and without the job's lock.

``eefetch status --map`` and ``eefetch serve`` look at jobs that may be running. The state
store (``state.Store``) opens files to work on them: it may switch the journal mode, upgrade
an old schema or fix permissions. This module opens the SQLite file read-only instead
(``mode=ro``), reads everything it needs in one short transaction (a consistent snapshot that
never blocks the writer: WAL readers do not), and closes the connection at once, so no read
transaction is left open to hold back the WAL's checkpoints.

A job whose state is on a PostgreSQL server is read through the store instead
(``Store.view``, one read transaction; a server database is never upgraded by a reader's
open), named by ``job`` like every other command. A state file holding several jobs needs the
name too.

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
from state import Store, is_database_url
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
    "FROM tile WHERE job_id = ? ORDER BY id"
)
_ERRORS_SQL = (
    "SELECT id, updated_at, last_error FROM tile WHERE job_id = ? AND status IN "
    f"({', '.join(repr(s) for s in _UNRESOLVED)}) AND last_error IS NOT NULL "
    "ORDER BY updated_at DESC, id DESC LIMIT ?"
)
_COUNTS_SQL = "SELECT status, count(*), sum(bytes) FROM tile WHERE job_id = ? GROUP BY status"
_CAUSES_SQL = (
    "SELECT last_error, status, count(*), sum(attempts), sum({rate_limited}) FROM tile "
    "WHERE job_id = ? AND last_error IS NOT NULL GROUP BY last_error, status"
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
    if is_database_url(target):
        return _read_server(str(target), recent_errors, job)
    return _read_file(Path(target), clock, recent_errors, job)


def _read_server(
    url: str, recent_errors: int | None, job: str | None
) -> tuple[JobFacts, list[Any], list[Any], list[Any]]:
    """A job on a server, through the store (one read transaction for the view); running
    means a worker is alive, and the run started when the earliest live worker did."""
    with Store.open(url, job=job, create=False) as store:
        view = store.view(recent_errors)
        if view is None:
            raise EmptyState(f"{store.target} holds no job yet; start one with `eefetch download`")
        workers = store.workers()
        read_at = store.now()
    alive = [w.started_at for w in workers if w.alive]
    counts = dict.fromkeys(TILE_STATUSES, 0)
    counts.update({name: n for name, n, _ in view.counts if name in counts})
    facts = JobFacts(
        path=Path(view.job.name),
        job_status=view.job.status,
        spec=view.job.spec,
        output_path=view.job.output_path,
        created_at=view.job.created_at,
        counts=counts,
        bytes_done=sum(b for name, _, b in view.counts if name == "done"),
        running=bool(alive),
        run_started_at=min(alive) if alive else None,
        read_at=read_at,
    )
    return facts, view.tiles, view.recent, view.causes


def _read_file(
    path: Path, clock: Callable[[], float], recent_errors: int | None, job: str | None
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
            version = _schema(conn, path)
            columns = {"rate_limited": "rate_limited" if version > 1 else "0"}
            job_id, row = _choose_job(conn, path, version, job)
            counted = conn.execute(_COUNTS_SQL, (job_id,)).fetchall()
            if recent_errors is not None:
                rows = conn.execute(_TILE_SQL.format(**columns), (job_id,)).fetchall()
                recent = conn.execute(_ERRORS_SQL, (job_id, recent_errors)).fetchall()
                causes = conn.execute(_CAUSES_SQL.format(**columns), (job_id,)).fetchall()
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StateError(
            f"{path} cannot be read as an eefetch state file ({exc}); give the state file "
            "a download made (NAME.eefetch.db)"
        ) from exc
    finally:
        conn.close()
    status, spec_text, output_path, created_at = row
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


def _choose_job(
    conn: sqlite3.Connection, path: Path, version: int, job: str | None
) -> tuple[int, tuple[Any, ...]]:
    """The id and (status, spec, output, created) of the job to read: the one named (files
    of schema 3 name their jobs), else the file's only job."""
    named = version >= 3 and job is not None
    query = "SELECT id, status, spec, output_path, created_at FROM job"
    found = conn.execute(
        query + (" WHERE name = ?" if named else "") + " ORDER BY id", (job,) if named else ()
    ).fetchall()
    if not found:
        what = f"no job named {job}" if named else "no job yet"
        raise EmptyState(f"{path} holds {what}; start one with `eefetch download`")
    if len(found) > 1:
        raise StateError(f"{path} holds {len(found)} jobs; name one with --job")
    job_id, *row = found[0]
    return int(job_id), tuple(row)


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
