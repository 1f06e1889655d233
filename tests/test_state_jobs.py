"""Several jobs in one database, the database's clock, workers and the merge lease, upgrades
of older state files, and several processes claiming at once (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from state import (
    SCHEMA_VERSION,
    NewTile,
    StateError,
    Store,
    TileDone,
    TileRetry,
    default_job_name,
)

REPO = Path(__file__).resolve().parents[1]
PROCS = str(Path(__file__).with_name("state_procs.py"))
SHA = "ab" * 32
SPEC = {"grid": [1, 0, 0, 0, -1, 0], "bands": ["B1"]}
Target = Callable[[], "Path | str"]


def grid(rows: int, cols: int) -> list[NewTile]:
    return [NewTile(r * 8, c * 8, 8, 8, 0, 1) for r in range(rows) for c in range(cols)]


def spawn(*args: str, skew: float | None = None) -> subprocess.Popen[str]:
    prefix = [] if skew is None else ["--skew", str(skew)]
    return subprocess.Popen(
        [sys.executable, PROCS, *prefix, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    text = proc.stdout.readline()
    assert text, f"worker ended early (exit {proc.wait()})"
    return json.loads(text)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def target(state_target: Target) -> Path | str:
    return state_target()


@pytest.fixture
def two_jobs(target: Path | str) -> Iterator[tuple[Store, Store]]:
    a = Store.open(target, job="a")
    b = Store.open(target, job="b")
    a.create_job("fa", SPEC, "0", "/out/a.tif", grid(2, 2))
    b.create_job("fb", SPEC, "0", "/out/b.tif", grid(1, 3))
    yield a, b
    a.close()
    b.close()


# ---- several jobs in one database ----------------------------------------------------------


def test_jobs_in_one_database_stay_apart(two_jobs: tuple[Store, Store]) -> None:
    a, b = two_jobs
    assert [(j.name, j.output_path) for j in a.jobs()] == [("a", "/out/a.tif"), ("b", "/out/b.tif")]
    assert a.counts()["pending"] == 4 and b.counts()["pending"] == 3
    a_ids = [t.id for t in a.tiles()]
    b_ids = [t.id for t in b.tiles()]
    assert not set(a_ids) & set(b_ids)
    assert [t.id for t in a.claim("w", 0.0, 30, 10)] == a_ids
    assert a.claim("w2", 0.0, 30, 10) == []  # job b's pending tiles are not a's
    with pytest.raises(ValueError, match=f"no tile {b_ids[0]}"):
        a.apply([TileDone(b_ids[0], "x.tif", 1, SHA)], now=1.0)
    assert a.tile(b_ids[0]) is None
    assert a.release_all_claims() == 4 and b.counts()["in_flight"] == 0
    b.apply([TileRetry(b_ids[0], "503", 9.0)], now=1.0)
    assert a.next_wakeup() == 0.0 and b.next_wakeup() == 0.0  # released or new: claimable now
    assert len(a.claim("w", 0.0, 30, 10)) == 4 and len(b.claim("w", 0.0, 30, 10)) == 2
    assert a.next_wakeup() is None and b.next_wakeup() == 9.0  # b's retry is not a's
    assert a.reset_failed() == 0 and b.bytes_done() == 0


def test_a_store_without_a_name_needs_one_when_there_are_several(
    two_jobs: tuple[Store, Store], target: Path | str
) -> None:
    with Store.open(target) as s, pytest.raises(StateError) as info:
        s.counts()
    assert str(info.value).endswith("holds 2 jobs (a, b); name one with --job")
    with Store.open(target, job="b") as s:
        job = s.job()
        assert job is not None and job.fingerprint == "fb"
    with Store.open(target, job="c") as s:
        assert s.job() is None and s.counts()["pending"] == 0
        with pytest.raises(StateError, match="no job named c"):
            s.register_worker("w", 30)


def test_a_name_is_taken_once(two_jobs: tuple[Store, Store], target: Path | str) -> None:
    with Store.open(target, job="a") as again, pytest.raises(StateError, match="already holds"):
        again.create_job("other", SPEC, "0", "/out/a2.tif", grid(1, 1))
    with pytest.raises(StateError, match="job name 'no spaces' is not allowed"):
        Store.open(target, job="no spaces")


def test_an_unnamed_job_is_named_after_its_output(target: Path | str) -> None:
    with Store.open(target) as s:
        job = s.create_job("fp", SPEC, "0", "/data/Kenya S2 2024.tif", grid(1, 1))
        assert job.name == s.name == "Kenya-S2-2024"
    with Store.open(target) as s:  # the only job: bound without a name
        again = s.job()
        assert again is not None and again.uid == job.uid


def test_default_job_name() -> None:
    assert default_job_name("/data/kenya_s2.tif") == "kenya_s2"
    assert default_job_name("out.TIFF") == "out"
    assert default_job_name("/x/é gâteau.tif") == "g-teau"
    assert default_job_name("/x/.tif") == "tif"
    assert default_job_name("/x/...tif") == "job"
    assert len(default_job_name("a" * 500 + ".tif")) == 128


# ---- the database's clock ----------------------------------------------------------------------


def test_now_none_uses_the_database_clock(target: Path | str) -> None:
    with Store.open(target) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(2, 2))
        before = s.now()
        [t] = s.claim("A", None, 30.0, 1)
        after = s.now()
        assert t.claim_expires is not None and before + 30 <= t.claim_expires <= after + 30
        s.apply([TileRetry(t.id, "503", delay=5.0)])
        again = s.tile(t.id)
        assert again is not None and again.not_before is not None
        assert before + 5 <= again.not_before <= s.now() + 5
        assert s.claim("B", None, 30.0, 10) != [] and s.tile(t.id).status == "pending"
        assert abs(s.now() - time.time()) < 60  # SQLite: this machine's clock; PG: the same one


def test_an_owner_never_gets_its_own_tiles_back_on_the_database_clock(target: Path | str) -> None:
    with Store.open(target) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(1, 3))
        mine = s.claim("A", None, 0.05, 2)
        wait_for(lambda: s.now() > mine[0].claim_expires)
        assert [t.id for t in s.claim("A", None, 30, 10)] == [3]
        assert sorted(t.id for t in s.claim("B", None, 30, 10)) == [mine[0].id, mine[1].id]


def test_a_retry_takes_one_time() -> None:
    from state.store import _check_update

    for bad, message in [
        (TileRetry(1, "x"), "not_before or delay"),
        (TileRetry(1, "x", 5.0, delay=1.0), "not_before or delay"),
        (TileRetry(1, "x", delay=-1.0), "delay >= 0"),
        (TileRetry(1, "x", delay=float("inf")), "finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            _check_update(bad)


# ---- workers and the merge lease -----------------------------------------------------------


def test_workers_are_alive_while_they_beat(two_jobs: tuple[Store, Store]) -> None:
    a, b = two_jobs
    w = a.register_worker("w1", 10.0, host="h1", pid=11, now=100.0)
    assert (w.owner, w.host, w.pid, w.started_at, w.last_seen, w.alive) == (
        "w1",
        "h1",
        11,
        100.0,
        100.0,
        True,
    )
    a.register_worker("w2", 10.0, host="h2", pid=22, now=101.0)
    assert a.heartbeat("w1", tiles_done=3, bytes_done=3000, now=105.0)
    assert not a.heartbeat("nobody", now=105.0)
    assert b.workers() == []  # another job's workers are its own
    rows = {r.owner: r for r in a.workers(now=111.5)}
    assert (rows["w1"].alive, rows["w1"].tiles_done, rows["w1"].bytes_done) == (True, 3, 3000)
    assert rows["w2"].alive is False  # last seen at 101, lease 10
    assert a.stop_worker("w1", now=112.0)
    assert [r.alive for r in a.workers(now=112.0)] == [False, False]
    again = a.register_worker("w1", 10.0, now=120.0)  # the same owner back: counters kept
    assert (again.started_at, again.tiles_done, again.alive) == (100.0, 3, True)
    live = a.register_worker("w3", 10.0)
    assert live.alive and live.pid == os.getpid()


def test_the_merge_lease_has_one_holder(two_jobs: tuple[Store, Store]) -> None:
    a, b = two_jobs
    assert a.merge_lease() is None
    assert a.acquire_merge("A", 10.0, now=0.0)
    assert not a.acquire_merge("B", 10.0, now=5.0)
    assert b.acquire_merge("B", 10.0, now=5.0)  # another job's merge is another lease
    assert a.renew_merge("A", 10.0, now=8.0)  # until 18
    assert not a.acquire_merge("B", 10.0, now=17.9)
    lease = a.merge_lease(now=17.9)
    assert lease is not None and (lease.owner, lease.expires, lease.live) == ("A", 18.0, True)
    assert a.acquire_merge("B", 10.0, now=18.0)  # A's lease ran out: A is dead or hung
    assert not a.renew_merge("A", 10.0, now=18.5)  # A learns it lost the merge
    assert not a.release_merge("A")
    assert a.acquire_merge("B", 10.0, now=19.0)  # the holder may take it again (a renewal)
    assert a.release_merge("B") and a.merge_lease() is None
    assert a.acquire_merge("A", 10.0, now=20.0)


@pytest.mark.slow
def test_one_merger_among_processes(two_jobs: tuple[Store, Store], target: Path | str) -> None:
    procs = [spawn("merge-race", str(target), "a", f"m{k}", "5") for k in range(3)]
    holdings: list[tuple[float, float, str]] = []
    for k, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for text in out.splitlines():
            row = json.loads(text)
            assert "error" not in row, row
            assert row["seen"] == f"m{k}"  # while holding, the database names it as holder
            holdings.append((row["start"], row["end"], row["seen"]))
    assert len(holdings) == 15
    holdings.sort()
    for (_, end, who), (start, _, other) in itertools.pairwise(holdings):
        assert end <= start, f"{who} and {other} held the merge at once"


def test_a_dead_mergers_lease_passes_on(two_jobs: tuple[Store, Store], target: Path | str) -> None:
    a, _ = two_jobs
    holder = spawn("merge-hold", str(target), "a", "dead", "1.0")
    try:
        assert line(holder) == {"acquired": True}
        held = a.merge_lease()
        assert held is not None and held.owner == "dead"
        assert not a.acquire_merge("heir", 30.0) or a.now() >= held.expires
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        wait_for(lambda: a.acquire_merge("heir", 30.0))
        assert a.now() >= held.expires  # taken only once the lease had run out
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# ---- several processes claiming ------------------------------------------------------------


@pytest.mark.slow
def test_processes_claiming_at_once_take_each_tile_once(target: Path | str) -> None:
    with Store.open(target, job="big") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(15, 20))
        procs = [spawn("claim-all", str(target), "big", f"w{k}", "5", "60") for k in range(3)]
        claimed: list[int] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0
            rows = [json.loads(t) for t in out.splitlines()]
            assert rows[-1] == {"finished": True}
            claimed += [i for row in rows[:-1] for i in row["claimed"]]
        assert sorted(claimed) == sorted(t.id for t in s.tiles())  # every tile, once
        assert s.counts()["done"] == 300


@pytest.mark.slow
def test_a_killed_workers_tiles_go_to_others_after_its_lease(target: Path | str) -> None:
    with Store.open(target, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(2, 5))
        victim = spawn("claim-hold", str(target), "j", "victim", "4", "1.5", "db")
        try:
            held = line(victim)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        finally:
            if victim.poll() is None:
                victim.kill()
        expires = max(held["expires"])
        first = s.claim("heir", None, 30.0, 20)
        assert not set(held["claimed"]) & {t.id for t in first} or s.now() >= expires
        taken: list[int] = [t.id for t in first if t.id in held["claimed"]]
        while len(taken) < len(held["claimed"]):
            wait_for(lambda: s.now() >= expires)
            got = s.claim("heir", None, 30.0, 20)
            assert all(t.updated_at >= expires for t in got)
            taken += [t.id for t in got]
        assert sorted(taken) == sorted(held["claimed"])


@pytest.mark.parametrize("skew", [600.0, -600.0])
def test_a_skewed_worker_neither_steals_nor_loses_leases(target: Path | str, skew: float) -> None:
    """A worker whose clock is 10 minutes off: by the database's clock, live leases of others
    stay theirs and its own stay its own; on its own clock it would do both wrongs."""
    with Store.open(target, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(2, 5))
        honest = s.claim("honest", None, 60.0, 3)
        skewed = spawn("claim-hold", str(target), "j", "skewed", "3", "60", "db", skew=skew)
        try:
            got = line(skewed)
            assert not {t.id for t in honest} & set(got["claimed"])  # no steal
            assert len(got["claimed"]) == 3
            assert all(abs(e - (s.now() + 60)) < 30 for e in got["expires"])
            assert s.claim("honest2", None, 60.0, 10) != []  # the rest, not the skewed's tiles
            assert all(
                t.claim_owner == "skewed" for t in s.tiles("in_flight") if t.id in got["claimed"]
            )
            assert skewed.stdin is not None
            skewed.stdin.write("renew\n")
            skewed.stdin.flush()
            assert line(skewed) == {"renewed": 3}
        finally:
            skewed.kill()
            skewed.wait()
        # The same worker on its own clock: ahead, it takes live leases of others; behind, its
        # leases look long expired to everyone else.
        own = spawn("claim-hold", str(target), "j", "own", "20", "60", "own", skew=skew)
        try:
            took = set(line(own)["claimed"])
        finally:
            own.kill()
            own.wait()
        if skew > 0:
            assert {t.id for t in honest} <= took
        else:
            assert {t.id for t in s.claim("thief", None, 60.0, 20)} == took


# ---- upgrades of older SQLite files ----------------------------------------------------------


def _schema_of(path: Path) -> dict[str, Any]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            "tables": sorted(tables),
            "columns": {
                t: sorted(r[1] for r in con.execute(f"PRAGMA table_info({t})")) for t in tables
            },
            "indexes": sorted(
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                )
            ),
            "meta": dict(con.execute("SELECT key, value FROM meta")),
        }
    finally:
        con.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_is_upgraded_to_the_current_schema(tmp_path: Path, version: int) -> None:
    path = tmp_path / f"v{version}.eefetch"
    con = sqlite3.connect(path)
    con.executescript((REPO / "tests" / "fixtures" / f"state_v{version}.sql").read_text())
    uid = ", 'abcdef012345'" if version == 2 else ""
    con.execute(
        f"INSERT INTO job VALUES (1, 'fp', '{{}}', '0.1.0', 'running', 1.0, 2.0, '/d/big.tif'{uid})"
    )
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, path, bytes, checksum, updated_at)"
        f" VALUES (1, 0, 0, 8, 8, 0, 1, 'done', 2, 't1.tif', 10, '{SHA}', 2.0)"
    )
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, updated_at) VALUES (1, 0, 8, 8, 8, 0, 1, 'pending', 3, 2.0)"
    )
    con.commit()
    con.close()
    fresh = tmp_path / "fresh.eefetch"
    Store.open(fresh).close()
    with Store.open(path, create=False) as s:
        job = s.job()
        assert job is not None and job.name == "big" and job.status == "running"
        assert version == 1 or job.uid == "abcdef012345"
        done, pending = s.tiles()
        assert (done.status, done.path, pending.attempts) == ("done", "t1.tif", 3)
        [claimed] = s.claim("A", None, 30, 5)
        assert claimed.id == pending.id
        assert s.register_worker("A", 30).alive and s.acquire_merge("A", 30)
        assert s.quota().acquire_slot("p", "A", 30) == 0
    upgraded = _schema_of(path)
    assert upgraded == _schema_of(fresh)
    assert upgraded["meta"]["schema_version"] == str(SCHEMA_VERSION)
    with Store.open(path, create=False) as s:  # a second open changes nothing
        again = s.job()
        assert again is not None and (again.uid, again.name) == (job.uid, "big")


def test_an_upgrade_names_several_jobs_apart(tmp_path: Path) -> None:
    path = tmp_path / "two.eefetch"
    con = sqlite3.connect(path)
    con.executescript((REPO / "tests" / "fixtures" / "state_v2.sql").read_text())
    for k in (1, 2):
        con.execute(
            f"INSERT INTO job VALUES ({k}, 'fp', '{{}}', '0', 'running', 1.0, 2.0, '/{k}/o.tif',"
            f" 'u{k}')"
        )
    con.commit()
    con.close()
    with Store.open(path, job="o-2") as s:
        assert [j.name for j in s.jobs()] == ["o", "o-2"]
        job = s.job()
        assert job is not None and job.uid == "u2"
