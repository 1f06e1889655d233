"""The Python API: ``download_ee_image`` with geemap's arguments, resumable underneath.

A user of ``geemap.download_ee_image`` swaps the import and keeps the call. eefetch's own
arguments (state location, concurrency, endpoint, proxy, ...) come after geemap's.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import warnings
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ee
import numpy as np
import rasterio

from engine import ee_adapter
from engine.ee_adapter import BandInfo, EEUserError
from engine.grid import (
    EE_MAX_REQUEST_BYTES,
    METRES_PER_DEGREE,
    Grid,
    GridError,
    grid_from_region,
    grid_from_transform,
)
from engine.job import JobResult, RunOptions, run_job
from engine.pacing import DEFAULT_CONCURRENCY
from engine.paths import default_state_path
from engine.progress import Progress, choose_progress
from engine.region_input import load_region
from engine.scheduler import SchedulerOptions
from engine.service import service_identity
from engine.spec import COMPRESSIONS, Endpoint, JobSpec, SpecError, default_nodata, nodata_value
from engine.transport import TransportOptions

T = TypeVar("T")
RUNNER_STOP_SECONDS = 30.0  # how long an interrupted notebook call waits for the state


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
    concurrency: int | None = None,
    endpoint: Endpoint = "urls",
    proxy: str | None = None,
    ca_bundle: str | None = None,
    max_tile_bytes: int | None = None,
    compress: str = "deflate",
    cog: bool = False,
    keep_tiles: bool = False,
    ee_url: str | None = None,
    project: str | None = None,
    idle_timeout: float | None = None,
    first_byte_timeout: float | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
    **kwargs: Any,
) -> JobResult:
    """Download ``image`` to one GeoTIFF at ``filename``; call again to resume.

    geemap's arguments keep their meaning: ``scale`` is in metres also for geographic CRSs,
    ``shape`` is (height, width) with ``crs_transform``, ``num_threads`` is the concurrency,
    ``max_tile_size`` is in MB and ``max_tile_dim`` in pixels. Returns a :class:`JobResult`;
    raises :class:`DownloadIncomplete` when tiles failed (run again to retry them).
    """
    del kwargs  # geemap passes extra keywords through to geedim; none change the result
    connect(ee_url, project, proxy, ca_bundle)
    if resampling and resampling != "near":
        image = image.resample(resampling)
    if scale_offset:
        raise InvalidJob(
            "scale_offset is not supported yet; apply the scale and offset to "
            "the image in Earth Engine before downloading"
        )
    budget = concurrency_budget(concurrency, num_threads)
    spec = build_spec(
        image,
        Path(filename),
        region=region,
        crs=crs,
        crs_transform=crs_transform,
        scale=scale,
        dtype=dtype,
        shape=shape,
        bands=bands,
        nodata=unmask_value,
        endpoint=endpoint,
        max_tile_bytes=_max_tile_bytes(max_tile_bytes, max_tile_size),
        concurrency=budget,
        compress=compress,
        cog=cog,
        keep_tiles=keep_tiles,
        ee_url=ee_url,
        project=project,
        max_tile_dim=max_tile_dim,
    )
    state_path = Path(state) if state else default_state_path(Path(spec.output))
    options = RunOptions(
        concurrency=budget,
        transport=transport_options(proxy, ca_bundle, idle_timeout, first_byte_timeout),
        overwrite=overwrite,
    )
    with ee_adapter.client_settings():
        result = run_sync(run_job(spec, state_path, options, progress or choose_progress(quiet)))
    if not result.complete:
        raise DownloadIncomplete(result)
    return result


def connect(
    ee_url: str | None, project: str | None, proxy: str | None, ca_bundle: str | None
) -> None:
    """Get the client ready for a download, as geemap would, on the route the tiles take.

    With no emulator URL and no ``ee.Initialize()`` yet, the user's own credentials and
    project are used. If the user initialised the client, it is kept, but a ``proxy`` or
    ``ca_bundle`` given to the download applies to its API calls too: the tiles take that
    route, and behind a firewall that only lets the proxy out nothing else would work.
    """
    if ee_url is not None or not ee_adapter.is_initialized():
        ee_adapter.initialize(
            ee_adapter.Connection(url=ee_url, project=project, proxy=proxy, ca_bundle=ca_bundle)
        )
    elif proxy or ca_bundle:
        ee_adapter.use_network(proxy, ca_bundle)


def concurrency_budget(concurrency: int | None, num_threads: int | None) -> int:
    """eefetch's ``concurrency``, else geemap's ``num_threads``, else the default; a 0 given
    is kept (and refused by build_spec), not read as "not given"."""
    for value in (concurrency, num_threads):
        if value is not None:
            return value
    return DEFAULT_CONCURRENCY


def transport_options(
    proxy: str | None,
    ca_bundle: str | None,
    idle_timeout: float | None,
    first_byte_timeout: float | None,
) -> TransportOptions:
    """Network settings, defaults where the user gave nothing."""
    defaults = TransportOptions()
    for name, value in (("idle_timeout", idle_timeout), ("first_byte_timeout", first_byte_timeout)):
        if value is not None and not value > 0:
            raise InvalidJob(f"{name} must be a positive number of seconds, got {value}")
    return TransportOptions(
        proxy=proxy,
        ca_bundle=ca_bundle,
        idle_timeout=idle_timeout or defaults.idle_timeout,
        first_byte_timeout=first_byte_timeout or defaults.first_byte_timeout,
    )


class InvalidJob(EEUserError):
    """The arguments describe a download that cannot be done as asked; nothing was fetched.

    The command line exits with status 2 for it, as for any other misuse.
    """


class DownloadIncomplete(Exception):
    """Some tiles failed; the job is saved and the same call (or ``eefetch resume``) retries."""

    def __init__(self, result: JobResult) -> None:
        counts = result.counts
        first = f" First error: {result.summary.errors[0]}" if result.summary.errors else ""
        super().__init__(
            f"{counts.get('failed', 0)} tile(s) failed and {counts.get('pending', 0)} are still "
            f"pending; run the same command again (or `eefetch resume {result.state_path}`) to "
            f"retry them.{first}"
        )
        self.result = result


def build_spec(
    image: ee.Image,
    output: Path,
    *,
    region: Any,
    crs: str | None,
    crs_transform: Sequence[float] | None,
    scale: float | None,
    dtype: str | None,
    shape: Sequence[int] | None,
    bands: Sequence[str] | None,
    nodata: float | None,
    endpoint: Endpoint,
    max_tile_bytes: int,
    concurrency: int,
    compress: str,
    cog: bool,
    keep_tiles: bool,
    ee_url: str | None,
    project: str | None,
    max_tile_dim: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobSpec:
    """Everything the job needs, checked before anything is fetched.

    Every argument that cannot work (alone or with another) raises :class:`InvalidJob`, one
    line, before the first tile request: a nodata value the output type cannot hold, a shape
    without a transform, a sheared transform, a tile size below one pixel, and so on.
    ``warn`` hears about choices that are allowed but probably not meant (a ``dtype`` that
    cannot hold the bands); by default it issues a :class:`LossyCastWarning`.
    """
    check_arguments(
        output,
        crs_transform=crs_transform,
        scale=scale,
        dtype=dtype,
        shape=shape,
        endpoint=endpoint,
        max_tile_bytes=max_tile_bytes,
        max_tile_dim=max_tile_dim,
        concurrency=concurrency,
        compress=compress,
    )
    info = ee_adapter.band_info(image)
    try:
        band_ids = ee_adapter.select_bands([b.id for b in info], bands)
    except EEUserError as exc:
        raise InvalidJob(str(exc)) from exc
    chosen = [b for b in info if b.id in band_ids]
    out_dtype = dtype or common_dtype([b.dtype for b in chosen])
    fill = (
        default_nodata(out_dtype) if nodata is None else _checked(nodata_value, nodata, out_dtype)
    )
    pixel = np.dtype(out_dtype).itemsize + 1  # bytes of one sample in a request
    if max_tile_bytes < pixel:
        raise InvalidJob(
            f"max tile bytes {max_tile_bytes} is less than one {out_dtype} pixel of one band "
            f"in a request ({pixel} bytes); raise it (Earth Engine allows up to "
            f"{EE_MAX_REQUEST_BYTES})"
        )
    lossy = lossy_cast_message(chosen, out_dtype)
    if lossy is not None:
        (warn or _warn_lossy)(lossy)
    if isinstance(region, ee.Geometry | ee.Feature | ee.FeatureCollection):
        region = (
            region.geometry().getInfo() if not isinstance(region, ee.Geometry) else region.getInfo()
        )
    try:
        # In a GDAL environment, PROJ's complaints about an unknown CRS go to logging (and
        # become our one-line error) instead of being printed to stderr.
        with rasterio.Env():
            grid = resolve_grid(
                chosen,
                load_region(region) if region is not None else None,
                crs,
                crs_transform,
                scale,
                shape,
            )
    except GridError as exc:
        raise InvalidJob(str(exc)) from exc
    return _checked(
        JobSpec,
        expression=ee_adapter.serialize(image),
        grid=grid,
        band_ids=tuple(band_ids),
        dtype=out_dtype,
        nodata=fill,
        output=str(output.expanduser().resolve()),
        endpoint=endpoint,
        max_tile_bytes=max_tile_bytes,
        plan_concurrency=concurrency,
        compress=compress,
        cog=cog,
        keep_tiles=keep_tiles,
        ee_url=ee_url,
        project=project,
        extra={"max_tile_dim": int(max_tile_dim)} if max_tile_dim is not None else {},
        service=service_identity(ee_adapter.current_base_url()),
    )


def check_arguments(
    output: Path,
    *,
    crs_transform: Sequence[float] | None,
    scale: float | None,
    dtype: str | None,
    shape: Sequence[int] | None,
    endpoint: str,
    max_tile_bytes: int,
    max_tile_dim: int | None,
    concurrency: int,
    compress: str,
) -> None:
    """The checks that need no answer from Earth Engine: they run before its first call."""
    if compress not in COMPRESSIONS:
        raise InvalidJob(f"unknown compression {compress!r}; use one of {', '.join(COMPRESSIONS)}")
    if endpoint not in ("urls", "compute"):
        raise InvalidJob(f"unknown endpoint {endpoint!r}; use 'urls' or 'compute'")
    if dtype is not None and dtype not in ee_adapter.CASTS:
        raise InvalidJob(f"unknown dtype {dtype!r}; use one of {', '.join(ee_adapter.CASTS)}")
    if not _whole_at_least(concurrency, 1):
        raise InvalidJob(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    if not _whole_at_least(max_tile_bytes, 1) or max_tile_bytes > EE_MAX_REQUEST_BYTES:
        raise InvalidJob(
            f"max tile bytes must be between 1 and {EE_MAX_REQUEST_BYTES} (Earth Engine's "
            f"limit), got {max_tile_bytes!r}"
        )
    if max_tile_dim is not None and not _whole_at_least(max_tile_dim, 1):
        raise InvalidJob(
            f"max_tile_dim must be a whole number of pixels >= 1, got {max_tile_dim!r}"
        )
    if scale is not None and (
        isinstance(scale, bool)
        or not isinstance(scale, int | float | np.number)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise InvalidJob(f"scale must be a positive, finite number of metres, got {scale!r}")
    if shape is not None:
        if crs_transform is None:
            raise InvalidJob(
                "shape needs crs_transform (--crs-transform); without it the grid comes from "
                "region and scale, so drop shape or give the transform"
            )
        if len(shape) != 2 or not all(_whole_at_least(n, 1) for n in shape):
            raise InvalidJob(f"shape must be (height, width) in whole pixels >= 1, got {shape!r}")
    if crs_transform is not None:
        if shape is None:
            raise InvalidJob("crs_transform needs shape=(height, width) (--shape H W)")
        values = list(crs_transform)
        if len(values) in (6, 9) and any(
            isinstance(v, int | float | np.number) and v != 0 for v in (values[1], values[3])
        ):
            raise InvalidJob(
                f"crs_transform {values!r} has a shear (shearX or shearY not 0), which eefetch "
                "does not support; give a north-up transform: xScale,0,xOrigin,0,yScale,yOrigin"
            )
    if output.expanduser().is_dir():
        raise InvalidJob(f"{output} is a folder; give the GeoTIFF file to write (-o FILE.tif)")


def _whole_at_least(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= low


def _checked(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(...)``, its SpecError as InvalidJob."""
    try:
        return function(*args, **kwargs)
    except SpecError as exc:
        raise InvalidJob(str(exc)) from exc


def resolve_grid(
    bands: Sequence[BandInfo],
    region: dict[str, Any] | None,
    crs: str | None,
    crs_transform: Sequence[float] | None,
    scale: float | None,
    shape: Sequence[int] | None,
) -> Grid:
    """The output grid, as EE would compute it for one download with the same arguments."""
    native = next(
        (b for b in bands if b.crs and b.transform and not _is_default_projection(b)), None
    )
    if crs_transform is not None and shape is not None:
        target_crs = crs or (native.crs if native else None)
        if not target_crs:
            raise GridError("crs_transform needs crs (--crs) for an image without a projection")
        return grid_from_transform(target_crs, crs_transform, int(shape[0]), int(shape[1]))
    if region is None:
        bounded = next((b for b in bands if b.dimensions and b.transform and b.crs), None)
        if bounded is None or crs is not None or scale is not None:
            raise GridError(
                "the image has no fixed bounds; pass a region (--region GeoJSON "
                "file or west,south,east,north)"
            )
        width, height = bounded.dimensions  # type: ignore[misc]
        return grid_from_transform(bounded.crs, bounded.transform, height, width)  # type: ignore[arg-type]
    if (crs is None or scale is None) and native is None:
        raise GridError(
            "the image has no fixed projection (a composite?); pass crs and "
            "scale, e.g. --crs EPSG:4326 --scale 10"
        )
    target_crs = crs or native.crs  # type: ignore[union-attr]
    target_scale = scale if scale is not None else native_scale(native)  # type: ignore[arg-type]
    return grid_from_region(region, target_crs, target_scale)


