"""The job store: the jobs of a state database, their tiles, workers and merge lease.

A `Store` is bound to one job (by name) and every tile operation stays inside that job, so one
PostgreSQL database holds many jobs; an SQLite state file usually holds one. Every public method
is one short transaction, so a process killed at any instant leaves the state as it was after
the last completed call; nothing is held open across the scheduler's awaits. Methods block and
are thread-safe (each call takes a pooled connection); the engine calls them from its state
thread. How transactions are isolated and retried is state/db.py's business.

Clocks: a method that takes `now` uses it when given (deterministic tests, one process) and the
database's clock when it is None. Several workers must pass None, so that a lease means the same
to all of them whatever their own clocks say; a retry delay then goes in as `TileRetry.delay`.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sqlalchemy import (
    Connection,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError

from state import schema
from state.db import RECONNECT_SECONDS, Database
from state.errors import JobExistsError, StateError
from state.schema import JOB_NAME, JOB_STATUSES, SCHEMA_VERSION, TILE_STATUSES, default_job_name

if TYPE_CHECKING:
    from state.quota import Quota

T = TypeVar("T")

job_t = schema.job
tile_t = schema.tile
worker_t = schema.worker
merge_t = schema.merge_lease

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_IN = 500  # ids per IN (...) list; old SQLite builds allow only 999 bound parameters


@dataclass(frozen=True, slots=True)
class NewTile:
    """A tile to insert; `parent_id` is set by the store for the children of a split."""

    row_off: int
    col_off: int
    height: int
    width: int
    band_start: int
    band_stop: int
    parent_id: int | None = None


@dataclass(frozen=True, slots=True)
class TileRecord:
    """A tile row as stored; `window` is `(row_off, col_off, height, width)` (CONTRACTS.md)."""

    id: int
    parent_id: int | None
    row_off: int
    col_off: int
    height: int
    width: int
    band_start: int
    band_stop: int
    status: str
    attempts: int
    last_error: str | None
    url: str | None
    url_made_at: float | None
    bytes: int | None
    checksum: str | None
    path: str | None
    claim_owner: str | None
    claim_expires: float | None
    not_before: float | None
    updated_at: float
    rate_limited: int = 0

    @property
    def window(self) -> tuple[int, int, int, int]:
        return (self.row_off, self.col_off, self.height, self.width)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The job row; `spec` is the JSON-decoded job spec (tuples come back as lists)."""

    id: int
    fingerprint: str
    spec: dict[str, Any] = field(hash=False)
    eefetch_version: str
    status: str
    created_at: float
    updated_at: float
    output_path: str
    uid: str
    name: str


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A process that worked on the job; `alive` is judged by the database's clock: seen
    within its lease and not stopped."""

    owner: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    lease_seconds: float
    tiles_done: int
    bytes_done: int
    stopped_at: float | None
    alive: bool


@dataclass(frozen=True, slots=True)
class MergeLease:
    """Who may merge the job, since when and until when; `live` by the database's clock."""

    owner: str
    acquired_at: float
    expires: float
    live: bool


@dataclass(frozen=True, slots=True)
class TileDone:
    """The tile's file is on disk, validated and durable; `path` is relative to the tile folder."""

    tile_id: int
    path: str
    bytes: int
    checksum: str


@dataclass(frozen=True, slots=True)
class TileRetry:
    """A transient failure: back to pending, not to be claimed before a time.

    The time is either `not_before` (absolute, on the clock of the `now` given to `apply`) or
    `delay` seconds after the batch's `now` (what workers whose clocks differ must use, with
    `now=None`: the database's clock). A rate-limited failure (429) counts toward
    `rate_limited`, any other toward `attempts`.
    """

    tile_id: int
    error: str
    not_before: float | None = None
    rate_limited: bool = False
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class TileFailed:
    """A permanent failure for this run; `reset_failed` makes the next run try again."""

    tile_id: int
    error: str


@dataclass(frozen=True, slots=True)
class TileSplit:
    """The tile is too large for one request: it is replaced by `children` (inside its window)."""

    tile_id: int
    children: Sequence[NewTile]
    error: str


@dataclass(frozen=True, slots=True)
class TileUrl:
    """A download URL made for the tile (or None to forget a stale one)."""

    tile_id: int
    url: str | None
    made_at: float | None


@dataclass(frozen=True, slots=True)
class TileReleased:
    """The work on the tile was cancelled, not failed: back to pending, attempts unchanged."""

    tile_id: int


@dataclass(frozen=True, slots=True)
class TileReset:
    """A done tile whose file is missing or corrupt: back to pending, file fields cleared."""

    tile_id: int
    reason: str


TileUpdate = TileDone | TileRetry | TileFailed | TileSplit | TileUrl | TileReleased | TileReset


@dataclass(frozen=True, slots=True)
class JobView:
    """A job at one instant, for pictures and pages (`Store.view`), read in one transaction.

    `counts`: (status, tiles, sum of bytes) per status present. `tiles`: every tile, split
    parents included, by id, as (id, parent id or -1, row_off, col_off, height, width,
    band_start, band_stop, status index in TILE_STATUSES, attempts, rate_limited, bytes or 0,
    updated_at); never the URL. `recent`: (tile id, updated_at, error) of unresolved tiles,
    newest first. `causes`: (error, status, tiles, sum of attempts, sum of rate_limited).
    """

    job: JobRecord
    counts: list[tuple[str, int, int]]
    tiles: list[tuple[Any, ...]]
    recent: list[tuple[int, float, str]]
    causes: list[tuple[str, str, int, int, int]]


