"""The job store: one download job and its tiles in one SQLite file.

Every public method is one short transaction, so a process killed at any instant leaves the file
as it was after the last completed call; nothing is held open across the scheduler's awaits.
Write transactions start with BEGIN IMMEDIATE, so a claim's read and its update are atomic even
if another process writes the same file; readers (`eefetch status`) never block the writer (WAL).

Durability choice: journal_mode=WAL with synchronous=NORMAL.
- A killed process (SIGKILL, OOM, Ctrl-C) loses nothing: each commit is in the WAL, which the
  next open replays.
- A power cut or kernel crash may lose the last few commits, never consistency (the WAL is
  checksummed and replayed only up to its last complete commit). What is lost is re-done work:
  a tile recorded done just before the cut is downloaded again. The reverse, a tile recorded done
  without its file, cannot come from this, because the tile store makes the file durable before
  reporting it done.
- FULL would fsync the WAL on every commit (every claim, every batch); on network home folders
  and spinning disks that is tens of milliseconds each, stalling the caller, to protect work that
  is cheap to redo. If WAL is unavailable (some network file systems), rollback-journal mode is
  used with synchronous=FULL, the level that mode needs to survive a power cut uncorrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, ClassVar

from sqlalchemy import (
    Connection,
    Engine,
    Update,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, ProgrammingError

from state import schema
from state.errors import UserError
from state.schema import APPLICATION, JOB_STATUSES, SCHEMA_VERSION, TILE_STATUSES

job_t = schema.job
tile_t = schema.tile

_SQLITE_HEADER = b"SQLite format 3\x00"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_WRITE = "eefetch_write"  # execution option: this connection's transaction must BEGIN IMMEDIATE
_BUSY_TIMEOUT_S = 30.0
_MAX_IN = 500  # ids per IN (...) list; old SQLite builds allow only 999 bound parameters
_PRIVATE = 0o600  # state files hold download URLs: readable by their owner only


class StateError(UserError):
    """A problem with a state file that the user must act on; str() is one line: what, then what
    to do."""


class JobLockedError(StateError):
    """Another live process holds the job's lock."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


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


@dataclass(frozen=True, slots=True)
class TileDone:
    """The tile's file is on disk, validated and durable; `path` is relative to the tile folder."""

    tile_id: int
    path: str
    bytes: int
    checksum: str


@dataclass(frozen=True, slots=True)
class TileRetry:
    """A transient failure: back to pending, not to be claimed before `not_before`.

    A rate-limited failure (429) counts toward `rate_limited`, any other toward `attempts`.
    """

    tile_id: int
    error: str
    not_before: float
    rate_limited: bool = False


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

_TILE_COLUMNS = tuple(tile_t.c[f.name] for f in fields(TileRecord))
_JOB_COLUMNS = tuple(job_t.c[f.name] for f in fields(JobRecord))
_NO_CLAIM: Mapping[str, None] = MappingProxyType({"claim_owner": None, "claim_expires": None})
_LEAF_STATUSES = tuple(s for s in TILE_STATUSES if s != "split")
_UNRESOLVED = ("pending", "in_flight", "failed")

# Bulk inserts go straight to sqlite3's executemany with tuples: building and binding 100,000
# parameter dicts through Core costs more than SQLite's own work. The text comes from the Table,
# so it cannot drift from the schema.
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
_INSERT_TILES_SQL = (
    f"INSERT INTO {tile_t.name} ({', '.join(tile_t.c[n].name for n in _NEW_TILE_FIELDS)}) "
    f"VALUES ({', '.join('?' * len(_NEW_TILE_FIELDS))})"
)


