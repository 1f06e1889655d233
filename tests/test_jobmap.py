"""`eefetch status --map`: the picture of a job's tiles, checked pixel by pixel."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from jobstates import make_state, set_states, split, tile_window
from PIL import Image

from engine import jobmap, region_input
from engine.cli import main
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.grid import grid_from_region
from engine.jobmap import REGION_COLOUR, STATE_COLOURS, render, write_map
from engine.snapshot import read_snapshot
from engine.spec import REGION_EXTRA, JobSpec, identity_differences, with_region
from engine.testing.jobs import dem_args
from state import NewTile, Store

REGION = "118.1,32.3,118.4,32.45"  # inside the 5 x 3 tile grid of make_state(..., 3, 5)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def centre(
    window: tuple[int, int, int, int], box: tuple[int, int, int, int], grid: tuple[int, int]
):
    """The picture pixel (x, y) at the middle of a tile's window."""
    row, col, height, width = window
    left, top, map_width, map_height = box
    x0, x1 = col * map_width // grid[0], (col + width) * map_width // grid[0]
    y0, y1 = row * map_height // grid[1], (row + height) * map_height // grid[1]
    return left + (x0 + x1) // 2, top + (y0 + y1) // 2


def is_colour(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, dtype=np.uint8), axis=-1)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """15 tiles: 3 done, 2 in flight, 1 failed, 1 split into 4 (one of each), the rest pending."""
    state = make_state(tmp_path / "mixed.eefetch.db", 3, 5)
    split(state, 7, [NewTile(r, c, 50, 50, 0, 1) for r in (100, 150) for c in (100, 150)], 1.0)
    set_states(state, "id IN (1, 2, 3, 16)", "done")
    set_states(state, "id IN (4, 5, 17)", "in_flight")
    set_states(state, "id IN (6, 18)", "failed", error="HTTP 503: busy", attempts=5)
    return state


def test_each_tile_shows_the_colour_of_its_state_and_the_legend_names_them(mixed: Path) -> None:
    picture = render(read_snapshot(mixed))
    image = pixels(picture.png)
    assert image.shape == (picture.height, picture.width, 3)
    expected = {1: "done", 2: "done", 3: "done", 4: "in_flight", 5: "in_flight", 6: "failed"}
    expected |= {8: "pending", 15: "pending", 16: "done", 17: "in_flight", 18: "failed"}
    expected |= {19: "pending"}
    for tile_id, state in expected.items():
        x, y = centre(tile_window(mixed, tile_id), picture.map_box, (500, 300))
        assert tuple(image[y, x]) == STATE_COLOURS[state], (tile_id, state)
    # The split tile (row 100..200, column 100..200 of the grid) has a thick split outline,
    # and each of its pieces its own, darker, thin one.
    left, top, map_width, map_height = picture.map_box
    x0, y0 = left + 100 * map_width // 500, top + 100 * map_height // 300
    mid_y = top + 150 * map_height // 300 + 10
    assert tuple(image[mid_y, x0]) == tuple(image[mid_y, x0 + 1]) == STATE_COLOURS["split"]
    assert tuple(image[y0, x0 + 30]) == STATE_COLOURS["split"]
    done_rim = image[top, left + 5 : left + 100]  # tile 1's top edge: a darker green
    assert (done_rim.astype(int).sum(axis=1) < sum(STATE_COLOURS["done"])).all()
    # Legend under the map: a swatch of every state and text.
    legend = image[top + map_height + 2 :]
    for state, colour in STATE_COLOURS.items():
        assert is_colour(legend, colour).sum() >= 40, state
    assert (legend.astype(int).sum(axis=-1) < 120).sum() > 300  # dark text
    assert (image[:top].astype(int).sum(axis=-1) < 120).sum() > 200  # the title line
    names = [entry[0] for entry in jobmap.legend_entries(read_snapshot(mixed))]
    assert names == ["done 4", "in flight 3", "pending 9", "failed 2", "split 1"]


def test_the_more_urgent_state_shows_where_band_groups_share_a_window(tmp_path: Path) -> None:
    state = make_state(tmp_path / "bands.eefetch.db", 1, 2, bands=2)
    split(state, 1, [NewTile(0, 0, 100, 100, 0, 1), NewTile(0, 0, 100, 100, 1, 2)], 1.0)
    set_states(state, "id = 3", "done")
    set_states(state, "id = 4", "failed")
    set_states(state, "id = 2", "done")
    picture = render(read_snapshot(state), 200, legend=False)
    image = pixels(picture.png)
    assert tuple(image[50, 50]) == STATE_COLOURS["failed"]
    assert tuple(image[50, 150]) == STATE_COLOURS["done"]


