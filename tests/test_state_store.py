"""The job store: round trips, claims, every update kind, refusals that leave files untouched,
random sequences against a model, a SIGKILL campaign, and timings at 100,000 tiles.

Tests taking `store` or `state_target` run twice: on an SQLite file and on a PostgreSQL
database of the session's throwaway server (tests/conftest.py)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from state import (
    SCHEMA_VERSION,
    TILE_STATUSES,
    NewTile,
    StateError,
    Store,
    TileDone,
    TileFailed,
    TileReleased,
    TileReset,
    TileRetry,
    TileSplit,
    TileUpdate,
    TileUrl,
)

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
SPEC = {"expression": {"type": "Invocation"}, "grid": [1, 0, 0, 0, -1, 0], "bands": ["B1"]}


def grid_tiles(rows: int, cols: int, size: int = 256, bands: int = 3) -> list[NewTile]:
    return [
        NewTile(r * size, c * size, size, size, 0, bands) for r in range(rows) for c in range(cols)
    ]


Target = Callable[[], "Path | str"]


@pytest.fixture
def store(state_target: Target) -> Iterator[Store]:
    s = Store.open(state_target())
    s.create_job("fp1", SPEC, "0.1.0", "out.tif", grid_tiles(2, 3), now=100.0)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "job.eefetch")
    s.create_job("fp1", SPEC, "0.1.0", "out.tif", grid_tiles(2, 3), now=100.0)
    yield s
    s.close()


def done(tile_id: int) -> TileDone:
    return TileDone(tile_id, f"tile-{tile_id}.tif", 1000 + tile_id, SHA)


def pragma(s: Store, name: str) -> Any:
    with s._db.engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


# ---- create / open / reopen ---------------------------------------------------------------


def test_create_and_reopen_round_trip(state_target: Target) -> None:
    path = state_target()
    with Store.open(path) as s:
        assert s.path == (path if isinstance(path, Path) else None)
        assert s.job() is None
        job = s.create_job("fp1", SPEC, "0.1.0", "out.tif", grid_tiles(2, 2), now=5.0)
        assert (job.fingerprint, job.spec, job.eefetch_version) == ("fp1", SPEC, "0.1.0")
        assert (job.status, job.created_at, job.updated_at, job.output_path) == (
            "planned",
            5.0,
            5.0,
            "out.tif",
        )
    with Store.open(path, create=False) as s:
        assert s.job() == job
        tiles = s.tiles()
        assert [t.window for t in tiles] == [
            (0, 0, 256, 256),
            (0, 256, 256, 256),
            (256, 0, 256, 256),
            (256, 256, 256, 256),
        ]
        assert {(t.status, t.attempts, t.parent_id, t.updated_at) for t in tiles} == {
            ("pending", 0, None, 5.0)
        }
        s.set_job_status("merged", "/data/out.tif", now=9.0)
        assert s.job() == job.__class__(
            job.id, "fp1", SPEC, "0.1.0", "merged", 5.0, 9.0, "/data/out.tif", job.uid, "out"
        )
    assert Store.schema_version == SCHEMA_VERSION == 3


def test_file_settings(sqlite_store: Store) -> None:
    store = sqlite_store
    assert pragma(store, "journal_mode") == "wal"
    assert pragma(store, "foreign_keys") == 1
    assert pragma(store, "synchronous") == 1  # NORMAL
    con = sqlite3.connect(store.path)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta"))
    finally:
        con.close()
    assert meta == {"application": "eefetch", "schema_version": "3"}


def test_foreign_keys_are_enforced(store: Store) -> None:
    def insert(conn: Any) -> None:
        conn.exec_driver_sql(
            "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
            " status, attempts, updated_at) VALUES (99, 0, 0, 1, 1, 0, 1, 'pending', 0, 0)"
        )

    with pytest.raises(ValueError, match=r"(?i)foreign key"):
        store._db.run(insert, write=True)


def test_create_job_is_all_or_nothing(state_target: Target) -> None:
    with Store.open(state_target()) as s:
        bad = [*grid_tiles(1, 3), NewTile(0, 0, 0, 5, 0, 1)]
        with pytest.raises(ValueError, match="tile_window_valid"):
            s.create_job("fp", SPEC, "0", "o.tif", bad)
        assert s.job() is None and sum(s.counts().values()) == 0
        s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(1, 1))
        with pytest.raises(StateError, match="already holds a job"):
            s.create_job("fp2", SPEC, "0", "o.tif", grid_tiles(1, 1))
        with pytest.raises(ValueError, match="JSON"):
            Store.open(state_target()).create_job("fp", {"x": object()}, "0", "o", [])


def test_set_job_status_validates(state_target: Target) -> None:
    with Store.open(state_target()) as s:
        with pytest.raises(StateError, match="holds no job"):
            s.set_job_status("running")
        s.create_job("fp", SPEC, "0", "o.tif", [])
        with pytest.raises(ValueError, match="unknown job status"):
            s.set_job_status("exploded")
        s.set_job_status("running", now=1.0)
        job = s.job()
        assert job is not None and (job.status, job.output_path) == ("running", "o.tif")


def test_closed_store_refuses_work(state_target: Target) -> None:
    s = Store.open(state_target())
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.counts()


# ---- refusals: message checked, file untouched ---------------------------------------------


def _no_companions(path: Path) -> bool:
    return not any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm", "-journal"))


def test_missing_file_with_create_false(tmp_path: Path) -> None:
    path = tmp_path / "nope.eefetch"
    with pytest.raises(StateError) as info:
        Store.open(path, create=False)
    assert str(info.value) == (
        f"state file {path} does not exist; check the path (eefetch creates the state file "
        "when a download starts)"
    )
    assert not path.exists()


def test_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "no-folder" / "s"
    with pytest.raises(StateError, match=r"folder .* does not exist; create it"):
        Store.open(path)


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="is a folder, not an eefetch state file"):
        Store.open(tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    data = random.Random(7).randbytes(5000)
    path.write_bytes(data)
    for create in (True, False):
        with pytest.raises(StateError) as info:
            Store.open(path, create=create)
        assert str(info.value) == (
            f"{path} is not an eefetch state file (not an SQLite database); it was left "
            "unchanged: give the state file eefetch made, or a path that does not exist yet"
        )
        assert "\n" not in str(info.value)
    assert path.read_bytes() == data
    assert _no_companions(path)


def _other_database(path: Path, with_meta: bool = False) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE songs (title TEXT)")
    con.execute("INSERT INTO songs VALUES ('la')")
    if with_meta:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        con.execute("INSERT INTO meta VALUES ('application', 'itunes')")
    con.commit()
    con.close()
    return path.read_bytes()


@pytest.mark.parametrize("with_meta", [False, True])
def test_sqlite_database_of_another_program(tmp_path: Path, with_meta: bool) -> None:
    path = tmp_path / "music.db"
    before = _other_database(path, with_meta)
    with pytest.raises(StateError) as info:
        Store.open(path)
    assert str(info.value) == (
        f"{path} is an SQLite database that eefetch did not create; it was left unchanged: "
        "give the path of an eefetch state file, or a path that does not exist yet"
    )
    assert path.read_bytes() == before
    assert _no_companions(path)


def test_future_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "job.eefetch"
    with Store.open(path) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(2, 2))
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StateError) as info:
        Store.open(path)
    assert str(info.value) == (
        f"state file {path} was written by a newer eefetch (state schema 4; this eefetch "
        "reads up to 3); it was left unchanged: upgrade eefetch (pip install -U eefetch), or "
        "start over with a new state file"
    )
    assert path.read_bytes() == before
    assert _no_companions(path)


def test_garbage_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "job.eefetch"
    Store.open(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = 'x' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StateError, match="unreadable schema version"):
        Store.open(path)


def test_damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "job.eefetch"
    with Store.open(path) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(20, 20))
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="is damaged") as info:
        Store.open(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_empty_files_are_adopted(tmp_path: Path) -> None:
    """What a crash during creation leaves (a 0-byte file, or SQLite without tables) is new."""
    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(StateError, match="holds no eefetch job"):
        Store.open(empty, create=False)
    assert empty.read_bytes() == b""
    bare = tmp_path / "bare"
    sqlite3.connect(bare).execute("PRAGMA journal_mode=WAL").fetchall()
    for path in (empty, bare):
        with Store.open(path) as s:
            assert s.job() is None
            s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(1, 1))
        with Store.open(path, create=False) as s:
            assert s.counts()["pending"] == 1


# ---- claims ----------------------------------------------------------------------------------


def test_claims_leases_and_expiry(store: Store) -> None:
    a = store.claim("A", now=0.0, lease_seconds=30, limit=4)
    assert [t.id for t in a] == [1, 2, 3, 4]
    assert {(t.status, t.claim_owner, t.claim_expires) for t in a} == {("in_flight", "A", 30.0)}
    assert [t.id for t in store.claim("B", 10.0, 30, 10)] == [5, 6]
    assert store.claim("B", 20.0, 30, 10) == []
    assert store.renew_claims("A", 25.0, 30) == 4  # A's leases now end at 55
    # B's claims (expiring at 40) lapsed, A's did not: C takes B's tiles, and only those.
    assert [t.id for t in store.claim("C", 50.0, 30, 10)] == [5, 6]
    assert store.claim("C", 54.9, 30, 10) == []
    taken = store.claim("B", 55.0, 30, 3)  # A's claims expire at exactly 55
    assert [(t.id, t.claim_owner, t.claim_expires) for t in taken] == [
        (1, "B", 85.0),
        (2, "B", 85.0),
        (3, "B", 85.0),
    ]
    assert store.release_claims("A") == 1
    assert store.tile(4).status == "pending"
    assert store.release_claims("B", now=60.0) == 3
    assert store.release_all_claims() == 2
    assert store.counts()["pending"] == 6
    assert all(t.attempts == 0 for t in store.tiles())


def test_an_owner_never_gets_its_own_in_flight_tiles_back(store: Store) -> None:
    """A suspend or clock step past the lease must not hand a live process its own tiles
    again: it is still fetching them, and a second attempt would race the first."""
    mine = store.claim("A", now=0.0, lease_seconds=30, limit=2)
    later = store.claim("A", now=3600.0, lease_seconds=30, limit=10)
    assert [t.id for t in later] == [3, 4, 5, 6]  # the pending ones, not its own two
    assert store.claim("A", now=7200.0, lease_seconds=30, limit=10) == []
    # Another owner may take A's tiles once A's lease is over (A died or hung).
    assert [t.id for t in store.claim("B", 3600.0, 30, 10)] == [t.id for t in mine]


def test_shift_times_moves_retries_and_the_owners_leases(store: Store) -> None:
    a = store.claim("A", now=0.0, lease_seconds=30, limit=2)
    b = store.claim("B", now=0.0, lease_seconds=30, limit=1)
    pending = [t.id for t in store.claim("C", 0.0, 30, 1)]
    store.apply([TileRetry(pending[0], "HTTP 503", not_before=10.0)], now=0.0)
    assert store.shift_times("A", -3600.0) == 3  # the retry and A's two claims
    assert store.next_wakeup() == 10.0 - 3600.0
    assert {t.id: t.claim_expires for t in store.tiles("in_flight")} == {
        a[0].id: 30.0 - 3600.0,
        a[1].id: 30.0 - 3600.0,
        b[0].id: 30.0,
    }
    with pytest.raises(ValueError):
        store.shift_times("A", float("nan"))


def test_rate_limited_retries_are_counted_apart_and_kept(state_target: Target) -> None:
    path = state_target()
    with Store.open(path) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(1, 2))
        [t, _] = s.claim("A", 0.0, 30, 2)
        s.apply([TileRetry(t.id, "429", 1.0, rate_limited=True)], now=0.0)
        s.claim("A", 1.0, 30, 1)
        s.apply([TileRetry(t.id, "429", 2.0, rate_limited=True)], now=1.0)
        s.claim("A", 2.0, 30, 1)
        s.apply([TileRetry(t.id, "HTTP 503", 3.0)], now=2.0)
    with Store.open(path) as s:  # a later run sees both counts
        again = s.tile(t.id)
        assert again is not None and (again.attempts, again.rate_limited) == (1, 2)
        s.claim("B", 3.0, 30, 2)
        s.apply([TileFailed(t.id, "gave up")], now=3.0)
        assert s.reset_failed() == 1
        reset = s.tile(t.id)
        assert reset is not None and (reset.attempts, reset.rate_limited) == (0, 0)


def test_a_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A state file written by eefetch before the job uid and the 429 count resumes."""
    path = tmp_path / "old.eefetch.db"
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "fixtures" / "state_v1.sql").read_text())
    con.execute("INSERT INTO job VALUES (1, 'fp', '{}', '0.1.0', 'running', 1.0, 2.0, '/o.tif')")
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, path, bytes, checksum, updated_at)"
        f" VALUES (1, 0, 0, 8, 8, 0, 1, 'done', 2, 't00000001.tif', 10, '{SHA}', 2.0)"
    )
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, updated_at) VALUES (1, 0, 8, 8, 8, 0, 1, 'pending', 3, 2.0)"
    )
    con.commit()
    con.close()
    with Store.open(path, create=False) as s:
        job = s.job()
        assert job is not None and len(job.uid) == 12 and job.status == "running"
        assert job.name == "o"  # named after its output, /o.tif
        done, pending = s.tiles()
        assert (done.status, done.path, done.attempts, done.rate_limited) == (
            "done",
            "t00000001.tif",
            2,
            0,
        )
        assert (pending.attempts, pending.rate_limited) == (3, 0)
        [claimed] = s.claim("A", 5.0, 30, 5)
        assert claimed.id == pending.id
    con = sqlite3.connect(path)
    try:
        assert dict(con.execute("SELECT key, value FROM meta"))["schema_version"] == "3"
    finally:
        con.close()
    with Store.open(path, create=False) as s:  # a second open changes nothing
        again = s.job()
        assert again is not None and again.uid == job.uid


