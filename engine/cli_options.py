"""The command line's options, each declared once (as rasterio's ``rio/options.py``).

Choices and defaults come from the engine's own constants, so the command line cannot offer
what the engine refuses, or default to something else than the Python API. Options come in
groups that match what commands use, and each group hands its values to the command as one
object: :class:`Source` (which image), :class:`RequestArgs` (what to fetch and how to write
it: ``engine.request.DownloadRequest``), :class:`RunArgs` (``engine.request.RunSettings``)
and :class:`ConnectionArgs` (``engine.ee_adapter.Connection``). ``tests/test_options.py``
checks that download, composite, collection and the Python API offer the same set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from engine.defaults import (
    CLOUD_MASKS,
    COMPRESSIONS,
    DEFAULT_COLLECTION,
    DEFAULT_COMPRESSION,
    DEFAULT_CONCURRENCY,
    DEFAULT_ZARR_COMPRESSION,
    DTYPES,
    EE_MAX_CONCURRENCY,
    EE_MAX_REQUEST_BYTES,
    ENDPOINTS,
    FIRST_BYTE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_ATTEMPTS,
    MAX_BACKOFF_S,
    MAX_PROJECT_QUOTA,
    MIN_LEASE_S,
    OUTPUT_FORMATS,
    PROJECT_QUOTA,
    RESAMPLINGS,
    SENTINEL2_SCALE,
    WORKER_LEASE_S,
)

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from engine.recipes import Clip, CloudMask, Reducer
    from engine.spec import Endpoint

# ------------------------------------------------------------------- how options are made


def shown(*names: str, **attrs: Any) -> Callable[[F], F]:
    """An option whose default ``--help`` shows (every default here comes from the engine's
    constants, so the help cannot disagree with what runs)."""
    return click.option(*names, show_default=True, **attrs)


def choice(*names_and_choices: Any, **attrs: Any) -> Callable[[F], F]:
    """``choice("--x", VALUES, help=...)``: one of the engine's ``VALUES``, the first by default."""
    *names, choices = names_and_choices
    return shown(*names, type=click.Choice(choices), default=choices[0], **attrs)


def file_option(*names: str, **attrs: Any) -> Callable[[F], F]:
    """An option naming a file to read or write (a folder is refused by click)."""
    return click.option(*names, type=click.Path(dir_okay=False), **attrs)


# ------------------------------------------------------------------- single options


def output_option(**attrs: Any) -> Callable[[F], F]:
    """``-o``: the GeoTIFF or Zarr store a download writes (a store is a folder once written;
    ``request.check`` refuses any other folder)."""
    return click.option("-o", "--output", type=click.Path(), **attrs)


output = output_option(help="GeoTIFF to write (a name ending .zarr: a Zarr store).")
state = click.option(
    "--state",
    help="State database: an SQLite file (default: OUTPUT.eefetch.db beside the output), or "
    "a PostgreSQL URL (postgresql://user@host:port/db) that workers on several machines share.",
)
job_name = click.option(
    "--job",
    "job_name",
    help="The job's name in the state database (default: the output's file name without .tif).",
)
collection_state = click.option(
    "--state",
    help="A PostgreSQL URL (postgresql://user@host:port/db) holding every image's job, which "
    "the same command on other machines shares [default: a state file beside each image].",
)
collection_prefix = click.option(
    "--job",
    "job_prefix",
    help="With --state: the images' jobs are named PREFIX.IMAGE [default: the folder's name].",
)
bands = click.option(
    "--bands", help="Bands: comma-separated names or regular expressions, e.g. B4,B3,B2 'B[1-8]'."
)
overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
dry_run = click.option(
    "--dry-run",
    is_flag=True,
    help="Print the grid, tile count, requests and size on disk; fetch nothing.",
)
as_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
quiet = click.option("--quiet", is_flag=True, help="No progress output.")


def preview(help_text: str) -> Callable[[F], F]:
    return file_option("--preview", "preview_png", help=help_text)


def _grouped(cls: type, key: str, options: list[Callable[[Any], Any]]) -> Callable[[F], F]:
    """A decorator adding ``options`` to a command and handing them over as one ``cls``."""
    names = [f.name for f in fields(cls)]

    def decorator(function: F) -> F:
        @functools.wraps(function)
        def wrapper(**kwargs: Any) -> Any:
            group = cls(**{name: kwargs.pop(name) for name in names})
            return function(**{key: group}, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper  # type: ignore[return-value]  # click changes the signature on purpose

    return decorator


@dataclass(frozen=True, slots=True)
class TargetArgs:
    """Where one image's download goes (``download``, ``composite``) and what this run does
    there: fetch, only plan (--dry-run), or only draw a quick look (--preview)."""

    output: str | None
    state: str | None
    job_name: str | None
    overwrite: bool
    dry_run: bool
    preview_png: str | None


def target_options(preview_help: str) -> Callable[[F], F]:
    return _grouped(
        TargetArgs, "target", [output, state, job_name, overwrite, dry_run, preview(preview_help)]
    )


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _numbers(text: str, count: int, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError as exc:
        raise click.BadParameter(f"{option} takes {count} numbers separated by commas") from exc
    if len(values) != count:
        raise click.BadParameter(f"{option} takes {count} numbers, got {len(values)}")
    return values


# ------------------------------------------------------------------- where the image comes from


@dataclass(frozen=True, slots=True)
class Source:
    """Where the image comes from: an asset id, a serialized expression, or a script."""

    asset: str | None
    expression_file: str | None
    script: str | None

    def given(self) -> bool:
        return bool(self.asset or self.expression_file or self.script)

    def image(self) -> Any:
        """The ee.Image (Earth Engine must be initialised)."""
        from engine import ee_adapter

        chosen = [v for v in (self.asset, self.expression_file, self.script) if v]
        if len(chosen) != 1:
            raise click.UsageError("give exactly one of --asset, --expression or --script")
        if self.asset:
            return ee_adapter.image_from_asset(self.asset)
        if self.expression_file:
            return ee_adapter.image_from_expression(_read_text(self.expression_file))
        return ee_adapter.image_from_script(Path(str(self.script)))


def _read_text(path: str) -> str:
    from engine.errors import SourceError

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path} is not a text file; give a serialized expression (JSON)"
        ) from exc


source_options = _grouped(
    Source,
    "source",
    [
        click.option("--asset", help="Image asset id, e.g. USGS/SRTMGL1_003."),
        file_option(
            "--expression",
            "expression_file",
            help="File with a serialized image (ee.Image.serialize()).",
        ),
        file_option("--script", help="Python file that defines `image`."),
    ],
)

# ------------------------------------------------------------------- what to fetch, how to write


@dataclass(frozen=True, slots=True)
class RequestArgs:
    """The grid, the pixels and the file layout: ``engine.request.DownloadRequest``."""

    region: str | None
    crs: str | None
    scale: float | None
    crs_transform: str | None
    shape: tuple[int, int] | None
    bands: str | None
    dtype: str | None
    nodata: float | None
    resampling: str | None
    endpoint: Endpoint  # click.Choice(ENDPOINTS)
    max_tile_bytes: int
    max_tile_dim: int | None
    compress: str | None
    cog: bool
    keep_tiles: bool
    like: str | None
    scale_offset: bool
    mask_band: bool
    output_format: str | None
    workload_tag: str | None

    def check(self) -> None:
        """Read the region now: a typo should not wait for Earth Engine to answer first."""
        if self.region:
            from engine.region_input import load_region

            load_region(self.region)

    def band_list(self) -> list[str]:
        return _split(self.bands)

    def request(self, output: str | Path, *, select_bands: bool = True) -> Any:
        """The ``DownloadRequest``; without ``select_bands`` the bands were chosen already (a
        recipe selects them before reducing)."""
        from engine.request import DownloadRequest

        return DownloadRequest(
            output=Path(output),
            region=self.region,
            crs=self.crs,
            crs_transform=(
                _numbers(self.crs_transform, 6, "--crs-transform") if self.crs_transform else None
            ),
            scale=self.scale,
            shape=self.shape,
            bands=(self.band_list() or None) if select_bands else None,
            dtype=self.dtype,
            nodata=self.nodata,
            resampling=self.resampling,
            endpoint=self.endpoint,
            max_tile_bytes=self.max_tile_bytes,
            max_tile_dim=self.max_tile_dim,
            compress=self.compress,
            cog=self.cog,
            keep_tiles=self.keep_tiles,
            like=self.like,
            scale_offset=self.scale_offset,
            mask_band=self.mask_band,
            output_format=self.output_format,
            workload_tag=self.workload_tag,
        )