def test_the_region_outline_is_drawn_where_the_region_lies(tmp_path: Path) -> None:
    with_outline = make_state(tmp_path / "region.eefetch.db", 3, 5, region=REGION)
    without = make_state(tmp_path / "plain.eefetch.db", 3, 5)
    picture = render(read_snapshot(with_outline), legend=False)
    image = pixels(picture.png)
    black = is_colour(image, REGION_COLOUR)
    scale = picture.width / 500  # the region spans grid columns 100..400, rows 50..200
    top, bottom = int(50 * scale), int(200 * scale)
    left, right = int(100 * scale), int(400 * scale)
    for x in range(left + 5, right - 5, 25):
        assert black[top : top + 2, x].any() and black[bottom - 1 : bottom + 2, x].any(), x
    for y in range(top + 5, bottom - 5, 25):
        assert black[y, left : left + 2].any() and black[y, right - 1 : right + 2].any(), y
    assert not black[: top - 3].any() and not black[:, : left - 3].any()
    assert not is_colour(
        pixels(render(read_snapshot(without), legend=False).png), REGION_COLOUR
    ).any()
    assert "region" in [e[0] for e in jobmap.legend_entries(read_snapshot(with_outline))]


def count_lines(action: Callable[[], Any]) -> int:
    """How many lines of Python ``action`` executes (C code, numpy's loops, not counted)."""
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        action()
    finally:
        sys.settrace(None)
    return lines


@pytest.mark.slow
def test_100000_tiles_make_a_bounded_picture_at_the_cost_of_10(tmp_path: Path) -> None:
    big = make_state(tmp_path / "big.eefetch.db", 250, 400, tile=10)
    set_states(big, "id % 10 < 4", "done")
    set_states(big, "id % 10 = 8", "in_flight")
    set_states(big, "id % 10 = 9", "failed")
    small = make_state(tmp_path / "small.eefetch.db", 2, 5, tile=10)
    set_states(small, "id % 10 < 4", "done")
    set_states(small, "id % 10 = 8", "in_flight")
    set_states(small, "id % 10 = 9", "failed")
    small_lines = count_lines(lambda: write_map(small, tmp_path / "small.png"))
    big_lines = count_lines(lambda: write_map(big, tmp_path / "big.png"))
    # No Python line runs once per tile: 100,000 tiles run about as many lines as 10 do.
    assert big_lines < 2 * small_lines < 100_000, (small_lines, big_lines)
    image = np.asarray(Image.open(tmp_path / "big.png").convert("RGB"))
    assert (
        image.shape[0] <= jobmap.DEFAULT_SIDE + 200 and image.shape[1] <= jobmap.DEFAULT_SIDE + 50
    )
    picture = render(read_snapshot(big), legend=False)
    assert (picture.width, picture.height) == (1024, 640)
    tiles_image = pixels(picture.png)
    shares = {"done": 0.4, "pending": 0.4, "in_flight": 0.1, "failed": 0.1}
    for state, share in shares.items():
        # Each state covers about its share of the map (outlines are off at this size).
        found = is_colour(tiles_image, STATE_COLOURS[state]).mean()
        assert abs(found - share) < 0.05, (state, found)


