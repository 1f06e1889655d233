"""Several eefetch processes on one job whose state is on PostgreSQL (issue 14), and one Earth
Engine quota shared by every process of a project.

Every worker is a real process started as a user would (``eefetch download ... --state URL``,
``eefetch worker``), against a real PostgreSQL server (tests/pg.py) and the emulator; every
output is compared with the oracle (the whole grid in one request to a no-limits emulator).
The tests wait for what the database or the emulator shows, never for a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from engine.cli import main
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import ErrorKind, FetchError
from engine.quota_gate import QuotaGate
from engine.service import quota_key
from engine.snapshot import read_snapshot
from engine.spec import JobSpec
from engine.testing.cli import REPO, run_cli
from engine.testing.fleet import (
    counts_of,
    finish,
    job_exists,
    owned_by_pid,
    start_eefetch,
    tiles_of,
    wait_for,
    worker_args,
)
from engine.testing.jobs import dem_args
from engine.testing.oracle import assert_matches_oracle, oracle_render, served_counts, tile_key
from state import SCHEMA_VERSION, Quota, Store
from tests.pg import PostgresCluster

SMALL_TILES = ("--max-tile-bytes", "4800")  # 1600 pixels of the int16 DEM: 46 tiles
PROJECT = "eefetch-offline"  # the project an emulator run sends its requests to


@pytest.fixture(scope="module")
def oracle() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", no_limits=True)) as emulator:
        yield emulator


def paced(ee_emulator, seconds: float = 0.4, **knobs: object) -> EmulatorThread:
    """An emulator that takes ``seconds`` per tile, so that a job of 46 tiles at a
    concurrency of 2 outlasts the start of the other workers' processes."""
    return ee_emulator("clean", latency_fixed_s=seconds, latency_per_mpix_s=0.0, **knobs)


def spec_of(url: str, job: str) -> JobSpec:
    with Store.open(url, job=job, create=False) as store:
        record = store.job()
    assert record is not None
    return JobSpec.from_dict(record.spec)


def assert_oracle(output: Path, url: str, job: str, oracle: EmulatorThread) -> None:
    expected = oracle_render(oracle, spec_of(url, job))
    with rasterio.open(output) as dataset:
        merged = dataset.read()
    assert merged.dtype == expected.dtype
    np.testing.assert_array_equal(merged, expected)


def download(url: str, ee_url: str, output: Path, job: str, *extra: str) -> list[str]:
    return dem_args(ee_url, output, *SMALL_TILES, "--state", url, "--job", job, *extra)


def all_ok(results: list[tuple[int, str, str]]) -> None:
    for code, _, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err, err


def mergers(results: list[tuple[int, str, str]]) -> int:
    return sum("tiles fetched; merging" in err for _, _, err in results)


def fetched_twice(emulator: EmulatorThread) -> set[tuple[object, ...]]:
    return {key for key, n in served_counts(emulator).items() if n > 1}