_TILE_COLUMNS = tuple(tile_t.c[f.name] for f in fields(TileRecord))
_WINDOW_COLUMNS = (
    tile_t.c.row_off,
    tile_t.c.col_off,
    tile_t.c.height,
    tile_t.c.width,
    tile_t.c.band_start,
    tile_t.c.band_stop,
)
_JOB_COLUMNS = tuple(job_t.c[f.name] for f in fields(JobRecord))
_WORKER_COLUMNS = tuple(worker_t.c[f.name] for f in fields(WorkerRecord) if f.name != "alive")
_NO_CLAIM: Mapping[str, None] = MappingProxyType({"claim_owner": None, "claim_expires": None})
_LEAF_STATUSES = tuple(s for s in TILE_STATUSES if s != "split")
_UNRESOLVED = ("pending", "in_flight", "failed")

# Bulk inserts bypass Core: building and binding 100,000 parameter dicts costs more than the
# database's own work. SQLite gets sqlite3's executemany with tuples, PostgreSQL a COPY. The
# column list comes from the Table, so it cannot drift from the schema.
_NEW_TILE_FIELDS = (
    "job_id",
    "parent_id",
    "row_off",
    "col_off",
    "height",
    "width",
    "band_start",
    "band_stop",
    "status",
    "attempts",
    "updated_at",
)
_TILE_FIELD_LIST = ", ".join(tile_t.c[n].name for n in _NEW_TILE_FIELDS)
_INSERT_TILES_SQL = (
    f"INSERT INTO {tile_t.name} ({_TILE_FIELD_LIST}) "
    f"VALUES ({', '.join('?' * len(_NEW_TILE_FIELDS))})"
)
_COPY_TILES_SQL = f"COPY {tile_t.name} ({_TILE_FIELD_LIST}) FROM STDIN"


def _set_tile(applies_to: tuple[str, ...], **values: Any) -> Update:
    """UPDATE tile :tid of job :jid if its status is one of `applies_to`.

    An update for a tile in another status is stale (e.g. a worker reporting after its lease
    expired and the tile moved on) and changes nothing. Built once: Core caches the compiled
    form of a statement object, so a batch costs the database's time, not SQL construction.
    """
    return (
        update(tile_t)
        .where(
            tile_t.c.id == bindparam("tid"),
            tile_t.c.job_id == bindparam("jid"),
            tile_t.c.status.in_(applies_to),
        )
        .values(updated_at=bindparam("now"), **values)
    )


_UPDATE_SQL: Mapping[type, Update] = MappingProxyType(
    {
        TileDone: _set_tile(
            ("pending", "in_flight", "done", "failed"),
            status="done",
            path=bindparam("p_path"),
            bytes=bindparam("p_bytes"),
            checksum=bindparam("p_checksum"),
            not_before=None,
            url=None,
            url_made_at=None,
            **_NO_CLAIM,
        ),
        TileRetry: _set_tile(
            ("pending", "in_flight"),
            status="pending",
            attempts=tile_t.c.attempts + bindparam("p_failed"),
            rate_limited=tile_t.c.rate_limited + bindparam("p_rate_limited"),
            last_error=bindparam("p_error"),
            not_before=bindparam("p_not_before"),
            **_NO_CLAIM,
        ),
        TileFailed: _set_tile(
            ("pending", "in_flight"),
            status="failed",
            attempts=tile_t.c.attempts + 1,
            last_error=bindparam("p_error"),
            not_before=None,
            **_NO_CLAIM,
        ),
        TileSplit: _set_tile(
            ("pending", "in_flight"),
            status="split",
            last_error=bindparam("p_error"),
            not_before=None,
            url=None,
            url_made_at=None,
            **_NO_CLAIM,
        ),
        TileUrl: _set_tile(
            ("pending", "in_flight", "failed"),
            url=bindparam("p_url"),
            url_made_at=bindparam("p_made_at"),
        ),
        TileReleased: _set_tile(("in_flight",), status="pending", **_NO_CLAIM),
        TileReset: _set_tile(
            ("done",),
            status="pending",
            path=None,
            bytes=None,
            checksum=None,
            last_error=bindparam("p_error"),
            not_before=None,
        ),
    }
)


def _update_params(u: TileUpdate, job_id: int, now: float) -> dict[str, Any]:
    params: dict[str, Any] = {"tid": u.tile_id, "jid": job_id, "now": now}
    match u:
        case TileDone():
            params |= {"p_path": u.path, "p_bytes": u.bytes, "p_checksum": u.checksum}
        case TileRetry():
            params |= {
                "p_error": u.error,
                "p_not_before": now + u.delay if u.delay is not None else u.not_before,
                "p_failed": 0 if u.rate_limited else 1,
                "p_rate_limited": 1 if u.rate_limited else 0,
            }
        case TileFailed() | TileSplit():
            params["p_error"] = u.error
        case TileUrl():
            params |= {"p_url": u.url, "p_made_at": u.made_at}
        case TileReset():
            params["p_error"] = u.reason
    return params


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _MAX_IN):
        yield ids[start : start + _MAX_IN]


def _dump_spec(spec: dict[str, Any]) -> str:
    try:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job spec is not JSON-serializable: {exc}") from exc


def _check_window(t: NewTile) -> None:
    if not (
        t.row_off >= 0
        and t.col_off >= 0
        and t.height > 0
        and t.width > 0
        and t.band_start >= 0
        and t.band_stop > t.band_start
    ):
        raise ValueError(f"invalid tile {t}: offsets must be >= 0 and sizes and bands non-empty")