def test_status_map_writes_the_picture_and_refuses_a_folder(mixed: Path, tmp_path: Path) -> None:
    target = tmp_path / "status.png"
    result = CliRunner().invoke(main, ["status", str(mixed), "--map", str(target)])
    assert result.exit_code == 0, result.output
    assert "done" in result.stdout and f"wrote {target}" in result.stderr
    assert target.read_bytes().startswith(b"\x89PNG") and not list(tmp_path.glob(".status*"))
    folder = CliRunner().invoke(main, ["status", str(tmp_path), "--map", str(target)])
    assert folder.exit_code == 2 and "give its state file, not a folder" in folder.output
    other = tmp_path / "other.eefetch.db"
    other.write_text("not sqlite")
    bad = CliRunner().invoke(main, ["status", str(other), "--map", str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output
    nowhere = CliRunner().invoke(
        main, ["status", str(mixed), "--map", str(tmp_path / "no" / "x.png")]
    )
    assert nowhere.exit_code == 1 and "does not exist; create it" in nowhere.output


def test_the_region_is_kept_without_changing_the_job_identity(tmp_path: Path) -> None:
    state = make_state(tmp_path / "r.eefetch.db", 1, 1)
    spec = JobSpec.from_dict(read_snapshot(state).facts.spec)
    outlined = with_region(
        spec, region_input.simplified_outline({"type": "Point", "coordinates": [1, 2]})
    )
    assert outlined.extra[REGION_EXTRA]["type"] == "Point"
    assert outlined.fingerprint() == spec.fingerprint()
    assert identity_differences(spec, outlined) == identity_differences(outlined, spec) == []
    assert with_region(spec, None) is spec
    other = replace(outlined, extra={**outlined.extra, "something_new": 1})
    assert other.fingerprint() != spec.fingerprint()  # other extra keys still count


def test_a_huge_region_is_kept_simplified() -> None:
    angles = np.linspace(0, 2 * np.pi, 200_000)
    ring = np.column_stack([118 + np.cos(angles), 32 + np.sin(angles)]).tolist()
    ring.append(ring[0])
    kept = region_input.simplified_outline({"type": "Polygon", "coordinates": [ring]})
    assert kept is not None
    points = len(kept["coordinates"][0])
    assert 50 < points <= region_input.MAX_REGION_POINTS
    assert len(json.dumps(kept)) < 200_000


@pytest.mark.slow
def test_a_download_keeps_its_region_for_the_map(tmp_path: Path) -> None:
    output = tmp_path / "dem.tif"
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=4)) as emulator:
        result = CliRunner().invoke(main, dem_args(emulator.url, output, "--quiet"))
    assert result.exit_code == 0, result.output
    state = Path(f"{output}.eefetch.db")
    db = sqlite3.connect(state)
    stored, fingerprint = db.execute("SELECT spec, fingerprint FROM job").fetchone()
    db.close()
    spec = JobSpec.from_dict(json.loads(stored))
    assert spec.extra[REGION_EXTRA]["type"] == "Polygon"
    without = replace(spec, extra={k: v for k, v in spec.extra.items() if k != REGION_EXTRA})
    assert fingerprint == spec.fingerprint() == without.fingerprint()
    picture = render(read_snapshot(state), legend=False)
    image = pixels(picture.png)
    assert is_colour(image, STATE_COLOURS["done"]).mean() > 0.5
    # In UTM the lon/lat box is a slightly turned quadrilateral inside the grid: its outline
    # runs close to all four sides of the picture.
    black = is_colour(image, REGION_COLOUR)
    height, width = black.shape
    assert black[: height // 10].any() and black[-height // 10 :].any()
    assert black[:, : width // 10].any() and black[:, -width // 10 :].any()
    assert not black[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4].any()
    assert time.time() >= read_snapshot(state).facts.created_at


def state_for_region(path: Path, region: dict[str, Any], scale: float) -> Path:
    """One tile covering the grid Earth Engine would make for ``region``, which it keeps."""
    grid = grid_from_region(region, "EPSG:4326", scale)
    spec = with_region(
        JobSpec("{}", grid, ("b",), "uint8", 0, str(path.with_suffix(".tif"))),
        region_input.simplified_outline(region),
    )
    with Store.open(path) as store:
        store.create_job(
            spec.fingerprint(),
            spec.to_dict(),
            "test",
            spec.output,
            [NewTile(0, 0, grid.height, grid.width, 0, 1)],
        )
    return path


def test_a_region_across_the_antimeridian_is_drawn_on_its_grid(tmp_path: Path) -> None:
    ring = [[179.5, 0.0], [-179.5, 0.0], [-179.5, 1.0], [179.5, 1.0], [179.5, 0.0]]
    region = {"type": "Polygon", "coordinates": [ring]}
    state = state_for_region(tmp_path / "am.eefetch.db", region, 1113.2)  # 0.01 degree pixels
    image = pixels(render(read_snapshot(state), 400, legend=False).png)
    black = is_colour(image, REGION_COLOUR)
    assert black.shape[1] == 400 and black.any()
    # The grid is the region's box on the 0.01 degree lattice (a grid pixel is 4 picture
    # pixels): the outline runs along all four sides, within a grid pixel of them.
    for side in (black[:6], black[-6:], black[:, :6].T, black[:, -6:].T):
        assert side.any(axis=0).mean() > 0.95
    assert not black[10:-10, 10:-10].any()


def test_a_region_that_cannot_be_projected_leaves_only_its_outline_out(tmp_path: Path) -> None:
    region = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
            [[[2, 0], [3, 0], [3, 1], [2, 1], [2, 0]]],
        ],
    }
    state = state_for_region(tmp_path / "two.eefetch.db", region, 11132.0)
    drawn = is_colour(pixels(render(read_snapshot(state), 300, legend=False).png), REGION_COLOUR)
    assert drawn[:, :3].any(axis=1).all() and drawn[:, 199:203].any(axis=1).all()
    assert not drawn[:, 103:197].any()  # two squares, no line between them
    db = sqlite3.connect(state)
    spec = json.loads(db.execute("SELECT spec FROM job").fetchone()[0])
    spec["extra"][REGION_EXTRA]["crs"] = {"type": "name", "properties": {"name": "EPSG:99999"}}
    with db:
        db.execute("UPDATE job SET spec = ?", (json.dumps(spec),))
    db.close()
    image = pixels(render(read_snapshot(state), 300, legend=False).png)
    assert not is_colour(image, REGION_COLOUR).any()
    assert is_colour(image, STATE_COLOURS["pending"]).mean() > 0.9
