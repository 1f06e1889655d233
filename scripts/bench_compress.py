"""What each output compression and level costs: CPU seconds per GB of pixels and file size.

The merge's compression is the largest CPU cost of a job that eefetch controls (the rest is
receiving, checking and copying bytes). This writes the same pixels (a GeoTIFF given with
``--input``, or by default the Sentinel-2 composite of the tutorial over part of Huainan,
fetched from the bundled emulator) with the merge's own creation options at several levels,
strip by strip as the merge does, and reports the medians.

    .venv/bin/python scripts/bench_compress.py --reps 3 --write-benchmarks
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.merge import creation_options

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
START, END = "<!-- bench-compress:start -->", "<!-- bench-compress:end -->"
# (compression, GDAL's level option, level); None: the merge's default for that compression.
CASES = [
    ("none", None, None),
    ("deflate", "zlevel", None),
    ("deflate", "zlevel", 6),
    ("zstd", "zstd_level", None),
    ("zstd", "zstd_level", 9),
    ("lzw", None, None),
]
REGION = "116.90,32.55,117.10,32.75"  # part of Huainan: about 8 x 2200 x 2200 float32 at 10 m


def fetch_input(folder: Path, scale: float) -> Path:
    """The tutorial's composite over REGION, uncompressed, from an emulator with no limits."""
    output = folder / "input.tif"
    with EmulatorThread(EmulatorConfig.from_profile("clean", no_limits=True)) as emulator:
        subprocess.run(
            [
                sys.executable, "-m", "engine.cli", "composite",
                "--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10",
                "--bands", "B[1-8]", "--region", REGION, "--scale", str(scale),
                "--crs", "EPSG:4326", "--compress", "none", "-o", str(output),
                "--ee-url", emulator.url, "--quiet",
            ],
            check=True,
            cwd=REPO,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
        )  # fmt: skip
    return output


def cpu_seconds() -> float:
    """This process's CPU time, every thread (GDAL compresses in a pool of its own)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_once(pixels: np.ndarray, profile: dict[str, object], target: Path) -> tuple[float, float]:
    """Write ``pixels`` in strips of 512 rows; return (wall s, CPU s)."""
    count, height, width = pixels.shape
    wall, cpu = time.perf_counter(), cpu_seconds()
    with rasterio.open(
        target, "w", driver="GTiff", count=count, height=height, width=width,
        dtype=pixels.dtype, **profile,
    ) as dataset:  # fmt: skip
        for row in range(0, height, 512):
            rows = min(512, height - row)
            dataset.write(pixels[:, row : row + rows], window=Window(0, row, width, rows))
    return time.perf_counter() - wall, cpu_seconds() - cpu


def measure(
    pixels: np.ndarray, georef: dict[str, object], reps: int, folder: Path
) -> list[dict[str, object]]:
    rows = []
    for compress, option, level in CASES:
        profile = creation_options(str(pixels.dtype), compress, 512, "IF_SAFER", "PIXEL")
        profile.update(georef)
        if option is not None and level is not None:
            profile[option] = level
        shown = profile.get(option, "-") if option else "-"
        target = folder / f"{compress}-{shown}.tif"
        runs = [write_once(pixels, profile, target) for _ in range(reps)]
        gigabytes = pixels.nbytes / 1e9
        rows.append(
            {
                "compress": compress,
                "level": shown,
                "default": option is not None and level is None,
                "cpu_per_gb": statistics.median(cpu for _, cpu in runs) / gigabytes,
                "wall_per_gb": statistics.median(wall for wall, _ in runs) / gigabytes,
                "ratio": target.stat().st_size / pixels.nbytes,
            }
        )
        target.unlink()
    return rows


def report(rows: list[dict[str, object]], pixels: np.ndarray, source: str, reps: int) -> str:
    base = next(r for r in rows if r["compress"] == "deflate" and r["default"])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        START,
        f"Command: `.venv/bin/python scripts/bench_compress.py --reps {reps} --write-benchmarks`  ",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {load}.  ",
        f"Pixels: {source}, {pixels.shape[0]} x {pixels.shape[1]} x {pixels.shape[2]} "
        f"{pixels.dtype} ({pixels.nbytes / 1e6:.0f} MB), written in 512-row strips with the "
        f"merge's options (512 x 512 blocks, predictor 3, GDAL's threads); medians of {reps}.",
        "",
        "| compression | level | eefetch's level | CPU s per GB | wall s per GB "
        "| output / pixels | CPU vs eefetch's deflate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['compress']} | {r['level']} | {'yes' if r['default'] else ''} "
            f"| {r['cpu_per_gb']:.2f} | {r['wall_per_gb']:.2f} | {r['ratio']:.3f} "
            f"| {float(r['cpu_per_gb']) / float(base['cpu_per_gb']):.2f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def write_benchmarks(section: str) -> None:
    text = BENCHMARKS.read_text()
    if START in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text += "\n## Output compression: CPU and size per level\n\n" + section + "\n"
    temp = BENCHMARKS.with_suffix(".md.tmp")
    temp.write_text(text)
    os.replace(temp, BENCHMARKS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, help="a GeoTIFF to compress (default: fetch one)")
    parser.add_argument("--scale", type=float, default=10.0, help="metres per pixel of the fetch")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write-benchmarks", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as temp:
        folder = Path(temp)
        source = str(args.input) if args.input else f"the tutorial's composite over {REGION}"
        path = args.input or fetch_input(folder, args.scale)
        with rasterio.open(path) as dataset:
            pixels = dataset.read()
            georef = {"crs": dataset.crs, "transform": dataset.transform}
        rows = measure(pixels, georef, args.reps, folder)
    section = report(rows, pixels, source, args.reps)
    print(section)
    if args.write_benchmarks:
        write_benchmarks(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
