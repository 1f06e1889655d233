"""The benchmark's in-process drivers still run on today's engine: scenario 5's state-scale
driver and its synthetic multi-band merge input, at a size of seconds (scripts/bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rasterio

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _drive(name: str, *args: str) -> dict[str, object]:
    result = Path(args[args.index("--workdir") + 1]) / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), name, *args, "--result", str(result)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(result.read_text()))


def test_the_state_scale_driver_plans_resumes_and_reports(tmp_path: Path) -> None:
    out = _drive("_scale", "--tiles", "4x5", "--workdir", str(tmp_path))
    assert out["tiles"] == 20
    assert out["done_tiles"] == 10
    assert out["grid"] == [5 * 512, 4 * 512]


def test_the_big_merge_input_is_a_job_of_real_tiles(tmp_path: Path) -> None:
    out = _drive("_mkmerge", "--side", "1024", "--workdir", str(tmp_path))
    tiles = sorted((tmp_path / "bigmerge.tif.eefetch-tiles").glob("*.tif"))
    assert out["tiles"] == len(tiles) >= 1
    with rasterio.open(tiles[0]) as tile:
        assert (tile.count, tile.dtypes[0]) == (8, "float32")
