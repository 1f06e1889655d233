#!/usr/bin/env python3
"""Claim latency and throughput of the state store with several worker processes.

A job of `--tiles` tiles (100,000 by default) is created, then W worker processes (each its own
Store, as `eefetch worker` will have) loop until nothing is left: claim a batch of `--batch`
tiles on the database's clock (`now=None`, 60 s lease), then record them done in one `apply`.
Each process times every call; the parent starts them together and reports, per back end and
worker count: wall time, tiles/s, claims/s, and the median and 95th percentile of the claim and
apply latencies over all processes.

PostgreSQL runs in a throwaway server started here (tests/pg.py) with PostgreSQL's default,
durable settings (fsync and synchronous_commit on); SQLite is a file in a temporary folder
(WAL, synchronous=NORMAL, as eefetch uses it).

    .venv/bin/python scripts/bench_state.py                       # both back ends, 1 and 8 workers
    .venv/bin/python scripts/bench_state.py --backends postgresql --workers 8 --tiles 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHA = "ab" * 32


def worker(target: str, owner: str, batch: int) -> None:
    """One worker process: wait for 'go' on stdin, claim and finish until nothing is left,
    print the latencies (seconds) as one JSON line."""
    from state import Store, TileDone

    claims: list[float] = []
    applies: list[float] = []
    tiles = 0
    with Store.open(target, job="bench", create=False) as store:
        store.counts()  # connect before the start
        sys.stdin.readline()
        while True:
            t0 = time.perf_counter()
            got = store.claim(owner, None, 60.0, batch)
            claims.append(time.perf_counter() - t0)
            if not got:
                break
            tiles += len(got)
            t0 = time.perf_counter()
            store.apply([TileDone(t.id, f"{t.id}.tif", 1, SHA) for t in got])
            applies.append(time.perf_counter() - t0)
    print(json.dumps({"claims": claims, "applies": applies, "tiles": tiles}), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(target: str, workers: int, tiles: int, batch: int) -> dict[str, float]:
    from state import NewTile, Store

    t0 = time.perf_counter()
    with Store.open(target, job="bench") as store:
        side = 256
        cols = 400
        plan = [
            NewTile((k // cols) * side, (k % cols) * side, side, side, 0, 4) for k in range(tiles)
        ]
        store.create_job("fp", {}, "bench", "/bench.tif", plan)
    create_s = time.perf_counter() - t0
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", target, f"w{k}", str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(workers)
    ]
    time.sleep(1.0 + 0.2 * workers)  # every worker has imported and connected
    start = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed (exit {proc.returncode})")
        results.append(json.loads(out.splitlines()[-1]))
    wall = time.perf_counter() - start
    claims = [c for r in results for c in r["claims"]]
    applies = [a for r in results for a in r["applies"]]
    done = sum(r["tiles"] for r in results)
    with Store.open(target, job="bench", create=False) as store:
        counts = store.counts()
    if done != tiles or counts["done"] != tiles:
        raise SystemExit(f"claimed {done} tiles and {counts['done']} are done, of {tiles}")
    return {
        "create_s": create_s,
        "wall_s": wall,
        "tiles_per_s": tiles / wall,
        "claims_per_s": len(claims) / wall,
        "claim_p50_ms": statistics.median(claims) * 1000,
        "claim_p95_ms": percentile(claims, 0.95) * 1000,
        "apply_p50_ms": statistics.median(applies) * 1000,
        "apply_p95_ms": percentile(applies, 0.95) * 1000,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,8", help="worker counts, comma-separated")
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument(
        "--batch", type=int, default=32, help="tiles per claim (the scheduler's 2 x 16)"
    )
    args = parser.parse_args()
    from tests.pg import PostgresCluster

    rows = []
    cluster = None
    try:
        for backend in args.backends.split(","):
            for workers in [int(w) for w in args.workers.split(",")]:
                if backend == "postgresql":
                    if cluster is None:
                        cluster = PostgresCluster(durable=True).start()
                    target = cluster.create_database()
                    result = run(target, workers, args.tiles, args.batch)
                else:
                    with tempfile.TemporaryDirectory(prefix="eefetch-bench-state-") as folder:
                        result = run(
                            str(Path(folder) / "bench.eefetch"), workers, args.tiles, args.batch
                        )
                rows.append((backend, workers, result))
                rounded = {k: round(v, 2) for k, v in result.items()}
                print(f"{backend} x{workers}: {json.dumps(rounded)}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n{stamp}; {platform.node()}, {os.cpu_count()} cores, {platform.python_version()}; "
        f"{args.tiles} tiles, {args.batch} per claim\n"
    )
    print(
        "| back end | workers | create job (s) | wall (s) | tiles/s | claims/s "
        "| claim p50 / p95 (ms) | apply p50 / p95 (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, workers, r in rows:
        print(
            f"| {backend} | {workers} | {r['create_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['tiles_per_s']:.0f} | {r['claims_per_s']:.0f} "
            f"| {r['claim_p50_ms']:.1f} / {r['claim_p95_ms']:.1f} "
            f"| {r['apply_p50_ms']:.1f} / {r['apply_p95_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
