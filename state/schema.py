"""Tables of an eefetch state database and its schema version.

One schema serves both back ends: an SQLite file (one machine, the default) and a PostgreSQL
database (several machines). The few dialect-specific pieces are marked with `ddl_if`: a regex
CHECK where SQLite has GLOB, and the tile index, which on PostgreSQL carries the id so that a
claim's `ORDER BY id` walks it in order, as SQLite's does through the rowid it appends.

Tables:
- `meta`: what the database is (application, schema version).
- `job`: one row per job; `name` is unique and is how a worker addresses a job.
- `tile`: every tile of every job; its claim (`claim_owner`, `claim_expires`) is a lease.
- `worker`: one row per process that worked on a job (status shows them; a row whose
  `last_seen` is older than its `lease_seconds` is a dead worker).
- `merge_lease`: at most one row per job: the worker allowed to merge, until `expires`.
- `quota`, `quota_slot`: the shared concurrency budget of one Earth Engine project (see
  state/quota.py).

Every time in the tables is in seconds since the epoch, on the clock of whoever wrote it: the
database's own clock when a store call gets `now=None` (what several workers must use), the
caller's when it passes `now`. The CHECK constraints repeat the store's invariants so that a bug
elsewhere fails loudly instead of leaving a state that cannot be resumed.
"""

from __future__ import annotations

import re
import secrets
from pathlib import PurePath

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    update,
)

SCHEMA_VERSION = 3
"""Bumped on every change; a database with a larger number is refused, never rewritten, and one
with a smaller number is upgraded in place by `upgrade` (one transaction)."""

APPLICATION = "eefetch"
"""Value of the `application` row in `meta`: tells an eefetch database from other databases."""

JOB_STATUSES: tuple[str, ...] = ("planned", "running", "downloaded", "merged", "failed")
TILE_STATUSES: tuple[str, ...] = ("pending", "in_flight", "done", "failed", "split")

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A job name: what `--job` takes; safe in a shell, a file name and a log line."""

# SQLite keeps INTEGER PRIMARY KEY as the rowid (BIGINT would not be); PostgreSQL gets 64 bits,
# since one database holds the tiles of many jobs.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

job = Table(
    "job",
    metadata,
    Column("id", Id, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("spec", Text, nullable=False),
    Column("eefetch_version", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("output_path", Text, nullable=False),
    # Random, made when the job is created: tile files carry it in their names, so a file left
    # by another job (a deleted state file, the same output) is never taken for this job's.
    Column("uid", Text, nullable=False),
    # How `--job` names it; unique in the database (an index, so that an upgraded file and a
    # new one have the same definition).
    Column("name", Text, nullable=False),
    CheckConstraint(_one_of("status", JOB_STATUSES), name="job_status_known"),
)
JOB_NAME_INDEX = Index("ux_job_name", job.c.name, unique=True)

tile = Table(
    "tile",
    metadata,
    Column("id", Id, primary_key=True),
    Column("job_id", Id, ForeignKey("job.id"), nullable=False),
    Column("parent_id", Id, ForeignKey("tile.id"), nullable=True),
    Column("row_off", Integer, nullable=False),
    Column("col_off", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("band_start", Integer, nullable=False),
    Column("band_stop", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("url", Text),
    Column("url_made_at", Float),
    Column("bytes", BigInteger),
    Column("checksum", Text),
    Column("path", Text),
    Column("claim_owner", Text),
    Column("claim_expires", Float),
    Column("not_before", Float),
    Column("updated_at", Float, nullable=False),
    # 429 answers, counted apart from `attempts`: Earth Engine being busy says nothing of the
    # tile, so it has its own, larger budget, kept across runs like `attempts`.
    Column("rate_limited", Integer, nullable=False, server_default="0"),
    CheckConstraint(_one_of("status", TILE_STATUSES), name="tile_status_known"),
    CheckConstraint(
        "row_off >= 0 AND col_off >= 0 AND height > 0 AND width > 0"
        " AND band_start >= 0 AND band_stop > band_start",
        name="tile_window_valid",
    ),
    CheckConstraint("attempts >= 0 AND rate_limited >= 0", name="tile_attempts_valid"),
    CheckConstraint(
        "status <> 'done' OR (path IS NOT NULL AND bytes IS NOT NULL AND checksum IS NOT NULL)",
        name="tile_done_has_file",
    ),
    CheckConstraint(
        "checksum IS NULL OR (length(checksum) = 64 AND checksum NOT GLOB '*[^0-9a-f]*')",
        name="tile_checksum_sha256_hex",
    ).ddl_if(dialect="sqlite"),
    CheckConstraint(
        "checksum IS NULL OR checksum ~ '^[0-9a-f]{64}$'",
        name="tile_checksum_sha256_hex",
    ).ddl_if(dialect="postgresql"),
    CheckConstraint(
        "(status = 'in_flight') = (claim_owner IS NOT NULL AND claim_expires IS NOT NULL)",
        name="tile_claimed_iff_in_flight",
    ),
)

# SQLite appends the rowid (= id) to every index entry, so (job_id, status) serves
# `WHERE job_id = ? AND status = ? ORDER BY id LIMIT n` (claims), GROUP BY status (counts,
# covering) and tiles(status) without a sort. PostgreSQL needs the id spelt out for that.
TILE_INDEX_SQLITE = Index("ix_tile_job_status", tile.c.job_id, tile.c.status).ddl_if(
    dialect="sqlite"
)
TILE_INDEX_POSTGRESQL = Index("ix_tile_job_status", tile.c.job_id, tile.c.status, tile.c.id).ddl_if(
    dialect="postgresql"
)

worker = Table(
    "worker",
    metadata,
    Column("id", Id, primary_key=True),
    Column("job_id", Id, ForeignKey("job.id"), nullable=False),
    Column("owner", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("lease_seconds", Float, nullable=False),
    Column("tiles_done", BigInteger, nullable=False, server_default="0"),
    Column("bytes_done", BigInteger, nullable=False, server_default="0"),
    Column("stopped_at", Float),
    UniqueConstraint("job_id", "owner", name="worker_owner_unique"),
    CheckConstraint(
        "lease_seconds > 0 AND tiles_done >= 0 AND bytes_done >= 0", name="worker_counts_valid"
    ),
)

merge_lease = Table(
    "merge_lease",
    metadata,
    Column("job_id", Id, ForeignKey("job.id"), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

quota = Table(
    "quota",
    metadata,
    Column("project", Text, primary_key=True),
    Column("ceiling", Integer, nullable=False),
    Column("current_limit", Integer, nullable=False),
    Column("successes", Integer, nullable=False),
    Column("cooldown_until", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    CheckConstraint(
        "ceiling >= 1 AND current_limit >= 1 AND current_limit <= ceiling AND successes >= 0",
        name="quota_limit_valid",
    ),
)

quota_slot = Table(
    "quota_slot",
    metadata,
    Column("project", Text, ForeignKey("quota.project"), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("owner", Text, nullable=False),
    Column("expires", Float, nullable=False),
    PrimaryKeyConstraint("project", "slot"),
    CheckConstraint("slot >= 0", name="quota_slot_valid"),
)


def install(conn: Connection) -> None:
    """Create every table and stamp the database as eefetch's, inside the caller's transaction."""
    metadata.create_all(conn)
    conn.execute(
        insert(meta),
        [
            {"key": "application", "value": APPLICATION},
            {"key": "schema_version", "value": str(SCHEMA_VERSION)},
        ],
    )


def new_job_uid() -> str:
    """A job's random id: 48 bits, as 12 lowercase hex digits (it goes into file names)."""
    return secrets.token_hex(6)


