"""`eefetch serve`: the numbers behind the page, its JSON endpoints on real state files, and
that it only reads (no lock, no write, no read transaction left open, no URL or token shown).
The page in a real browser is tests/test_browser.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from jobstates import make_state, set_states, split

from engine import inventory, jobstats
from engine.snapshot import EmptyState, ErrorCount, JobFacts, Snapshot, Tiles, read_snapshot
from engine.testing.cli import REPO
from engine.webview import loopback_hosts, make_app
from state import TILE_STATUSES, JobLock, NewTile, StateError, Store

SECRET_URL = "https://earthengine.googleapis.com/v1/projects/p/thumbnails/SECRET123:getPixels"
SECRET_ERROR = (
    "HTTP 403: GET https://earthengine.googleapis.com/v1/thumbnails/SECRET456:getPixels "
    "failed; Authorization: Bearer ya29.TOKEN789"
)


# ---------------------------------------------------------------------------- the numbers


def snapshot(
    statuses: list[str],
    times: list[float],
    nbytes: list[int],
    *,
    read_at: float,
    running: bool,
    run_started_at: float | None = None,
    errors: list[ErrorCount] | None = None,
) -> Snapshot:
    count = len(statuses)
    column = np.arange(count, dtype=np.int64)
    tiles = Tiles(
        id=column + 1,
        parent_id=np.full(count, -1),
        row_off=column,
        col_off=np.zeros(count, dtype=np.int64),
        height=np.ones(count, dtype=np.int64),
        width=np.ones(count, dtype=np.int64),
        band_start=np.zeros(count, dtype=np.int64),
        band_stop=np.ones(count, dtype=np.int64),
        status=np.array([TILE_STATUSES.index(s) for s in statuses], dtype=np.int8),
        attempts=np.zeros(count, dtype=np.int64),
        rate_limited=np.zeros(count, dtype=np.int64),
        bytes=np.array(nbytes, dtype=np.int64),
        updated_at=np.array(times, dtype=np.float64),
    )
    grid = {"crs": "EPSG:4326", "transform": [1, 0, 0, 0, -1, 0], "width": 1, "height": count}
    facts = JobFacts(
        path=Path("/nowhere/x.tif.eefetch.db"),
        job_status="planned",
        spec={"grid": grid, "band_ids": ["b"], "dtype": "uint8"},
        output_path="/nowhere/x.tif",
        created_at=0.0,
        counts={s: statuses.count(s) for s in TILE_STATUSES},
        bytes_done=sum(n for s, n in zip(statuses, nbytes, strict=True) if s == "done"),
        running=running,
        run_started_at=run_started_at,
        read_at=read_at,
    )
    return Snapshot(facts=facts, tiles=tiles, recent_errors=[], errors=errors or [])


def test_throughput_is_recorded_bytes_per_second_in_bins_ending_now() -> None:
    # 60 tiles of 1 MB recorded one a second from t=1000; read at t=1060 while running.
    times = [1000.0 + i for i in range(60)]
    snap = snapshot(["done"] * 60, times, [1_000_000] * 60, read_at=1060.0, running=True)
    flow = jobstats.throughput(snap)
    assert flow.bin_seconds == 2.0 and flow.end == 1060.0 and len(flow) == 30
    assert flow.mb_per_s == pytest.approx([1.0] * 30)
    assert flow.starts()[0] == 1000.0
    stopped = snapshot(["done"] * 60, times, [1_000_000] * 60, read_at=5000.0, running=False)
    assert jobstats.throughput(stopped).end == 1059.0  # a stopped job's chart ends at its last tile
    assert sum(jobstats.throughput(stopped).mb_per_s) * 2.0 == pytest.approx(60.0)
    long = jobstats.throughput(
        snapshot(["done"] * 2, [0.0, 10_000.0], [5, 5], read_at=10_000.0, running=False)
    )
    assert len(long) == jobstats.MAX_BINS and long.bin_seconds == 60.0  # the last hour only
    empty = snapshot(["pending"], [0.0], [0], read_at=1.0, running=True)
    assert jobstats.throughput(empty).mb_per_s == []


def test_eta_is_what_is_left_at_this_runs_recent_rate() -> None:
    # This run started at t=1000 and recorded 60 tiles (1 MB each) by t=1060; 30 are left.
    statuses = ["done"] * 70 + ["pending"] * 25 + ["in_flight"] * 5 + ["failed"] * 2
    times = [500.0] * 10 + [1000.0 + i for i in range(60)] + [0.0] * 32
    snap = snapshot(
        statuses, times, [1_000_000] * 102, read_at=1060.0, running=True, run_started_at=1000.0
    )
    eta = jobstats.eta(snap)
    assert eta.remaining_tiles == 30  # failed tiles wait for the next run
    assert eta.tiles_per_s == pytest.approx(1.0) and eta.mb_per_s == pytest.approx(1.0)
    assert eta.seconds == pytest.approx(30.0)
    later = snapshot(
        statuses, times, [1_000_000] * 102, read_at=1300.0, running=True, run_started_at=1000.0
    )
    assert jobstats.eta(later).seconds is None and "measuring" in jobstats.eta(later).reason
    assert jobstats.eta(snapshot(statuses, times, [1] * 102, read_at=1060.0, running=False)) == (
        jobstats.Eta(None, None, None, 30, "not running")
    )
    finished = snapshot(["done"], [1.0], [1], read_at=2.0, running=True)
    assert jobstats.eta(finished).seconds == 0.0


def test_retries_are_the_states_counters_and_causes_its_last_errors() -> None:
    errors = [
        ErrorCount("HTTP 503: Service Unavailable", "done", 3, 4, 0),
        ErrorCount("gave up after 6 attempts: HTTP 503: busy", "failed", 1, 6, 0),
        ErrorCount("HTTP 429: Too many requests", "pending", 2, 0, 7),
        ErrorCount("HTTP 400: Total request size (61 MB) must be less", "split", 1, 0, 0),
        ErrorCount("connection reset by peer (after 1234 bytes)", "pending", 1, 1, 0),
    ]
    snap = snapshot(["done"], [1.0], [1], read_at=2.0, running=False, errors=errors)
    found = jobstats.retries(snap)
    causes = {c.cause: (c.tiles, c.failed_attempts, c.rate_limited) for c in found.by_cause}
    assert causes == {
        "HTTP 503": (4, 10, 0),
        "HTTP 429": (2, 0, 7),
        "split: HTTP 400": (1, 0, 0),
        "connection reset by peer": (1, 1, 0),
    }
    assert found.by_cause[0].cause == "HTTP 503"
    assert jobstats.cause("Read timed out after 30 s") == "Read timed out after N s"


def test_urls_and_tokens_are_hidden_from_error_texts() -> None:
    shown = jobstats.redact(SECRET_ERROR + " ?access_token=abc.def&x=1")
    assert "SECRET456" not in shown and "TOKEN789" not in shown and "abc.def" not in shown
    assert shown.startswith("HTTP 403: GET (URL hidden) failed") and "Bearer (hidden)" in shown


# ---------------------------------------------------------------------------- the endpoints


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Jobs under a folder: a mixed one, one with a secret URL and error, an empty state file
    and a file that is not a state file."""
    mixed = make_state(tmp_path / "mixed.tif.eefetch.db", 3, 5, region="118.1,32.3,118.4,32.45")
    split(mixed, 7, [NewTile(r, c, 50, 50, 0, 1) for r in (100, 150) for c in (100, 150)], 1.0)
    set_states(mixed, "id IN (1, 2, 3, 16)", "done", updated_at="1000 + id")
    set_states(mixed, "id IN (4, 5)", "in_flight")
    set_states(mixed, "id = 6", "failed", error="gave up after 5 attempts: HTTP 503: x", attempts=5)
    set_states(mixed, "id = 8", "pending", error="HTTP 429: slow down", rate_limited=3)
    (tmp_path / "sub").mkdir()
    secret = make_state(tmp_path / "sub" / "secret.tif.eefetch.db", 1, 2)
    set_states(secret, "id = 1", "pending", error=SECRET_ERROR, attempts=1)
    db = sqlite3.connect(secret)
    with db:
        db.execute("UPDATE tile SET url = ?, url_made_at = 1 WHERE id = 2", (SECRET_URL,))
    db.close()
    Store.open(tmp_path / "empty.tif.eefetch.db").close()
    (tmp_path / "junk.tif.eefetch.db").write_text("not a database")
    return tmp_path


def with_client(root: Path, test: Callable[[TestClient], Awaitable[None]], **app: Any) -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_app(root, **app))) as client:
            await test(client)

    asyncio.run(main())


async def get_json(client: TestClient, url: str) -> Any:
    answer = await client.get(url)
    assert answer.status == 200, await answer.text()
    assert answer.headers["Cache-Control"] == "no-store"
    return await answer.json()


def test_the_jobs_of_a_folder_match_status(folder: Path) -> None:
    async def test(client: TestClient) -> None:
        listed = await get_json(client, "/api/jobs")
        assert listed["folder"] is True and listed["root"] == str(folder.resolve())
        jobs = {job["id"]: job for job in listed["jobs"]}
        assert set(jobs) == {
            "empty.tif.eefetch.db",
            "junk.tif.eefetch.db",
            "mixed.tif.eefetch.db",
            "sub/secret.tif.eefetch.db",
        }
        assert jobs["empty.tif.eefetch.db"]["status"] == "empty"
        assert jobs["junk.tif.eefetch.db"]["status"] == "unreadable"
        assert "not an eefetch state file" in jobs["junk.tif.eefetch.db"]["error"] or (
            "cannot be read" in jobs["junk.tif.eefetch.db"]["error"]
        )
        for ident in ("mixed.tif.eefetch.db", "sub/secret.tif.eefetch.db"):
            row = inventory.read_job(folder / ident).to_dict()  # what status --json says
            for key in ("tiles", "percent", "bytes_done", "expected_bytes", "status", "running"):
                assert jobs[ident][key] == row[key], (ident, key)
            assert jobs[ident]["state_label"] == row["state_label"]
        assert jobs["mixed.tif.eefetch.db"]["tiles"] == {
            "pending": 11,
            "in_flight": 2,
            "done": 4,
            "failed": 1,
            "split": 1,
        }
        assert set(listed["colours"]) == set(TILE_STATUSES)

    with_client(folder, test)