@pytest.mark.slow
def test_three_workers_share_a_job_fetch_each_tile_once_and_one_merges(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    emulator = paced(ee_emulator)
    output = tmp_path / "dem.tif"
    slow = ("--concurrency", "2")
    first = start_eefetch(download(pg_url, emulator.url, output, "dem", *slow, "--keep-tiles"))
    wait_for(lambda: job_exists(pg_url, "dem"), "job in the database", processes=[first])
    others = [start_eefetch(worker_args(pg_url, "dem", emulator.url, *slow)) for _ in range(2)]
    results = [finish(p) for p in [first, *others]]
    all_ok(results)
    assert mergers(results) == 1
    spec = spec_of(pg_url, "dem")
    tiles = tiles_of(pg_url, "dem")
    assert tiles and all(t.status == "done" for t in tiles)
    served = served_counts(emulator)
    assert {tile_key(spec, t) for t in tiles} == set(served)
    assert fetched_twice(emulator) == set()
    assert_oracle(output, pg_url, "dem", oracle)

    # The status and the merge below run in this process (the CLI's code, without the cost of
    # starting one more interpreter).
    shown = CliRunner().invoke(main, ["status", pg_url, "--job", "dem", "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout)
    assert row["state_label"] == "done" and row["tiles"]["done"] == len(tiles)
    pids = {str(p.pid) for p in [first, *others]}
    assert {str(w["pid"]) for w in row["workers"]} <= pids
    assert sum(w["tiles_done"] for w in row["workers"]) == len(tiles)
    assert all(w["state"] == "stopped" for w in row["workers"])
    text = CliRunner().invoke(main, ["status", pg_url, "--job", "dem"])
    assert "HOST" in text.stdout and "LAST SEEN" in text.stdout, text.output
    picture = read_snapshot(pg_url, job="dem")  # what --map and serve draw, through the store
    assert picture.facts.counts["done"] == len(tiles) and not picture.facts.running
    assert int(picture.tiles.is_status("done").sum()) == len(tiles)

    # `eefetch merge` alone: the kept tiles are checked and merged again.
    output.unlink()
    again = CliRunner().invoke(main, ["merge", pg_url, "--job", "dem"])
    assert again.exit_code == 0, again.output
    assert_oracle(output, pg_url, "dem", oracle)

    # Another download replaces the file: the finished job does not call it its own.
    elsewhere = dem_args(emulator.url, output, "--quiet", region="118.73,32.00,118.75,32.02")
    other = [*elsewhere, "--state", str(tmp_path / "b.db"), "--overwrite"]
    assert CliRunner().invoke(main, other).exit_code == 0
    refused = CliRunner().invoke(main, download(pg_url, emulator.url, output, "dem"))
    assert refused.exit_code == 1
    assert "is no longer the output job dem wrote (another download has replaced it)" in (
        refused.stderr
    )
    merge = CliRunner().invoke(main, ["merge", pg_url, "--job", "dem"])
    assert merge.exit_code == 1 and "already exists" in merge.stderr
    assert_matches_oracle(output, tmp_path / "b.db", oracle)


@pytest.mark.slow
def test_a_killed_workers_tiles_go_to_the_others_after_its_lease(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    emulator = paced(ee_emulator, 0.5)
    output = tmp_path / "dem.tif"
    lease = ("--lease", "4", "--concurrency", "2")
    doomed = start_eefetch(download(pg_url, emulator.url, output, "dem", *lease))
    wait_for(
        lambda: job_exists(pg_url, "dem") and counts_of(pg_url, "dem")["done"] >= 4,
        "tile done",
        processes=[doomed],
    )
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    held = owned_by_pid(tiles_of(pg_url, "dem"), doomed.pid)
    assert held, "the killed worker held no tile: the kill came too late to test anything"
    others = [start_eefetch(worker_args(pg_url, "dem", emulator.url, *lease)) for _ in range(2)]
    results = [finish(p) for p in others]
    all_ok(results)
    assert mergers(results) == 1
    spec = spec_of(pg_url, "dem")
    assert all(t.status == "done" for t in tiles_of(pg_url, "dem"))
    # Only the tiles the dead worker was fetching can have been fetched twice.
    assert fetched_twice(emulator) <= {tile_key(spec, t) for t in held}
    assert_oracle(output, pg_url, "dem", oracle)
    with Quota.open(pg_url) as quota:
        status = quota.status(quota_key(PROJECT, emulator.url))
    assert status is not None and status.in_use == 0  # the dead worker's slots expired
    with Store.open(pg_url, job="dem", create=False) as store:
        lease_now = store.merge_lease()
        workers = store.workers()
    assert lease_now is None  # released by the merger
    states = {w.pid: w for w in workers}
    assert not states[doomed.pid].alive and states[doomed.pid].stopped_at is None


@pytest.mark.slow
def test_workers_pause_through_a_database_restart_and_lose_nothing(
    own_cluster: PostgresCluster, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    url = own_cluster.create_database()
    emulator = paced(ee_emulator, 0.5)
    output = tmp_path / "dem.tif"
    slow = ("--concurrency", "2")
    first = start_eefetch(download(url, emulator.url, output, "dem", *slow))
    wait_for(lambda: job_exists(url, "dem"), "job in the database", processes=[first])
    second = start_eefetch(worker_args(url, "dem", emulator.url, *slow))
    seen: dict[str, int] = {}

    def some_done() -> bool:
        seen.update(counts_of(url, "dem"))
        return seen["done"] >= 8

    wait_for(some_done, "tiles done", processes=[first, second])
    assert seen["pending"] > 0, "the job was over before the restart"
    own_cluster.restart()
    results = [finish(first), finish(second)]
    all_ok(results)
    assert mergers(results) == 1
    assert all(t.status == "done" for t in tiles_of(url, "dem"))
    assert fetched_twice(emulator) == set()
    assert_oracle(output, url, "dem", oracle)


@pytest.mark.slow
def test_a_worker_ten_minutes_off_neither_steals_nor_loses_tiles(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """Leases are on the database's clock: a worker whose clock is 10 minutes behind would
    otherwise write leases that look expired to the others (they would fetch its tiles again),
    and one 10 minutes ahead would see every other worker's lease as expired."""
    emulator = paced(ee_emulator)
    output = tmp_path / "dem.tif"
    lease = ("--lease", "4", "--concurrency", "2")
    first = start_eefetch(download(pg_url, emulator.url, output, "dem", *lease))
    wait_for(lambda: job_exists(pg_url, "dem"), "job in the database", processes=[first])
    skewed = [
        start_eefetch(worker_args(pg_url, "dem", emulator.url, *lease), skew=skew)
        for skew in (-600.0, 600.0)
    ]
    results = [finish(p) for p in [first, *skewed]]
    all_ok(results)
    assert mergers(results) == 1
    assert all(t.status == "done" for t in tiles_of(pg_url, "dem"))
    assert fetched_twice(emulator) == set()
    assert_oracle(output, pg_url, "dem", oracle)
    assert not output.with_name(output.name + ".eefetch-worker-tiles").exists()


@pytest.mark.slow
def test_two_jobs_and_three_workers_stay_within_the_project_quota(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """Each worker alone would keep 12 requests in flight; together they keep 12."""
    emulator = paced(ee_emulator, 0.3)
    quota = ("--project-quota", "12")
    outputs = {job: tmp_path / f"{job}.tif" for job in ("a", "b")}
    regions = {"a": "118.70,32.00,118.80,32.06", "b": "118.80,32.00,118.90,32.06"}
    starts = [
        start_eefetch(
            [*download(pg_url, emulator.url, outputs[job], job, *quota), "--region", regions[job]]
        )
        for job in ("a", "b")
    ]
    wait_for(lambda: job_exists(pg_url, "a"), "job a", processes=starts)
    joined = start_eefetch(worker_args(pg_url, "a", emulator.url, *quota))
    results = [finish(p) for p in [*starts, joined]]
    all_ok(results)
    stats = emulator.stats()["projects"][PROJECT]
    assert 0 < stats["max_in_flight"] <= 12, stats
    assert stats["quota_rejections"] == 0
    for job, output in outputs.items():
        assert_oracle(output, pg_url, job, oracle)
    with Quota.open(pg_url) as shared:
        status = shared.status(quota_key(PROJECT, emulator.url))
    assert status is not None and status.ceiling == 12 and status.in_use == 0


@pytest.mark.slow
def test_a_429_burst_lowers_the_limit_every_worker_of_the_project_shares(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """Earth Engine (the emulator) allows 5 at once while the project quota says 12: the
    429s halve the shared limit, the jobs still finish."""
    emulator = paced(ee_emulator, 0.3, max_concurrent=5)
    output = tmp_path / "dem.tif"
    quota = ("--project-quota", "12", "--concurrency", "8")
    first = start_eefetch(download(pg_url, emulator.url, output, "dem", *quota))
    wait_for(lambda: job_exists(pg_url, "dem"), "job in the database", processes=[first])
    second = start_eefetch(worker_args(pg_url, "dem", emulator.url, *quota))
    results = [finish(first), finish(second)]
    all_ok(results)
    assert emulator.stats()["projects"][PROJECT]["quota_rejections"] > 0
    with Quota.open(pg_url) as shared:
        status = shared.status(quota_key(PROJECT, emulator.url))
    assert status is not None
    assert status.cooldown_until > 0  # set by a decrease, and only by one
    assert_oracle(output, pg_url, "dem", oracle)


def test_one_processs_429_lowers_what_another_process_may_hold(tmp_path: Path) -> None:
    """Two gates (two processes' doors) on one quota: after a 429 seen through the first, the
    second may hold half the ceiling; the next request waits until one is given back."""

    async def scenario() -> tuple[int, int, int]:
        with Quota.open(tmp_path / "quota.db") as quota:
            first = QuotaGate(quota, "p", "first", ceiling=8)
            second = QuotaGate(quota, "p", "second")
            await first.open()
            await second.open()
            try:
                with pytest.raises(FetchError):
                    async with first.slot():
                        raise FetchError(ErrorKind.HTTP, "Too many concurrent requests", 429)
                status = await second.status()
                assert status is not None
                release = asyncio.Event()
                entered = [0]

                async def hold() -> None:
                    async with second.slot():
                        entered[0] += 1
                        await release.wait()

                tasks = [asyncio.create_task(hold()) for _ in range(status.limit + 1)]
                for _ in range(600):
                    if entered[0] >= status.limit:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # time for a fifth slot, were there one
                while_full = entered[0]
                release.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
                return status.limit, while_full, entered[0]
            finally:
                await first.close()
                await second.close()

    limit, while_full, in_the_end = asyncio.run(scenario())
    assert limit == 4 and while_full == 4 and in_the_end == 5


@pytest.mark.slow
def test_an_older_state_file_is_upgraded_and_resumed(
    tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """A schema 2 file (what eefetch wrote before workers) of a half-done job: the same
    command upgrades it in place, fetches only the tiles it did not have, and merges."""
    emulator = ee_emulator("clean")
    output = tmp_path / "dem.tif"
    state = Path(f"{output}.eefetch.db")
    args = dem_args(emulator.url, output, *SMALL_TILES, "--keep-tiles", "--quiet")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    tiles_dir = Path(f"{output}.eefetch-tiles")
    with Store.open(state, create=False) as store:
        job = store.job()
        tiles = store.tiles("done")
    assert job is not None and len(tiles) > 10
    kept, dropped = tiles[::2], tiles[1::2]
    old = tmp_path / "v2.eefetch.db"
    _write_schema_2(old, job, kept, dropped)
    for tile in dropped:
        assert tile.path is not None
        (tiles_dir / tile.path).unlink()
    output.unlink()
    for leftover in tmp_path.glob(".dem.tif.eefetch-merge*"):
        leftover.unlink()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    shutil.move(old, state)
    emulator.reset_stats()

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    spec = JobSpec.from_dict(job.spec)
    served = served_counts(emulator)
    assert served == {tile_key(spec, t): 1 for t in dropped}
    con = sqlite3.connect(state)
    try:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        con.close()
    assert version == (str(SCHEMA_VERSION),)

    assert_matches_oracle(output, state, oracle)
    shown = run_cli("status", str(state))
    assert shown.returncode == 0 and "workers: 1 (0 alive)" in shown.stdout, shown.stdout


def _write_schema_2(path: Path, job, kept, dropped) -> None:
    """An SQLite state file of schema 2 holding ``job``: ``kept`` tiles done, ``dropped``
    pending (as a run stopped half-way leaves them)."""
    import json

    con = sqlite3.connect(path)
    try:
        con.executescript((REPO / "tests" / "fixtures" / "state_v2.sql").read_text())
        con.execute(
            "INSERT INTO job VALUES (1, ?, ?, '0.1.0', 'running', ?, ?, ?, ?)",
            (
                job.fingerprint,
                json.dumps(job.spec, sort_keys=True),
                job.created_at,
                job.updated_at,
                job.output_path,
                job.uid,
            ),
        )
        columns = (
            "id, job_id, parent_id, row_off, col_off, height, width, band_start, band_stop, "
            "status, attempts, path, bytes, checksum, updated_at"
        )
        for tile in kept:
            con.execute(
                f"INSERT INTO tile ({columns}) VALUES (?, 1, NULL, ?, ?, ?, ?, ?, ?, 'done', 0,"
                " ?, ?, ?, 1.0)",
                (tile.id, *tile.window, tile.band_start, tile.band_stop, tile.path, tile.bytes,
                 tile.checksum),
            )  # fmt: skip
        for tile in dropped:
            con.execute(
                f"INSERT INTO tile ({columns}) VALUES (?, 1, NULL, ?, ?, ?, ?, ?, ?, 'pending', 0,"
                " NULL, NULL, NULL, 1.0)",
                (tile.id, *tile.window, tile.band_start, tile.band_stop),
            )
        con.commit()
    finally:
        con.close()


@pytest.mark.slow
def test_one_collection_command_on_two_machines_fetches_and_merges_each_image_once(
    pg_url: str, tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """The same `eefetch collection ... --state URL` started twice at once: every image is a
    job in the database (created once, whichever process comes first), each tile is fetched
    once over both, each image merged once and equal to the oracle."""
    emulator = paced(ee_emulator, 0.3)
    folder = tmp_path / "scenes"
    args = [
        *("collection", "--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10"),
        *("--bands", "B4,B3,B2", "--region", "118.70,32.00,118.76,32.04", "--scale", "60"),
        *("--crs", "EPSG:4326", "--limit", "2", "-o", str(folder), "--ee-url", emulator.url),
        *("--max-tile-bytes", "20000", "--concurrency", "2"),
        *("--state", pg_url, "--job", "scenes"),
    ]
    results = [finish(p) for p in [start_eefetch(args), start_eefetch(args)]]
    all_ok(results)
    with Store.open(pg_url) as store:
        jobs = store.jobs()
    assert len(jobs) == 2, [j.name for j in jobs]
    assert all(j.name.startswith("scenes.") and j.status == "merged" for j in jobs)
    assert sum(err.count("tiles fetched; merging") for _, _, err in results) == 2
    leaves = [t for j in jobs for t in tiles_of(pg_url, j.name)]
    assert leaves and all(t.status == "done" for t in leaves)
    # Both images share one grid, so the emulator's tile names do not tell them apart: the
    # total says that no tile was fetched twice.
    assert sum(served_counts(emulator).values()) == len(leaves)
    for j in jobs:
        assert Path(j.output_path).parent == folder
        assert_oracle(Path(j.output_path), pg_url, j.name, oracle)


def test_heartbeats_come_a_few_times_per_lease_and_at_least_every_five_seconds() -> None:
    from engine.heartbeat import beat_interval

    assert beat_interval(60.0) == 5.0  # the default lease: status rows at most 5 s old
    assert beat_interval(6.0) == 2.0  # a short lease: three beats per lease
    assert beat_interval(0.9) == 0.5


@pytest.mark.slow
def test_two_downloads_on_one_machine_share_their_projects_quota(
    tmp_path: Path, ee_emulator, oracle: EmulatorThread
) -> None:
    """Two ordinary `eefetch download` jobs (state files, no server), started together on one
    project: each keeps 3 requests in flight, and together they keep 4, the project quota
    (kept in the per-user quota file), not 6."""
    emulator = paced(ee_emulator, 0.8)
    limits = ("--concurrency", "3", "--project-quota", "4")
    outputs = [tmp_path / "a.tif", tmp_path / "b.tif"]
    regions = ["118.70,32.00,118.75,32.06", "118.75,32.00,118.80,32.06"]
    processes = [
        start_eefetch(dem_args(emulator.url, output, *SMALL_TILES, *limits, region=region))
        for output, region in zip(outputs, regions, strict=True)
    ]
    all_ok([finish(p) for p in processes])
    stats = emulator.stats()["projects"][PROJECT]
    assert 0 < stats["max_in_flight"] <= 4, stats
    done = []
    for output in outputs:
        with Store.open_reader(f"{output}.eefetch.db") as store:
            done.append([t.updated_at for t in store.tiles("done")])
        assert_matches_oracle(output, Path(f"{output}.eefetch.db"), oracle)
    # They did run side by side (else the bound would prove nothing): each job had tiles done
    # before the other's last one.
    assert min(done[1]) < max(done[0]) and min(done[0]) < max(done[1])