def default_job_name(output_path: str | PurePath) -> str:
    """The job name used when none is given: the output's file name without its extension,
    in the characters a name allows (`/data/Kenya S2.tif` -> `Kenya-S2`).

    Readable rather than unique: two outputs with one file name in two folders get the same
    name, and the second job is then refused with a message asking for `--job`.
    """
    stem = PurePath(output_path).name
    for suffix in (".tiff", ".tif", ".vrt"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:128]
    return name if name and JOB_NAME.fullmatch(name) else "job"


def upgrade(conn: Connection, version: int) -> None:
    """Bring a database of schema ``version`` to SCHEMA_VERSION, in the caller's transaction.

    Only SQLite files have older versions (PostgreSQL support began with schema 3).

    Version 1 had no job uid and no 429 count. Its job gets a fresh uid: tile files it wrote
    under the old names stay usable where the state records them as done (their path and
    checksum are in the row); a file it wrote but never recorded is fetched again, since it
    cannot be proved to be this job's.

    Version 2 held one unnamed job and no workers, merge lease or quota. Its job is named after
    its output (`default_job_name`), and the tile index gains the job id in front.
    """
    if version < 2:
        conn.exec_driver_sql("ALTER TABLE job ADD COLUMN uid TEXT NOT NULL DEFAULT ''")
        conn.exec_driver_sql("ALTER TABLE tile ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0")
        for (job_id,) in conn.execute(select(job.c.id)).all():
            conn.execute(update(job).where(job.c.id == job_id).values(uid=new_job_uid()))
    if version < 3:
        conn.exec_driver_sql("ALTER TABLE job ADD COLUMN name TEXT NOT NULL DEFAULT ''")
        rows = conn.execute(select(job.c.id, job.c.output_path).order_by(job.c.id)).all()
        taken: set[str] = set()
        for job_id, output_path in rows:
            name = base = default_job_name(output_path)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            conn.execute(update(job).where(job.c.id == job_id).values(name=name))
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_tile_status")
        JOB_NAME_INDEX.create(conn)
        TILE_INDEX_SQLITE.create(conn)
        metadata.create_all(conn, tables=[worker, merge_lease, quota, quota_slot])
    conn.execute(
        update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )
