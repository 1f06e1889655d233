"""One tile body from a model image: render the pixels on the request grid, then encode them.

The server calls `render_body` in a thread of its own process; a worker process calls
`render_job`, which evaluates the job's JSON expression with the bundled model first (model
images hold closures and cannot cross processes, expressions can). Both end in the same
`render_body`, so a tile's bytes do not depend on where it was rendered.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
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


@dataclass(frozen=True, eq=False)
class TileJob:
    """Everything that decides a tile body, as plain values a worker process can receive."""

    expression: dict[str, Any]
    grid: PixelGrid
    band_ids: tuple[str, ...]
    file_format: str
    prefix: str = "download"
    visualization: dict[str, Any] | None = None
    compress: str | None = None

    def key(self) -> str:
        """A digest of every input of the body: equal keys, equal bytes (for one model)."""
        return digest({**dataclasses.asdict(self), "band_ids": list(self.band_ids)})


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


def render_job(job: TileJob) -> bytes:
    """The body of `job` in a worker process: evaluate its expression with the bundled model."""
    model = importlib.import_module("engine.emulator.evaluate")
    return render_body(model.evaluate(job.expression), job)