def test_claim_arguments(store: Store) -> None:
    assert store.claim("A", 0.0, 30, 0) == []
    with pytest.raises(ValueError):
        store.claim("", 0.0, 30, 1)
    with pytest.raises(ValueError):
        store.claim("A", 0.0, 0, 1)


def test_not_before_delays_a_retry(store: Store) -> None:
    [t] = store.claim("A", 0.0, 30, 1)
    assert store.next_wakeup() == 0.0  # five tiles never tried: claimable now
    assert store.apply([TileRetry(t.id, "HTTP 503", not_before=20.0)], now=1.0) == []
    assert store.next_wakeup() == 0.0
    assert [x.id for x in store.claim("A", 19.9, 30, 10)] == [2, 3, 4, 5, 6]
    assert store.next_wakeup() == 20.0
    assert store.claim("A", 19.9, 30, 10) == []
    [again] = store.claim("A", 20.0, 30, 10)
    assert (again.id, again.attempts, again.not_before) == (t.id, 1, None)
    assert store.next_wakeup() is None


def test_the_parts_of_a_split_are_claimable_at_once(store: Store) -> None:
    """A scheduler with nothing in flight asks next_wakeup whether to wait or stop: parts of a
    split (no not_before) must count as claimable now, or a run ends with them unfetched (a
    loaded machine found this: the split reached the store after the last empty claim)."""
    claimed = store.claim("A", 0.0, 30, 6)
    store.apply([done(t.id) for t in claimed[1:]], now=1.0)
    assert store.next_wakeup() is None
    parent = claimed[0]
    half = parent.height // 2
    children = [
        NewTile(parent.row_off, parent.col_off, half, parent.width, 0, 3),
        NewTile(parent.row_off + half, parent.col_off, parent.height - half, parent.width, 0, 3),
    ]
    store.apply([TileSplit(parent.id, children, "request too large")], now=2.0)
    assert store.next_wakeup() == 0.0
    assert len(store.claim("A", 2.0, 30, 6)) == 2 and store.next_wakeup() is None


