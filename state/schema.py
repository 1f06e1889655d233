"""Tables of an eefetch state file and its schema version.

One state file holds one job (the CLI addresses a job by its state file), but the job keeps its
own table so a later schema can hold more. The CHECK constraints repeat the store's invariants so
that a bug elsewhere fails loudly instead of leaving a state file that cannot be resumed.
"""

from __future__ import annotations

import secrets

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    insert,
    update,
)

SCHEMA_VERSION = 2
"""Bumped on every change; a file with a larger number is refused, never rewritten, and a file
with a smaller one is upgraded in place by `upgrade` (one transaction)."""

APPLICATION = "eefetch"
"""Value of the `application` row in `meta`: tells an eefetch state file from other SQLite files."""

JOB_STATUSES: tuple[str, ...] = ("planned", "running", "downloaded", "merged", "failed")
TILE_STATUSES: tuple[str, ...] = ("pending", "in_flight", "done", "failed", "split")


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
    Column("id", Integer, primary_key=True),
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
    CheckConstraint(_one_of("status", JOB_STATUSES), name="job_status_known"),
)

tile = Table(
    "tile",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("job.id"), nullable=False),
    Column("parent_id", Integer, ForeignKey("tile.id"), nullable=True),
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
    Column("bytes", Integer),
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
    ),
    CheckConstraint(
        "(status = 'in_flight') = (claim_owner IS NOT NULL AND claim_expires IS NOT NULL)",
        name="tile_claimed_iff_in_flight",
    ),
    # SQLite appends the rowid (= id) to every index entry, so this one index serves
    # `WHERE status = ? ORDER BY id LIMIT n` (claims), GROUP BY status (counts, covering)
    # and tiles(status) without a sort.
    Index("ix_tile_status", "status"),
)


def install(conn: Connection) -> None:
    """Create every table and stamp the file as eefetch's, inside the caller's transaction."""
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


def upgrade(conn: Connection, version: int) -> None:
    """Bring a state file of schema ``version`` to SCHEMA_VERSION, in the caller's transaction.

    Version 1 had no job uid and no 429 count. Its job gets a fresh uid: tile files it wrote
    under the old names stay usable where the state records them as done (their path and
    checksum are in the row); a file it wrote but never recorded is fetched again, since it
    cannot be proved to be this job's.
    """
    if version < 2:
        conn.exec_driver_sql("ALTER TABLE job ADD COLUMN uid TEXT NOT NULL DEFAULT ''")
        conn.exec_driver_sql("ALTER TABLE tile ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0")
        for (job_id,) in conn.exec_driver_sql("SELECT id FROM job").all():
            conn.exec_driver_sql("UPDATE job SET uid = ? WHERE id = ?", (new_job_uid(), job_id))
    conn.execute(
        update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )
