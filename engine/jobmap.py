"""A picture of a job: its grid, each tile coloured by state, the region's outline, a legend.

Rasterised with array operations, so 100,000 tiles cost about what 10 do: every tile becomes
four corner entries of a 2-D difference array per state, whose cumulative sums give, for each
picture pixel, how many tiles of that state cover it. Where tiles overlap on a pixel (band
groups of one window; tiles smaller than a pixel) the more urgent state shows: failed over in
flight over pending over done. Split tiles are replaced by their pieces, so a split shows as
a thick outline around the pieces. Text (title, legend) is drawn with Pillow.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.snapshot import JobFacts, Snapshot, Tiles, read_snapshot

Colour = tuple[int, int, int]

# Okabe-Ito colours: told apart with the common kinds of colour blindness.
STATE_COLOURS: Mapping[str, Colour] = {
    "done": (0, 158, 115),
    "in_flight": (86, 180, 233),
    "pending": (214, 214, 214),
    "failed": (213, 94, 0),
    "split": (204, 121, 167),
}
REGION_COLOUR: Colour = (0, 0, 0)
BACKGROUND: Colour = (255, 255, 255)
PAINT_ORDER = ("done", "pending", "in_flight", "failed")  # later ones win on shared pixels
STATE_NAMES = {"in_flight": "in flight"}
DEFAULT_SIDE = 1024
MIN_OUTLINED = 6  # tiles at least this many picture pixels a side get an outline
_OUTLINE_SHADE = 0.62
_MARGIN = 12
_MIN_WIDTH = 560
_FONT_SIZE = 14


@dataclass(frozen=True, slots=True)
class MapPicture:
    png: bytes
    width: int
    height: int
    map_box: tuple[int, int, int, int]  # (left, top, width, height) of the tiles' area


def picture_size(grid_width: int, grid_height: int, longest: int) -> tuple[int, int]:
    """(width, height) of the map: the grid's shape with its longer side ``longest`` pixels."""
    if longest < 1:
        raise ValueError(f"the map needs at least 1 pixel a side, got {longest}")
    factor = longest / max(grid_width, grid_height)
    return max(1, round(grid_width * factor)), max(1, round(grid_height * factor))


class Boxes(NamedTuple):
    """Rectangles [x0, x1) x [y0, y1) of picture pixels, one entry per tile."""

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray

    def where(self, chosen: np.ndarray) -> Boxes:
        return Boxes(*(side[chosen] for side in self))

    def inner(self, by: int) -> Boxes:
        return Boxes(self.x0 + by, self.y0 + by, self.x1 - by, self.y1 - by)

    def at_least(self, side: int) -> np.ndarray:
        return np.asarray((self.x1 - self.x0 >= side) & (self.y1 - self.y0 >= side))


