"""One Earth Engine quota per Cloud project, shared by every process that uses the project.

Earth Engine limits concurrent requests per project (40 by default), not per machine, so the
budget lives in a database every worker reaches: the PostgreSQL state database when the state
is on a server, otherwise one SQLite file per user (`default_quota_path`), which every eefetch
process of that user on this machine shares, whatever job it runs.

Tables (state/schema.py):
- `quota`: one row per project: `ceiling` (`--project-quota`), the shared adaptive limit
  `current_limit` (additive increase, multiplicative decrease, as engine/pacing.py does for one
  process), the successes counted toward the next increase, and the end of the cooldown after
  a decrease.
- `quota_slot`: one row per request in flight: which slot number, whose, until when. A slot
  whose lease ran out (its process died or hung) is free again.

Every change happens in one transaction that holds the project's row (FOR UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite): two processes can never both see room for one more
request. Times come from the database's clock unless `now` is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from state import schema
from state.db import RECONNECT_SECONDS, Database, is_database_url

quota_t = schema.quota
slot_t = schema.quota_slot

DEFAULT_PROJECT_QUOTA = 40
"""Earth Engine's default limit of concurrent interactive requests per project."""

Outcome = Literal["success", "rate_limited"]


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A project's budget: its ceiling, the adaptive limit now, and live slots in use."""

    project: str
    ceiling: int
    limit: int
    in_use: int
    successes: int
    cooldown_until: float


