"""Tables of an eefetch state file and its schema version.

One state file holds one job (the CLI addresses a job by its state file), but the job keeps its
own table so a later schema can hold more. The CHECK constraints repeat the store's invariants so
that a bug elsewhere fails loudly instead of leaving a state file that cannot be resumed.
"""

from __future__ import annotations

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
)

SCHEMA_VERSION = 1
"""Bumped on every incompatible change; a file with a larger number is refused, never rewritten."""

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
    CheckConstraint(_one_of("status", TILE_STATUSES), name="tile_status_known"),
    CheckConstraint(
        "row_off >= 0 AND col_off >= 0 AND height > 0 AND width > 0"
        " AND band_start >= 0 AND band_stop > band_start",
        name="tile_window_valid",
    ),
    CheckConstraint("attempts >= 0", name="tile_attempts_valid"),
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