region = click.option("--region", help="GeoJSON file, or west,south,east,north in degrees.")
request_options = _grouped(
    RequestArgs,
    "job",
    [
        region,
        click.option("--crs", help="Output CRS, e.g. EPSG:4326."),
        click.option(
            "--scale", type=float, help="Pixel size in metres (also for geographic CRSs)."
        ),
        click.option(
            "--crs-transform",
            help="Six numbers: xScale,xShear,xOrigin,yShear,yScale,yOrigin.",
        ),
        click.option(
            "--shape", nargs=2, type=int, default=None, help="HEIGHT WIDTH, with --crs-transform."
        ),
        bands,
        click.option("--dtype", type=click.Choice(DTYPES), help="Pixel type of the GeoTIFF."),
        click.option(
            "--nodata",
            type=float,
            help="Value of masked pixels (geemap's unmask_value; default: the type's maximum "
            "for unsigned types, its lowest value otherwise; `plan` shows it).",
        ),
        click.option(
            "--resampling",
            type=click.Choice(RESAMPLINGS),
            help="How Earth Engine resamples onto the grid (default: nearest).",
        ),
        choice("--endpoint", ENDPOINTS, help="getDownloadURL + GET, or computePixels."),
        shown(
            "--max-tile-bytes",
            type=int,
            default=EE_MAX_REQUEST_BYTES,
            help="Cap on one request's size (Earth Engine's limit is the default).",
        ),
        click.option("--max-tile-dim", type=int, help="Cap on a tile's side in pixels."),
        click.option(
            "--compress",
            type=click.Choice(COMPRESSIONS),
            default=None,
            help=f"Codec (default: {DEFAULT_COMPRESSION} for a GeoTIFF, "
            f"{DEFAULT_ZARR_COMPRESSION} for a Zarr store).",
        ),
        click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF with overviews."),
        click.option("--keep-tiles", is_flag=True, help="Keep tile files after the merge."),
        file_option(
            "--like",
            help="Take CRS, transform and shape from this raster (any file GDAL opens), so "
            "the download lines up with it pixel for pixel.",
        ),
        click.option(
            "--scale-offset",
            is_flag=True,
            help="Apply each band's scale and offset (physical values, float32).",
        ),
        click.option(
            "--mask-band",
            is_flag=True,
            help="Write Earth Engine's mask as the GeoTIFF's internal mask instead of a "
            "nodata value.",
        ),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(OUTPUT_FORMATS),
            help="geotiff or zarr (default: zarr for an output ending in .zarr).",
        ),
        click.option(
            "--workload-tag",
            help="Label the requests (Earth Engine's workload tag: costs per tag in Cloud "
            "Monitoring).",
        ),
    ],
)

# ------------------------------------------------------------------- how a run goes

tile_folder = click.option(
    "--tiles",
    "tile_folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for tile files that every worker of the job reaches (each job gets a "
    "folder named after it in there) [default: beside the state file, or the output].",
)

concurrency = click.option(
    "--concurrency",
    type=click.IntRange(1, EE_MAX_CONCURRENCY),
    default=None,
    help=f"Tiles in flight at once [default: found while running, from {DEFAULT_CONCURRENCY} "
    f"up to the {EE_MAX_CONCURRENCY} EE allows a project, as long as more connections move "
    "more bytes; 429s lower it].",
)


@dataclass(frozen=True, slots=True)
class RunArgs:
    """How hard to push and how long to wait: ``engine.request.RunSettings``."""

    concurrency: int | None
    idle_timeout: float
    first_byte_timeout: float
    max_attempts: int
    max_backoff: float
    project_quota: int | None
    lease_seconds: float
    tile_folder: str | None

    def settings(self, overwrite: bool) -> Any:
        from engine.request import RunSettings

        return RunSettings(
            concurrency=self.concurrency,
            idle_timeout=self.idle_timeout,
            first_byte_timeout=self.first_byte_timeout,
            max_attempts=self.max_attempts,
            max_backoff=self.max_backoff,
            overwrite=overwrite,
            project_quota=self.project_quota,
            lease_seconds=self.lease_seconds,
            tile_folder=Path(self.tile_folder) if self.tile_folder else None,
        )


def _seconds(name: str, default: float, help_text: str) -> Callable[[F], F]:
    return shown(name, type=click.FloatRange(min=0, min_open=True), default=default, help=help_text)


run_options = _grouped(
    RunArgs,
    "run",
    [
        concurrency,
        _seconds(
            "--idle-timeout",
            IDLE_TIMEOUT_S,
            "Seconds without data before a download is abandoned and retried.",
        ),
        _seconds(
            "--first-byte-timeout",
            FIRST_BYTE_TIMEOUT_S,
            "Seconds to wait for Earth Engine to start answering a tile.",
        ),
        shown(
            "--max-attempts",
            type=click.IntRange(1, 1000),
            default=MAX_ATTEMPTS,
            help="Attempts per tile in one run before it is marked failed (the next run "
            "tries failed tiles again).",
        ),
        _seconds("--max-backoff", MAX_BACKOFF_S, "Longest wait in seconds between two attempts."),
        click.option(
            "--project-quota",
            type=click.IntRange(1, MAX_PROJECT_QUOTA),
            default=None,
            help=f"Requests in flight at most for the Earth Engine project, over every eefetch "
            f"process and job that uses it [default: {PROJECT_QUOTA} for a new project, else "
            "the last value given].",
        ),
        shown(
            "--lease",
            "lease_seconds",
            type=click.FloatRange(min=MIN_LEASE_S),
            default=WORKER_LEASE_S,
            help="Seconds a worker's tiles and quota slots stay its own without a heartbeat; "
            "a dead worker's go to the others after this.",
        ),
        tile_folder,
    ],
)

# ------------------------------------------------------------------- where Earth Engine is


@dataclass(frozen=True, slots=True)
class ConnectionArgs:
    """Where the EE API is and the route to it: ``engine.ee_adapter.Connection``."""

    project: str | None
    ee_url: str | None
    high_volume: bool
    proxy: str | None
    ca_bundle: str | None

    def connection(self, ee_url: str | None = None, project: str | None = None) -> Any:
        """The connection; ``ee_url`` and ``project`` fill in what the user did not give (a
        resumed job's stored ones)."""
        from engine.ee_adapter import Connection

        return Connection(
            url=self.ee_url or ee_url,
            project=self.project or project,
            high_volume=self.high_volume,
            proxy=self.proxy,
            ca_bundle=self.ca_bundle,
        )

    def connect(self, ee_url: str | None = None, project: str | None = None) -> Any:
        """Initialise the client on this connection; returns it."""
        from engine import ee_adapter

        connection = self.connection(ee_url, project)
        ee_adapter.initialize(connection)
        return connection


connection_options = _grouped(
    ConnectionArgs,
    "network",
    [
        click.option("--project", envvar="EE_PROJECT", help="Google Cloud project for EE."),
        click.option(
            "--ee-url",
            envvar="EEFETCH_EE_URL",
            help="EE API base URL, e.g. the emulator's; no credentials needed then.",
        ),
        click.option(
            "--high-volume",
            is_flag=True,
            help="Use EE's high-volume endpoint (recommended for big downloads).",
        ),
        click.option(
            "--proxy",
            help="Proxy URL (http://, https://, socks5://); default: HTTPS_PROXY / ALL_PROXY.",
        ),
        file_option(
            "--ca-bundle",
            help="CA certificates file (default: SSL_CERT_FILE / REQUESTS_CA_BUNDLE).",
        ),
    ],
)

# ------------------------------------------------------------------- the tutorial's recipe


@dataclass(frozen=True, slots=True)
class FetchArgs:
    """How a run that fetches behaves: the engine's settings, the network, and the progress
    shown (download, composite, collection, resume, worker)."""

    run: RunArgs
    network: ConnectionArgs
    quiet: bool


def fetch_options(function: F) -> F:
    """--run options, connection options and --quiet, handed over as one ``fetch``."""
    return run_options(connection_options(quiet(_grouped(FetchArgs, "fetch", [])(function))))