def native_scale(band: BandInfo) -> float:
    """A band's pixel size in metres (EE's nominal scale)."""
    from rasterio.crs import CRS

    size = abs(band.transform[0])  # type: ignore[index]
    if CRS.from_user_input(band.crs).is_geographic:
        return size * METRES_PER_DEGREE
    return size


class LossyCastWarning(UserWarning):
    """The chosen dtype cannot hold the image's values; they will be clamped or truncated."""


def lossy_cast_message(bands: Sequence[BandInfo], dtype: str) -> str | None:
    """Say which bands ``dtype`` cannot hold, or None.

    Decision: warn, do not refuse. Casting float reflectance to uint8 is usually a mistake
    (everything becomes 0 or 1), but a float band already scaled to 0..255 is a common and
    deliberate case that only the user can tell apart. Precision lost between float types
    or from large integers to float32 is not reported.
    """
    target = np.dtype(dtype)
    if target.kind == "f":
        return None
    lossy = [b for b in bands if not np.can_cast(np.dtype(b.dtype), target, "safe")]
    if not lossy:
        return None
    names = ", ".join(f"{b.id} ({b.dtype})" for b in lossy[:4])
    if len(lossy) > 4:
        names += f" and {len(lossy) - 4} more"
    limits = np.iinfo(target)
    fractions = any(np.dtype(b.dtype).kind == "f" for b in lossy)
    return (
        f"dtype {dtype} cannot hold band(s) {names}: Earth Engine will clamp values to "
        f"{limits.min}..{limits.max}{' and drop fractions' if fractions else ''}; choose "
        f"{common_dtype([b.dtype for b in bands])} (or no dtype), or scale the image first"
    )