# ---- updates ---------------------------------------------------------------------------------


def test_every_update_kind(store: Store) -> None:
    store.claim("A", 0.0, 30, 6)
    skipped = store.apply(
        [
            TileUrl(1, "https://example.invalid/1", 1.0),
            done(1),
            TileUrl(2, "https://example.invalid/2", 1.0),
            TileRetry(2, "timeout", not_before=9.0),
            TileFailed(3, "HTTP 400: bad band"),
            TileReleased(4),
            TileSplit(
                5,
                [NewTile(256, 256, 128, 256, 0, 3), NewTile(384, 256, 128, 256, 0, 3)],
                "request too large",
            ),
        ],
        now=2.0,
    )
    assert skipped == []
    t = {x.id: x for x in store.tiles()} | {x.id: x for x in store.tiles("split")}
    assert (t[1].status, t[1].path, t[1].bytes, t[1].checksum) == ("done", "tile-1.tif", 1001, SHA)
    assert (t[1].claim_owner, t[1].claim_expires, t[1].url, t[1].updated_at) == (
        None,
        None,
        None,
        2.0,
    )
    assert (t[2].status, t[2].attempts, t[2].last_error, t[2].not_before) == (
        "pending",
        1,
        "timeout",
        9.0,
    )
    assert (t[2].url, t[2].url_made_at, t[2].claim_owner) == (
        "https://example.invalid/2",
        1.0,
        None,
    )
    assert (t[3].status, t[3].attempts, t[3].last_error) == ("failed", 1, "HTTP 400: bad band")
    assert (t[4].status, t[4].attempts, t[4].claim_owner) == ("pending", 0, None)
    assert (t[5].status, t[5].last_error, t[5].claim_owner) == ("split", "request too large", None)
    assert [(c.id, c.parent_id, c.window, c.status) for c in (t[7], t[8])] == [
        (7, 5, (256, 256, 128, 256), "pending"),
        (8, 5, (384, 256, 128, 256), "pending"),
    ]
    assert 5 not in {x.id for x in store.tiles()}
    assert store.counts() == {"pending": 4, "in_flight": 1, "done": 1, "failed": 1, "split": 1}
    assert store.bytes_done() == 1001

    assert store.apply([TileReset(1, "file missing")], now=3.0) == []
    one = store.tile(1)
    assert one is not None
    assert (one.status, one.path, one.bytes, one.checksum, one.last_error) == (
        "pending",
        None,
        None,
        None,
        "file missing",
    )
    assert store.bytes_done() == 0
    assert store.reset_failed(now=4.0) == 1
    three = store.tile(3)
    assert three is not None and (three.status, three.attempts) == ("pending", 0)


