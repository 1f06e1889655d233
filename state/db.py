"""Where the state lives and how it is reached: an SQLite file or a PostgreSQL database.

`Database.open(target)` takes a file path (SQLite, the default: one machine) or a PostgreSQL URL
(`postgresql://user@host:port/db`, `postgresql+psycopg://...`; driver psycopg 3), checks that it
is eefetch's (or empty), installs or upgrades the schema, and runs transactions for the store.

Isolation:
- SQLite: write transactions start with BEGIN IMMEDIATE, so a claim's read and its update are
  atomic even when other processes write the same file; readers never block the writer (WAL).
- PostgreSQL: READ COMMITTED. A claim locks the rows it takes with FOR UPDATE SKIP LOCKED, so
  concurrent claimers pass each other's rows by instead of waiting or taking them twice (the
  row is re-checked under its lock); leases and quota slots change in single UPDATEs or under a
  lock on their row. Schema set-up holds an advisory lock, so workers starting together install
  it once.

Clocks: `now(conn)` reads the database's own clock (PostgreSQL's `clock_timestamp()`, SQLite's
`julianday('now')`, which is this machine's clock), so leases mean the same to every worker
whatever its own clock says.

Durability on SQLite: journal_mode=WAL with synchronous=NORMAL.
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

Reconnects (PostgreSQL): a pooled connection is checked before use (pre-ping), and a
transaction cut by a lost connection, a server restart or a deadlock is run again after a short
pause, for up to `reconnect_seconds`; the caller just waits meanwhile. A transaction that was
cut while committing may or may not have committed: the caller passes an `in_doubt` check that
finds what such a commit would have left (see `Database.run`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import URL, RootTransaction, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.pool import StaticPool

from state import schema
from state.errors import NoJobError, StateError
from state.schema import APPLICATION, SCHEMA_VERSION

T = TypeVar("T")

_WRITE = "eefetch_write"  # execution option: this connection's transaction must BEGIN IMMEDIATE
_BUSY_TIMEOUT_S = 30.0
_PRIVATE = 0o600  # state files hold download URLs: readable by their owner only
_PG_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")
_SETUP_LOCK = 0x6565_6665_7463_68  # pg_advisory_xact_lock key for schema set-up ("eefetch")
RECONNECT_SECONDS = 120.0
"""How long a PostgreSQL store waits for its server to come back before giving up."""

_NOW_SQL = {
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "SELECT extract(epoch FROM clock_timestamp())::float8",
}


def is_database_url(target: str | os.PathLike[str]) -> bool:
    """True for a database URL (`scheme://...`), False for a file path. A Path is always a file
    (it would have collapsed the `//` anyway)."""
    return isinstance(target, str) and "://" in target


def _one_line(text_: str) -> str:
    return " ".join(text_.split())


def _pg_url(target: str) -> URL:
    try:
        url = make_url(target)
    except ArgumentError:
        raise StateError(
            f"cannot read the state database URL {target!r}; write it as "
            "postgresql://user@host:port/database"
        ) from None
    if url.drivername not in _PG_SCHEMES:
        raise StateError(
            f"state database URL scheme {url.drivername!r} is not supported; give a file path "
            "(SQLite) or a postgresql:// URL (eefetch talks to PostgreSQL through psycopg 3)"
        )
    if not url.database:
        raise StateError(
            f"state database URL {url.render_as_string(hide_password=True)} names no database; "
            "add it at the end: postgresql://user@host:port/database"
        )
    return url.set(drivername="postgresql+psycopg")


# ---- SQLite files --------------------------------------------------------------------------


def _probe(path: Path) -> str:
    """Classify `path` without writing to it: 'missing', 'empty' (0 bytes) or 'sqlite'.

    The header is read through SQLite, never with open()/close(): closing any descriptor of a
    file drops every POSIX lock this process holds on it, so probing a database that one of
    this process's connections has open (a collection's images each open the shared quota
    file) would drop that connection's locks, and another process could then checkpoint and
    delete the WAL under it ("database disk image is malformed"; SQLite's "How To Corrupt",
    2.2). SQLite's own descriptors are kept open while another connection holds locks.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise StateError(
            f"cannot read state file {path} ({exc.strerror}); check the path and its permissions"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        raise StateError(
            f"{path} is a folder, not an eefetch state file; give the path of a state file"
        )
    if info.st_size == 0:
        return "empty"
    if not os.access(path, os.R_OK):
        raise StateError(
            f"cannot read state file {path} (Permission denied); check the path and its permissions"
        )
    try:
        probe = _read_only(path)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_NOTADB":
            return "sqlite"  # a database that is busy or needs its -shm: later steps tell
        raise StateError(
            f"{path} is not an eefetch state file (not an SQLite database); it was left "
            "unchanged: give the state file eefetch made, or a path that does not exist yet"
        ) from None
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


