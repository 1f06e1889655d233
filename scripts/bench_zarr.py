#!/usr/bin/env python3
"""The Zarr writer against the GeoTIFF writer on the 1 GB benchmark job (issue 15).

The job is scripts/bench.py's scenario 1: the tutorial's Sentinel-2 composite
(examples/tutorial_composite.py), 8 float32 bands at 30 m over 118.2-119.4 E, 31.0-32.8 N
(about 4450 x 6680 pixels, 1 GB), through the command line (`eefetch download --script`),
once to `out.tif` and once to `out.zarr`, alternating (GeoTIFF first in odd repetitions, Zarr
first in even ones). Each run is a child process: wall time from here, CPU time and peak RSS
from os.wait4 (that child only). The emulator runs in its own process for the whole
benchmark. The last pair is compared value for value (strip by strip).

    python3 scripts/bench_zarr.py                       # realistic profile, 3 pairs
    python3 scripts/bench_zarr.py --profile clean --reps 2
    python3 scripts/bench_zarr.py --quick               # a ~40 MB box, to try it out

Run it with the repository's .venv (./scripts/test creates it; it has the zarr extra).
Results: WORKDIR/results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.testing.cli import emulator_process

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "tutorial_composite.py"
FULL_BOX = (118.2, 31.0, 119.4, 32.8)  # scripts/bench.py's FULL_BOX
QUICK_BOX = (118.6, 31.8, 118.9, 32.1)
FORMATS = ("geotiff", "zarr")


def write_region(path: Path, box: tuple[float, float, float, float]) -> Path:
    w, s, e, n = box
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    feature = {"type": "Feature", "properties": {}, "geometry": geometry}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def output_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def run_one(fmt: str, url: str, region: Path, workdir: Path) -> dict[str, Any]:
    """One download in a child process; wall, CPU and peak RSS of that child."""
    output = workdir / ("out.zarr" if fmt == "zarr" else "out.tif")
    for leftover in [*workdir.glob("out.*"), *workdir.glob(".out.*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    command = [
        sys.executable, "-m", "engine.cli", "download", "--script", str(SCRIPT),
        "--region", str(region), "--crs", "EPSG:4326", "--scale", "30",
        "-o", str(output), "--ee-url", url, "--quiet",
    ]  # fmt: skip
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "EEFETCH_REGION": str(region)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    assert process.stderr is not None
    error = process.stderr.read().decode(errors="replace")[-2000:]
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"bench_zarr: {fmt} run failed ({code}): {error}")
    return {
        "format": fmt,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "output_mb": round(output_bytes(output) / 1e6, 1),
        "load_after": round(os.getloadavg()[0], 2),
    }


def same_values(tif: Path, store: Path, strip: int = 512) -> bool:
    """The GeoTIFF and the store hold the same values (compared a strip of rows at a time)."""
    import numpy as np
    import rasterio
    import zarr
    from rasterio.windows import Window

    array = zarr.open_array(str(store / "band_data"), mode="r")
    with rasterio.open(tif) as dataset:
        if array.shape != (dataset.count, dataset.height, dataset.width):
            return False
        for top in range(0, dataset.height, strip):
            rows = min(strip, dataset.height - top)
            window = Window(0, top, dataset.width, rows)
            if not np.array_equal(dataset.read(window=window), array[:, top : top + rows, :]):
                return False
    return True


def keep_pair(fmt: str, workdir: Path) -> None:
    """Keep the last runs' outputs for the comparison (each run removes the other's)."""
    output = workdir / ("out.zarr" if fmt == "zarr" else "out.tif")
    kept = workdir / f"kept-{output.name}"
    if kept.is_dir():
        shutil.rmtree(kept)
    elif kept.exists():
        kept.unlink()
    output.rename(kept)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| writer | wall s (median) | CPU s | peak RSS MB | output MB | runs (wall s) |",
        "|---|---|---|---|---|---|",
    ]
    medians: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        mine = [r for r in runs if r["format"] == fmt]
        medians[fmt] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("wall_s", "cpu_s", "peak_rss_mb", "output_mb")
        }
        m = medians[fmt]
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in mine)
        lines.append(
            f"| {fmt} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mb']:.0f} | "
            f"{m['output_mb']:.0f} | {walls} |"
        )
    z, g = medians["zarr"], medians["geotiff"]
    lines.append(
        f"| zarr / geotiff | {z['wall_s'] / g['wall_s']:.2f} | {z['cpu_s'] / g['cpu_s']:.2f} | "
        f"{z['peak_rss_mb'] / g['peak_rss_mb']:.2f} | {z['output_mb'] / g['output_mb']:.2f} | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs")
    parser.add_argument("--profile", default="realistic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a ~40 MB box instead of 1 GB")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-zarr"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    region = write_region(args.workdir / "box.geojson", QUICK_BOX if args.quick else FULL_BOX)
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    with emulator_process("--profile", args.profile, "--seed", str(args.seed)) as (_, url):
        for rep in range(args.reps):
            order = FORMATS if rep % 2 == 0 else FORMATS[::-1]
            for fmt in order:
                run = run_one(fmt, url, region, args.workdir)
                run["rep"] = rep
                runs.append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
                if rep == args.reps - 1:
                    keep_pair(fmt, args.workdir)
    equal = same_values(args.workdir / "kept-out.tif", args.workdir / "kept-out.zarr")
    results = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}",
        "profile": args.profile,
        "box": QUICK_BOX if args.quick else FULL_BOX,
        "command": " ".join(sys.argv),
        "same_values": equal,
        "runs": runs,
    }
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(table(runs))
    print(f"\nlast pair equal value for value: {equal}")


if __name__ == "__main__":
    main()