def test_stale_updates_are_skipped(store: Store) -> None:
    store.claim("A", 0.0, 30, 2)
    store.apply([done(1)], now=1.0)
    stale: list[TileUpdate] = [
        TileRetry(1, "late error", 5.0),  # done: a late worker's error must not undo it
        TileFailed(1, "late"),
        TileReleased(1),
        TileReleased(3),  # pending: nothing to release
        TileReset(2, "not done"),  # in flight: nothing to reset
    ]
    assert store.apply(stale, now=2.0) == stale
    t1, t2 = store.tile(1), store.tile(2)
    assert t1 is not None and (t1.status, t1.attempts, t1.last_error) == ("done", 0, None)
    assert t2 is not None and t2.status == "in_flight"


def test_bad_batches_change_nothing(store: Store) -> None:
    store.claim("A", 0.0, 30, 3)
    before = store.tiles()
    cases: list[tuple[list[TileUpdate], str]] = [
        ([done(1), TileFailed(999, "x")], "no tile 999"),
        ([done(1), TileDone(2, "t.tif", 1, "NOT-HEX")], "sha256"),
        ([done(1), TileDone(2, "/abs/t.tif", 1, SHA)], "relative"),
        ([done(1), TileSplit(2, [NewTile(0, 0, 999, 999, 0, 3)], "big")], "outside"),
        ([done(1), TileSplit(2, [], "big")], "at least one child"),
        ([done(1), TileRetry(2, "x", float("nan"))], "finite"),
    ]
    for batch, message in cases:
        with pytest.raises(ValueError, match=message):
            store.apply(batch, now=5.0)
        assert store.tiles() == before
    with pytest.raises(TypeError):
        store.apply(["done"], now=5.0)


def test_queries(store: Store) -> None:
    assert store.counts() == dict.fromkeys(TILE_STATUSES, 0) | {"pending": 6}
    assert store.last_errors() == []
    store.claim("A", 0.0, 30, 6)
    store.apply([TileRetry(1, "e1", 1.0)], now=1.0)
    store.apply([TileFailed(2, "e2")], now=2.0)
    store.apply([TileFailed(3, "e3"), done(4)], now=3.0)
    store.apply([TileSplit(5, [NewTile(256, 256, 1, 1, 0, 1)], "too big")], now=4.0)
    assert store.last_errors() == [(3, "e3"), (2, "e2"), (1, "e1")]
    assert store.last_errors(limit=1) == [(3, "e3")]
    assert [t.id for t in store.tiles("failed")] == [2, 3]
    assert [t.id for t in store.tiles()] == [1, 2, 3, 4, 6, 7]
    with pytest.raises(ValueError):
        store.tiles("finished")
    assert store.tile(12345) is None


def test_claim_and_counts_use_the_status_index(sqlite_store: Store) -> None:
    con = sqlite3.connect(sqlite_store.path)
    try:

        def plan(sql: str) -> str:
            return " | ".join(r[-1] for r in con.execute(f"EXPLAIN QUERY PLAN {sql}"))

        claim = plan(
            "SELECT id FROM tile WHERE job_id = 1 AND status = 'pending' AND (not_before IS NULL"
            " OR not_before <= 5.0) ORDER BY id LIMIT 100"
        )
        counts = plan("SELECT status, count(*) FROM tile WHERE job_id = 1 GROUP BY status")
    finally:
        con.close()
    assert "ix_tile_job_status" in claim and "TEMP B-TREE" not in claim, claim
    assert "COVERING INDEX ix_tile_job_status" in counts and "TEMP B-TREE" not in counts, counts


# ---- random sequences against a model --------------------------------------------------------


UPDATE_KINDS = ("done", "retry", "fail", "split", "url", "rel", "reset")


class StoreMachine(RuleBasedStateMachine):
    """Random claims, updates, releases and resets, checked against a dict model."""

    def __init__(self, target: Path | str) -> None:
        super().__init__()
        self.store = Store.open(target)
        self.store.create_job("fp", SPEC, "0", "o.tif", grid_tiles(2, 3, size=8, bands=2), now=0)
        self.now = 0.0
        self.model: dict[int, dict[str, Any]] = {
            i: self._fresh(t) for i, t in enumerate(grid_tiles(2, 3, size=8, bands=2), start=1)
        }
        self.attempts_seen = {i: 0 for i in self.model}

    @staticmethod
    def _fresh(t: NewTile) -> dict[str, Any]:
        return {
            "window": (t.row_off, t.col_off, t.height, t.width, t.band_start, t.band_stop),
            "status": "pending",
            "attempts": 0,
            "rate_limited": 0,
            "owner": None,
            "expires": None,
            "not_before": None,
            "bytes": None,
        }

    def teardown(self) -> None:
        self.store.close()

    def _unclaim(self, m: dict[str, Any], status: str) -> None:
        m.update(status=status, owner=None, expires=None)

    @rule(dt=st.floats(0, 40))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(owner=st.sampled_from("ab"), lease=st.sampled_from([5.0, 20.0]), limit=st.integers(0, 4))
    def claim(self, owner: str, lease: float, limit: int) -> None:
        got = self.store.claim(owner, self.now, lease, limit)
        expected = [
            i
            for i, m in sorted(self.model.items())
            if (m["status"] == "pending" and (m["not_before"] or 0) <= self.now)
            or (m["status"] == "in_flight" and m["expires"] <= self.now and m["owner"] != owner)
        ][:limit]
        assert [t.id for t in got] == expected
        for i in expected:
            self.model[i].update(
                status="in_flight", owner=owner, expires=self.now + lease, not_before=None
            )

    def _claimed_by(self, owner: str) -> list[dict[str, Any]]:
        return [
            m for m in self.model.values() if m["status"] == "in_flight" and m["owner"] == owner
        ]

    @rule(owner=st.sampled_from("ab"), lease=st.sampled_from([5.0, 20.0]))
    def renew(self, owner: str, lease: float) -> None:
        n = self.store.renew_claims(owner, self.now, lease)
        mine = [
            m for m in self.model.values() if m["status"] == "in_flight" and m["owner"] == owner
        ]
        assert n == len(mine)
        for m in mine:
            m["expires"] = self.now + lease

    @rule(owner=st.sampled_from("ab"))
    def release(self, owner: str) -> None:
        mine = [
            m for m in self.model.values() if m["status"] == "in_flight" and m["owner"] == owner
        ]
        assert self.store.release_claims(owner) == len(mine)
        for m in mine:
            self._unclaim(m, "pending")

    @rule()
    def reset_failed(self) -> None:
        failed = [i for i, m in self.model.items() if m["status"] == "failed"]
        assert self.store.reset_failed() == len(failed)
        for i in failed:
            self.model[i].update(status="pending", attempts=0, rate_limited=0)
            self.attempts_seen[i] = 0

    @rule(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 4))
        batch: list[TileUpdate] = []
        for _ in range(n):
            i = data.draw(st.sampled_from(sorted(self.model)))
            kind = data.draw(
                st.sampled_from(["done", "retry", "429", "fail", "split", "url", "rel", "reset"])
            )
            if kind == "split" and self.model[i]["window"][3] < 2:
                kind = "fail"
            batch.append(self._update(kind, i))
        expected_skips = [u for u in batch if not self._model_apply(u)]
        assert self.store.apply(batch, self.now) == expected_skips

    def _update(self, kind: str, i: int) -> TileUpdate:
        row, col, h, w, b0, b1 = self.model[i]["window"]
        match kind:
            case "done":
                return TileDone(i, f"{i}.tif", 10 * i, SHA)
            case "retry":
                return TileRetry(i, "503", self.now + 7.5)
            case "429":
                return TileRetry(i, "429", self.now + 2.5, rate_limited=True)
            case "fail":
                return TileFailed(i, "400")
            case "split":
                half = w // 2
                kids = [
                    NewTile(row, col, h, half, b0, b1),
                    NewTile(row, col + half, h, w - half, b0, b1),
                ]
                return TileSplit(i, kids, "too big")
            case "url":
                return TileUrl(i, f"https://x.invalid/{i}", self.now)
            case "rel":
                return TileReleased(i)
        return TileReset(i, "corrupt")

    def _model_apply(self, u: TileUpdate) -> bool:
        m = self.model[u.tile_id]
        s = m["status"]
        match u:
            case TileDone() if s in ("pending", "in_flight", "done", "failed"):
                self._unclaim(m, "done")
                m.update(not_before=None, bytes=u.bytes)
            case TileRetry() if s in ("pending", "in_flight"):
                self._unclaim(m, "pending")
                counter = "rate_limited" if u.rate_limited else "attempts"
                m.update({counter: m[counter] + 1, "not_before": u.not_before})
            case TileFailed() if s in ("pending", "in_flight"):
                self._unclaim(m, "failed")
                m.update(attempts=m["attempts"] + 1, not_before=None)
            case TileSplit() if s in ("pending", "in_flight"):
                self._unclaim(m, "split")
                m["not_before"] = None
                for child in u.children:
                    self.model[max(self.model) + 1] = self._fresh(child)
                    self.attempts_seen[max(self.model)] = 0
            case TileUrl() if s in ("pending", "in_flight", "failed"):
                pass
            case TileReleased() if s == "in_flight":
                self._unclaim(m, "pending")
            case TileReset() if s == "done":
                m.update(status="pending", bytes=None, not_before=None)
            case _:
                return False
        return True

    @invariant()
    def matches_model(self) -> None:
        rows = {t.id: t for t in self.store.tiles()} | {t.id: t for t in self.store.tiles("split")}
        assert sorted(rows) == sorted(self.model)
        counts = self.store.counts()
        assert sum(counts.values()) == len(self.model)  # each tile in exactly one status
        for i, t in rows.items():
            m = self.model[i]
            assert t.status == m["status"] and t.status in TILE_STATUSES
            assert (t.claim_owner, t.claim_expires) == (m["owner"], m["expires"])
            assert t.attempts == m["attempts"] >= self.attempts_seen[i]
            assert t.rate_limited == m["rate_limited"]
            self.attempts_seen[i] = t.attempts
            assert t.not_before == m["not_before"]
            if t.status == "done":
                assert t.checksum == SHA and t.path and t.bytes == m["bytes"]
            else:
                assert t.checksum is None and t.bytes is None
            assert (t.status == "in_flight") == (t.claim_owner is not None)
        assert self.store.bytes_done() == sum(m["bytes"] or 0 for m in self.model.values())
        pending_nb = [
            m["not_before"] or 0.0 for m in self.model.values() if m["status"] == "pending"
        ]
        assert self.store.next_wakeup() == (min(pending_nb) if pending_nb else None)