def _set_tile(applies_to: tuple[str, ...], **values: Any) -> Update:
    """UPDATE tile :tid if its status is one of `applies_to`.

    An update for a tile in another status is stale (e.g. a worker reporting after its lease
    expired and the tile moved on) and changes nothing. Built once: Core caches the compiled
    form of a statement object, so a batch costs SQLite's time, not SQL construction.
    """
    return (
        update(tile_t)
        .where(tile_t.c.id == bindparam("tid"), tile_t.c.status.in_(applies_to))
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


def _update_params(u: TileUpdate, now: float) -> dict[str, Any]:
    params: dict[str, Any] = {"tid": u.tile_id, "now": now}
    match u:
        case TileDone():
            params |= {"p_path": u.path, "p_bytes": u.bytes, "p_checksum": u.checksum}
        case TileRetry():
            params |= {
                "p_error": u.error,
                "p_not_before": u.not_before,
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


def _insert_tiles(
    conn: Connection, job_id: int, parent_id: int | None, tiles: Sequence[NewTile], now: float
) -> None:
    if tiles:
        conn.exec_driver_sql(
            _INSERT_TILES_SQL,
            [
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
            ],
        )


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _MAX_IN):
        yield ids[start : start + _MAX_IN]


def _db_message(path: Path, exc: DBAPIError | sqlite3.Error) -> str:
    """One line for a database error: what went wrong with which file, and what to do."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    detail = str(orig).strip() or type(orig).__name__
    low = detail.lower()
    if "locked" in low or "busy" in low:
        return (
            f"state file {path} is busy ({detail}): another program is writing it; "
            "stop that program or wait, then run the command again"
        )
    if "full" in low or "i/o" in low:
        return (
            f"cannot write state file {path} ({detail}); free disk space or fix the disk, "
            "then run the command again (the last completed step is kept)"
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return (
            f"cannot open state file {path} for writing ({detail}); check the permissions "
            "of the file and its folder"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return (
            f"state file {path} is damaged ({detail}); move it aside and start the download "
            "with a new state file"
        )
    return f"state file {path}: {detail}"


def _probe(path: Path) -> str:
    """Classify `path` without writing to it: 'missing', 'empty' (0 bytes) or 'sqlite'."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        raise StateError(
            f"{path} is a folder, not an eefetch state file; give the path of a state file"
        ) from None
    except OSError as exc:
        raise StateError(
            f"cannot read state file {path} ({exc.strerror}); check the path and its permissions"
        ) from exc
    if not head:
        return "empty"
    if head != _SQLITE_HEADER:
        raise StateError(
            f"{path} is not an eefetch state file (not an SQLite database); it was left "
            "unchanged: give the state file eefetch made, or a path that does not exist yet"
        )
    return "sqlite"


