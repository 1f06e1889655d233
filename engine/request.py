"""One way to build a job: what the user asked for, checked, turned into a :class:`JobSpec`.

The Python API (``download_ee_image``, ``download_ee_image_collection``, ``plan``), the
command line (``download``, ``composite``, ``collection``, ``plan``) and the recipes all
describe a download as a :class:`DownloadRequest` (what to fetch and how to write it) and a
:class:`RunSettings` (how a run goes), and call :func:`build_job` and
:meth:`RunSettings.run_options`. A new option goes here once, in its dataclass, and then in
``engine/cli_options.py`` and ``engine/api.py``; ``tests/test_options.py`` checks that the
command line and the Python API offer the same set.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import rasterio

from engine import ee_adapter
from engine.defaults import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_ZARR_COMPRESSION,
    DTYPES,
    EE_MAX_CONCURRENCY,
    EE_MAX_REQUEST_BYTES,
    ENDPOINTS,
    MAX_PROJECT_QUOTA,
    MIN_LEASE_S,
    OUTPUT_FORMATS,
    RESAMPLINGS,
    WORKER_LEASE_S,
    ZARR_SUFFIX,
)
from engine.ee_adapter import MASK_BAND, BandInfo, Connection
from engine.errors import GridError, InvalidJob, SpecError
from engine.grid import (
    METRES_PER_DEGREE,
    Grid,
    grid_from_region,
    grid_from_transform,
)
from engine.job import RunOptions
from engine.like import grid_of
from engine.metadata import image_properties
from engine.nodata import choose_nodata
from engine.region_input import load_region, simplified_outline
from engine.scaling import apply_factors, band_factors
from engine.scheduler import SchedulerOptions
from engine.service import service_identity
from engine.spec import REGION_EXTRA, Endpoint, JobSpec
from engine.transport import TransportOptions

if TYPE_CHECKING:
    import ee

T = TypeVar("T")
# Earth Engine's rule for workload tags (ee.data.setWorkloadTag).
WORKLOAD_TAG = re.compile(r"[a-z0-9]([-_a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """What to fetch and how to write it: everything that ends up in the job's spec.

    ``region`` is what the user gave (a GeoJSON file or dict, ``west,south,east,north``, an
    ``ee.Geometry``); ``shape`` is (height, width) with ``crs_transform``; ``nodata`` is the
    value masked pixels take (geemap's ``unmask_value``); ``resampling`` is applied in Earth
    Engine before the image is reprojected onto the grid. ``like`` is a raster whose grid the
    download takes; ``scale_offset`` applies the bands' scales and offsets
    (``engine.scaling``); ``mask_band`` writes EE's mask as a GDAL mask instead of a nodata
    value; ``output_format`` is ``geotiff`` or ``zarr`` (None: from the output's name);
    ``workload_tag`` labels the requests in Cloud Monitoring.
    """

    output: Path
    region: Any = None
    crs: str | None = None
    crs_transform: Sequence[float] | None = None
    scale: float | None = None
    shape: Sequence[int] | None = None
    bands: Sequence[str] | None = None
    dtype: str | None = None
    nodata: float | None = None
    resampling: str | None = None
    endpoint: Endpoint = "urls"
    max_tile_bytes: int = EE_MAX_REQUEST_BYTES
    max_tile_dim: int | None = None
    compress: str | None = None  # None: the format's default (compression)
    cog: bool = False
    keep_tiles: bool = False
    like: str | os.PathLike[str] | None = None
    scale_offset: bool = False
    mask_band: bool = False
    output_format: str | None = None
    workload_tag: str | None = None

    @property
    def format(self) -> str:
        """The output's format: the one asked for, else zarr for a name ending in .zarr."""
        if self.output_format is not None:
            return self.output_format
        return "zarr" if self.output.suffix.lower() == ZARR_SUFFIX else "geotiff"

    @property
    def compression(self) -> str:
        """The codec asked for, else the format's own default (deflate, or zstd for Zarr)."""
        if self.compress is not None:
            return self.compress
        return DEFAULT_ZARR_COMPRESSION if self.format == "zarr" else DEFAULT_COMPRESSION

    def for_output(self, output: Path) -> DownloadRequest:
        """The same request written elsewhere (one image of a collection)."""
        return replace(self, output=output)

    def check(self, concurrency: int | None) -> None:
        """The checks that need no answer from Earth Engine: they run before its first call,
        so nothing is fetched for a request that cannot work."""
        check_arguments(self, concurrency)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How a run goes; none of it changes a pixel, so it may change between runs of a job.

    ``concurrency`` None (the default) lets the run find it: it probes from 16 up to Earth
    Engine's 40 while more tiles in flight move more bytes (``engine.pacing``).
    ``project_quota`` is the most requests in flight for the Earth Engine project over every
    process and job that uses it (None: the one the project was last given, 40 for a new
    one); ``lease_seconds`` how long a worker's claims and quota slots last unless renewed;
    ``tile_folder`` a folder every worker of a job reaches (each job keeps its tiles in a
    folder named after it there).
    """

    concurrency: int | None = None
    idle_timeout: float = field(default_factory=lambda: TransportOptions().idle_timeout)
    first_byte_timeout: float = field(default_factory=lambda: TransportOptions().first_byte_timeout)
    max_attempts: int = field(default_factory=lambda: SchedulerOptions().max_attempts)
    max_backoff: float = field(default_factory=lambda: SchedulerOptions().backoff_cap)
    overwrite: bool = False
    project_quota: int | None = None
    lease_seconds: float = WORKER_LEASE_S
    tile_folder: Path | None = None

    def run_options(self, connection: Connection) -> RunOptions:
        """The engine's options for a run of these settings, on ``connection``'s route."""
        for name in ("idle_timeout", "first_byte_timeout", "max_backoff"):
            value = getattr(self, name)
            if not _positive_number(value):
                raise InvalidJob(f"{name} must be a positive number of seconds, got {value!r}")
        if not _whole_at_least(self.max_attempts, 1):
            raise InvalidJob(f"max_attempts must be a whole number >= 1, got {self.max_attempts}")
        if self.concurrency is not None and not _whole_at_least(self.concurrency, 1):
            raise InvalidJob(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        quota = self.project_quota
        if quota is not None and not (_whole_at_least(quota, 1) and quota <= MAX_PROJECT_QUOTA):
            raise InvalidJob(
                f"project_quota must be a whole number from 1 to {MAX_PROJECT_QUOTA}, got {quota!r}"
            )
        if not _positive_number(self.lease_seconds) or self.lease_seconds < MIN_LEASE_S:
            raise InvalidJob(
                f"lease_seconds must be a number of seconds >= {MIN_LEASE_S:g}, got "
                f"{self.lease_seconds!r}"
            )
        return RunOptions(
            concurrency=self.concurrency,
            transport=TransportOptions(
                proxy=connection.proxy,
                ca_bundle=connection.ca_bundle,
                idle_timeout=self.idle_timeout,
                first_byte_timeout=self.first_byte_timeout,
            ),
            scheduler=SchedulerOptions(
                concurrency=self.slots,
                max_attempts=self.max_attempts,
                backoff_cap=self.max_backoff,
                lease_seconds=float(self.lease_seconds),
            ),
            overwrite=self.overwrite,
            project_quota=quota,
            tile_folder=None if self.tile_folder is None else Path(self.tile_folder),
        )

    @property
    def slots(self) -> int:
        """Tiles in flight at most: the pinned concurrency, else as many as EE allows."""
        return self.concurrency if self.concurrency is not None else EE_MAX_CONCURRENCY


def concurrency_from(concurrency: int | None, num_threads: int | None) -> int | None:
    """eefetch's ``concurrency``, else geemap's ``num_threads``, else None (found by probing);
    a 0 given is kept (and refused by the checks), not read as "not given"."""
    for value in (concurrency, num_threads):
        if value is not None:
            return value
    return None


def tile_bytes_from(max_tile_bytes: int | None, max_tile_size_mb: float | None) -> int:
    """eefetch's byte cap, else geemap's ``max_tile_size`` in MB, else Earth Engine's limit
    (the checks refuse a value outside 1 .. the limit)."""
    if max_tile_bytes is not None:
        return max_tile_bytes
    if max_tile_size_mb is not None:
        return int(max_tile_size_mb * 1024 * 1024)
    return EE_MAX_REQUEST_BYTES


def build_job(
    image: ee.Image,
    request: DownloadRequest,
    connection: Connection,
    *,
    concurrency: int | None = None,
    warn: Callable[[str], None] | None = None,
    slot: Callable[[], AbstractContextManager[object]] | None = None,
    extra: dict[str, Any] | None = None,
) -> JobSpec:
    """Everything the job needs, checked before anything is fetched.

    Every argument that cannot work (alone or with another) raises :class:`InvalidJob`, one
    line, before the first tile request: a nodata value the output type cannot hold, a shape
    without a transform, a sheared transform, a tile size below one pixel, and so on.
    ``warn`` hears about choices that are allowed but probably not meant (a ``dtype`` that
    cannot hold the bands); by default it issues a :class:`LossyCastWarning`. One ``getInfo``
    call (the image's bands and properties), made inside ``slot()`` when given (a slot of the
    project's shared quota, ``engine.quota_gate.blocking_slot``); the client must be
    initialised (``ee_adapter.connect``). ``extra`` adds entries to the spec's ``extra`` (a
    stacked collection's layout).
    """
    request.check(concurrency)
    if request.like is not None:
        template = grid_of(request.like)
        request = replace(
            request, crs=template.crs, crs_transform=template.transform, shape=template.shape
        )
    if request.resampling and request.resampling != "near":
        image = image.resample(request.resampling)
    with slot() if slot is not None else contextlib.nullcontext():
        info = ee_adapter.describe_image(image)
    band_ids = ee_adapter.select_bands([b.id for b in info.bands], request.bands)
    chosen = [b for b in info.bands if b.id in band_ids]
    factors = band_factors(band_ids, info.properties) if request.scale_offset else {}
    if request.scale_offset:
        image = apply_factors(image, band_ids, factors)
        out_dtype = request.dtype or "float32"
    else:
        out_dtype = request.dtype or common_dtype([b.dtype for b in chosen])
    fill, nodata_note = _invalid_job_on_spec_error(
        choose_nodata, out_dtype, chosen, request.nodata, mask_band=request.mask_band
    )
    if request.mask_band and MASK_BAND in band_ids:
        raise InvalidJob(
            f"the image has a band named {MASK_BAND}, the name --mask-band fetches the mask "
            "as; rename that band, or drop --mask-band"
        )
    pixel = np.dtype(out_dtype).itemsize + 1  # bytes of one sample in a request
    if request.max_tile_bytes < pixel:
        raise InvalidJob(
            f"max tile bytes {request.max_tile_bytes} is less than one {out_dtype} pixel of one "
            f"band in a request ({pixel} bytes); raise it (Earth Engine allows up to "
            f"{EE_MAX_REQUEST_BYTES})"
        )
    lossy = None if request.scale_offset else lossy_cast_message(chosen, out_dtype)
    if lossy is not None:
        (warn or _warn_lossy)(lossy)
    # In a GDAL environment, PROJ's complaints about an unknown CRS go to logging (and become
    # our one-line error) instead of being printed to stderr.
    geometry = region_geojson(request.region)
    with rasterio.Env():
        grid = resolve_grid(
            chosen,
            geometry,
            request.crs,
            request.crs_transform,
            request.scale,
            request.shape,
        )
    outline = simplified_outline(geometry)
    return _invalid_job_on_spec_error(
        JobSpec,
        expression=ee_adapter.serialize(image),
        grid=grid,
        band_ids=(*band_ids, MASK_BAND) if request.mask_band else tuple(band_ids),
        dtype=out_dtype,
        nodata=fill,
        output=str(request.output.expanduser().resolve()),
        endpoint=request.endpoint,
        max_tile_bytes=request.max_tile_bytes,
        plan_concurrency=concurrency if concurrency is not None else EE_MAX_CONCURRENCY,
        compress=request.compression,
        cog=request.cog,
        keep_tiles=request.keep_tiles,
        ee_url=connection.url,
        project=connection.project,
        extra=_extra(request, factors, info.properties, nodata_note, outline) | (extra or {}),
        service=service_identity(ee_adapter.current_base_url()),
    )


def _extra(
    request: DownloadRequest,
    factors: dict[str, tuple[float, float]],
    properties: dict[str, Any],
    nodata_note: str,
    outline: dict[str, Any] | None,
) -> dict[str, Any]:
    """The spec's ``extra``: options that change the file (in the fingerprint) only when set,
    so that jobs made before they existed keep their fingerprint; then what only describes
    the job (``spec.DESCRIPTIVE_EXTRA``)."""
    extra: dict[str, Any] = {}
    if request.max_tile_dim is not None:
        extra["max_tile_dim"] = int(request.max_tile_dim)
    if request.format != "geotiff":
        extra["format"] = request.format
    if request.mask_band:
        extra["mask_band"] = True
    if request.scale_offset:
        extra["scale_offset"] = {band: list(factor) for band, factor in factors.items()}
    extra["metadata"] = image_properties(properties)
    extra["nodata_note"] = nodata_note
    if request.workload_tag:
        extra["workload_tag"] = request.workload_tag
    if outline is not None:  # for pictures of the job (status --map, serve); not an identity
        extra[REGION_EXTRA] = outline
    return extra


def region_geojson(region: Any) -> dict[str, Any] | None:
    """The region as a GeoJSON geometry, from whatever form the user gave it in."""
    if region is None:
        return None
    from_ee = ee_adapter.geometry_geojson(region)
    return from_ee if from_ee is not None else load_region(region)


def check_arguments(request: DownloadRequest, concurrency: int | None) -> None:
    """Refuse, one line each, what cannot work whatever Earth Engine answers."""
    if request.compress is not None and request.compress not in COMPRESSIONS:
        raise InvalidJob(
            f"unknown compression {request.compress!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    if request.endpoint not in ENDPOINTS:
        raise InvalidJob(f"unknown endpoint {request.endpoint!r}; use 'urls' or 'compute'")
    if request.dtype is not None and request.dtype not in DTYPES:
        raise InvalidJob(f"unknown dtype {request.dtype!r}; use one of {', '.join(DTYPES)}")
    if request.resampling is not None and request.resampling not in RESAMPLINGS:
        raise InvalidJob(
            f"unknown resampling {request.resampling!r}; use one of {', '.join(RESAMPLINGS)}"
        )
    if concurrency is not None and not _whole_at_least(concurrency, 1):
        raise InvalidJob(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    tile_bytes = request.max_tile_bytes
    if not _whole_at_least(tile_bytes, 1) or tile_bytes > EE_MAX_REQUEST_BYTES:
        raise InvalidJob(
            f"max tile bytes must be between 1 and {EE_MAX_REQUEST_BYTES} (Earth Engine's "
            f"limit), got {tile_bytes!r}"
        )
    if request.max_tile_dim is not None and not _whole_at_least(request.max_tile_dim, 1):
        raise InvalidJob(
            f"max_tile_dim must be a whole number of pixels >= 1, got {request.max_tile_dim!r}"
        )
    scale = request.scale
    if scale is not None and not _positive_number(scale):
        raise InvalidJob(f"scale must be a positive, finite number of metres, got {scale!r}")
    _check_transform(request.crs_transform, request.shape)
    _check_file_options(request)
    if request.like is not None:
        given = [
            option
            for option, value in (
                ("--region", request.region),
                ("--crs", request.crs),
                ("--crs-transform", request.crs_transform),
                ("--shape", request.shape),
                ("--scale", request.scale),
            )
            if value is not None
        ]
        if given:
            raise InvalidJob(
                f"--like takes the grid from {request.like}; drop {', '.join(given)} (or "
                "drop --like and give the grid yourself)"
            )
        grid_of(request.like)
    tag = request.workload_tag
    if tag is not None and (not isinstance(tag, str) or not WORKLOAD_TAG.fullmatch(tag)):
        raise InvalidJob(
            f"workload tag {tag!r} is not one Earth Engine takes: 1 to 63 characters, lowercase "
            "letters, digits, - and _, starting and ending with a letter or digit"
        )


def _check_file_options(request: DownloadRequest) -> None:
    """The output format and what goes with it."""
    if request.output_format is not None and request.output_format not in OUTPUT_FORMATS:
        raise InvalidJob(
            f"unknown output format {request.output_format!r}; use one of "
            f"{', '.join(OUTPUT_FORMATS)}"
        )
    zarr = request.format == "zarr"
    if zarr:
        if request.compress == "lzw":
            raise InvalidJob("Zarr has no LZW codec; use --compress zstd (fast), deflate or none")
        if request.cog:
            raise InvalidJob("--cog makes a Cloud Optimized GeoTIFF; drop it for a Zarr store")
        if request.mask_band:
            raise InvalidJob(
                "--mask-band writes a GDAL mask into a GeoTIFF; a Zarr store marks masked "
                "pixels with its _FillValue (the nodata value): drop --mask-band"
            )
    if request.mask_band and request.nodata is not None:
        raise InvalidJob(
            "--mask-band marks masked pixels in a mask instead of with a nodata value; drop "
            "--nodata (or --mask-band)"
        )
    if request.scale_offset and request.dtype is not None and request.dtype[0] != "f":
        raise InvalidJob(
            f"scale_offset gives fractional values, which dtype {request.dtype} cannot hold; "
            "use float32 or float64 (the default is float32)"
        )
    output = request.output.expanduser()
    if output.is_dir() and not (zarr and _looks_like_zarr(output)):
        if zarr:
            raise InvalidJob(
                f"{request.output} is a folder but not a Zarr store; give another name for the "
                "store (-o NAME.zarr)"
            )
        raise InvalidJob(
            f"{request.output} is a folder; give the GeoTIFF file to write (-o FILE.tif)"
        )


def _looks_like_zarr(folder: Path) -> bool:
    """A folder that is (or was meant to be) a Zarr store: the job decides about replacing."""
    return (folder / "zarr.json").is_file() or not any(folder.iterdir())


def _check_transform(crs_transform: Sequence[float] | None, shape: Sequence[int] | None) -> None:
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


def _whole_at_least(value: Any, low: int) -> bool:
    return bool(
        not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= low
    )


def _positive_number(value: Any) -> bool:
    return bool(
        not isinstance(value, bool)
        and isinstance(value, int | float | np.number)
        and math.isfinite(value)
        and value > 0
    )


def _invalid_job_on_spec_error(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(...)``; a SpecError it raises is the user's input, so an InvalidJob."""
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
        bounded = next(
            (
                (b.crs, b.transform, b.dimensions)
                for b in bands
                if b.dimensions and b.transform and b.crs
            ),
            None,
        )
        if bounded is None or crs is not None or scale is not None:
            raise GridError(
                "the image has no fixed bounds; pass a region (--region GeoJSON "
                "file or west,south,east,north)"
            )
        band_crs, transform, (width, height) = bounded
        return grid_from_transform(band_crs, transform, height, width)
    if crs is not None and scale is not None:
        return grid_from_region(region, crs, scale)
    if native is None or native.crs is None:
        raise GridError(
            "the image has no fixed projection (a composite?); pass crs and "
            "scale, e.g. --crs EPSG:4326 --scale 10"
        )
    return grid_from_region(
        region, crs or native.crs, scale if scale is not None else native_scale(native)
    )


def native_scale(band: BandInfo) -> float:
    """A band's pixel size in metres (EE's nominal scale)."""
    from rasterio.crs import CRS

    if band.transform is None or band.crs is None:
        raise GridError(f"band {band.id} has no projection; pass --crs and --scale")
    size = abs(band.transform[0])
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
    name = np.result_type(*[np.dtype(d) for d in dtypes]).name
    return name if name in DTYPES else "float64"


def _is_default_projection(band: BandInfo) -> bool:
    return (
        band.crs == "EPSG:4326"
        and band.transform is not None
        and tuple(band.transform) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        and band.dimensions is None
    )