def _check_update(u: TileUpdate) -> None:
    """Reject malformed updates before the transaction starts: these are bugs in the caller."""
    if type(u) not in _UPDATE_SQL:
        raise TypeError(f"not a tile update: {u!r}")
    if isinstance(u, TileDone):
        if not _SHA256_HEX.fullmatch(u.checksum):
            raise ValueError(f"tile {u.tile_id}: checksum must be lowercase sha256 hex")
        if u.bytes < 0:
            raise ValueError(f"tile {u.tile_id}: bytes must be >= 0")
        p = PurePath(u.path)
        if not u.path or p.is_absolute() or ".." in p.parts:
            raise ValueError(f"tile {u.tile_id}: path must be relative to the tile folder")
    elif isinstance(u, TileRetry):
        if (u.not_before is None) == (u.delay is None):
            raise ValueError(f"tile {u.tile_id}: a retry needs not_before or delay, not both")
        when = u.delay if u.delay is not None else u.not_before
        assert when is not None
        if not math.isfinite(when) or (u.delay is not None and u.delay < 0):
            raise ValueError(f"tile {u.tile_id}: not_before must be finite and delay >= 0")
    elif isinstance(u, TileSplit):
        if not u.children:
            raise ValueError(f"tile {u.tile_id}: a split needs at least one child")
        for child in u.children:
            _check_window(child)
            if child.parent_id not in (None, u.tile_id):
                raise ValueError(f"tile {u.tile_id}: child {child} names another parent")


def _check_lease(lease_seconds: float) -> None:
    if not (lease_seconds > 0 and math.isfinite(lease_seconds)):
        raise ValueError("lease_seconds must be > 0")


def _check_name(name: str) -> str:
    if not JOB_NAME.fullmatch(name):
        raise StateError(
            f"job name {name!r} is not allowed; use letters, digits, '.', '_' and '-' (at most "
            "128, starting with a letter or digit)"
        )
    return name