def _sqlite_engine(path: Path) -> Engine:
    """An engine of its own for this database, with eefetch's per-connection settings."""
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


def _reader_engine(connect: Callable[[], sqlite3.Connection]) -> Engine:
    """An engine over connections that ``connect`` makes (read-only ones, or one in memory):
    no PRAGMA that writes, and transactions begun by SQLAlchemy, as in _sqlite_engine."""
    engine = create_engine("sqlite://", creator=connect, poolclass=StaticPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to ``path`` (SQLite's mode=ro): it never changes the
    journal mode or the schema, and as a WAL reader it never blocks the writer."""
    return sqlite3.connect(
        f"file:{quote(str(path.resolve()))}?mode=ro",
        uri=True,
        timeout=_BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
    )


def _upgraded_copy(path: Path) -> sqlite3.Connection:
    """An in-memory copy of the file at ``path`` (read in one read transaction), to be
    upgraded there: how a reader sees a file of an older schema without rewriting it."""
    source = _read_only(path)
    try:
        copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        source.backup(copy)
    finally:
        source.close()
    return copy


def _set_wal(engine: Engine) -> None:
    """Switch the file to WAL; outside any transaction, as SQLite requires."""
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None  # a pooled SQLite connection always has its sqlite3 one
        driver.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        raw.close()


def _sqlite_message(path: Path, exc: DBAPIError | sqlite3.Error) -> str:
    """One line for an SQLite error: what went wrong with which file, and what to do."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    detail = _one_line(str(orig)) or type(orig).__name__
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


# ---- PostgreSQL ----------------------------------------------------------------------------


def _pg_engine(url: URL) -> Engine:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy imports it too; this says what to install)
    except ImportError:
        raise StateError(
            "the state is a PostgreSQL database but the psycopg driver is not installed; "
            "install it with: pip install 'eefetch[postgres]'"
        ) from None
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=8,
        connect_args={"connect_timeout": 10, "application_name": "eefetch"},
    )


# What libpq says when a connection is refused for good (its errors carry no SQLSTATE): these
# are not waited out like a server that is restarting.
_LOGIN_REFUSED = ("authentication failed", "no password supplied", "pg_hba.conf", "role ")
_NO_DATABASE = ('database "',)


def _connect_refusal(exc: DBAPIError) -> str | None:
    """'login' or 'database' when a connection attempt was refused for good, else None."""
    text_ = str(exc.orig)
    if "does not exist" in text_ and any(m in text_ for m in _NO_DATABASE):
        return "database"
    if any(m in text_ for m in _LOGIN_REFUSED):
        return "login"
    return None


def _pg_message(label: str, exc: DBAPIError) -> str:
    """One line for a PostgreSQL error: what went wrong with which database, and what to do."""
    orig = exc.orig
    detail = _one_line(str(orig)) or type(orig).__name__
    code = getattr(orig, "sqlstate", None) or ""
    refusal = _connect_refusal(exc)
    if code.startswith("28") or refusal == "login":
        return (
            f"the state database {label} refused the login ({detail}); check the user and "
            "password in the URL (or in ~/.pgpass)"
        )
    if code == "3D000" or refusal == "database":
        return (
            f"the state database {label} does not exist ({detail}); create it (createdb) or "
            "fix the URL"
        )
    if code.startswith("53"):
        return (
            f"the state database server of {label} is out of resources ({detail}); free disk "
            "space or connections on it, then run the command again"
        )
    if not code or code.startswith(("08", "57P")):
        return (
            f"cannot reach the state database {label} ({detail}); check that PostgreSQL is "
            "running and the URL is right, then run the command again"
        )
    return f"state database {label}: {detail}"


# ---- the database --------------------------------------------------------------------------