@dataclass(frozen=True, slots=True)
class Aimd:
    """The shared limit's state and the rule that moves it (pure arithmetic)."""

    limit: int
    successes: int
    cooldown_until: float

    def after(
        self,
        outcome: Outcome,
        *,
        ceiling: int,
        now: float,
        successes_per_step: int,
        decrease_cooldown: float,
    ) -> Aimd:
        """+1 after `successes_per_step` successes (up to `ceiling`); halved on a 429 unless a
        decrease happened less than `decrease_cooldown` seconds ago (one burst of 429s from
        requests sent together is one signal, not ten)."""
        if outcome == "rate_limited":
            if now < self.cooldown_until:
                return self
            return Aimd(max(1, self.limit // 2), 0, now + decrease_cooldown)
        successes = self.successes + 1
        if self.limit < ceiling and successes >= successes_per_step:
            return Aimd(self.limit + 1, 0, self.cooldown_until)
        return Aimd(
            min(self.limit, ceiling), min(successes, successes_per_step), self.cooldown_until
        )


def default_quota_path(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Path:
    """Where an SQLite-state eefetch keeps the quota of this user:
    `$XDG_STATE_HOME/eefetch/quota.db`, by default `~/.local/state/eefetch/quota.db`."""
    base = environ.get("XDG_STATE_HOME", "")
    root = (
        Path(base) if base and Path(base).is_absolute() else (home or Path.home()) / ".local/state"
    )
    return root / "eefetch" / "quota.db"


def quota_target(
    state_target: str | os.PathLike[str], environ: Mapping[str, str] = os.environ
) -> str | Path:
    """Where the quota lives for a job whose state is `state_target`: the same database when it
    is a server (every machine reaches it), else the per-user file on this machine."""
    if is_database_url(state_target):
        return str(state_target)
    return default_quota_path(environ)


def _lowest_free(taken: set[int]) -> int:
    slot = 0
    while slot in taken:
        slot += 1
    return slot


def _check_ceiling(ceiling: int) -> None:
    if not 1 <= ceiling <= 10_000:
        raise ValueError("the project quota must be between 1 and 10000 requests")


class Quota:
    """The shared quota of Earth Engine projects in one database. Blocking and thread-safe."""

    def __init__(
        self,
        db: Database,
        *,
        successes_per_step: int = 4,
        decrease_cooldown: float = 5.0,
        owns_db: bool = False,
    ) -> None:
        """Use `Quota.open` or `Store.quota`; `owns_db` closes the database with the quota."""
        self._db = db
        self._owns_db = owns_db
        self.successes_per_step = successes_per_step
        self.decrease_cooldown = decrease_cooldown

    @classmethod
    def open(
        cls,
        target: str | os.PathLike[str],
        *,
        reconnect_seconds: float = RECONNECT_SECONDS,
        **settings: Any,
    ) -> Quota:
        """Open (creating if needed) the quota database at `target`: a PostgreSQL URL, or an
        SQLite path (its folder is made, private to the user)."""
        if not is_database_url(target):
            folder = Path(target).parent
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = Database.open(target, create=True, reconnect_seconds=reconnect_seconds)
        return cls(db, owns_db=True, **settings)

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    def __enter__(self) -> Quota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _time(self, conn: Connection, now: float | None) -> float:
        return self._db.now(conn) if now is None else float(now)

    def _locked_row(self, conn: Connection, project: str, at: float) -> Any:
        """The project's row, created with the default ceiling if absent, locked until commit."""
        insert = pg_dialect.insert if self._db.is_postgresql else sqlite_dialect.insert
        conn.execute(
            insert(quota_t)
            .values(
                project=project,
                ceiling=DEFAULT_PROJECT_QUOTA,
                current_limit=DEFAULT_PROJECT_QUOTA,
                successes=0,
                cooldown_until=0.0,
                updated_at=at,
            )
            .on_conflict_do_nothing(index_elements=[quota_t.c.project])
        )
        return conn.execute(
            select(quota_t).where(quota_t.c.project == project).with_for_update()
        ).one()

    def configure(
        self, project: str, ceiling: int | None = None, *, now: float | None = None
    ) -> QuotaStatus:
        """Make sure the project has a budget; set its ceiling if given (the last process to
        give one wins; without one the stored ceiling stays). Lowering the ceiling lowers the
        limit with it; raising it lets the limit grow to it by additive increase."""
        if ceiling is not None:
            _check_ceiling(ceiling)

        def work(conn: Connection) -> QuotaStatus:
            at = self._time(conn, now)
            row = self._locked_row(conn, project, at)
            if ceiling is not None and ceiling != row.ceiling:
                conn.execute(
                    update(quota_t)
                    .where(quota_t.c.project == project)
                    .values(
                        ceiling=ceiling,
                        current_limit=min(row.current_limit, ceiling),
                        updated_at=at,
                    )
                )
            return self._status(conn, project, at)

        return self._db.run(work, write=True)

    def acquire_slot(
        self, project: str, owner: str, lease_seconds: float, *, now: float | None = None
    ) -> int | None:
        """Take a slot of `project` for one request of `owner`, held until `now +
        lease_seconds` unless renewed; its number, or None when the shared limit is reached
        (try again after a release)."""
        if not owner:
            raise ValueError("slot owner must be a non-empty string")
        if not (lease_seconds > 0 and math.isfinite(lease_seconds)):
            raise ValueError("lease_seconds must be > 0")
        expiry: list[float] = []

        def work(conn: Connection) -> int | None:
            at = self._time(conn, now)
            row = self._locked_row(conn, project, at)
            conn.execute(delete(slot_t).where(slot_t.c.project == project, slot_t.c.expires <= at))
            taken = set(
                conn.execute(select(slot_t.c.slot).where(slot_t.c.project == project)).scalars()
            )
            if len(taken) >= row.current_limit:
                return None
            slot = _lowest_free(taken)
            expiry[:] = [at + lease_seconds]
            conn.execute(
                slot_t.insert().values(project=project, slot=slot, owner=owner, expires=expiry[0])
            )
            return slot

        def in_doubt(conn: Connection) -> int | None:
            if not expiry:
                return None
            return conn.execute(
                select(slot_t.c.slot).where(
                    slot_t.c.project == project,
                    slot_t.c.owner == owner,
                    slot_t.c.expires == expiry[0],
                )
            ).scalar()

        return self._db.run(work, write=True, in_doubt=in_doubt)

    def release_slot(
        self,
        project: str,
        owner: str,
        slot: int,
        *,
        outcome: Outcome | None = None,
        now: float | None = None,
    ) -> bool:
        """Give a slot back, telling how its request went: "success" and "rate_limited" (a 429)
        move the shared limit; None (any other failure, a cancellation) leaves it. False if the
        slot was no longer `owner`'s (its lease ran out and it was given to another)."""
        if outcome not in (None, "success", "rate_limited"):
            raise ValueError(f"unknown outcome {outcome!r}")

        def work(conn: Connection) -> bool:
            at = self._time(conn, now)
            if outcome is not None:
                self._record(conn, project, outcome, at)
            return bool(
                conn.execute(
                    delete(slot_t).where(
                        slot_t.c.project == project,
                        slot_t.c.slot == slot,
                        slot_t.c.owner == owner,
                    )
                ).rowcount
            )

        return self._db.run(work, write=True)

    def record(self, project: str, outcome: Outcome, *, now: float | None = None) -> QuotaStatus:
        """Count a request's outcome without a slot to release (the shared limit moves)."""
        if outcome not in ("success", "rate_limited"):
            raise ValueError(f"unknown outcome {outcome!r}")

        def work(conn: Connection) -> QuotaStatus:
            at = self._time(conn, now)
            self._record(conn, project, outcome, at)
            return self._status(conn, project, at)

        return self._db.run(work, write=True)

    def _record(self, conn: Connection, project: str, outcome: Outcome, at: float) -> None:
        row = self._locked_row(conn, project, at)
        state = Aimd(row.current_limit, row.successes, row.cooldown_until)
        moved = state.after(
            outcome,
            ceiling=row.ceiling,
            now=at,
            successes_per_step=self.successes_per_step,
            decrease_cooldown=self.decrease_cooldown,
        )
        if moved != state:
            conn.execute(
                update(quota_t)
                .where(quota_t.c.project == project)
                .values(
                    current_limit=moved.limit,
                    successes=moved.successes,
                    cooldown_until=moved.cooldown_until,
                    updated_at=at,
                )
            )

    def renew_slots(self, owner: str, lease_seconds: float, *, now: float | None = None) -> int:
        """Extend every slot `owner` holds (in any project) to `now + lease_seconds`; returns
        how many. A worker calls it with its heartbeat, so a long download keeps its slot."""
        if not (lease_seconds > 0 and math.isfinite(lease_seconds)):
            raise ValueError("lease_seconds must be > 0")

        def work(conn: Connection) -> int:
            at = self._time(conn, now)
            return conn.execute(
                update(slot_t).where(slot_t.c.owner == owner).values(expires=at + lease_seconds)
            ).rowcount

        return self._db.run(work, write=True)

    def release_owner(self, owner: str) -> int:
        """Give back every slot of `owner` (it is stopping); returns how many."""

        def work(conn: Connection) -> int:
            return conn.execute(delete(slot_t).where(slot_t.c.owner == owner)).rowcount

        return self._db.run(work, write=True)

    def status(self, project: str, *, now: float | None = None) -> QuotaStatus | None:
        """The project's budget and the live slots in use (None if no process used it yet)."""

        def work(conn: Connection) -> QuotaStatus | None:
            at = self._time(conn, now)
            exists = conn.execute(
                select(quota_t.c.project).where(quota_t.c.project == project)
            ).first()
            return None if exists is None else self._status(conn, project, at)

        return self._db.run(work, write=False)

    @staticmethod
    def _status(conn: Connection, project: str, at: float) -> QuotaStatus:
        row = conn.execute(select(quota_t).where(quota_t.c.project == project)).one()
        in_use = conn.execute(
            select(func.count()).where(slot_t.c.project == project, slot_t.c.expires > at)
        ).scalar_one()
        return QuotaStatus(
            project, row.ceiling, row.current_limit, in_use, row.successes, row.cooldown_until
        )