class Store:
    """An open state database, bound to one job. Thread-safe; see the module docstring."""

    schema_version: ClassVar[int] = SCHEMA_VERSION

    def __init__(self, db: Database, name: str | None) -> None:
        """Use `Store.open`; this only wraps a database that `open` has validated."""
        self._db = db
        self._name = name
        self._job_id: int | None = None

    @property
    def path(self) -> Path | None:
        """The SQLite file (its -wal and -shm companions live beside it); None on PostgreSQL."""
        return self._db.path

    @property
    def target(self) -> str:
        """The file path, or the database URL without its password: for messages."""
        return self._db.label

    @property
    def is_server(self) -> bool:
        """True when the state is on a PostgreSQL server (workers on several machines)."""
        return self._db.is_postgresql

    @property
    def name(self) -> str | None:
        """The bound job's name (None until a job is bound: an empty SQLite file)."""
        return self._name

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: str | os.PathLike[str],
        *,
        job: str | None = None,
        create: bool = True,
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> Store:
        """Open the state at `target`: an SQLite file path, or a PostgreSQL URL
        (`postgresql://user@host:port/db` or `postgresql+psycopg://...`).

        A missing file, or an empty database, gets the schema when `create` is true. Refused,
        without writing a byte: a file that is not SQLite, a database that is not eefetch's,
        and one of a newer schema; an older schema is upgraded in place. A zero-byte file or an
        SQLite file with no tables (what a crash during creation can leave) is taken as new.

        `job` names the job to bind to (it may not exist yet: `create_job` makes it). Without
        a name the store binds to the database's only job, or to the job `create_job` makes
        (named after its output); a database with several jobs then asks for a name.
        """
        name = None if job is None else _check_name(job)
        db = Database.open(target, create=create, reconnect_seconds=reconnect_seconds)
        return cls(db, name)

    @classmethod
    def open_reader(cls, target: str | os.PathLike[str], *, job: str | None = None) -> Store:
        """Open the state at `target` to look at it while it may be running: nothing is ever
        written (an SQLite file is opened read-only, and one of an older schema is read from
        an upgraded copy in memory). NoJobError while it holds no schema yet. Only the read
        calls (`job`, `view`, `counts`, `workers`, ...) may be used."""
        name = None if job is None else _check_name(job)
        return cls(Database.open_reader(target), name)

    # ---- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; on SQLite the last one checkpoints the WAL into the file."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._db.label!r}, job={self._name!r})"

    def _run(
        self,
        work: Callable[[Connection], T],
        *,
        write: bool,
        in_doubt: Callable[[Connection], T | None] | None = None,
    ) -> T:
        return self._db.run(work, write=write, in_doubt=in_doubt)

    def _time(self, conn: Connection, now: float | None) -> float:
        return self._db.now(conn) if now is None else float(now)

    def now(self) -> float:
        """The database's clock, in seconds since the epoch (compare `next_wakeup` with it)."""
        return self._run(self._db.now, write=False)

    def quota(self, **settings: Any) -> Quota:
        """The shared Earth Engine quota kept in this same database (PostgreSQL: every worker
        of every job reaches it). It shares this store's connections: close the store last."""
        from state.quota import Quota

        return Quota(self._db, **settings)

    # ---- the job ---------------------------------------------------------------------------

    def _bound_id(self, conn: Connection) -> int | None:
        """The bound job's id, binding it on first sight; None while the job does not exist."""
        if self._job_id is not None:
            return self._job_id
        if self._name is not None:
            found = conn.execute(select(job_t.c.id).where(job_t.c.name == self._name)).scalar()
        else:
            rows = conn.execute(select(job_t.c.id, job_t.c.name).order_by(job_t.c.id)).all()
            if len(rows) > 1:
                names = ", ".join(r.name for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
                raise StateError(
                    f"{self._db.noun} holds {len(rows)} jobs ({names}); name one with --job"
                )
            found = rows[0].id if rows else None
            if rows:
                self._name = rows[0].name
        self._job_id = found
        return found

    def _need_job(self, conn: Connection) -> int:
        job_id = self._bound_id(conn)
        if job_id is None:
            what = "no job yet" if self._name is None else f"no job named {self._name}"
            raise StateError(
                f"{self._db.noun} holds {what}; start the download to create it"
                + ("" if self._name is None else ", or check --job")
            )
        return job_id

    @staticmethod
    def _record(row: Any) -> JobRecord:
        values = row._asdict()
        values["spec"] = json.loads(values["spec"])
        return JobRecord(**values)

    def _job(self, conn: Connection) -> JobRecord | None:
        job_id = self._bound_id(conn)
        if job_id is None:
            return None
        row = conn.execute(select(*_JOB_COLUMNS).where(job_t.c.id == job_id)).first()
        return None if row is None else self._record(row)

    def job(self) -> JobRecord | None:
        """The bound job, or None if the download has not been planned yet."""
        return self._run(self._job, write=False)

    def jobs(self) -> list[JobRecord]:
        """Every job in the database, oldest first."""

        def work(conn: Connection) -> list[JobRecord]:
            rows = conn.execute(select(*_JOB_COLUMNS).order_by(job_t.c.id)).all()
            return [self._record(r) for r in rows]

        return self._run(work, write=False)

    def create_job(
        self,
        fingerprint: str,
        spec: dict[str, Any],
        eefetch_version: str,
        output_path: str,
        tiles: Sequence[NewTile],
        *,
        now: float | None = None,
    ) -> JobRecord:
        """Record the job and all its planned tiles in one transaction (all or nothing).

        The job takes the store's name, or `default_job_name(output_path)` if it has none.
        """
        spec_json = _dump_spec(spec)
        for t in tiles:
            if t.parent_id is not None:
                raise ValueError(f"planned tile {t} cannot have a parent")
        name = self._name or default_job_name(output_path)
        uid = schema.new_job_uid()

        def work(conn: Connection) -> JobRecord:
            if self._db.is_postgresql:
                # Workers that start together wait for one another's creation here, then see
                # the job (SQLite's BEGIN IMMEDIATE serialises them already).
                conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))
            existing = self._job(conn)
            if existing is None:
                existing = self._named(conn, name)
            if existing is not None:
                named = "" if self._db.path is not None else f" named {existing.name}"
                raise JobExistsError(
                    f"{self._db.noun} already holds a job{named} (fingerprint "
                    f"{existing.fingerprint}, output {existing.output_path}); use another state "
                    + ("file" if self._db.path is not None else "database or --job name")
                    + " for another download"
                )
            stamp = self._time(conn, now)
            inserted = conn.execute(
                insert(job_t).values(
                    fingerprint=fingerprint,
                    spec=spec_json,
                    eefetch_version=eefetch_version,
                    status="planned",
                    created_at=stamp,
                    updated_at=stamp,
                    output_path=output_path,
                    uid=uid,
                    name=name,
                )
            ).inserted_primary_key
            assert inserted is not None
            self._insert_tiles(conn, int(inserted[0]), None, tiles, stamp)
            record = self._named(conn, name)
            assert record is not None
            return record

        def in_doubt(conn: Connection) -> JobRecord | None:
            record = self._named(conn, name)
            return record if record is not None and record.uid == uid else None

        record = self._run(work, write=True, in_doubt=in_doubt)
        self._name, self._job_id = record.name, record.id
        return record

    def _named(self, conn: Connection, name: str) -> JobRecord | None:
        row = conn.execute(select(*_JOB_COLUMNS).where(job_t.c.name == name)).first()
        return None if row is None else self._record(row)

    def set_job_status(
        self, status: str, output_path: str | None = None, *, now: float | None = None
    ) -> None:
        """Move the job to `status` (and record where the output went, if given)."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {JOB_STATUSES}")

        def work(conn: Connection) -> None:
            job_id = self._bound_id(conn)
            if job_id is None:
                raise StateError(
                    f"{self._db.noun} holds no job yet; start the download to create it"
                )
            values: dict[str, Any] = {"status": status, "updated_at": self._time(conn, now)}
            if output_path is not None:
                values["output_path"] = output_path
            conn.execute(update(job_t).where(job_t.c.id == job_id).values(**values))

        self._run(work, write=True)

    def _insert_tiles(
        self,
        conn: Connection,
        job_id: int,
        parent_id: int | None,
        tiles: Sequence[NewTile],
        now: float,
    ) -> None:
        if not tiles:
            return
        rows = (
            (
                job_id,
                parent_id,
                t.row_off,
                t.col_off,
                t.height,
                t.width,
                t.band_start,
                t.band_stop,
                "pending",
                0,
                now,
            )
            for t in tiles
        )
        if not self._db.is_postgresql:
            conn.exec_driver_sql(_INSERT_TILES_SQL, list(rows))
            return
        import psycopg

        driver = conn.connection.driver_connection
        assert driver is not None  # a pooled connection always has its psycopg one
        try:
            with driver.cursor() as cursor, cursor.copy(_COPY_TILES_SQL) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as exc:  # raw driver errors: wrapped as SQLAlchemy wraps its own
            raise DBAPIError.instance(_COPY_TILES_SQL, None, exc, psycopg.Error) from exc

    # ---- tile updates ----------------------------------------------------------------------

    def apply(self, updates: Sequence[TileUpdate], now: float | None = None) -> list[TileUpdate]:
        """Apply a batch of results in one transaction, in order.

        Returns the updates skipped as stale: those whose tile is no longer in a status they
        apply to (see `_UPDATE_SQL`). An unknown tile id or a malformed update raises and
        nothing of the batch is applied. Run again after a lost connection, a batch changes
        nothing more than once, except that a retry may count its attempt twice.
        """
        for u in updates:
            _check_update(u)
        if not updates:
            return []

        def work(conn: Connection) -> list[TileUpdate]:
            job_id = self._need_job(conn)
            stamp = self._time(conn, now)
            return [u for u in updates if not self._apply_one(conn, job_id, u, stamp)]

        return self._run(work, write=True)

    def _apply_one(self, conn: Connection, job_id: int, u: TileUpdate, now: float) -> bool:
        """Apply one update; False if it was stale."""
        if conn.execute(_UPDATE_SQL[type(u)], _update_params(u, job_id, now)).rowcount:
            if isinstance(u, TileSplit):
                self._insert_children(conn, job_id, u, now)
            return True
        exists = conn.execute(
            select(tile_t.c.id).where(tile_t.c.id == u.tile_id, tile_t.c.job_id == job_id)
        ).first()
        if exists is None:
            raise ValueError(f"{type(u).__name__}: no tile {u.tile_id} in {self._db.noun}")
        return False

    def _insert_children(self, conn: Connection, job_id: int, split: TileSplit, now: float) -> None:
        parent = conn.execute(select(*_TILE_COLUMNS).where(tile_t.c.id == split.tile_id)).one()
        for c in split.children:
            inside = (
                c.row_off >= parent.row_off
                and c.col_off >= parent.col_off
                and c.row_off + c.height <= parent.row_off + parent.height
                and c.col_off + c.width <= parent.col_off + parent.width
                and c.band_start >= parent.band_start
                and c.band_stop <= parent.band_stop
            )
            if not inside:
                raise ValueError(f"child {c} lies outside its parent tile {parent.id}")
        self._insert_tiles(conn, job_id, parent.id, split.children, now)

    # ---- claims ----------------------------------------------------------------------------

    def claim(
        self, owner: str, now: float | None, lease_seconds: float, limit: int
    ) -> list[TileRecord]:
        """Take up to `limit` tiles for `owner`, lowest ids first, until `now + lease_seconds`
        (`now=None`: the database's clock).

        Claimable: pending tiles whose `not_before` is unset or <= now, and in-flight tiles
        of *other* owners whose claim expired (their owner died or hung). An owner never gets
        its own in-flight tiles back, whatever the clock says: after a suspend or a clock step
        longer than the lease they are still being fetched by it. Both lookups walk the
        (job_id, status) index in id order, so the cost does not grow with the number of done
        tiles; on PostgreSQL they lock what they find with SKIP LOCKED, so concurrent claimers
        never wait for each other nor take the same tile.
        """
        if not owner:
            raise ValueError("claim owner must be a non-empty string")
        _check_lease(lease_seconds)
        if limit <= 0:
            return []
        stamp: list[float] = []

        def work(conn: Connection) -> list[TileRecord]:
            job_id = self._bound_id(conn)
            if job_id is None:
                return []
            at = self._time(conn, now)
            stamp[:] = [at]
            return self._claim(conn, job_id, owner, at, lease_seconds, limit)

        def in_doubt(conn: Connection) -> list[TileRecord] | None:
            # A claim cut while committing may have committed: its tiles are then the owner's,
            # with exactly this expiry and stamp, and no later claim of this owner exists yet.
            if not stamp or self._job_id is None:
                return None
            rows = conn.execute(
                select(*_TILE_COLUMNS)
                .where(
                    tile_t.c.job_id == self._job_id,
                    tile_t.c.status == "in_flight",
                    tile_t.c.claim_owner == owner,
                    tile_t.c.claim_expires == stamp[0] + lease_seconds,
                    tile_t.c.updated_at == stamp[0],
                )
                .order_by(tile_t.c.id)
            ).all()
            return [TileRecord(*r) for r in rows] or None

        return self._run(work, write=True, in_doubt=in_doubt)

    @staticmethod
    def _claim(
        conn: Connection, job_id: int, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[TileRecord]:
        mine = tile_t.c.job_id == job_id
        pending = (
            conn.execute(
                select(tile_t.c.id)
                .where(
                    mine,
                    tile_t.c.status == "pending",
                    or_(tile_t.c.not_before.is_(None), tile_t.c.not_before <= now),
                )
                .order_by(tile_t.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        expired = (
            conn.execute(
                select(tile_t.c.id)
                .where(
                    mine,
                    tile_t.c.status == "in_flight",
                    tile_t.c.claim_expires <= now,
                    tile_t.c.claim_owner != owner,
                )
                .order_by(tile_t.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        ids = sorted([*pending, *expired])[:limit]
        records: list[TileRecord] = []
        for chunk in _chunks(ids):
            rows = conn.execute(
                update(tile_t)
                .where(tile_t.c.id.in_(chunk))
                .values(
                    status="in_flight",
                    claim_owner=owner,
                    claim_expires=now + lease_seconds,
                    not_before=None,
                    updated_at=now,
                )
                .returning(*_TILE_COLUMNS)
            ).all()
            records.extend(TileRecord(*r) for r in rows)
        records.sort(key=lambda r: r.id)
        return records

    def renew_claims(self, owner: str, now: float | None, lease_seconds: float) -> int:
        """Extend every claim `owner` still holds to `now + lease_seconds` (`now=None`: the
        database's clock); returns how many.

        A claim that expired but was not yet taken by anyone is still the owner's and is renewed.
        """
        _check_lease(lease_seconds)

        def work(conn: Connection) -> int:
            job_id = self._bound_id(conn)
            if job_id is None:
                return 0
            at = self._time(conn, now)
            return conn.execute(
                update(tile_t)
                .where(
                    tile_t.c.job_id == job_id,
                    tile_t.c.status == "in_flight",
                    tile_t.c.claim_owner == owner,
                )
                .values(claim_expires=at + lease_seconds, updated_at=at)
            ).rowcount

        return self._run(work, write=True)

    def shift_times(self, owner: str, delta: float, *, now: float | None = None) -> int:
        """Move every retry time and `owner`'s claim expiries by `delta` seconds.

        For a wall clock that stepped by `delta` under a running process (a suspend, an NTP
        step) of a job whose times are on that clock: a retry due in 10 s stays due in 10 s
        instead of in an hour, and the owner's leases keep the time they had left. Returns how
        many tiles changed. Workers on the database's clock have nothing to shift.
        """
        if not math.isfinite(delta):
            raise ValueError("delta must be finite")

        def work(conn: Connection) -> int:
            job_id = self._bound_id(conn)
            if job_id is None:
                return 0
            at = self._time(conn, now)
            mine = tile_t.c.job_id == job_id
            retries = conn.execute(
                update(tile_t)
                .where(mine, tile_t.c.status == "pending", tile_t.c.not_before.is_not(None))
                .values(not_before=tile_t.c.not_before + delta, updated_at=at)
            ).rowcount
            claims = conn.execute(
                update(tile_t)
                .where(mine, tile_t.c.status == "in_flight", tile_t.c.claim_owner == owner)
                .values(claim_expires=tile_t.c.claim_expires + delta, updated_at=at)
            ).rowcount
            return retries + claims

        return self._run(work, write=True)

    def release_claims(self, owner: str, *, now: float | None = None) -> int:
        """Give `owner`'s in-flight tiles back (pending, attempts unchanged); returns how many."""
        return self._release(tile_t.c.claim_owner == owner, now)

    def release_all_claims(self, *, now: float | None = None) -> int:
        """Give back every claim of the job. Only for a job one process works on: call it right
        after taking the JobLock, when any claim left belongs to a process that died and need
        not wait for its lease to run out. Never with other workers alive."""
        return self._release(None, now)

    def _release(self, condition: Any, now: float | None) -> int:
        def work(conn: Connection) -> int:
            job_id = self._bound_id(conn)
            if job_id is None:
                return 0
            stmt = update(tile_t).where(tile_t.c.job_id == job_id, tile_t.c.status == "in_flight")
            if condition is not None:
                stmt = stmt.where(condition)
            at = self._time(conn, now)
            return conn.execute(stmt.values(status="pending", updated_at=at, **_NO_CLAIM)).rowcount

        return self._run(work, write=True)

    def forget_urls(self) -> int:
        """Clear the download URLs of tiles not in flight; returns how many.

        A download URL is a bearer capability for the user's pixels: once a run is over, it
        need not wait in the state (the next run makes new ones). On SQLite secure_delete has
        it zero the bytes it frees, so the URLs do not linger in free space inside the file.
        """

        def work(conn: Connection) -> int:
            job_id = self._bound_id(conn)
            if job_id is None:
                return 0
            sqlite = not self._db.is_postgresql
            if sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            try:
                return conn.execute(
                    update(tile_t)
                    .where(
                        tile_t.c.job_id == job_id,
                        tile_t.c.url.is_not(None),
                        tile_t.c.status != "in_flight",
                    )
                    .values(url=None, url_made_at=None)
                ).rowcount
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA secure_delete=OFF")

        return self._run(work, write=True)

    def reset_failed(self, *, now: float | None = None) -> int:
        """Give failed tiles a fresh start (pending, no attempts, no 429s); returns how many."""

        def work(conn: Connection) -> int:
            job_id = self._bound_id(conn)
            if job_id is None:
                return 0
            return conn.execute(
                update(tile_t)
                .where(tile_t.c.job_id == job_id, tile_t.c.status == "failed")
                .values(
                    status="pending",
                    attempts=0,
                    rate_limited=0,
                    not_before=None,
                    updated_at=self._time(conn, now),
                )
            ).rowcount

        return self._run(work, write=True)

    # ---- queries ---------------------------------------------------------------------------

    def _read(self, query: Callable[[Connection, int], T], empty: T) -> T:
        """Run a read of the bound job; `empty` while the job does not exist."""

        def work(conn: Connection) -> T:
            job_id = self._bound_id(conn)
            return empty if job_id is None else query(conn, job_id)

        return self._run(work, write=False)

    def counts(self) -> dict[str, int]:
        """Tiles per status, every status present (a covering scan of the tile index)."""

        def query(conn: Connection, job_id: int) -> dict[str, int]:
            rows = conn.execute(
                select(tile_t.c.status, func.count())
                .where(tile_t.c.job_id == job_id)
                .group_by(tile_t.c.status)
            )
            return dict.fromkeys(TILE_STATUSES, 0) | {status: n for status, n in rows}

        return self._read(query, dict.fromkeys(TILE_STATUSES, 0))

    def band_groups(self, band_count: int) -> list[tuple[int, int, int, int, int, int]]:
        """(row_off, col_off, height, width, band_start, band_stop) of the leaf tiles that
        hold only some of the ``band_count`` bands: empty for the usual all-band plan, which then
        costs one scan inside the database instead of 100,000 rows built in Python."""
        columns = _WINDOW_COLUMNS

        def query(conn: Connection, job_id: int) -> list[tuple[int, int, int, int, int, int]]:
            partial = and_(
                tile_t.c.job_id == job_id,
                tile_t.c.status.in_(_LEAF_STATUSES),
                or_(tile_t.c.band_start != 0, tile_t.c.band_stop != band_count),
            )
            return [tuple(row) for row in conn.execute(select(*columns).where(partial)).all()]

        return self._read(query, [])

    def bytes_done(self) -> int:
        """Bytes of the tile files recorded done."""

        def query(conn: Connection, job_id: int) -> int:
            total = conn.execute(
                select(func.sum(tile_t.c.bytes)).where(
                    tile_t.c.job_id == job_id, tile_t.c.status == "done"
                )
            ).scalar()
            return int(total or 0)

        return self._read(query, 0)

    def last_errors(self, limit: int = 5) -> list[tuple[int, str]]:
        """The most recent errors of tiles not yet done, newest first, as (tile id, error).

        Errors of tiles that later succeeded or were split are history, not a problem to show.
        """

        def query(conn: Connection, job_id: int) -> list[tuple[int, str]]:
            rows = conn.execute(
                select(tile_t.c.id, tile_t.c.last_error)
                .where(
                    tile_t.c.job_id == job_id,
                    tile_t.c.status.in_(_UNRESOLVED),
                    tile_t.c.last_error.is_not(None),
                )
                .order_by(tile_t.c.updated_at.desc(), tile_t.c.id.desc())
                .limit(limit)
            ).all()
            return [(tile_id, error) for tile_id, error in rows]

        return self._read(query, [])

    def tiles(self, status: str | None = None) -> list[TileRecord]:
        """Tiles in `status`, by id; with no status, every leaf tile (all but 'split')."""
        if status is not None and status not in TILE_STATUSES:
            raise ValueError(f"unknown tile status {status!r}; expected one of {TILE_STATUSES}")

        def query(conn: Connection, job_id: int) -> list[TileRecord]:
            stmt = select(*_TILE_COLUMNS).where(tile_t.c.job_id == job_id).order_by(tile_t.c.id)
            if status is None:
                stmt = stmt.where(tile_t.c.status.in_(_LEAF_STATUSES))
            else:
                stmt = stmt.where(tile_t.c.status == status)
            return [TileRecord(*r) for r in conn.execute(stmt).all()]

        return self._read(query, [])

    def tile_files(self) -> list[tuple[int, str, str | None, int | None]]:
        """(id, status, path, bytes) of every leaf tile: what a resume checks against the disk.

        Four plain columns instead of full records, so that resuming a 100,000-tile job
        stays well under a second here.
        """

        def query(conn: Connection, job_id: int) -> list[tuple[int, str, str | None, int | None]]:
            stmt = (
                select(tile_t.c.id, tile_t.c.status, tile_t.c.path, tile_t.c.bytes)
                .where(tile_t.c.job_id == job_id, tile_t.c.status.in_(_LEAF_STATUSES))
                .order_by(tile_t.c.id)
            )
            return [tuple(row) for row in conn.execute(stmt).all()]

        return self._read(query, [])

    def tile(self, tile_id: int) -> TileRecord | None:
        """One tile of the job by id (None if the job has no such tile)."""

        def query(conn: Connection, job_id: int) -> TileRecord | None:
            row = conn.execute(
                select(*_TILE_COLUMNS).where(tile_t.c.id == tile_id, tile_t.c.job_id == job_id)
            ).first()
            return None if row is None else TileRecord(*row)

        return self._read(query, None)

    def next_wakeup(self) -> float | None:
        """The earliest time a pending tile may be claimed, or None if no tile is pending.

        It may lie in the past (such a tile is claimable now: a tile with no `not_before`, as
        the parts of a split or a released claim, counts as claimable since time 0); on the
        database's clock, compare it with `now()`.
        """

        def query(conn: Connection, job_id: int) -> float | None:
            return conn.execute(
                select(func.min(func.coalesce(tile_t.c.not_before, 0.0))).where(
                    tile_t.c.job_id == job_id, tile_t.c.status == "pending"
                )
            ).scalar()

        return self._read(query, None)

    def view(self, recent_errors: int | None = 10) -> JobView | None:
        """The job, its counts and (unless `recent_errors` is None) every tile, that many recent
        errors and the error counts, in one read transaction; None while the job does not
        exist. What `eefetch status --map` and `eefetch serve` draw of a job on a server."""

        def work(conn: Connection) -> JobView | None:
            job = self._job(conn)
            if job is None:
                return None
            mine = tile_t.c.job_id == job.id
            counts = [
                (status, int(n), int(b or 0))
                for status, n, b in conn.execute(
                    select(tile_t.c.status, func.count(), func.sum(tile_t.c.bytes))
                    .where(mine)
                    .group_by(tile_t.c.status)
                )
            ]
            if recent_errors is None:
                return JobView(job, counts, [], [], [])
            code = case(
                *((tile_t.c.status == name, i) for i, name in enumerate(TILE_STATUSES)),
                else_=-1,
            )
            tiles = conn.execute(
                select(
                    tile_t.c.id,
                    func.coalesce(tile_t.c.parent_id, -1),
                    *_WINDOW_COLUMNS,
                    code,
                    tile_t.c.attempts,
                    tile_t.c.rate_limited,
                    func.coalesce(tile_t.c.bytes, 0),
                    tile_t.c.updated_at,
                )
                .where(mine)
                .order_by(tile_t.c.id)
            ).all()
            unresolved = and_(
                mine, tile_t.c.status.in_(_UNRESOLVED), tile_t.c.last_error.is_not(None)
            )
            recent = conn.execute(
                select(tile_t.c.id, tile_t.c.updated_at, tile_t.c.last_error)
                .where(unresolved)
                .order_by(tile_t.c.updated_at.desc(), tile_t.c.id.desc())
                .limit(recent_errors)
            ).all()
            causes = conn.execute(
                select(
                    tile_t.c.last_error,
                    tile_t.c.status,
                    func.count(),
                    func.sum(tile_t.c.attempts),
                    func.sum(tile_t.c.rate_limited),
                )
                .where(mine, tile_t.c.last_error.is_not(None))
                .group_by(tile_t.c.last_error, tile_t.c.status)
            ).all()
            return JobView(
                job,
                counts,
                list(map(tuple, tiles)),  # plain tuples, converted in C: no Python step per tile
                [(int(t), float(w), str(e)) for t, w, e in recent],
                [(str(e), str(st), int(n), int(a or 0), int(r or 0)) for e, st, n, a, r in causes],
            )

        return self._run(work, write=False)

    # ---- workers ---------------------------------------------------------------------------

    def _upsert(self) -> Callable[..., Any]:
        return pg_dialect.insert if self._db.is_postgresql else sqlite_dialect.insert

    def register_worker(
        self,
        owner: str,
        lease_seconds: float,
        *,
        host: str | None = None,
        pid: int | None = None,
        now: float | None = None,
    ) -> WorkerRecord:
        """Record that `owner` (a process) works on the job; it is alive while it calls
        `heartbeat` at least every `lease_seconds`. Registering again keeps its counters."""
        if not owner:
            raise ValueError("worker owner must be a non-empty string")
        _check_lease(lease_seconds)
        host = socket.gethostname() if host is None else host
        pid = os.getpid() if pid is None else pid

        def work(conn: Connection) -> WorkerRecord:
            job_id = self._need_job(conn)
            at = self._time(conn, now)
            stmt = self._upsert()(worker_t).values(
                job_id=job_id,
                owner=owner,
                host=host,
                pid=pid,
                started_at=at,
                last_seen=at,
                lease_seconds=lease_seconds,
                tiles_done=0,
                bytes_done=0,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[worker_t.c.job_id, worker_t.c.owner],
                    set_={
                        "host": host,
                        "pid": pid,
                        "last_seen": at,
                        "lease_seconds": lease_seconds,
                        "stopped_at": None,
                    },
                )
            )
            [record] = self._workers(conn, job_id, at, owner)
            return record

        return self._run(work, write=True)

    def heartbeat(
        self,
        owner: str,
        *,
        tiles_done: int | None = None,
        bytes_done: int | None = None,
        now: float | None = None,
    ) -> bool:
        """`owner` is alive; optionally its totals so far (tiles and bytes it fetched in this
        job). False if it never registered."""
        values: dict[str, Any] = {}
        if tiles_done is not None:
            values["tiles_done"] = tiles_done
        if bytes_done is not None:
            values["bytes_done"] = bytes_done

        return self._update_owned(worker_t, owner, now, lambda at: {"last_seen": at, **values})

    def stop_worker(self, owner: str, *, now: float | None = None) -> bool:
        """`owner` stopped on purpose (its row stays, for status); False if unknown."""
        return self._update_owned(
            worker_t, owner, now, lambda at: {"last_seen": at, "stopped_at": at}
        )

    def _update_owned(
        self,
        table: Table,
        owner: str,
        now: float | None,
        values: Callable[[float], dict[str, Any]],
    ) -> bool:
        """Update the job's row of ``table`` that ``owner`` holds with ``values(now)``; False if
        it holds none (a worker that never registered, a merge lease another took)."""

        def work(conn: Connection) -> bool:
            job_id = self._need_job(conn)
            return bool(
                conn.execute(
                    update(table)
                    .where(table.c.job_id == job_id, table.c.owner == owner)
                    .values(**values(self._time(conn, now)))
                ).rowcount
            )

        return self._run(work, write=True)

    def workers(self, *, now: float | None = None) -> list[WorkerRecord]:
        """Every worker of the job, in the order they first registered."""

        def work(conn: Connection) -> list[WorkerRecord]:
            job_id = self._bound_id(conn)
            return [] if job_id is None else self._workers(conn, job_id, self._time(conn, now))

        return self._run(work, write=False)

    @staticmethod
    def _workers(
        conn: Connection, job_id: int, now: float, owner: str | None = None
    ) -> list[WorkerRecord]:
        stmt = select(*_WORKER_COLUMNS).where(worker_t.c.job_id == job_id).order_by(worker_t.c.id)
        if owner is not None:
            stmt = stmt.where(worker_t.c.owner == owner)
        return [
            WorkerRecord(
                **row._asdict(),
                alive=row.stopped_at is None and row.last_seen + row.lease_seconds > now,
            )
            for row in conn.execute(stmt).all()
        ]

    # ---- the merge lease -------------------------------------------------------------------

    def acquire_merge(self, owner: str, lease_seconds: float, *, now: float | None = None) -> bool:
        """Become the job's one merger until `now + lease_seconds`; True if `owner` holds the
        lease now. Succeeds when nobody holds it, when its holder's lease ran out (the holder
        died), or when `owner` already holds it (then it is renewed)."""
        if not owner:
            raise ValueError("merge owner must be a non-empty string")
        _check_lease(lease_seconds)

        def work(conn: Connection) -> bool:
            job_id = self._need_job(conn)
            at = self._time(conn, now)
            stmt = self._upsert()(merge_t).values(
                job_id=job_id, owner=owner, acquired_at=at, expires=at + lease_seconds
            )
            # RETURNING, not rowcount: drivers report -1 for an upsert's count.
            taken = conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[merge_t.c.job_id],
                    set_={
                        "owner": owner,
                        "acquired_at": at,
                        "expires": at + lease_seconds,
                    },
                    where=or_(merge_t.c.owner == owner, merge_t.c.expires <= at),
                ).returning(merge_t.c.owner)
            ).first()
            return taken is not None

        return self._run(work, write=True)

    def renew_merge(self, owner: str, lease_seconds: float, *, now: float | None = None) -> bool:
        """Extend `owner`'s merge lease; False if it no longer holds it (another took it after
        the lease ran out: stop merging)."""
        _check_lease(lease_seconds)
        return self._update_owned(merge_t, owner, now, lambda at: {"expires": at + lease_seconds})

    def release_merge(self, owner: str) -> bool:
        """Give the merge lease up (the merge is over or abandoned); False if `owner` did not
        hold it."""

        def work(conn: Connection) -> bool:
            job_id = self._need_job(conn)
            return bool(
                conn.execute(
                    delete(merge_t).where(merge_t.c.job_id == job_id, merge_t.c.owner == owner)
                ).rowcount
            )

        return self._run(work, write=True)

    def merge_lease(self, *, now: float | None = None) -> MergeLease | None:
        """The job's merge lease as stored (None if nobody took it or it was released)."""

        def work(conn: Connection) -> MergeLease | None:
            job_id = self._bound_id(conn)
            if job_id is None:
                return None
            row = conn.execute(
                select(merge_t.c.owner, merge_t.c.acquired_at, merge_t.c.expires).where(
                    merge_t.c.job_id == job_id
                )
            ).first()
            if row is None:
                return None
            return MergeLease(*row, live=row.expires > self._time(conn, now))

        return self._run(work, write=False)
