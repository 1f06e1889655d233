#!/usr/bin/env python3
"""Sweep the emulator's fault rate and report what each rate costs eefetch.

For each rate, a job of 57 tiles runs (once per seed) against an emulator that injects the
`hostile` profile's mix of faults (429 bursts with and without Retry-After, 500/502/503/504,
resets, short bodies, stalls, trickles, captive-portal HTML, expired URLs) at that rate, with
eefetch's default attempt budget and short timeouts. Printed per rate: whether the job
completed in one run, wall time, tile requests per tile, API calls, bytes the emulator sent
that did not end up in a tile, retries and the most attempts one tile needed.

    .venv/bin/python scripts/fault_sweep.py                    # prints a Markdown table
    .venv/bin/python scripts/fault_sweep.py --write            # also updates docs/RELIABILITY.md
    .venv/bin/python scripts/fault_sweep.py --rates 0.35 0.5 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from engine.emulator.config import TILE_FAULT_KINDS
from engine.scheduler import SchedulerOptions
from engine.testing.campaigns import FaultReport, run_under_faults
from engine.transport import TransportOptions

REPO = Path(__file__).resolve().parents[1]

START = "<!-- fault-sweep:start -->"
END = "<!-- fault-sweep:end -->"


def sweep(rates: list[float], seeds: list[int], tile_bytes: int) -> list[list[FaultReport]]:
    """Every (rate, seed) job, each in a fresh folder and against a fresh emulator."""
    scheduler = SchedulerOptions(
        concurrency=6, backoff_base=0.2, backoff_cap=2.0, first_probe_interval=0.5
    )
    transport = TransportOptions(connect_timeout=5.0, first_byte_timeout=5.0, idle_timeout=1.5)
    results = []
    for rate in rates:
        row = []
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="eefetch-sweep-") as folder:
                report = run_under_faults(
                    Path(folder),
                    rate=rate,
                    seed=seed,
                    scheduler=scheduler,
                    transport=transport,
                    max_tile_bytes=tile_bytes,
                )
            print(
                f"rate {rate:.0%} seed {seed}: complete={report.complete} "
                f"{report.wall_s:.1f} s, {report.requests_per_tile:.2f} requests/tile, "
                f"failed {report.failed}, faults {sum(report.faults.values())}",
                file=sys.stderr,
                flush=True,
            )
            row.append(report)
        results.append(row)
    return results


def table(results: list[list[FaultReport]]) -> str:
    lines = [
        "| fault rate | completed in one run | wall time (s) | tile requests per tile "
        "| API calls per tile | bytes wasted | retries per tile | most attempts on a tile "
        "| fault kinds met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        runs = len(row)
        tiles = sum(r.tiles for r in row)
        kept = sum(r.bytes_kept for r in row)
        wasted = sum(r.bytes_wasted for r in row)
        kinds = set().union(*(r.faults for r in row))
        lines.append(
            f"| {row[0].rate:.0%} "
            f"| {sum(r.complete for r in row)} of {runs} "
            f"| {min(r.wall_s for r in row):.1f} - {max(r.wall_s for r in row):.1f} "
            f"| {sum(r.tile_requests for r in row) / tiles:.2f} "
            f"| {sum(r.api_requests for r in row) / tiles:.2f} "
            f"| {wasted / runs / 1e3:.0f} kB a job ({wasted / max(1, kept):.0%} of the tiles) "
            f"| {sum(r.retries for r in row) / tiles:.2f} "
            f"| {max(r.most_attempts for r in row)} "
            f"| {len(kinds & set(TILE_FAULT_KINDS))} of {len(TILE_FAULT_KINDS)} |"
        )
    return "\n".join(lines)


def section(results: list[list[FaultReport]], command: str) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node() or 'unknown'}, {platform.platform()}, {os.cpu_count()} CPUs"
    first = results[0][0]
    return "\n".join(
        [
            START,
            f"Command: `{command}`  ",
            f"Run: {today} on {machine}, Python {platform.python_version()}.  ",
            f"Job: {first.tiles} tiles (an SRTM-like DEM, 447 x 304 pixels in EPSG:32650), "
            "concurrency 6, max attempts 8 (the default; 429s do not count toward it), "
            "backoff base 0.2 s capped at 2 s, idle timeout 1.5 s, first-byte timeout 5 s; "
            "emulator stalls last 30 s, trickles run at 16 KiB/s, Retry-After is 1 s, "
            "API calls fail at min(rate, 5 %).",
            "",
            table(results),
            END,
        ]
    )


def write(path: Path, text: str) -> None:
    """Replace the sweep's block in the file (between its markers), keeping the rest."""
    content = path.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{path} has no {START} ... {END} block to replace")
    before = content.split(START, 1)[0]
    after = content.split(END, 1)[1]
    path.write_text(before + text + after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.35, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tile-bytes", type=int, default=12_000)
    parser.add_argument(
        "--write", action="store_true", help="update the table in docs/RELIABILITY.md"
    )
    args = parser.parse_args()
    results = sweep(args.rates, args.seeds, args.tile_bytes)
    command = shlex.join(["python", "scripts/fault_sweep.py", *sys.argv[1:]])
    text = section(results, command)
    print(text)
    if args.write:
        write(REPO / "docs" / "RELIABILITY.md", text)


if __name__ == "__main__":
    main()
