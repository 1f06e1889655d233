#!/usr/bin/env python3
"""Throughput of 1, 2 and 4 worker processes on one job whose state is on PostgreSQL.

Each run is what a user types: ``eefetch download ... --state URL --job bench`` in one process
and, once the job is in the database, ``eefetch worker --state URL --job bench`` in the others,
every one with the same ``--concurrency`` and ``--project-quota``. The emulator serves a
profile whose per-connection bandwidth is the bound (``slow-connections``: 1 MB/s per
connection, 1 s + 0.3 s/Mpx before the first byte), so one worker's few connections cannot
fill the link and more workers should move more bytes, until the project quota (the most
requests in flight over every worker) binds.

Each run gets a fresh database on one throwaway PostgreSQL server (tests/pg.py) and a fresh
output; the emulator keeps rendered tiles in a cache folder, and an untimed first run fills it,
so the emulator's own rendering is not what is measured. Reported per worker count: the fetch
phase on the database's clock (first worker registered to last tile done), its MB/s, the wall
time from the first process started to the last one ended (merge included), the most requests
the emulator saw in flight for the project, and the ratio of each median to the one-worker
median of the same run.

    .venv/bin/python scripts/bench_workers.py                     # 1, 2, 4 workers, 3 repetitions
    .venv/bin/python scripts/bench_workers.py --workers 1,4 --repeat 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROJECT = "eefetch-offline"  # the project an emulator run sends its requests to


def job_args(url: str, ee_url: str, output: Path, args: argparse.Namespace) -> list[str]:
    """The first worker's command: a DEM of about ``args.megabytes`` MB (the last
    --max-tile-bytes given is the one that counts)."""
    from engine.testing.jobs import dem_args

    side = (args.megabytes * 1e6 / 2) ** 0.5 * 30 / 111_000  # int16 pixels of 30 m, in degrees
    west, south = 118.5, 32.0
    region = f"{west},{south},{west + side:.4f},{south + side:.4f}"
    extra = ["--max-tile-bytes", str(args.tile_bytes), "--compress", "none"]
    return dem_args(
        ee_url, output, *extra, "--state", url, "--job", "bench", *shared_args(args), region=region
    )


def shared_args(args: argparse.Namespace) -> list[str]:
    return [
        "--concurrency",
        str(args.concurrency),
        "--project-quota",
        str(args.project_quota),
        "--quiet",
    ]


def run(workers: int, cluster: object, emulator: object, folder: Path, args: argparse.Namespace):
    """One job fetched by ``workers`` processes; its figures."""
    from engine.testing.fleet import finish, job_exists, start_eefetch, wait_for, worker_args
    from state import Store

    url = cluster.create_database()
    output = folder / f"bench-{workers}-{time.monotonic_ns()}.tif"
    emulator.reset_stats()
    started = time.perf_counter()
    first = start_eefetch(job_args(url, emulator.url, output, args))
    processes = [first]
    try:
        wait_for(lambda: job_exists(url, "bench"), "job in the database", processes=[first])
        for _ in range(workers - 1):
            joining = worker_args(url, "bench", emulator.url, *shared_args(args))
            processes.append(start_eefetch(joining))
        results = [finish(p, timeout=1800) for p in processes]
    finally:
        for process in processes:  # interrupted: no worker outlives the benchmark
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - started
    for code, _, err in results:
        if code != 0:
            raise SystemExit(f"a worker failed (exit {code}):\n{err[-2000:]}")
    with Store.open(url, job="bench", create=False) as store:
        tiles = store.tiles()
        rows = store.workers()
    if not tiles or any(t.status != "done" for t in tiles) or not output.exists():
        raise SystemExit("the job did not end with every tile done and merged")
    fetched = sum(t.bytes or 0 for t in tiles)
    fetch_s = max(t.updated_at for t in tiles) - min(w.started_at for w in rows)
    stats = emulator.stats()["projects"].get(PROJECT, {})
    output.unlink()
    return {
        "tiles": len(tiles),
        "mb": fetched / 1e6,
        "fetch_s": fetch_s,
        "mb_s": fetched / 1e6 / fetch_s,
        "wall_s": wall,
        "max_in_flight": stats.get("max_in_flight", 0),
        "workers_seen": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--megabytes", type=float, default=48.0, help="size of the job's pixels")
    parser.add_argument("--tile-bytes", type=int, default=1_500_000, help="--max-tile-bytes")
    parser.add_argument("--concurrency", type=int, default=4, help="tiles in flight per worker")
    parser.add_argument("--project-quota", type=int, default=12)
    parser.add_argument("--profile", default="slow-connections")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    from engine.emulator.config import EmulatorConfig
    from engine.emulator.server import EmulatorThread
    from tests.pg import PostgresCluster

    figures: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    loads = [os.getloadavg()[0]]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="eefetch-bench-workers-") as scratch:
        folder = Path(scratch)
        config = EmulatorConfig.from_profile(args.profile, tile_cache_dir=str(folder / "cache"))
        with PostgresCluster(durable=True) as cluster, EmulatorThread(config) as emulator:
            warm = run(max(counts), cluster, emulator, folder, args)
            print(f"warm-up x{max(counts)} (untimed): {warm}", flush=True)
            for repetition in range(args.repeat):
                for workers in counts:
                    result = run(workers, cluster, emulator, folder, args)
                    figures[workers].append(result)
                    loads.append(os.getloadavg()[0])
                    shown = {k: round(v, 2) for k, v in result.items()}
                    print(f"#{repetition + 1} x{workers}: {shown}", flush=True)
    end = dt.datetime.now(dt.UTC).strftime("%H:%M UTC")
    one = statistics.median(r["mb_s"] for r in figures[counts[0]])
    print(
        f"\n{stamp}–{end}; {platform.node()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; profile {args.profile}, a job of "
        f"{figures[counts[0]][0]['mb']:.0f} MB ({args.megabytes:g} asked), "
        f"--concurrency {args.concurrency} per worker, --project-quota {args.project_quota}; "
        f"load average {min(loads):.1f}–{max(loads):.1f}\n"
    )
    print(
        "| workers | tiles | fetch MB/s, median (runs) | ratio to "
        f"{counts[0]} | fetch s, median | wall s, median | most in flight |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers in counts:
        rows = figures[workers]
        speeds = [r["mb_s"] for r in rows]
        median = statistics.median(speeds)
        each = ", ".join(f"{s:.2f}" for s in speeds)
        print(
            f"| {workers} | {int(rows[0]['tiles'])} | {median:.2f} ({each}) | {median / one:.2f} "
            f"| {statistics.median(r['fetch_s'] for r in rows):.1f} "
            f"| {statistics.median(r['wall_s'] for r in rows):.1f} "
            f"| {max(int(r['max_in_flight']) for r in rows)} |"
        )


if __name__ == "__main__":
    main()
