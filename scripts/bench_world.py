"""Measure the emulator's world catalog: start-up, idle memory, query time and render speed.

    .venv/bin/python scripts/bench_world.py [--runs 3] [--side 2048]

- start-up: seconds from launching ``eefetch emulator`` to its first answered request, and
  its resident memory (VmRSS) two seconds later, idle;
- query: seconds for the tutorial's filters over Huainan for 2022 (date, cloud, bounds) and
  how many candidate scenes the catalog generated;
- render: the tutorial's composite (median of QA60-masked Sentinel-2 2022 scenes under 10 %
  cloud, B1-B8, clipped to Huainan's box) rendered on a ``side`` x ``side`` window of its
  10 m EPSG:4326 download grid at Huainan's centre, in Mpx/s (pixels of the window, all eight
  bands, per second), and the process's peak memory. Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

HUAINAN = REPO / "engine" / "data" / "huainan.geojson"


def start_up() -> tuple[float, float]:
    """(seconds to the first answered request, idle VmRSS in MB) of ``eefetch emulator``."""
    started = time.monotonic()
    command = [sys.executable, "-m", "engine.cli", "emulator", "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    try:
        url = None
        while url is None:
            line = process.stdout.readline() if process.stdout else ""
            if not line and process.poll() is not None:
                raise RuntimeError("the emulator exited before printing its URL")
            found = re.search(r"http://[0-9.:]+", line)
            url = found.group(0) if found else None
        while True:
            try:
                with urllib.request.urlopen(url + "/_emulator/stats", timeout=1) as answer:
                    answer.read()
                break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic() - started
        time.sleep(2.0)
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return ready, rss_kb / 1024
    finally:
        process.terminate()
        process.wait(timeout=10)


def huainan_recipe(**options: Any) -> Any:
    """The tutorial's 2022 Sentinel-2 recipe over Huainan (``options``: more of its fields)."""
    from engine.recipes import Composite
    from engine.region_input import load_region

    region = load_region(str(HUAINAN))
    return Composite(
        "COPERNICUS/S2_SR_HARMONIZED", "2022-01-01", "2022-12-31", region, max_cloud=10, **options
    )


def tutorial(ee: Any) -> Any:
    from engine.recipes import composite

    return composite(huainan_recipe(bands=("B[1-8]",)))


def query_time(ee: Any) -> tuple[float, int, int]:
    """(seconds, scenes, candidates) of the tutorial's collection over Huainan."""
    from engine.emulator import catalog
    from engine.emulator.evaluate import evaluate
    from engine.recipes import composite_collection
    from engine.testing.ee_offline import wire

    seen: list[int] = []
    search = catalog.search

    def counting(query: Any, window: Any = None) -> Any:
        found = search(query, window)
        seen.append(found.candidates)
        return found

    catalog.search = counting
    try:
        expression = wire(composite_collection(huainan_recipe()).size())
        started = time.perf_counter()
        size = evaluate(expression)
        return time.perf_counter() - started, int(size), sum(seen)
    finally:
        catalog.search = search


def render_window(ee: Any, side: int) -> tuple[float, int]:
    """(seconds, scenes reaching the window) for one side x side window at Huainan's centre."""
    from engine.emulator.evaluate import evaluate
    from engine.grid import grid_from_region
    from engine.region_input import load_region
    from engine.testing.ee_offline import download_expression

    grid = grid_from_region(load_region(str(HUAINAN)), "EPSG:4326", 10)
    a, _, c, _, e, f = grid.transform
    col, row = (grid.width - side) // 2, (grid.height - side) // 2
    transform = [a, 0.0, c + col * a, 0.0, e, f + row * e]
    expression = download_expression(
        tutorial(ee), crs="EPSG:4326", crs_transform=transform, dimensions=[side, side]
    )
    started = time.perf_counter()
    image = evaluate(expression)
    box = image.bounded_grid()
    from engine.emulator.model import RenderRequest

    reach = image.source_estimate(RenderRequest(box.crs, box.transform, side, side))
    image.render(box.crs, box.transform, box.width, box.height)
    return time.perf_counter() - started, reach


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--side", type=int, default=2048)
    args = parser.parse_args()
    from engine.testing.ee_offline import offline_ee

    starts = [start_up() for _ in range(args.runs)]
    results: dict[str, Any] = {
        "start_s": statistics.median(s for s, _ in starts),
        "idle_rss_mb": statistics.median(r for _, r in starts),
    }
    with offline_ee() as ee:
        queries = [query_time(ee) for _ in range(args.runs)]
        results["query_s"] = statistics.median(q for q, _, _ in queries)
        results["query_scenes"] = queries[0][1]
        results["query_candidates"] = queries[0][2]
        renders = [render_window(ee, args.side) for _ in range(args.runs)]
    seconds = statistics.median(s for s, _ in renders)
    results["render_side"] = args.side
    results["render_scenes_reaching"] = renders[0][1]
    results["render_s"] = seconds
    results["render_mpx_per_s"] = args.side * args.side / seconds / 1e6
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