@pytest.mark.slow
def test_store_machine(state_target: Target) -> None:
    on_server = getattr(state_target, "kind", "") == "postgresql"  # a database per example
    run_state_machine_as_test(
        lambda: StoreMachine(state_target()),
        settings=settings(
            max_examples=10 if on_server else 20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ---- SIGKILL at random moments ---------------------------------------------------------------

WORKER = """
import sys
from state import Store, TileDone, TileRetry, TileSplit, NewTile
owner = sys.argv[2]
with Store.open(sys.argv[1], create=False) as s:
    s.release_all_claims()
    now = float(sys.argv[3])
    print("ready", flush=True)
    while True:
        now += 1.0
        tiles = s.claim(owner, now, 30.0, 7)
        if not tiles:
            s.reset_failed()
            continue
        ups = []
        for k, t in enumerate(tiles):
            if k % 3 == 0:
                ups.append(TileDone(t.id, f"{t.id}.tif", 10, "ab" * 32))
            elif k % 3 == 1 and t.width > 1:
                w = t.width // 2
                kids = [NewTile(t.row_off, t.col_off, t.height, w, t.band_start, t.band_stop),
                        NewTile(t.row_off, t.col_off + w, t.height, t.width - w,
                                t.band_start, t.band_stop)]
                ups.append(TileSplit(t.id, kids, "big"))
            else:
                ups.append(TileRetry(t.id, "503", now))
        s.apply(ups, now)
"""


def test_sigkill_at_random_moments_leaves_a_consistent_file(tmp_path: Path) -> None:
    path = tmp_path / "job.eefetch"
    with Store.open(path) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid_tiles(20, 20, size=64), now=0.0)
    rng = random.Random(1)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), f"w{round_}", str(round_ * 1e6)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
            split_ok = con.execute(
                "SELECT count(*) FROM tile p WHERE p.status = 'split' AND NOT EXISTS "
                "(SELECT 1 FROM tile c WHERE c.parent_id = p.id)"
            ).fetchone()[0]
            assert split_ok == 0
        finally:
            con.close()
    with Store.open(path, create=False) as s:
        counts = s.counts()
        assert counts["done"] > 0
        assert sum(counts.values()) == len(s.tiles()) + counts["split"]
        # The killed worker's claims are stale; the next run takes them back at once.
        assert s.release_all_claims() == counts["in_flight"]


