"""What only a server database does: restarts under a running store, commits whose answer is
lost, a server that stays down, refusals of URLs and foreign databases, concurrent set-up."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import OperationalError

from state import NewTile, Quota, StateError, Store, TileDone
from tests.pg import PostgresCluster

SHA = "ab" * 32
SPEC = {"bands": ["B1"]}


def grid(rows: int, cols: int) -> list[NewTile]:
    return [NewTile(r * 8, c * 8, 8, 8, 0, 1) for r in range(rows) for c in range(cols)]


@pytest.mark.slow
def test_a_restart_during_work_loses_nothing(own_cluster: PostgresCluster) -> None:
    url = own_cluster.create_database()
    with Store.open(url, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(20, 50))
    claimed: dict[str, list[int]] = {"A": [], "B": []}
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        try:
            with Store.open(url, job="j") as store:
                while tiles := store.claim(owner, None, 60.0, 5):
                    claimed[owner] += [t.id for t in tiles]
                    store.apply([TileDone(t.id, f"{t.id}.tif", 1, SHA) for t in tiles])
        except BaseException as exc:
            errors.append(exc)

    with Store.open(url, job="j") as watcher:
        threads = [threading.Thread(target=work, args=(o,)) for o in claimed]
        for t in threads:
            t.start()
        for threshold in (100, 300):
            while (done := watcher.counts()["done"]) < threshold:
                threading.Event().wait(0.01)
            assert done < 1000  # the restart comes while the workers are busy
            own_cluster.restart()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        every = claimed["A"] + claimed["B"]
        assert sorted(every) == sorted(t.id for t in watcher.tiles())  # each tile claimed once
        assert watcher.counts() == {
            "pending": 0,
            "in_flight": 0,
            "done": 1000,
            "failed": 0,
            "split": 0,
        }


def _lose_one_commit_answer(store_or_quota: Any) -> list[int]:
    """Make the next commit happen but its answer get lost, as when the connection drops at
    that instant; returns a list that counts the losses."""
    db = store_or_quota._db
    lost: list[int] = []

    def commit(transaction: RootTransaction) -> None:
        transaction.commit()
        if not lost:
            lost.append(1)
            raise OperationalError(
                "COMMIT", None, psycopg.OperationalError("server closed the connection")
            )

    db._commit = commit
    return lost


def test_a_claim_whose_commit_answer_was_lost_is_found(pg_url: str) -> None:
    with Store.open(pg_url, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(2, 5))
        lost = _lose_one_commit_answer(s)
        first = s.claim("A", None, 30.0, 3)
        assert lost == [1]
        assert [t.id for t in first] == [t.id for t in s.tiles("in_flight")]  # not claimed twice
        second = s.claim("A", None, 30.0, 3)
        assert not {t.id for t in first} & {t.id for t in second}
        assert s.counts()["in_flight"] == 6


def test_a_claim_cut_before_its_commit_is_run_again(pg_url: str) -> None:
    """The contrast: an answer lost on the way is not a claim lost; without its in-doubt check,
    the retried claim would take three more tiles and strand the first three."""
    with Store.open(pg_url, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(2, 5))
        lost = _lose_one_commit_answer(s)
        s._db.run(lambda conn: s._claim(conn, 1, "A", 0.0, 30.0, 3), write=True)
        assert lost == [1] and s.counts()["in_flight"] == 6


def test_a_job_and_a_slot_whose_commit_answers_were_lost_are_found(pg_url: str) -> None:
    with Store.open(pg_url, job="j") as s:
        _lose_one_commit_answer(s)
        job = s.create_job("fp", SPEC, "0", "o.tif", grid(1, 2))
        assert job.name == "j" and len(s.jobs()) == 1
        quota = s.quota()
        _lose_one_commit_answer(quota)
        assert quota.acquire_slot("p", "A", 30.0) == 0
        status = quota.status("p")
        assert status is not None and status.in_use == 1
        assert quota.acquire_slot("p", "A", 30.0) == 1


@pytest.mark.slow
def test_a_server_that_stays_down_is_reported_in_one_line(own_cluster: PostgresCluster) -> None:
    url = own_cluster.create_database("jobs")
    with Store.open(url, job="j", reconnect_seconds=1.0) as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(1, 2))
        own_cluster.stop_server()
        with pytest.raises(StateError) as info:
            s.counts()
        message = str(info.value)
        assert message.startswith(f"cannot reach the state database {url} (")
        assert "check that PostgreSQL is running" in message and "\n" not in message
        with pytest.raises(StateError, match="cannot reach the state database"):
            Store.open(url, reconnect_seconds=1.0)
        own_cluster.start_server()
        assert s.counts()["pending"] == 2  # the same store reconnects


def test_urls_and_databases_that_are_refused(pg_cluster: PostgresCluster, pg_url: str) -> None:
    for url, message in [
        ("mysql://u@127.0.0.1/db", "scheme 'mysql' is not supported"),
        ("postgresql+psycopg2://u@127.0.0.1/db", r"scheme 'postgresql\+psycopg2' is not supported"),
        (f"postgresql://postgres@127.0.0.1:{pg_cluster.port}", "names no database"),
    ]:
        with pytest.raises(StateError, match=message):
            Store.open(url)
    secret = f"postgresql://postgres:hunter2@127.0.0.1:{pg_cluster.port}/nowhere"
    with pytest.raises(StateError) as info:
        Store.open(secret)
    assert "does not exist" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(StateError, match="holds no eefetch job"):
        Store.open(pg_url, create=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE songs (title text)")
    with pytest.raises(StateError, match="holds tables that eefetch did not create"):
        Store.open(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (1,)


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    Store.open(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match=r"newer eefetch \(state schema 99; this eefetch reads"):
        Store.open(pg_url)


def test_workers_starting_together_set_the_schema_up_once(pg_url: str) -> None:
    opened: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait()
            opened.append(Store.open(pg_url, job="j"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(opened) == 4
    opened[0].create_job("fp", SPEC, "0", "o.tif", grid(1, 1))
    assert all(s.counts()["pending"] == 1 for s in opened)
    for s in opened:
        s.close()


def test_claims_find_pending_tiles_through_the_index(pg_url: str) -> None:
    """Late in a job most tiles are done: a claim must not walk past them."""
    with Store.open(pg_url, job="j") as s:
        s.create_job("fp", SPEC, "0", "o.tif", grid(40, 50))
        ids = [t.id for t in s.claim("A", None, 30, 1900)]
        s.apply([TileDone(i, "x.tif", 1, SHA) for i in ids])
    with psycopg.connect(pg_url) as conn:
        conn.execute("ANALYZE tile")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM tile WHERE job_id = 1 AND status = 'pending' AND "
                "(not_before IS NULL OR not_before <= 5) ORDER BY id LIMIT 100 "
                "FOR UPDATE SKIP LOCKED"
            )
        )
    assert "ix_tile_job_status" in plan and "Seq Scan" not in plan, plan


def test_the_quota_lives_beside_the_jobs(pg_url: str) -> None:
    with Store.open(pg_url, job="j") as s, Quota.open(pg_url) as other:
        s.quota().configure("p", 2)
        assert other.acquire_slot("p", "x", 30.0) == 0
        assert s.quota().acquire_slot("p", "y", 30.0) == 1
        assert other.acquire_slot("p", "z", 30.0) is None