def test_one_job_in_detail(folder: Path) -> None:
    async def test(client: TestClient) -> None:
        job = await get_json(client, "/api/job?id=mixed.tif.eefetch.db")
        assert job["tiles"]["done"] == 4 and job["bytes_done"] == 4000
        assert job["grid"] == {"width": 500, "height": 300, "crs": "EPSG:4326"}
        assert job["throughput"]["mb_per_s"] and job["throughput"]["bin_seconds"] >= 2
        assert job["eta"]["reason"] == "not running" and job["eta"]["remaining_tiles"] == 13
        retries = job["retries"]
        assert (retries["failed_attempts"], retries["rate_limited"]) == (5, 3)
        causes = {c["cause"]: c["tiles"] for c in retries["by_cause"]}
        assert causes == {"HTTP 503": 1, "HTTP 429": 1, "split: HTTP 400": 1}
        assert [e["tile"] for e in job["recent_errors"]] == [8, 6]  # newest first
        assert len(job["map_version"]) == 16 and job["has_region"] is True
        picture = await client.get("/api/map.png?id=mixed.tif.eefetch.db")
        assert picture.status == 200 and picture.content_type == "image/png"
        first = await picture.read()
        assert first.startswith(b"\x89PNG")
        again = await (await client.get("/api/map.png?id=mixed.tif.eefetch.db")).read()
        assert again == first
        set_states(folder / "mixed.tif.eefetch.db", "id = 15", "done")
        changed = await get_json(client, "/api/job?id=mixed.tif.eefetch.db")
        assert changed["map_version"] != job["map_version"] and changed["tiles"]["done"] == 5
        assert await (await client.get("/api/map.png?id=mixed.tif.eefetch.db")).read() != first
        for bad in ("../mixed.tif.eefetch.db", "nope", "", "/etc/passwd"):
            assert (await client.get(f"/api/job?id={bad}")).status == 404
            assert (await client.get(f"/api/map.png?id={bad}")).status == 404
        assert (await client.get("/api/map.png?id=empty.tif.eefetch.db")).status == 404
        assert (await client.post("/api/jobs")).status == 405
        assert (await client.get("/static/../cli.py")).status == 404
        page = await client.get("/")
        assert page.status == 200 and "static/app.js" in await page.text()
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert (await client.get("/static/app.js")).content_type == "text/javascript"

    with_client(folder, test)