@dataclass(frozen=True, slots=True)
class RecipeArgs:
    """A filtered, cloud-masked collection, as the tutorials build it."""

    collection: str
    start: str
    end: str
    max_cloud: float | None
    cloud_property: str
    cloud_mask: CloudMask  # click.Choice(CLOUD_MASKS)
    divide: float
    no_divide: bool

    def recipe(
        self, region: dict[str, Any], bands: str | None, reducer: Reducer, clip: Clip
    ) -> Any:
        from engine.recipes import Composite

        return Composite(
            collection=self.collection,
            start=self.start,
            end=self.end,
            region=region,
            max_cloud=self.max_cloud,
            cloud_property=self.cloud_property,
            cloud_mask=self.cloud_mask,
            divide=None if self.no_divide else self.divide,
            bands=tuple(_split(bands)),
            reducer=reducer,
            clip=clip,
        )


def recipe_options(required_dates: bool) -> Callable[[F], F]:
    return _grouped(
        RecipeArgs,
        "recipe",
        [
            shown("--collection", default=DEFAULT_COLLECTION, help="Image collection id."),
            click.option(
                "--start", required=required_dates, help="First day, YYYY-MM-DD (inclusive)."
            ),
            click.option(
                "--end", required=required_dates, help="Last day, YYYY-MM-DD (exclusive)."
            ),
            click.option(
                "--max-cloud",
                type=float,
                help="Keep images whose cloud percentage is below this, e.g. 10.",
            ),
            shown(
                "--cloud-property",
                default="CLOUDY_PIXEL_PERCENTAGE",
                help="Image property --max-cloud compares.",
            ),
            choice(
                "--cloud-mask",
                CLOUD_MASKS,
                help="qa60: mask Sentinel-2 opaque and cirrus clouds (QA60 bits 10 and 11).",
            ),
            shown(
                "--divide",
                type=float,
                default=SENTINEL2_SCALE,
                help="Divide pixel values by this (Sentinel-2 reflectance scale).",
            ),
            click.option("--no-divide", is_flag=True, help="Keep the raw pixel values."),
        ],
    )


# ------------------------------------------------------------------- the same option in Python

PYTHON_NAMES = {"nodata": "unmask_value"}
"""The Python API's name of a command-line option where it differs (geemap's names are kept)."""


# ------------------------------------------------------------------- a picture's stretch


@dataclass(frozen=True, slots=True)
class StretchArgs:
    """EE's visualisation parameters for a quick-look picture."""

    bands: str | None
    vmin: str | None
    vmax: str | None
    gamma: float | None
    palette: str | None
    dimensions: int
    file_format: str

    def stretch(self) -> Any:
        from engine.quicklook import Stretch

        names = tuple(_split(self.bands)) or None
        if names and len(names) not in (1, 3):
            raise click.BadParameter("--bands takes 1 or 3 bands, e.g. B4,B3,B2")
        return Stretch(
            bands=names,
            min=_float_list(self.vmin, "--min"),
            max=_float_list(self.vmax, "--max"),
            gamma=self.gamma,
            palette=tuple(_split(self.palette)) or None,
        )

    @property
    def picture_format(self) -> str:
        return "JPEG" if self.file_format == "jpg" else "PNG"


def _float_list(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in _split(text))
    except ValueError as exc:
        raise click.BadParameter(f"{option} takes numbers separated by commas") from exc


stretch_options = _grouped(
    StretchArgs,
    "look",
    [
        click.option(
            "--bands", help="1 or 3 bands, e.g. B4,B3,B2 (default: B4,B3,B2 when present)."
        ),
        click.option("--min", "vmin", help="Value shown black: one number, or one per band."),
        click.option("--max", "vmax", help="Value shown at full brightness: one or one per band."),
        click.option(
            "--gamma", type=click.FloatRange(min=0, min_open=True), help="Gamma, e.g. 1.4."
        ),
        click.option(
            "--palette", help="Colours for one band, e.g. 000000,ffffff or 0000ff,ffff00."
        ),
        shown(
            "--dimensions",
            type=click.IntRange(min=1, max=10000),
            default=800,
            help="Longer side of the picture in pixels.",
        ),
        shown("--format", "file_format", type=click.Choice(["png", "jpg"]), default="png"),
    ],
)
