"""One tile body from an image expression: evaluate it, render the pixels on the request grid,
then encode them; and the few facts about an image the server keeps instead of the image.

Everything starts from the expression's JSON text: model images hold closures (they cannot
cross processes) and large object graphs (kept by the thousand, their garbage collection
would stall the server's event loop), expressions are one string. A thread of the server
calls `render_with` / `describe` with the server's evaluator; a worker process calls
`render_job` / `describe_job`, which use the bundled model. Both end in the same
`render_body`, so a tile's bytes do not depend on where it was rendered.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import imaging
from engine.emulator import encode
from engine.emulator.faults import digest


@dataclass(frozen=True)
class PixelGrid:
    """A request's pixel grid; the model's own `Grid` type is read by attribute only."""

    crs: str
    transform: tuple[float, ...]
    width: int
    height: int


def as_pixel_grid(grid: Any) -> PixelGrid:
    """Copy any grid-like object into plain values (hashable, JSON-able for identities)."""
    return PixelGrid(
        str(grid.crs),
        tuple(float(v) for v in grid.transform),
        int(grid.width),
        int(grid.height),
    )


def expression_text(expression: dict[str, Any]) -> str:
    """An expression as canonical JSON text (key order does not matter)."""
    return json.dumps(expression, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ImageFacts:
    """What the server keeps of an evaluated image: its grid, bands and cost on that grid."""

    grid: PixelGrid | None  # the request's grid, else the bounded one (clipToBoundsAndScale)
    bands: tuple[tuple[str, str], ...]  # (band id, numpy dtype name), in order
    work: int | None  # the model's cost estimate on `grid` (its memory limit applies to it)


def image_facts(image: Any, grid: PixelGrid | None = None) -> ImageFacts:
    """The facts of a model image on `grid` (default: the grid the image is bounded to)."""
    if grid is None:
        bounded = image.bounded_grid()
        grid = as_pixel_grid(bounded) if bounded is not None else None
    bands = tuple((str(b.id), np.dtype(b.dtype).name) for b in image.bands)
    work = int(image.work(grid.width, grid.height)) if grid is not None else None
    return ImageFacts(grid, bands, work)


@dataclass(frozen=True)
class TileJob:
    """Everything that decides a tile body, as plain values a worker process can receive."""

    expression: str  # canonical JSON text, see `expression_text`
    grid: PixelGrid
    band_ids: tuple[str, ...]
    file_format: str
    prefix: str = "download"
    visualization: dict[str, Any] | None = None
    compress: str | None = None

    def key(self) -> str:
        """A digest of every input of the body: equal keys, equal bytes (for one model)."""
        return digest(dataclasses.astuple(self))


def picture_levels(
    data: Sequence[np.ndarray], visualization: dict[str, Any] | None
) -> list[np.ndarray]:
    """Bands as 0..255 levels: stretched by ``visualizationOptions`` when given (REST shape)."""
    if visualization is None:
        return [np.asarray(d, dtype=np.uint8) for d in data]
    ranges = visualization.get("ranges") or [{"min": 0.0, "max": 1.0}]
    lows = imaging.per_band([float(r.get("min", 0.0)) for r in ranges], len(data), 0.0)
    highs = imaging.per_band([float(r.get("max", 1.0)) for r in ranges], len(data), 1.0)
    gamma = (visualization.get("gamma") or {}).get("value")
    levels = [
        imaging.stretch(d, lo, hi, float(gamma) if gamma is not None else None)
        for d, lo, hi in zip(data, lows, highs, strict=True)
    ]
    palette = visualization.get("paletteColors")
    if palette and len(levels) == 1:
        levels = imaging.apply_palette(levels[0], palette)
    return levels


def render_body(image: Any, job: TileJob) -> bytes:
    """The body of `job` from an evaluated image: pixels, then the file format's bytes."""
    grid = job.grid
    rendered = image.render(grid.crs, grid.transform, grid.width, grid.height, list(job.band_ids))
    if job.file_format in imaging.PICTURE_FORMATS:
        valid = np.logical_and.reduce([np.asarray(v, dtype=bool) for v in rendered.valid])
        levels = picture_levels(list(rendered.data), job.visualization)
        return imaging.encode_picture(levels, valid, job.file_format)
    return encode.encode(
        job.file_format,
        grid.crs,
        grid.transform,
        list(rendered.band_ids),
        list(rendered.data),
        list(rendered.valid),
        prefix=job.prefix,
        compress=job.compress,
    )


def render_with(evaluate: Callable[[dict[str, Any]], Any], job: TileJob) -> bytes:
    """The body of `job`, its expression evaluated by `evaluate`."""
    return render_body(evaluate(json.loads(job.expression)), job)


def describe(
    evaluate: Callable[[dict[str, Any]], Any], expression: str, grid: PixelGrid | None
) -> ImageFacts:
    """The facts of an expression's image, evaluated by `evaluate` (then dropped)."""
    return image_facts(evaluate(json.loads(expression)), grid)


def _bundled() -> Callable[[dict[str, Any]], Any]:
    return importlib.import_module("engine.emulator.evaluate").evaluate


def render_job(job: TileJob) -> bytes:
    """`render_with` the bundled model: what a worker process runs."""
    return render_with(_bundled(), job)


def describe_job(expression: str, grid: PixelGrid | None) -> ImageFacts:
    """`describe` with the bundled model: what a worker process runs."""
    return describe(_bundled(), expression, grid)
