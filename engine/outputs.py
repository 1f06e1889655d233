"""Which writer makes a job's output, in one place: the GeoTIFF of ``engine.merge``.

``engine.live_merge`` drives a :class:`TileOutput` while the tiles arrive (a context manager;
``add`` tiles in any order; ``record`` a tile once it is durable, nothing for a GeoTIFF;
``adopt`` a tile an earlier run wrote; ``finish`` checks coverage and publishes atomically),
and ``engine.job`` merges with :func:`merge_job` when it could not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.merge import OutputBuilder, merge_tiles
from engine.metadata import output_tags

if TYPE_CHECKING:
    from engine.grid import TilePlan
    from engine.spec import JobSpec

Progress = Callable[[int, int], None]


class TileOutput(Protocol):
    """What ``live_merge`` and ``job`` need of an output writer."""

    def __enter__(self) -> TileOutput: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def add(self, plan: TilePlan, path: Path) -> None: ...

    def adopt(self, plan: TilePlan, path: Path) -> None: ...

    def record(self, tile_id: int, checksum: str | None) -> None: ...

    def finish(self) -> Path: ...

    def suspend(self) -> object: ...


def geotiff_builder(
    spec: JobSpec,
    *,
    overwrite: bool,
    progress: Progress | None,
    interleave: str,
    reopen: bool,
    before_publish: Callable[[Path], None] | None,
) -> OutputBuilder:
    """The GeoTIFF of a job, built tile by tile (``reopen``: continue a suspended one)."""
    return OutputBuilder(
        spec.grid,
        spec.band_ids,
        spec.dtype,
        Path(spec.output),
        overwrite=overwrite,
        progress=progress,
        interleave=interleave,
        reopen=reopen,
        before_publish=before_publish,
        **_geotiff_layout(spec),
    )


def _geotiff_layout(spec: JobSpec) -> dict[str, Any]:
    """What a job's spec says of its GeoTIFF, for the builder and the merge alike."""
    return {
        "nodata": spec.nodata,
        "compress": spec.compress,
        "cog": spec.cog,
        "tags": output_tags(spec),
        "mask_band": spec.mask_band,
    }


def merge_job(
    spec: JobSpec,
    tiles: Iterable[tuple[TilePlan, Path]],
    *,
    overwrite: bool,
    progress: Progress | None,
    before_publish: Callable[[Path], None] | None,
) -> Path:
    """Write a job's output from all its tile files at once (the merge after the fetch)."""
    return merge_tiles(
        spec.grid,
        spec.band_ids,
        spec.dtype,
        tiles,
        Path(spec.output),
        overwrite=overwrite,
        progress=progress,
        before_publish=before_publish,
        **_geotiff_layout(spec),
    )