class _Transient(Exception):
    """A transaction cut by something worth waiting out; `at_commit` when it was cut while
    committing (its outcome is then unknown)."""

    def __init__(self, error: DBAPIError, at_commit: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.at_commit = at_commit


class Database:
    """An open state database: an engine of its own, and transactions with eefetch's rules."""

    def __init__(
        self, engine: Engine, *, path: Path | None, label: str, reconnect_seconds: float
    ) -> None:
        """Use `Database.open`; this only wraps an engine that `open` has set up."""
        self.engine: Engine | None = engine
        self.path = path
        self.label = label
        self.reconnect_seconds = reconnect_seconds
        self.dialect = engine.dialect.name

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def noun(self) -> str:
        """How messages name it: 'state file PATH' or 'state database URL'."""
        return (
            f"state file {self.path}" if self.path is not None else f"state database {self.label}"
        )

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: str | os.PathLike[str],
        *,
        create: bool = True,
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> Database:
        """Open `target` (a file path or a PostgreSQL URL), creating the schema if the database
        is empty and `create` is true; see `Store.open` for what is refused."""
        if is_database_url(target):
            url = _pg_url(str(target))
            label = make_url(str(target)).render_as_string(hide_password=True)
            db = cls(_pg_engine(url), path=None, label=label, reconnect_seconds=reconnect_seconds)
            try:
                db._prepare_postgresql(create=create)
            except BaseException:
                db.close()
                raise
            return db
        return cls._open_sqlite(Path(target), create=create)

    @classmethod
    def open_reader(cls, target: str | os.PathLike[str]) -> Database:
        """Open ``target`` to read it, never writing a byte: an SQLite file through read-only
        connections (a file of an older schema is read from a copy in memory, upgraded there,
        so that the same queries serve every version); a PostgreSQL database as ``open`` does
        without ``create``. NoJobError for a file or database that holds no schema yet."""
        if is_database_url(target):
            return cls.open(target, create=False)
        path = Path(target)
        kind = _probe(path)
        if kind == "missing":
            raise StateError(f"state file {path} does not exist; check the path")
        if kind == "empty":
            raise NoJobError(f"{path} holds no job yet (a download is creating it?)")
        engine = _reader_engine(lambda: _read_only(path))
        db = cls(engine, path=path, label=str(path), reconnect_seconds=0.0)
        try:
            with engine.connect() as conn, conn.begin():
                kind = db._classify(conn)
            if kind == "fresh":
                raise NoJobError(f"{path} holds no job yet (a download is creating it?)")
            if kind == "old":
                db.close()
                copy = _upgraded_copy(path)
                engine = _reader_engine(lambda: copy)
                db = cls(engine, path=path, label=str(path), reconnect_seconds=0.0)
                with engine.connect() as conn, conn.begin():
                    db._install_or_upgrade(conn, db._classify(conn))
        except (DBAPIError, sqlite3.Error) as exc:
            db.close()
            raise StateError(_sqlite_message(path, exc)) from exc
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def _open_sqlite(cls, path: Path, *, create: bool) -> Database:
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
        engine = _sqlite_engine(path)
        db = cls(engine, path=path, label=str(path), reconnect_seconds=0.0)
        try:
            db._prepare_sqlite(create=create)
        except (DBAPIError, sqlite3.Error) as exc:  # sqlite3's own: the raw connection of _set_wal
            engine.dispose()
            raise StateError(_sqlite_message(path, exc)) from exc
        except BaseException:
            engine.dispose()
            raise
        # Connections made before the switch to WAL chose synchronous=FULL; start afresh.
        engine.dispose()
        return db

    def _classify(self, conn: Connection) -> str:
        """'fresh' (no schema at all), 'ours', or 'old' (an earlier schema this eefetch
        upgrades); raises StateError for anything else."""
        names: list[str]
        if self.is_postgresql:
            names = inspect(conn).get_table_names()
            if not names:
                return "fresh"
            not_ours = StateError(
                f"PostgreSQL database {self.label} holds tables that eefetch did not create; it "
                "was left unchanged: give an empty database or one that eefetch set up"
            )
        else:
            names = list(conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars())
            if not names:
                app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
                user_version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                if not app_id and not user_version:
                    return "fresh"
            not_ours = StateError(
                f"{self.path} is an SQLite database that eefetch did not create; it was left "
                "unchanged: give the path of an eefetch state file, or a path that does not "
                "exist yet"
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
                f"{self.noun} has an unreadable schema version "
                f"({rows.get('schema_version')!r}); move it aside and start with a new state file"
            ) from None
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.noun} was written by a newer eefetch (state schema {version}; "
                f"this eefetch reads up to {SCHEMA_VERSION}); it was left unchanged: upgrade "
                "eefetch (pip install -U eefetch), or start over with a new state file"
            )
        if version < 1:
            raise StateError(
                f"{self.noun} has state schema {version}, which this eefetch cannot "
                "upgrade; start over with a new state file"
            )
        return "ours" if version == SCHEMA_VERSION else "old"

    @staticmethod
    def _version(conn: Connection) -> int:
        value = conn.execute(
            select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
        ).scalar_one()
        return int(value)

    def _refuse_empty(self) -> NoJobError:
        return NoJobError(
            f"{self.noun} holds no eefetch job (it is empty); check the path, or start the "
            "download to create the job"
        )

    def _install_or_upgrade(self, conn: Connection, kind: str) -> None:
        if kind == "fresh":
            schema.install(conn)
        elif kind == "old":
            schema.upgrade(conn, self._version(conn))

    def _prepare_sqlite(self, *, create: bool) -> None:
        assert self.engine is not None
        with self.engine.connect() as conn, conn.begin():
            kind = self._classify(conn)
        if kind == "fresh" and not create:
            raise self._refuse_empty()
        _set_wal(self.engine)
        if kind != "ours":
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    # Another process may have initialised or upgraded the file since the
                    # check above.
                    self._install_or_upgrade(conn, self._classify(conn))

    def _prepare_postgresql(self, *, create: bool) -> None:
        def prepare(conn: Connection) -> None:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SETUP_LOCK})
            kind = self._classify(conn)
            if kind == "fresh" and not create:
                raise self._refuse_empty()
            self._install_or_upgrade(conn, kind)

        # A server that is down when a command starts is reported soon, not waited for.
        self.run(prepare, write=True, patience=min(self.reconnect_seconds, 10.0))

    # ---- transactions ----------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; on SQLite the last one checkpoints the WAL into the file."""
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def now(self, conn: Connection) -> float:
        """The database's clock, in seconds since the epoch."""
        return float(conn.exec_driver_sql(_NOW_SQL[self.dialect]).scalar_one())

    def run(
        self,
        work: Callable[[Connection], T],
        *,
        write: bool,
        in_doubt: Callable[[Connection], T | None] | None = None,
        patience: float | None = None,
    ) -> T:
        """`work(conn)` in one transaction; its result.

        Database errors become StateError (a problem for the user) or ValueError (a constraint
        violated by the caller's data). On PostgreSQL a transaction cut by a lost connection is
        run again until it succeeds or `reconnect_seconds` have passed. If it was cut while
        committing, `in_doubt(conn)` (when given) is asked first, in a transaction of its own:
        it returns what the committed work would have returned if it can find its traces, or
        None if the work did not commit and must run again. Without `in_doubt`, `work` must be
        safe to run twice. `patience` overrides `reconnect_seconds` for this call.
        """
        patience = self.reconnect_seconds if patience is None else patience
        started: float | None = None
        pause = 0.05
        doubt = False
        while True:
            try:
                if doubt and in_doubt is not None:
                    found = self._once(in_doubt, write=False)
                    doubt = False
                    if found is not None:
                        return found
                return self._once(work, write=write)
            except _Transient as cut:
                now = time.monotonic()
                started = now if started is None else started
                if now - started >= patience:
                    raise StateError(_pg_message(self.label, cut.error)) from cut.error
                doubt = doubt or cut.at_commit
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _once(self, work: Callable[[Connection], T], *, write: bool) -> T:
        if self.engine is None:
            raise ValueError("operation on a closed Store")
        at_commit = False
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                transaction = conn.begin()
                try:
                    result = work(conn)
                except BaseException:
                    with contextlib.suppress(DBAPIError):
                        transaction.rollback()
                    raise
                at_commit = True
                self._commit(transaction)
                return result
        except IntegrityError as exc:
            raise ValueError(f"state update rejected by the database: {exc.orig}") from exc
        except DBAPIError as exc:
            if self._transient(exc):
                raise _Transient(exc, at_commit) from exc
            if isinstance(exc, ProgrammingError | InterfaceError):
                raise
            raise StateError(self._message(exc)) from exc

    @staticmethod
    def _commit(transaction: RootTransaction) -> None:
        """Commit (a method of its own, so that tests can lose the answer of a commit)."""
        transaction.commit()

    def _transient(self, exc: DBAPIError) -> bool:
        """A failure worth waiting out: the server went away or restarted, or PostgreSQL broke
        a deadlock (the transaction was rolled back and may simply run again)."""
        if not self.is_postgresql:
            return False
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None)
        if code:
            return code.startswith(("08", "57P")) or code in ("40001", "40P01", "53300")
        return isinstance(exc, OperationalError | InterfaceError) and _connect_refusal(exc) is None

    def _message(self, exc: DBAPIError) -> str:
        if self.path is not None:
            return _sqlite_message(self.path, exc)
        return _pg_message(self.label, exc)