def tile_boxes(tiles: Tiles, grid_width: int, grid_height: int, size: tuple[int, int]) -> Boxes:
    """The tiles' boxes in a picture of ``size``; at least one pixel each."""
    width, height = size
    x0 = np.clip(tiles.col_off * width // grid_width, 0, width - 1)
    y0 = np.clip(tiles.row_off * height // grid_height, 0, height - 1)
    x1 = np.clip((tiles.col_off + tiles.width) * width // grid_width, x0 + 1, width)
    y1 = np.clip((tiles.row_off + tiles.height) * height // grid_height, y0 + 1, height)
    return Boxes(x0, y0, x1, y1)


def coverage(boxes: Boxes, size: tuple[int, int]) -> np.ndarray:
    """How many boxes cover each pixel: a (height, width) count, one pass over the boxes."""
    width, height = size
    x0, y0, x1, y1 = boxes.where((boxes.x1 > boxes.x0) & (boxes.y1 > boxes.y0))
    stride = width + 1
    corners = np.concatenate(
        [y0 * stride + x0, y0 * stride + x1, y1 * stride + x0, y1 * stride + x1]
    )
    signs = np.repeat(np.array([1, -1, -1, 1], dtype=np.int64), len(x0))
    diff = np.bincount(corners, weights=signs, minlength=(height + 1) * stride)
    counts = diff.reshape(height + 1, stride).cumsum(axis=0).cumsum(axis=1)
    return counts[:height, :width]


def _rim(boxes: Boxes, size: tuple[int, int], thickness: int) -> np.ndarray:
    """Pixels on the inner rim (``thickness`` wide) of any of the boxes."""
    return np.asarray((coverage(boxes, size) - coverage(boxes.inner(thickness), size)) > 0)


def paint_tiles(snap: Snapshot, size: tuple[int, int]) -> np.ndarray:
    """The map: an (height, width, 3) uint8 array, tiles coloured by state."""
    width, height = size
    grid = snap.facts.spec["grid"]
    grid_width, grid_height = int(grid["width"]), int(grid["height"])
    tiles = snap.tiles
    boxes = tile_boxes(tiles, grid_width, grid_height, size)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for state in PAINT_ORDER:
        chosen = tiles.is_status(state)
        if chosen.any():
            image[coverage(boxes.where(chosen), size) > 0] = STATE_COLOURS[state]
    large = tiles.leaves() & boxes.at_least(MIN_OUTLINED)
    if large.any():
        edge = _rim(boxes.where(large), size, 1)
        image[edge] = (image[edge] * _OUTLINE_SHADE).astype(np.uint8)
    split = tiles.is_status("split") & boxes.at_least(4)
    if split.any():
        image[_rim(boxes.where(split), size, 2)] = STATE_COLOURS["split"]
    return image


def region_lines(snap: Snapshot, size: tuple[int, int]) -> list[np.ndarray]:
    """The stored region's outline in picture pixels (none if the job kept no region).

    A region that cannot be brought into the grid's CRS is left out: the tiles matter more.
    """
    from engine.errors import GridError
    from engine.grid import region_outline

    geometry = snap.facts.region
    if geometry is None:
        return []
    grid = snap.facts.spec["grid"]
    try:
        sequences = region_outline(geometry, grid["crs"])
    except GridError:
        return []
    a, _, c, _, e, f = (float(v) for v in grid["transform"])
    width, height = size
    lines = []
    for sequence in sequences:
        cols, rows = (sequence[:, 0] - c) / a, (sequence[:, 1] - f) / e
        if _is_geographic(grid["crs"]):  # a ring in -180..180 on a grid that spans 180
            turn = 360.0 / abs(a)
            cols = cols + turn * np.round((grid["width"] / 2 - cols.mean()) / turn)
        scaled = np.column_stack([cols * width / grid["width"], rows * height / grid["height"]])
        lines.append(scaled[np.isfinite(scaled).all(axis=1)])
    return lines


def _is_geographic(crs: str) -> bool:
    from rasterio.crs import CRS

    return bool(CRS.from_user_input(crs).is_geographic)


def draw_lines(image: np.ndarray, lines: list[np.ndarray], colour: Colour) -> None:
    """Draw polylines (and lone points as small squares) 2 pixels wide, in place."""
    height, width = image.shape[:2]
    cap = 2 * (width + height)  # a segment longer than the picture's rim is sampled this often
    dots = [line for line in lines if len(line) == 1]
    paths = [line for line in lines if len(line) > 1]
    samples = [np.vstack(dots)] if dots else []
    if paths:
        starts = np.vstack([p[:-1] for p in paths])
        steps = np.vstack([np.diff(p, axis=0) for p in paths])
        count = np.minimum(np.ceil(np.hypot(*steps.T) * 2), cap).astype(np.int64) + 1
        which = np.repeat(np.arange(len(starts)), count)
        fraction = (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)) / (
            np.repeat(count, count) - 1
        ).clip(min=1)
        samples.append(starts[which] + steps[which] * fraction[:, None])
    if not samples:
        return
    points = np.floor(np.vstack(samples)).astype(np.int64)
    # An edge on the grid's right or bottom side falls just outside the picture: keep what is
    # within a pixel of it, on the border.
    near = (points >= -1).all(axis=1) & (points[:, 0] <= width) & (points[:, 1] <= height)
    points = points[near]
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        image[
            np.clip(points[:, 1] + dy, 0, height - 1), np.clip(points[:, 0] + dx, 0, width - 1)
        ] = colour


def map_image(snap: Snapshot, longest: int = DEFAULT_SIDE) -> np.ndarray:
    """Tiles and region outline, no text: an (height, width, 3) uint8 array."""
    grid = snap.facts.spec["grid"]
    size = picture_size(int(grid["width"]), int(grid["height"]), longest)
    image = paint_tiles(snap, size)
    draw_lines(image, region_lines(snap, size), REGION_COLOUR)
    return image


def legend_entries(snap: Snapshot) -> list[tuple[str, Colour, str]]:
    """(label, colour, 'fill' or 'outline') for every state, with the number of tiles."""
    counts = snap.facts.counts
    entries = [
        (f"{STATE_NAMES.get(s, s)} {counts[s]:,}", STATE_COLOURS[s], "fill")
        for s in ("done", "in_flight", "pending", "failed")
    ]
    entries.append((f"split {counts['split']:,}", STATE_COLOURS["split"], "outline"))
    if snap.facts.region is not None:
        entries.append(("region", REGION_COLOUR, "outline"))
    return entries


def render(snap: Snapshot, longest: int = DEFAULT_SIDE, *, legend: bool = True) -> MapPicture:
    """The PNG: a title line, the map, and (with ``legend``) the legend and the grid's size."""
    from PIL import Image, ImageDraw, ImageFont

    tiles_image = map_image(snap, longest)
    map_height, map_width = tiles_image.shape[:2]
    if not legend:
        return MapPicture(_png(Image.fromarray(tiles_image)), map_width, map_height,
                          (0, 0, map_width, map_height))  # fmt: skip
    font = ImageFont.load_default(size=_FONT_SIZE)
    line = _FONT_SIZE + 8
    width = max(map_width, _MIN_WIDTH) + 2 * _MARGIN
    entries = legend_entries(snap)
    rows = _legend_rows(entries, width - 2 * _MARGIN, font)
    height = _MARGIN + line + map_height + 2 + _MARGIN + line * (len(rows) + 1) + _MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_MARGIN, _MARGIN), _title(snap.facts), fill=(0, 0, 0), font=font)
    left, top = (width - map_width) // 2, _MARGIN + line
    draw.rectangle((left - 1, top - 1, left + map_width, top + map_height), outline=(90, 90, 90))
    canvas.paste(Image.fromarray(tiles_image), (left, top))
    y = top + map_height + 2 + _MARGIN
    for row in rows:
        x = _MARGIN
        for text, colour, kind in row:
            box = (x, y + 3, x + _FONT_SIZE, y + 3 + _FONT_SIZE)
            if kind == "fill":
                draw.rectangle(box, fill=colour, outline=(90, 90, 90))
            else:
                draw.rectangle(box, outline=colour, width=3)
            draw.text((x + _FONT_SIZE + 6, y + 2), text, fill=(0, 0, 0), font=font)
            x += _entry_width(text, font)
        y += line
    grid = snap.facts.spec["grid"]
    footer = (
        f"grid {int(grid['width']):,} x {int(grid['height']):,} px, {grid['crs']}; "
        f"read {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap.facts.read_at))}"
    )
    draw.text((_MARGIN, y + 2), footer, fill=(90, 90, 90), font=font)
    return MapPicture(_png(canvas), width, height, (left, top, map_width, map_height))


def write_map(
    state_path: str | os.PathLike[str],
    picture: str | os.PathLike[str],
    longest: int = DEFAULT_SIDE,
    *,
    job: str | None = None,
) -> MapPicture:
    """Read the job (read-only: a state file, or job ``job`` of a database on a server) and
    write its picture to ``picture`` (temp, rename)."""
    result = render(read_snapshot(state_path, job=job), longest)
    target = Path(picture)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with temp.open("wb") as out:
            out.write(result.png)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(target)
    finally:
        temp.unlink(missing_ok=True)
    return result


def _title(facts: JobFacts) -> str:
    from engine import inventory

    counts = facts.counts
    leaves = sum(n for s, n in counts.items() if s != "split")
    output_exists = Path(facts.output_path).exists()
    label = inventory.label(facts.job_status, counts, facts.running, output_exists)
    percent = inventory.percent_done(facts.job_status, counts)
    return f"{facts.name}: {label}, {counts['done']:,}/{leaves:,} tiles done ({percent:.0f}%)"


def _entry_width(text: str, font: Any) -> int:
    return _FONT_SIZE + 6 + int(font.getlength(text)) + 18


def _legend_rows(
    entries: list[tuple[str, Colour, str]], width: int, font: Any
) -> list[list[tuple[str, Colour, str]]]:
    rows: list[list[tuple[str, Colour, str]]] = [[]]
    used = 0
    for entry in entries:
        need = _entry_width(entry[0], font)
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0
        rows[-1].append(entry)
        used += need
    return rows


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