def test_no_url_or_token_is_ever_sent(folder: Path) -> None:
    async def test(client: TestClient) -> None:
        bodies = [await (await client.get("/api/jobs")).read()]
        for ident in ("sub/secret.tif.eefetch.db", "mixed.tif.eefetch.db"):
            bodies.append(await (await client.get(f"/api/job?id={ident}")).read())
            bodies.append(await (await client.get(f"/api/map.png?id={ident}")).read())
        for body in bodies:
            for secret in (b"SECRET123", b"SECRET456", b"TOKEN789", b"googleapis"):
                assert secret not in body
        job = json.loads(bodies[1])
        assert job["has_region"] is False
        assert job["recent_errors"][0]["error"].startswith("HTTP 403: GET (URL hidden) failed")

    with_client(folder, test)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_changes_nothing_takes_no_lock_and_never_blocks_the_writer(folder: Path) -> None:
    state = folder / "mixed.tif.eefetch.db"
    before = digest(state)
    writer = sqlite3.connect(state, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute(
        "UPDATE tile SET status='done', path='p', bytes=7, checksum=? WHERE id=9", ("ab" * 32,)
    )

    async def test(client: TestClient) -> None:
        job = await get_json(client, "/api/job?id=mixed.tif.eefetch.db")
        assert job["tiles"]["done"] == 5  # the commit still in the WAL is read
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE tile SET status='failed' WHERE id=10")
        during = await get_json(client, "/api/job?id=mixed.tif.eefetch.db")
        assert during["tiles"]["failed"] == 1  # answered while a write is open; not its data
        await (await client.get("/api/map.png?id=mixed.tif.eefetch.db")).read()
        await get_json(client, "/api/jobs")
        writer.execute("COMMIT")
        # No reader holds a snapshot: a checkpoint that must wait for readers does not.
        busy, log, done = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and log == done
        with JobLock(state):  # the page never holds the job's lock
            assert (await get_json(client, "/api/job?id=mixed.tif.eefetch.db"))["tiles"][
                "failed"
            ] == 2

    with_client(folder, test)
    writer.close()
    assert not Path(f"{state}.lock").exists()
    untouched = folder / "sub" / "secret.tif.eefetch.db"
    before_secret = digest(untouched)

    async def read_only(client: TestClient) -> None:
        for _ in range(3):
            await get_json(client, "/api/job?id=sub/secret.tif.eefetch.db")
            await (await client.get("/api/map.png?id=sub/secret.tif.eefetch.db")).read()

    with_client(folder, read_only)
    assert digest(untouched) == before_secret and before != digest(state)
    assert not Path(f"{untouched}.lock").exists()


def test_requests_for_another_host_are_refused(folder: Path) -> None:
    async def test(client: TestClient) -> None:
        assert (await client.get("/api/jobs")).status == 421

    with_client(folder, test, allowed_hosts={"127.0.0.1:9"})
    assert loopback_hosts("0.0.0.0", 80) is None
    assert loopback_hosts("127.0.0.1", 8080) == {
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
    }


def test_one_state_file_is_served_alone(folder: Path) -> None:
    async def test(client: TestClient) -> None:
        listed = await get_json(client, "/api/jobs")
        assert listed["folder"] is False
        assert [job["id"] for job in listed["jobs"]] == ["mixed.tif.eefetch.db"]
        assert (await get_json(client, "/api/job?id=mixed.tif.eefetch.db"))["tiles"]["done"] == 4

    with_client(folder / "mixed.tif.eefetch.db", test)


# ---------------------------------------------------------------------------- the command


def start_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    """`eefetch serve ARGS` in its own process, and the URL it prints (bounded wait)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    if not ready:
        process.kill()
        pytest.fail("eefetch serve printed no URL within 60 s")
    return process, process.stdout.readline().strip()


def fetch(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as answer:
        return answer.read()


def test_serve_prints_its_url_serves_and_stops_on_sigterm(folder: Path) -> None:
    process, url = start_serve(str(folder), "--port", "0")
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        listed = json.loads(fetch(url + "api/jobs"))
        assert len(listed["jobs"]) == 4
        assert b"<title>eefetch</title>" in fetch(url)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped serving" in err and "Traceback" not in err


@pytest.mark.slow
def test_serve_refuses_what_it_cannot_serve_in_one_line(folder: Path) -> None:
    junk = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", str(folder / "junk.tif.eefetch.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert junk.returncode == 1 and len(junk.stderr.strip().splitlines()) == 1, junk.stderr
    assert "state file" in junk.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "engine.cli", "serve", str(folder), "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ},
        )
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "--port 0" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- old and odd files


def test_a_schema_1_file_is_read_without_being_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.tif.eefetch.db"
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "fixtures" / "state_v1.sql").read_text())
    grid = {"crs": "EPSG:4326", "transform": [1, 0, 0, 0, -1, 0], "width": 16, "height": 8}
    spec = json.dumps({"grid": grid, "band_ids": ["b"], "dtype": "uint8"})
    con.execute(
        "INSERT INTO job VALUES (1, 'fp', ?, '0.1.0', 'running', 1.0, 2.0, '/o.tif')", (spec,)
    )
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, path, bytes, checksum, updated_at)"
        f" VALUES (1, 0, 0, 8, 8, 0, 1, 'done', 2, 't1.tif', 10, '{'ab' * 32}', 2.0)"
    )
    con.execute(
        "INSERT INTO tile (job_id, row_off, col_off, height, width, band_start, band_stop,"
        " status, attempts, last_error, updated_at)"
        " VALUES (1, 0, 8, 8, 8, 0, 1, 'pending', 3, 'HTTP 500: oops', 2.0)"
    )
    con.commit()
    con.close()
    before = digest(path)
    snap = read_snapshot(path)
    assert snap.facts.counts["done"] == 1 and snap.tiles.rate_limited.tolist() == [0, 0]
    assert jobstats.retries(snap).failed_attempts == 5
    assert digest(path) == before  # still schema 1: reading is not upgrading


def test_files_that_are_not_readable_jobs_are_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.eefetch.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StateError, match="eefetch did not create"):
        read_snapshot(other)
    newer = make_state(tmp_path / "newer.eefetch.db", 1, 1)
    con = sqlite3.connect(newer)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StateError, match="state schema 99"):
        read_snapshot(newer)
    blank = tmp_path / "blank.eefetch.db"
    blank.touch()
    with pytest.raises(EmptyState):
        read_snapshot(blank)
    with pytest.raises(StateError, match="does not exist"):
        read_snapshot(tmp_path / "missing.eefetch.db")
