"""The benchmark sweep's pure helpers (scripts/bench.py): the bare loop's tiles, the job box,
and the section of BENCHMARKS.md the sweep rewrites. The sweep itself is a benchmark, run by
hand; these only check the arithmetic and the file handling it relies on."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from engine.testing.cli import REPO, load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench", "bench_script")


@pytest.mark.parametrize(("height", "width", "mib"), [(2828, 2828, 2), (1000, 3001, 48), (7, 5, 8)])
def test_bare_windows_tile_the_grid_within_the_size(
    bench: ModuleType, height: int, width: int, mib: int
) -> None:
    cost = 8 * (4 + 1)  # 8 float32 bands, as EE counts a request
    windows = bench.bare_windows(height, width, mib * 2**20, cost)
    covered = np.zeros((height, width), dtype=int)
    for w in windows:
        assert w.height * w.width * cost <= mib * 2**20
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (covered == 1).all()
    sides = {w.height for w in windows} | {w.width for w in windows}
    assert max(sides) - min(sides) <= max(1, max(sides) // 2)  # no slivers


def test_sweep_box_holds_the_job_size(bench: ModuleType) -> None:
    west, south, east, north = bench.sweep_box(256)
    pixel = 30 / 111319.49079327357
    pixels = ((east - west) / pixel) * ((north - south) / pixel)
    assert abs(pixels * 32 / 1e6 - 256) < 1


def test_sweep_section_is_replaced_between_its_markers(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\nbefore\n{bench.SWEEP_BEGIN}\nold table\n{bench.SWEEP_END}\nafter\n")
    bench.write_sweep_section(doc, "new table\n")
    assert doc.read_text() == (
        f"# B\nbefore\n{bench.SWEEP_BEGIN}\nnew table\n{bench.SWEEP_END}\nafter\n"
    )
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no sweep markers"):
        bench.write_sweep_section(tmp_path / "plain.md", "x")
    assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_the_repository_benchmarks_have_the_markers(bench: ModuleType) -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    assert text.index(bench.SWEEP_BEGIN) < text.index(bench.SWEEP_END)