def _create_private(path: Path) -> None:
    """Create the state file empty with mode 0600 before SQLite does (SQLite would use 0644
    less the umask). It holds download URLs, which are bearer capabilities; SQLite gives the
    -wal, -shm and -journal files it makes beside it the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE))
    except FileExistsError:
        pass  # another process created it meanwhile; _probe and _classify judge it
    except OSError as exc:
        raise StateError(
            f"cannot create state file {path} ({exc.strerror}); check that its folder is "
            "writable and has free space"
        ) from exc


def _make_private(path: Path) -> None:
    """Make a state file of an older eefetch (0644) and its companions private; best effort
    (a file of another user stays as it is)."""
    for each in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            if each.stat().st_mode & 0o077:
                os.chmod(each, _PRIVATE)


def _make_engine(path: Path) -> Engine:
    """An engine of its own for this Store, with eefetch's per-connection settings."""
    engine = create_engine(
        URL.create("sqlite", database=str(path)),
        connect_args={"timeout": _BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides where transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA foreign_keys=ON")
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            cur.execute(f"PRAGMA synchronous={'NORMAL' if mode == 'wal' else 'FULL'}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _set_wal(engine: Engine) -> None:
    """Switch the file to WAL; outside any transaction, as SQLite requires."""
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None  # a pooled SQLite connection always has its sqlite3 one
        driver.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        raw.close()


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
        if not math.isfinite(u.not_before):
            raise ValueError(f"tile {u.tile_id}: not_before must be finite")
    elif isinstance(u, TileSplit):
        if not u.children:
            raise ValueError(f"tile {u.tile_id}: a split needs at least one child")
        for child in u.children:
            _check_window(child)
            if child.parent_id not in (None, u.tile_id):
                raise ValueError(f"tile {u.tile_id}: child {child} names another parent")


class Store:
    """An open state file. Thread-safe (each call takes its own pooled connection)."""

    schema_version: ClassVar[int] = SCHEMA_VERSION

    def __init__(self, engine: Engine, path: Path) -> None:
        """Use `Store.open`; this only wraps an engine that `open` has validated."""
        self._engine: Engine | None = engine
        self._path = path

    @property
    def path(self) -> Path:
        """The SQLite file (its -wal and -shm companions live beside it)."""
        return self._path

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> Store:
        """Open the state file at `path`, creating it if absent and `create` is true.

        Refuses, without writing a byte, a file that is not SQLite, an SQLite file that is not
        eefetch's, and an eefetch file from a newer schema. A zero-byte file or an SQLite file
        with no tables (what a crash during creation can leave) is taken as new.
        """
        path = Path(path)
        kind = _probe(path)
        if kind == "missing":
            if not create:
                raise StateError(
                    f"state file {path} does not exist; check the path (eefetch creates the "
                    "state file when a download starts)"
                )
            if not path.parent.is_dir():
                raise StateError(
                    f"cannot create state file {path}: folder {path.parent} does not exist; "
                    "create it or choose another path"
                )
            _create_private(path)
        if create:
            _make_private(path)
        engine = _make_engine(path)
        try:
            cls._prepare(engine, path, create=create)
        except (DBAPIError, sqlite3.Error) as exc:  # sqlite3's own: the raw connection of _set_wal
            engine.dispose()
            raise StateError(_db_message(path, exc)) from exc
        except BaseException:
            engine.dispose()
            raise
        # Connections made before the switch to WAL chose synchronous=FULL; start afresh.
        engine.dispose()
        return cls(engine, path)

    @staticmethod
    def _classify(conn: Connection, path: Path) -> str:
        """'fresh' (no schema at all), 'ours', or 'old' (an earlier schema this eefetch
        upgrades); raises StateError for anything else."""
        names = conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars().all()
        if not names:
            app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
            user_version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            if not app_id and not user_version:
                return "fresh"
        not_ours = StateError(
            f"{path} is an SQLite database that eefetch did not create; it was left unchanged: "
            "give the path of an eefetch state file, or a path that does not exist yet"
        )
        if "meta" not in names:
            raise not_ours
        try:
            rows = dict(conn.execute(select(schema.meta.c.key, schema.meta.c.value)).all())
        except DBAPIError:
            raise not_ours from None
        if rows.get("application") != APPLICATION:
            raise not_ours
        try:
            version = int(rows.get("schema_version", ""))
        except ValueError:
            raise StateError(
                f"state file {path} has an unreadable schema version "
                f"({rows.get('schema_version')!r}); move it aside and start with a new state file"
            ) from None
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {path} was written by a newer eefetch (state schema {version}; "
                f"this eefetch reads up to {SCHEMA_VERSION}); it was left unchanged: upgrade "
                "eefetch (pip install -U eefetch), or start over with a new state file"
            )
        if version < 1:
            raise StateError(
                f"state file {path} has state schema {version}, which this eefetch cannot "
                "upgrade; start over with a new state file"
            )
        return "ours" if version == SCHEMA_VERSION else "old"

    @staticmethod
    def _version(conn: Connection) -> int:
        value = conn.execute(
            select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
        ).scalar_one()
        return int(value)

    @classmethod
    def _prepare(cls, engine: Engine, path: Path, *, create: bool) -> None:
        with engine.connect() as conn, conn.begin():
            kind = cls._classify(conn, path)
        if kind == "fresh" and not create:
            raise StateError(
                f"state file {path} holds no eefetch job (it is empty); check the path, or "
                "start the download to create the job"
            )
        _set_wal(engine)
        if kind != "ours":
            with engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    # Another process may have initialised or upgraded the file since the
                    # check above.
                    kind = cls._classify(conn, path)
                    if kind == "fresh":
                        schema.install(conn)
                    elif kind == "old":
                        schema.upgrade(conn, cls._version(conn))

    # ---- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; the last one checkpoints the WAL into the main file."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; database errors become StateError (file problems) or ValueError
        (a constraint violated by the caller's data)."""
        if self._engine is None:
            raise ValueError("operation on a closed Store")
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except IntegrityError as exc:
            raise ValueError(f"state update rejected by the database: {exc.orig}") from exc
        except (ProgrammingError, InterfaceError):
            raise
        except DBAPIError as exc:
            raise StateError(_db_message(self._path, exc)) from exc

    # ---- the job ---------------------------------------------------------------------------

    @staticmethod
    def _job(conn: Connection) -> JobRecord | None:
        row = conn.execute(select(*_JOB_COLUMNS).order_by(job_t.c.id).limit(1)).first()
        if row is None:
            return None
        values = row._asdict()
        values["spec"] = json.loads(values["spec"])
        return JobRecord(**values)

    def job(self) -> JobRecord | None:
        """The file's job, or None if the download has not been planned yet."""
        with self._tx(write=False) as conn:
            return self._job(conn)

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
        """Record the job and all its planned tiles in one transaction (all or nothing)."""
        now = _now(now)
        spec_json = _dump_spec(spec)
        for t in tiles:
            if t.parent_id is not None:
                raise ValueError(f"planned tile {t} cannot have a parent")
        with self._tx(write=True) as conn:
            existing = self._job(conn)
            if existing is not None:
                raise StateError(
                    f"state file {self._path} already holds a job (fingerprint "
                    f"{existing.fingerprint}); use another state file for another download"
                )
            inserted = conn.execute(
                insert(job_t).values(
                    fingerprint=fingerprint,
                    spec=spec_json,
                    eefetch_version=eefetch_version,
                    status="planned",
                    created_at=now,
                    updated_at=now,
                    output_path=output_path,
                    uid=schema.new_job_uid(),
                )
            ).inserted_primary_key
            assert inserted is not None
            _insert_tiles(conn, int(inserted[0]), None, tiles, now)
            record = self._job(conn)
        assert record is not None
        return record

    def set_job_status(
        self, status: str, output_path: str | None = None, *, now: float | None = None
    ) -> None:
        """Move the job to `status` (and record where the output went, if given)."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {JOB_STATUSES}")
        values: dict[str, Any] = {"status": status, "updated_at": _now(now)}
        if output_path is not None:
            values["output_path"] = output_path
        with self._tx(write=True) as conn:
            if conn.execute(update(job_t).values(**values)).rowcount == 0:
                raise StateError(
                    f"state file {self._path} holds no job yet; start the download to create it"
                )

    # ---- tile updates ----------------------------------------------------------------------

    def apply(self, updates: Sequence[TileUpdate], now: float) -> list[TileUpdate]:
        """Apply a batch of results in one transaction, in order.

        Returns the updates skipped as stale: those whose tile is no longer in a status they
        apply to (see `_UPDATE_SQL`). An unknown tile id or a malformed update raises and
        nothing of the batch is applied.
        """
        for u in updates:
            _check_update(u)
        skipped: list[TileUpdate] = []
        if not updates:
            return skipped
        with self._tx(write=True) as conn:
            for u in updates:
                if not self._apply_one(conn, u, now):
                    skipped.append(u)
        return skipped

    def _apply_one(self, conn: Connection, u: TileUpdate, now: float) -> bool:
        """Apply one update; False if it was stale."""
        if conn.execute(_UPDATE_SQL[type(u)], _update_params(u, now)).rowcount:
            if isinstance(u, TileSplit):
                self._insert_children(conn, u, now)
            return True
        if conn.execute(select(tile_t.c.id).where(tile_t.c.id == u.tile_id)).first() is None:
            raise ValueError(f"{type(u).__name__}: no tile {u.tile_id} in {self._path}")
        return False

    @staticmethod
    def _insert_children(conn: Connection, split: TileSplit, now: float) -> None:
        parent = conn.execute(
            select(*_TILE_COLUMNS, tile_t.c.job_id).where(tile_t.c.id == split.tile_id)
        ).one()
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
        _insert_tiles(conn, parent.job_id, parent.id, split.children, now)

    # ---- claims ----------------------------------------------------------------------------

    def claim(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[TileRecord]:
        """Take up to `limit` tiles for `owner`, lowest ids first, until `now + lease_seconds`.

        Claimable: pending tiles whose `not_before` is unset or <= now, and in-flight tiles
        of *other* owners whose claim expired (their owner died or hung). An owner never gets
        its own in-flight tiles back, whatever the clock says: after a suspend or a clock step
        longer than the lease they are still being fetched by it. Both lookups walk
        ix_tile_status in id order, so the cost does not grow with the number of done tiles.
        """
        if not owner:
            raise ValueError("claim owner must be a non-empty string")
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        if limit <= 0:
            return []
        with self._tx(write=True) as conn:
            pending = (
                conn.execute(
                    select(tile_t.c.id)
                    .where(
                        tile_t.c.status == "pending",
                        or_(tile_t.c.not_before.is_(None), tile_t.c.not_before <= now),
                    )
                    .order_by(tile_t.c.id)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            expired = (
                conn.execute(
                    select(tile_t.c.id)
                    .where(
                        tile_t.c.status == "in_flight",
                        tile_t.c.claim_expires <= now,
                        tile_t.c.claim_owner != owner,
                    )
                    .order_by(tile_t.c.id)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            ids = sorted([*pending, *expired])[:limit]
            records: list[TileRecord] = []
            for chunk in _chunks(ids):
                conn.execute(
                    update(tile_t)
                    .where(tile_t.c.id.in_(chunk))
                    .values(
                        status="in_flight",
                        claim_owner=owner,
                        claim_expires=now + lease_seconds,
                        not_before=None,
                        updated_at=now,
                    )
                )
                rows = conn.execute(
                    select(*_TILE_COLUMNS).where(tile_t.c.id.in_(chunk)).order_by(tile_t.c.id)
                ).all()
                records.extend(TileRecord(*r) for r in rows)
        return records

    def renew_claims(self, owner: str, now: float, lease_seconds: float) -> int:
        """Extend every claim `owner` still holds to `now + lease_seconds`; returns how many.

        A claim that expired but was not yet taken by anyone is still the owner's and is renewed.
        """
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        with self._tx(write=True) as conn:
            return conn.execute(
                update(tile_t)
                .where(tile_t.c.status == "in_flight", tile_t.c.claim_owner == owner)
                .values(claim_expires=now + lease_seconds, updated_at=now)
            ).rowcount

    def shift_times(self, owner: str, delta: float, *, now: float | None = None) -> int:
        """Move every retry time and `owner`'s claim expiries by `delta` seconds.

        For a wall clock that stepped by `delta` under a running process (a suspend, an NTP
        step): a retry due in 10 s stays due in 10 s instead of in an hour, and the owner's
        leases keep the time they had left. Returns how many tiles changed.
        """
        if not math.isfinite(delta):
            raise ValueError("delta must be finite")
        stamp = _now(now)
        with self._tx(write=True) as conn:
            retries = conn.execute(
                update(tile_t)
                .where(tile_t.c.status == "pending", tile_t.c.not_before.is_not(None))
                .values(not_before=tile_t.c.not_before + delta, updated_at=stamp)
            ).rowcount
            claims = conn.execute(
                update(tile_t)
                .where(tile_t.c.status == "in_flight", tile_t.c.claim_owner == owner)
                .values(claim_expires=tile_t.c.claim_expires + delta, updated_at=stamp)
            ).rowcount
        return retries + claims

    def release_claims(self, owner: str, *, now: float | None = None) -> int:
        """Give `owner`'s in-flight tiles back (pending, attempts unchanged); returns how many."""
        return self._release(tile_t.c.claim_owner == owner, now)

    def release_all_claims(self, *, now: float | None = None) -> int:
        """Give back every claim. Call right after taking the JobLock: any claim then in the
        file belongs to a process that died, and need not wait for its lease to run out."""
        return self._release(None, now)

    def _release(self, condition: Any, now: float | None) -> int:
        stmt = update(tile_t).where(tile_t.c.status == "in_flight")
        if condition is not None:
            stmt = stmt.where(condition)
        with self._tx(write=True) as conn:
            return conn.execute(
                stmt.values(status="pending", updated_at=_now(now), **_NO_CLAIM)
            ).rowcount

    def forget_urls(self) -> int:
        """Clear the download URLs of tiles not in flight; returns how many.

        A download URL is a bearer capability for the user's pixels: once a run is over, it
        need not wait on disk (the next run makes new ones). secure_delete has SQLite zero the
        bytes it frees, so the URLs do not linger in free space inside the file either.
        """
        with self._tx(write=True) as conn:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
            try:
                return conn.execute(
                    update(tile_t)
                    .where(tile_t.c.url.is_not(None), tile_t.c.status != "in_flight")
                    .values(url=None, url_made_at=None)
                ).rowcount
            finally:
                conn.exec_driver_sql("PRAGMA secure_delete=OFF")

    def reset_failed(self, *, now: float | None = None) -> int:
        """Give failed tiles a fresh start (pending, no attempts, no 429s); returns how many."""
        with self._tx(write=True) as conn:
            return conn.execute(
                update(tile_t)
                .where(tile_t.c.status == "failed")
                .values(
                    status="pending",
                    attempts=0,
                    rate_limited=0,
                    not_before=None,
                    updated_at=_now(now),
                )
            ).rowcount

    # ---- queries ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Tiles per status, every status present (a covering scan of ix_tile_status)."""
        result = dict.fromkeys(TILE_STATUSES, 0)
        with self._tx(write=False) as conn:
            rows = conn.execute(select(tile_t.c.status, func.count()).group_by(tile_t.c.status))
            result.update({status: n for status, n in rows})
        return result

    def band_groups(self, band_count: int) -> list[tuple[int, int, int, int, int, int]]:
        """(row_off, col_off, height, width, band_start, band_stop) of the leaf tiles that
        hold only some of the ``band_count`` bands: empty for the usual all-band plan, which then
        costs one scan inside SQLite instead of 100,000 rows built in Python."""
        partial = and_(
            tile_t.c.status.in_(_LEAF_STATUSES),
            or_(tile_t.c.band_start != 0, tile_t.c.band_stop != band_count),
        )
        columns = (
            tile_t.c.row_off,
            tile_t.c.col_off,
            tile_t.c.height,
            tile_t.c.width,
            tile_t.c.band_start,
            tile_t.c.band_stop,
        )
        with self._tx(write=False) as conn:
            return [tuple(row) for row in conn.execute(select(*columns).where(partial)).all()]

    def bytes_done(self) -> int:
        """Bytes of the tile files recorded done."""
        with self._tx(write=False) as conn:
            total = conn.execute(
                select(func.sum(tile_t.c.bytes)).where(tile_t.c.status == "done")
            ).scalar()
        return int(total or 0)

    def last_errors(self, limit: int = 5) -> list[tuple[int, str]]:
        """The most recent errors of tiles not yet done, newest first, as (tile id, error).

        Errors of tiles that later succeeded or were split are history, not a problem to show.
        """
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(tile_t.c.id, tile_t.c.last_error)
                .where(tile_t.c.status.in_(_UNRESOLVED), tile_t.c.last_error.is_not(None))
                .order_by(tile_t.c.updated_at.desc(), tile_t.c.id.desc())
                .limit(limit)
            ).all()
        return [(tile_id, error) for tile_id, error in rows]

    def tiles(self, status: str | None = None) -> list[TileRecord]:
        """Tiles in `status`, by id; with no status, every leaf tile (all but 'split')."""
        if status is not None and status not in TILE_STATUSES:
            raise ValueError(f"unknown tile status {status!r}; expected one of {TILE_STATUSES}")
        stmt = select(*_TILE_COLUMNS).order_by(tile_t.c.id)
        if status is None:
            stmt = stmt.where(tile_t.c.status.in_(_LEAF_STATUSES))
        else:
            stmt = stmt.where(tile_t.c.status == status)
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        return [TileRecord(*r) for r in rows]

    def tile_files(self) -> list[tuple[int, str, str | None, int | None]]:
        """(id, status, path, bytes) of every leaf tile: what a resume checks against the disk.

        Four plain columns instead of full records, so that resuming a 100,000-tile job
        stays well under a second here.
        """
        stmt = (
            select(tile_t.c.id, tile_t.c.status, tile_t.c.path, tile_t.c.bytes)
            .where(tile_t.c.status.in_(_LEAF_STATUSES))
            .order_by(tile_t.c.id)
        )
        with self._tx(write=False) as conn:
            return [tuple(row) for row in conn.execute(stmt).all()]

    def tile(self, tile_id: int) -> TileRecord | None:
        """One tile by id (None if there is no such tile)."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(*_TILE_COLUMNS).where(tile_t.c.id == tile_id)).first()
        return None if row is None else TileRecord(*row)

    def next_wakeup(self) -> float | None:
        """The earliest `not_before` among pending tiles, or None if none is waiting.

        It may lie in the past (such a tile is claimable now).
        """
        with self._tx(write=False) as conn:
            return conn.execute(
                select(func.min(tile_t.c.not_before)).where(tile_t.c.status == "pending")
            ).scalar()


__all__ = [
    "JobLockedError",
    "JobRecord",
    "NewTile",
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
]
