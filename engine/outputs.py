"""Which writer makes a job's output, chosen in one place from the spec's format.

A GeoTIFF is ``engine.merge.OutputBuilder``; a Zarr store is ``engine.zarr_output.ZarrBuilder``
(imported only for a Zarr job: the GeoTIFF path never loads zarr). Both keep one contract,
:class:`TileOutput`: a context manager; ``add`` tiles in any order; ``record`` a tile once it
is durable (the Zarr journal; nothing for a GeoTIFF); ``adopt`` a tile an earlier run wrote;
``finish`` checks coverage and publishes atomically. ``engine.live_merge`` drives one while
the tiles arrive, and ``engine.job`` merges with :func:`merge_job` when it could not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.merge import OutputBuilder, merge_tiles
from engine.metadata import output_attributes, output_tags

if TYPE_CHECKING:
    from engine.grid import TilePlan
    from engine.spec import JobSpec
    from engine.zarr_output import ZarrBuilder, ZarrLayout

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


def is_zarr(spec: JobSpec) -> bool:
    return spec.output_format == "zarr"


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


def zarr_builder(
    spec: JobSpec,
    job_uid: str,
    *,
    overwrite: bool,
    progress: Progress | None,
    before_publish: Callable[[Path], None] | None,
) -> ZarrBuilder:
    """The Zarr store of a job; it continues the store an earlier run of the job kept."""
    from engine.zarr_output import ZarrBuilder

    return ZarrBuilder(
        zarr_layout(spec),
        Path(spec.output),
        identity={"job_uid": job_uid, "fingerprint": spec.fingerprint()},
        attributes=output_attributes(spec),
        time_properties=spec.extra.get("time_properties"),
        overwrite=overwrite,
        progress=progress,
        before_publish=before_publish,
    )


def zarr_layout(spec: JobSpec) -> ZarrLayout:
    """The store's layout: chunks on the edges of the job's planned tiles (``job.plan``, a
    pure function of the spec, so every run of the job finds the same layout)."""
    from engine.job import plan
    from engine.zarr_output import ZarrLayout, chunk_side

    planned = plan(spec)
    grid = spec.grid
    chunk = (
        chunk_side([t.window.row_off for t in planned], grid.height),
        chunk_side([t.window.col_off for t in planned], grid.width),
    )
    stack = spec.extra.get("stack")
    if stack is None:
        return ZarrLayout(grid, spec.band_ids, spec.dtype, spec.nodata, spec.compress, chunk)
    return ZarrLayout(
        grid,
        tuple(stack["bands"]),
        spec.dtype,
        spec.nodata,
        spec.compress,
        chunk,
        times=tuple(stack["times"]),
        ids=tuple(stack["ids"]),
    )


def merge_job(
    spec: JobSpec,
    job_uid: str,
    tiles: Iterable[tuple[TilePlan, Path]],
    *,
    overwrite: bool,
    progress: Progress | None,
    before_publish: Callable[[Path], None] | None,
) -> Path:
    """Write a job's output from all its tile files at once (the merge after the fetch)."""
    if not is_zarr(spec):
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
    with zarr_builder(
        spec, job_uid, overwrite=overwrite, progress=progress, before_publish=before_publish
    ) as builder:
        for plan_, path in tiles:
            builder.add(plan_, path)
        return builder.finish()
