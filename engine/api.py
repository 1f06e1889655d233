"""The Python API: geemap's functions, resumable underneath.

A user of ``geemap.download_ee_image`` swaps the import and keeps the call. geemap's arguments
keep their names, order and meaning; eefetch's own (state location, concurrency, endpoint,
proxy, ...) are keywords after them. This module only translates arguments: a download is a
:class:`engine.request.DownloadRequest` and :class:`engine.request.RunSettings` on an
:class:`engine.ee_adapter.Connection`, built into a job by ``engine.request.build_job`` exactly
as the command line builds it. Everything raised is an :class:`engine.errors.EefetchError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import ee_adapter
from engine.defaults import (
    DEFAULT_PARALLEL_IMAGES,
    EE_MAX_REQUEST_BYTES,
)
from engine.ee_adapter import Connection
from engine.errors import (
    CollectionIncomplete,
    DownloadIncomplete,
    EefetchError,
    OtherJobError,
)
from engine.job import JobResult, run_job
from engine.paths import state_target
from engine.progress import Progress, choose_progress
from engine.quota_gate import call_slot
from engine.request import (
    DownloadRequest,
    LossyCastWarning,
    RunSettings,
    build_job,
    concurrency_from,
    tile_bytes_from,
)
from engine.runner import run_sync
from engine.spec import Endpoint

if TYPE_CHECKING:
    import ee

    from engine.collection import CollectionResult, Where
    from engine.estimate import PlanReport

_DEFAULTS = RunSettings()


def download_ee_image(
    image: ee.Image,
    filename: str | os.PathLike[str],
    region: Any = None,
    crs: str | None = None,
    crs_transform: Sequence[float] | None = None,
    scale: float | None = None,
    resampling: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    num_threads: int | None = None,
    max_tile_size: float | None = None,
    max_tile_dim: int | None = None,
    shape: Sequence[int] | None = None,
    scale_offset: bool = False,
    unmask_value: float | None = None,
    *,
    bands: Sequence[str] | None = None,
    state: str | os.PathLike[str] | None = None,
    job: str | None = None,
    concurrency: int | None = None,
    endpoint: Endpoint = "urls",
    max_tile_bytes: int | None = None,
    compress: str | None = None,
    cog: bool = False,
    keep_tiles: bool = False,
    like: str | os.PathLike[str] | None = None,
    mask_band: bool = False,
    output_format: str | None = None,
    workload_tag: str | None = None,
    ee_url: str | None = None,
    project: str | None = None,
    high_volume: bool = False,
    proxy: str | None = None,
    ca_bundle: str | None = None,
    idle_timeout: float = _DEFAULTS.idle_timeout,
    first_byte_timeout: float = _DEFAULTS.first_byte_timeout,
    max_attempts: int = _DEFAULTS.max_attempts,
    max_backoff: float = _DEFAULTS.max_backoff,
    project_quota: int | None = None,
    lease_seconds: float = _DEFAULTS.lease_seconds,
    tile_folder: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
    **kwargs: Any,
) -> JobResult:
    """Download ``image`` to one GeoTIFF at ``filename``; call again to resume.

    geemap's arguments keep their meaning: ``scale`` is in metres also for geographic CRSs,
    ``shape`` is (height, width) with ``crs_transform``, ``num_threads`` is the concurrency,
    ``max_tile_size`` is in MB and ``max_tile_dim`` in pixels, ``unmask_value`` is the value
    masked pixels take (default: the type's maximum for unsigned types, else its lowest
    value), ``scale_offset`` applies the bands' scales and offsets (float32). eefetch's own:
    ``like`` (a raster whose grid to take), ``mask_band`` (EE's mask as the GeoTIFF's
    internal mask), ``output_format`` (``"zarr"``, or a file name ending in .zarr: a Zarr
    store), ``workload_tag`` (labels the requests). ``state`` is a state file or a PostgreSQL
    URL (then this call is one worker of job ``job``, which others may join: ``eefetch
    worker``). Returns a :class:`JobResult`; raises :class:`DownloadIncomplete` when tiles
    failed (call again to retry them) and another :class:`EefetchError` when the job cannot
    run as asked.
    """
    del kwargs  # geemap passes extra keywords through to geedim; none change the result
    request, settings, connection = _from_arguments(locals(), Path(filename))
    options = settings.run_options(connection)
    ee_adapter.connect(connection)
    with ee_adapter.client_settings(workload_tag=request.workload_tag):
        target = state_target(state, request.output)
        slot = call_slot(target, settings.project_quota)
        spec = build_job(image, request, connection, concurrency=settings.concurrency, slot=slot)
        running = run_job(spec, target, options, progress or choose_progress(quiet), job=job)
        result = run_sync(running)
    if not result.complete:
        raise DownloadIncomplete(result)
    return result


def download_ee_image_collection(
    collection: ee.ImageCollection,
    out_dir: str | os.PathLike[str] | None = None,
    filenames: Sequence[str] | str | None = None,
    region: Any = None,
    crs: str | None = None,
    crs_transform: Sequence[float] | None = None,
    scale: float | None = None,
    resampling: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    num_threads: int | None = None,
    max_tile_size: float | None = None,
    max_tile_dim: int | None = None,
    shape: Sequence[int] | None = None,
    scale_offset: bool = False,
    unmask_value: float | None = None,
    column: str | None = None,
    *,
    zarr: bool = False,
    bands: Sequence[str] | None = None,
    parallel_images: int | None = None,
    concurrency: int | None = None,
    endpoint: Endpoint = "urls",
    max_tile_bytes: int | None = None,
    compress: str | None = None,
    cog: bool = False,
    keep_tiles: bool = False,
    like: str | os.PathLike[str] | None = None,
    mask_band: bool = False,
    output_format: str | None = None,
    workload_tag: str | None = None,
    ee_url: str | None = None,
    project: str | None = None,
    high_volume: bool = False,
    proxy: str | None = None,
    ca_bundle: str | None = None,
    idle_timeout: float = _DEFAULTS.idle_timeout,
    first_byte_timeout: float = _DEFAULTS.first_byte_timeout,
    max_attempts: int = _DEFAULTS.max_attempts,
    max_backoff: float = _DEFAULTS.max_backoff,
    project_quota: int | None = None,
    lease_seconds: float = _DEFAULTS.lease_seconds,
    tile_folder: str | os.PathLike[str] | None = None,
    state: str | None = None,
    job: str | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
    **kwargs: Any,
) -> CollectionResult:
    """Download every image of ``collection`` into ``out_dir``, one GeoTIFF each; call again
    to resume.

    geemap's arguments keep their meaning: ``filenames`` is a list (one per image) or a
    prefix, ``column`` names files by an image property (default: ``system:index``).
    ``concurrency`` (or ``num_threads``) is the budget for the whole collection;
    ``parallel_images`` how many images are in progress at once. With ``zarr=True`` (or
    ``output_format="zarr"``, or an ``out_dir`` ending in .zarr) the images go to one Zarr
    store with a time dimension, ``out_dir/collection.zarr`` (``engine.stack``). ``state``, a
    PostgreSQL URL, keeps every image as a job ``JOB.IMAGE`` in that database (``job``:
    default the folder's name), so the same call on several machines shares the work (the
    stacked store: one job named ``job``). Raises :class:`CollectionIncomplete` when an image
    did not finish.
    """
    from engine import collection as images_of

    del kwargs
    folder = Path(out_dir or os.getcwd()).expanduser().resolve()
    where = images_of.Where.given(state, job, folder, "state")
    # Each image's own file name replaces the output's.
    request, settings, connection = _from_arguments(locals(), folder / "image.tif")
    if zarr or request.format == "zarr" or folder.suffix.lower() == ".zarr":
        return _stack(
            collection, request, settings, connection, progress, quiet, filenames, where, job
        )
    options = settings.run_options(connection)
    ee_adapter.connect(connection)
    folder.mkdir(parents=True, exist_ok=True)
    with ee_adapter.client_settings(workload_tag=request.workload_tag):
        members = images_of.list_images(collection, filenames, column)
        jobs = images_of.collection_specs(
            collection,
            folder,
            members,
            lambda image, output: build_job(
                image,
                request.for_output(output),
                connection,
                concurrency=settings.concurrency,
                slot=call_slot(where.state_for(output), settings.project_quota),
            ),
        )
        result = run_sync(
            images_of.run_collection(
                jobs,
                folder,
                options,
                progress or choose_progress(quiet),
                parallel_images or DEFAULT_PARALLEL_IMAGES,
                where,
            )
        )
    if not result.complete:
        raise CollectionIncomplete(result)
    return result


def _stack(
    collection: ee.ImageCollection,
    request: DownloadRequest,
    settings: RunSettings,
    connection: Connection,
    progress: Progress | None,
    quiet: bool,
    filenames: Sequence[str] | str | None,
    where: Where,
    job: str | None,
) -> CollectionResult:
    """``download_ee_image_collection`` to one Zarr store: one job for all the images."""
    from engine import collection as images_of
    from engine.collection import CollectionResult
    from engine.stack import stack_job, stack_output

    output = stack_output(request.output.parent)
    request = replace(request, output=output, output_format="zarr")
    options = settings.run_options(connection)
    ee_adapter.connect(connection)
    output.parent.mkdir(parents=True, exist_ok=True)
    with ee_adapter.client_settings(workload_tag=request.workload_tag):
        members = images_of.list_images(collection, filenames)
        spec = stack_job(collection, members, request, connection, concurrency=settings.concurrency)
        target = where.state_for(output)
        running = run_job(spec, target, options, progress or choose_progress(quiet), job=job)
        try:
            result = run_sync(running)
        except OtherJobError as exc:
            raise where.reworded(exc, target, job) from exc
    outcome = CollectionResult(output.parent, {output.name: result})
    if not outcome.complete:
        raise CollectionIncomplete(outcome)
    return outcome


def plan(
    image: ee.Image,
    filename: str | os.PathLike[str] = "download.tif",
    region: Any = None,
    crs: str | None = None,
    crs_transform: Sequence[float] | None = None,
    scale: float | None = None,
    dtype: str | None = None,
    shape: Sequence[int] | None = None,
    *,
    bands: Sequence[str] | None = None,
    unmask_value: float | None = None,
    endpoint: Endpoint = "urls",
    max_tile_bytes: int = EE_MAX_REQUEST_BYTES,
    max_tile_dim: int | None = None,
    concurrency: int | None = None,
    scale_offset: bool = False,
    like: str | os.PathLike[str] | None = None,
    mask_band: bool = False,
    output_format: str | None = None,
    compress: str | None = None,
    ee_url: str | None = None,
    project: str | None = None,
) -> PlanReport:
    """What ``download_ee_image`` with the same arguments would fetch; no pixels of the
    download are fetched.

    One ``getInfo`` call (the image's bands), then one small sample tile for the compressed
    size estimate (``engine.sample``); the tiles are planned locally.
    """
    from engine.estimate import plan_spec
    from engine.sample import measure

    connection = Connection(url=ee_url, project=project)
    request = DownloadRequest(
        output=Path(filename),
        region=region,
        crs=crs,
        crs_transform=crs_transform,
        scale=scale,
        shape=shape,
        bands=bands,
        dtype=dtype,
        nodata=unmask_value,
        endpoint=endpoint,
        max_tile_bytes=max_tile_bytes,
        max_tile_dim=max_tile_dim,
        compress=compress,
        like=like,
        scale_offset=scale_offset,
        mask_band=mask_band,
        output_format=output_format,
    )
    request.check(concurrency)
    ee_adapter.connect(connection)
    spec = build_job(image, request, connection, concurrency=concurrency)
    return plan_spec(spec, measure(spec, connection))


def _from_arguments(
    arguments: dict[str, Any], output: Path
) -> tuple[DownloadRequest, RunSettings, Connection]:
    """What a download call asked for, by the names both download functions share, checked
    as far as it can be without Earth Engine."""
    request = DownloadRequest(
        output=output,
        region=arguments["region"],
        crs=arguments["crs"],
        crs_transform=arguments["crs_transform"],
        scale=arguments["scale"],
        shape=arguments["shape"],
        bands=arguments["bands"],
        dtype=arguments["dtype"],
        nodata=arguments["unmask_value"],
        resampling=arguments["resampling"],
        endpoint=arguments["endpoint"],
        max_tile_bytes=tile_bytes_from(arguments["max_tile_bytes"], arguments["max_tile_size"]),
        max_tile_dim=arguments["max_tile_dim"],
        compress=arguments["compress"],
        cog=arguments["cog"],
        keep_tiles=arguments["keep_tiles"],
        like=arguments["like"],
        scale_offset=bool(arguments["scale_offset"]),
        mask_band=arguments["mask_band"],
        output_format=arguments["output_format"],
        workload_tag=arguments["workload_tag"],
    )
    settings = RunSettings(
        concurrency=concurrency_from(arguments["concurrency"], arguments["num_threads"]),
        idle_timeout=arguments["idle_timeout"],
        first_byte_timeout=arguments["first_byte_timeout"],
        max_attempts=arguments["max_attempts"],
        max_backoff=arguments["max_backoff"],
        overwrite=arguments["overwrite"],
        project_quota=arguments["project_quota"],
        lease_seconds=arguments["lease_seconds"],
        tile_folder=Path(arguments["tile_folder"]) if arguments["tile_folder"] else None,
    )
    connection = Connection(
        url=arguments["ee_url"],
        project=arguments["project"],
        high_volume=arguments["high_volume"],
        proxy=arguments["proxy"],
        ca_bundle=arguments["ca_bundle"],
    )
    request.check(settings.concurrency)
    return request, settings, connection


__all__ = [
    "CollectionIncomplete",
    "DownloadIncomplete",
    "EefetchError",
    "LossyCastWarning",
    "download_ee_image",
    "download_ee_image_collection",
    "plan",
]
