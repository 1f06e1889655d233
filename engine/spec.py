"""What a job is: everything needed to fetch it again without the user's script.

A :class:`JobSpec` is stored in the state database as JSON. Its fingerprint is the identity
of "the same command": re-running with the same image, grid, bands, type and output resumes
the job; settings that only change how fast it runs (concurrency, proxy, timeouts) do not
count, so a user can change them between runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from engine.grid import Grid
from engine.pacing import DEFAULT_CONCURRENCY

Endpoint = Literal["urls", "compute"]
COMPRESSIONS = ("deflate", "lzw", "zstd", "none")


@dataclass(frozen=True, slots=True)
class JobSpec:
    expression: str  # the user's image, serialized by the earthengine-api client
    grid: Grid
    band_ids: tuple[str, ...]
    dtype: str
    nodata: float | int
    output: str  # absolute path of the GeoTIFF to write
    endpoint: Endpoint = "urls"
    max_tile_bytes: int = 50331648
    plan_concurrency: int = DEFAULT_CONCURRENCY
    compress: str = "deflate"
    cog: bool = False
    keep_tiles: bool = False
    ee_url: str | None = None
    project: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of what decides the pixels and the tiles; not of how fast they are fetched."""
        identity = {
            "expression": self.expression,
            "grid": _grid_dict(self.grid),
            "band_ids": list(self.band_ids),
            "dtype": self.dtype,
            "nodata": repr(self.nodata),
            "output": self.output,
            "endpoint": self.endpoint,
            "max_tile_bytes": self.max_tile_bytes,
            "extra": self.extra,
        }
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = _grid_dict(self.grid)
        data["band_ids"] = list(self.band_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        values = dict(data)
        grid = values.pop("grid")
        values["grid"] = Grid(
            grid["crs"], tuple(grid["transform"]), int(grid["width"]), int(grid["height"])
        )
        values["band_ids"] = tuple(values["band_ids"])
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {
        "crs": grid.crs,
        "transform": list(grid.transform),
        "width": grid.width,
        "height": grid.height,
    }


def default_nodata(dtype: str) -> float | int:
    """The value masked pixels take: 0 for unsigned types, the lowest value otherwise."""
    kind = np.dtype(dtype)
    if kind.kind == "u":
        return 0
    if kind.kind == "i":
        return int(np.iinfo(kind).min)
    return float(np.finfo(kind).min)