# ---- timings at 100,000 tiles (printed, not asserted) ----------------------------------------


@pytest.mark.slow
def test_timings_at_100k_tiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiles = grid_tiles(400, 250)
    lines: list[str] = []

    def timed(label: str, fn: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        lines.append(f"  {label:<34} {wall * 1000:8.1f} ms wall {cpu * 1000:8.1f} ms cpu")
        return result

    with Store.open(tmp_path / "big.eefetch") as s:
        timed("create_job (100,000 tiles)", lambda: s.create_job("fp", SPEC, "0", "o", tiles))
        claimed = timed(
            "claim 50 x 100",
            lambda: [t for k in range(50) for t in s.claim("A", float(k), 60.0, 100)],
        )
        assert len(claimed) == 5000
        timed(
            "apply 50 batches x 100 TileDone",
            lambda: [
                s.apply([done(t.id) for t in claimed[k : k + 100]], 100.0)
                for k in range(0, 5000, 100)
            ],
        )
        timed("claim 100 after 5,000 done", lambda: s.claim("A", 200.0, 60.0, 100))
        counts = timed("counts", s.counts)
        assert counts["done"] == 5000 and sum(counts.values()) == 100_000
        assert len(timed("tiles('done') (5,000)", lambda: s.tiles("done"))) == 5000
        assert len(timed("tiles() (100,000)", s.tiles)) == 100_000
        timed("bytes_done", s.bytes_done)
        timed("next_wakeup", s.next_wakeup)
        timed("last_errors", s.last_errors)
    with capsys.disabled():
        print("\nstate store timings at 100,000 tiles:\n" + "\n".join(lines))


def test_band_groups_lists_only_the_tiles_holding_some_bands(
    tmp_path: Path, state_target: Target
) -> None:
    with Store.open(state_target()) as store:
        tiles = [
            NewTile(0, 0, 10, 10, 0, 3),
            NewTile(10, 0, 10, 10, 0, 1),
            NewTile(10, 0, 10, 10, 1, 3),
        ]
        store.create_job("f", {}, "0", str(tmp_path / "o.tif"), tiles)
        assert sorted(store.band_groups(3)) == [(10, 0, 10, 10, 0, 1), (10, 0, 10, 10, 1, 3)]
        assert store.band_groups(1) == [(0, 0, 10, 10, 0, 3), (10, 0, 10, 10, 1, 3)]