def _warn_lossy(message: str) -> None:
    warnings.warn(message, LossyCastWarning, stacklevel=4)


def common_dtype(dtypes: Sequence[str]) -> str:
    """The smallest type that holds every band, as EE promotes bands written together."""
    result = np.result_type(*[np.dtype(d) for d in dtypes])
    name = result.name
    if name in ee_adapter.CASTS:
        return name
    return "float64"


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, also from a notebook whose event loop is already running.

    In a running loop (Jupyter), the job runs on a fresh loop in a helper thread and this call
    waits for it, so ``download_ee_image`` stays a plain function call everywhere. Interrupting
    the cell (KeyboardInterrupt while waiting) cancels the job on its own loop and waits until
    its state is saved, so the next call resumes instead of finding a job still running.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}
    started = threading.Event()
    finished = threading.Event()

    async def main() -> T:
        box["task"] = asyncio.current_task()
        box["loop"] = asyncio.get_running_loop()
        started.set()
        return await coroutine

    def target() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()
            finished.set()

    # Waiting on an Event, not Thread.join: a KeyboardInterrupt inside join() can leave the
    # Thread marked as stopped while it still runs (CPython bpo-45274), and the wait for the
    # saved state would then return at once.
    threading.Thread(target=target, name="eefetch-runner", daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        started.wait(5)
        if "task" in box:
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        finished.wait(RUNNER_STOP_SECONDS)
        raise
    if "error" in box:
        error = box["error"]
        if isinstance(error, asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise error
    return box["value"]


def _is_default_projection(band: BandInfo) -> bool:
    return (
        band.crs == "EPSG:4326"
        and band.transform is not None
        and tuple(band.transform) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        and band.dimensions is None
    )


def _max_tile_bytes(max_tile_bytes: int | None, max_tile_size_mb: float | None) -> int:
    """eefetch's byte cap, else geemap's ``max_tile_size`` in MB, else Earth Engine's limit;
    build_spec checks the range."""
    if max_tile_bytes is not None:
        return max_tile_bytes
    if max_tile_size_mb is not None:
        return int(max_tile_size_mb * 1024 * 1024)
    return EE_MAX_REQUEST_BYTES


__all__ = [
    "DownloadIncomplete",
    "InvalidJob",
    "LossyCastWarning",
    "SchedulerOptions",
    "build_spec",
    "download_ee_image",
]
