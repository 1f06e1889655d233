"""The seed-scale campaign at CI size: the tutorial's composite over a 4 MB box, through the
realistic emulator and a real tinyproxy, killed twice and cut off by a proxy outage, resumed
each time with the same command; then sampled windows against the oracle.

``scripts/seed_scale.py --job huainan`` (3.7 GB) and ``--job big`` (18.3 GB) are the same
code at full size; they are benchmarks, run by hand, with their figures in BENCHMARKS.md.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType

import pytest

from engine.emulator.config import EmulatorConfig
from engine.grid import Window
from engine.testing.cli import load_script


@pytest.fixture(scope="module")
def seed_scale() -> ModuleType:
    return load_script("seed_scale")


@pytest.mark.slow
@pytest.mark.peers  # the campaign's downloads go through tinyproxy
def test_small_job_survives_two_kills_and_an_outage_with_the_oracle_pixels(
    tmp_path: Path, seed_scale: ModuleType
) -> None:
    preset = seed_scale.PRESETS["small"]
    report = seed_scale.Campaign(preset, tmp_path, seed=1, outage_s=None).run()
    runs = report["runs"]

    assert report["complete"], runs
    assert report["missed_events"] == []  # both kills and the outage landed mid-job
    kills = [run for run in runs if run["ended_by"].startswith("SIGKILL")]
    assert len(kills) == 2
    assert all(run["done_after"] < run["total"] for run in kills)
    assert runs[-1]["ended_by"] == "completed" and runs[-1]["returncode"] == 0
    assert len(runs) == 3  # each stop cost one re-run of the same command, nothing more
    assert report["tiles"]["counts"]["failed"] == 0
    assert report["tiles"]["done"] == runs[-1]["total"]

    outage = report["outage"]
    assert outage["down_s"] >= preset.outage_s
    assert outage["probes"] >= 1 and outage["back"] >= 1  # it noticed, waited, carried on
    assert report["proxy_starts"] == 2 and report["proxy_requests"] > 0

    oracle = report["oracle"]
    assert oracle["windows"] >= preset.samples  # the grid's corners and tile corners
    assert oracle["mismatches"] == []
    assert report["refetched_done"] == 0

    # The figures the full-size runs report are recorded (their values are the benchmark's).
    assert all(run["peak_rss_mb"] > 0 and run["cpu_s"] > 0 for run in runs)
    assert report["output_bytes"] > 0
    assert report["disk"]["samples"] > 0
    assert report["disk"]["peak"] >= report["output_bytes"]
    assert report["emulator_cpu_s"] > 0
    assert all(value > 0 for value in report["fetch_bound_s"].values())
    assert "| 3 | completed |" in seed_scale.markdown(report, "seed_scale.py --small")


def test_fetch_bound_is_the_slowest_of_connections_link_and_one_request(
    seed_scale: ModuleType,
) -> None:
    config = EmulatorConfig.from_profile(
        "clean",
        latency_fixed_s=1.0,
        latency_per_mpix_s=0.5,
        conn_bandwidth=1e6,
        total_bandwidth=4e6,
    )
    tiles = [(2_000_000, 3_000_000)] * 8  # each: 1 + 1 + 3 = 5 s on one connection
    assert seed_scale.fetch_bound(tiles, config, 2) == pytest.approx(20.0)  # 40 s / 2
    assert seed_scale.fetch_bound(tiles, config, 8) == pytest.approx(6.0)  # 24 MB at 4 MB/s
    assert seed_scale.fetch_bound(tiles[:1], config, 8) == pytest.approx(5.0)  # one request
    assert seed_scale.disk_goal(1000, 10, 3) == 1130


def test_sampled_windows_lie_in_the_grid_and_cross_tile_corners(seed_scale: ModuleType) -> None:
    height, width, side = 1000, 700, 64
    tiles = [Window(r, c, 250, 350) for r in range(0, height, 250) for c in range(0, width, 350)]
    windows = seed_scale.sample_windows(height, width, tiles, 5, side, random.Random(3))
    assert len(windows) == 4 + 3  # the corners, and every tile with a corner inside the grid
    for w in windows:
        assert w.row_off >= 0 and w.row_off + w.height <= height
        assert w.col_off >= 0 and w.col_off + w.width <= width
        assert (w.height, w.width) == (side, side)
    inner = windows[4:]
    assert all((w.row_off + side // 2) % 250 == 0 for w in inner)
    assert all((w.col_off + side // 2) % 350 == 0 for w in inner)


def test_eta_ratios_compare_each_eta_with_the_time_left(seed_scale: ModuleType) -> None:
    log = [
        "     2.0 eefetch: resuming: 10/40 tiles already done",
        "    12.0 eefetch: 20/40 tiles, 1.0 GB, 50.0 MB/s, ETA 1m00s",
        "    42.0 eefetch: 30/40 tiles, 1.5 GB, 50.0 MB/s, ETA 15s, 2 retries",
        "    72.0 eefetch: 40/40 tiles, 2.0 GB, 50.0 MB/s",
    ]
    assert seed_scale.eta_ratios(log) == pytest.approx([1.0, 0.5])
    assert seed_scale.parse_duration("1h02m") == 3720
    assert seed_scale.eta_ratios(log[:3]) == []  # the run never reached its last tile
