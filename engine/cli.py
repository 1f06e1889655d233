"""The ``eefetch`` command. Argument handling only: the work is in engine.api, job, recipes,
plan, preview, collection and inventory."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import click

from engine import __version__
from engine.pacing import DEFAULT_CONCURRENCY

T = TypeVar("T")

EPILOG_MAIN = """\b
Start here:
  eefetch emulator &                      # offline Earth Engine; prints its URL
  eefetch composite --region engine/data/nanjing.geojson --start 2022-01-01 \\
      --end 2022-12-31 --max-cloud 10 --scale 10 --crs EPSG:4326 -o nanjing.tif \\
      --ee-url URL --dry-run              # what it would cost; drop --dry-run to fetch
  eefetch status nanjing.tif.eefetch.db   # progress of a job (or of a folder of jobs)

\b
Shell completion (bash; zsh and fish likewise):
  eval "$(_EEFETCH_COMPLETE=bash_source eefetch)"
"""

EPILOG_DOWNLOAD = """\b
Examples:
  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.tif
  eefetch download --script composite.py --region city.geojson --crs EPSG:4326 \\
      --scale 10 -o nanjing.tif
  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.tif --ee-url http://127.0.0.1:8765   # offline, the emulator

  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.tif --dry-run     # grid, tiles and size only

Run the same command again after any interruption: it resumes where it stopped.
"""

EPILOG_COMPOSITE = """\b
Examples (the Sentinel-2 tutorial: 2022 median, clouds masked, B1-B8, 10 m):
  eefetch composite --collection COPERNICUS/S2_SR_HARMONIZED \\
      --start 2022-01-01 --end 2022-12-31 --max-cloud 10 --cloud-mask qa60 \\
      --bands 'B[1-8]' --reducer median --region city.geojson \\
      --scale 10 --crs EPSG:4326 -o city.tif
  ... --dry-run                 # grid, tiles and size, nothing fetched
  ... --preview city.png        # a true-colour look (B4,B3,B2, 0-0.3) instead

The image is clipped to the region's bounding box (--clip outline for the exact outline).
Run the same command again after any interruption: it resumes where it stopped.
"""

EPILOG_COLLECTION = """\b
Examples:
  eefetch collection --collection COPERNICUS/S2_SR_HARMONIZED \\
      --start 2022-01-01 --end 2022-12-31 --max-cloud 10 --bands B4,B3,B2 \\
      --region city.geojson --scale 20 --crs EPSG:4326 -o scenes/
  eefetch collection --script my_collection.py --region city.geojson --scale 30 -o scenes/
  eefetch status scenes/        # one row per image

One GeoTIFF and one state file per image, named from the image ids. All images share one
concurrency budget. Run the same command again to resume: finished images are skipped.
"""

EPILOG_PREVIEW = """\b
Examples:
  eefetch preview nanjing.tif                             # a downloaded GeoTIFF
  eefetch preview nanjing.tif --bands B8,B4,B3 --min 0 --max 0.4 -o nir.png
  eefetch preview --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --palette 000000,ffffff -o dem.png                 # from Earth Engine, before download
  eefetch composite ... --preview city.png               # a recipe's composite

Without --min/--max the stretch is the 2-98 % range of the data.
"""


class UserFacingError(click.ClickException):
    """One line, no traceback (unless --debug)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def format_message(self) -> str:
        return self.message


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.ee_adapter import EEUserError
    from engine.grid import GridError
    from engine.job import JobError
    from engine.merge import MergeError
    from engine.quicklook import PreviewError
    from engine.scheduler import JobStopped
    from engine.spec import SpecError
    from engine.webview import ServeError
    from state import StateError

    return (
        ServeError,
        EEUserError,
        SpecError,
        GridError,
        JobError,
        MergeError,
        JobStopped,
        StateError,
        PreviewError,
        OSError,
    )


def _run_guarded(debug: bool, action: Callable[[], T]) -> T:
    try:
        return action()
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        # The state is committed by now. Leave at once: a worker thread stuck in an Earth
        # Engine API call would otherwise hold the exit until its deadline passes.
        click.echo("eefetch: stopped; run the same command again to resume", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except _user_errors() as exc:
        if debug:
            raise
        raise UserFacingError(_one_line(exc), _exit_code(exc)) from exc


def _exit_code(exc: BaseException) -> int:
    """2 for a command that describes an impossible download (as for any misuse), else 1.

    Looked up among the modules already loaded: an error of a module never imported cannot
    have been raised, and `status` must not pay for importing the engine to fail.
    """
    kinds = [
        getattr(sys.modules.get(module), name, None)
        for module, name in (("engine.api", "InvalidJob"), ("engine.grid", "GridError"))
    ]
    return 2 if any(kind is not None and isinstance(exc, kind) for kind in kinds) else 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or text}: {exc.filename}"
    return text


def run_until_signalled(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; SIGTERM cancels it like Ctrl-C does, so state is saved either way."""

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coroutine
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG_MAIN)
@click.version_option(__version__, prog_name="eefetch")
def main() -> None:
    """Download Earth Engine images of any size to one GeoTIFF, resumably."""
    return_large_buffers_to_the_system()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_buffers_to_the_system() -> None:
    """Have glibc map buffers of 1 MiB and more on their own, and unmap them when freed.

    Tile bodies, checks and merge strips are large, short-lived buffers; glibc's adaptive
    threshold otherwise keeps them on the heap after use, which took a 1 GB job from 362 MB
    to over 500 MB of peak memory (BENCHMARKS.md). Only the command line does this: it owns
    its process, a library call does not. A no-op where glibc is absent.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        return


@dataclass(frozen=True, slots=True)
class Settings:
    """How to reach Earth Engine and how hard to push: shared by download and resume."""

    project: str | None
    ee_url: str | None
    high_volume: bool
    proxy: str | None
    ca_bundle: str | None
    concurrency: int
    idle_timeout: float
    first_byte_timeout: float
    max_attempts: int
    max_backoff: float
    quiet: bool
    debug: bool

    def connect(self, ee_url: str | None = None, project: str | None = None) -> None:
        from engine import ee_adapter

        ee_adapter.initialize(
            ee_adapter.Connection(
                url=self.ee_url or ee_url,
                project=self.project or project,
                high_volume=self.high_volume,
                proxy=self.proxy,
                ca_bundle=self.ca_bundle,
            )
        )

    def run_options(self, overwrite: bool) -> Any:
        from engine.api import transport_options
        from engine.job import RunOptions
        from engine.scheduler import SchedulerOptions

        return RunOptions(
            concurrency=self.concurrency,
            transport=transport_options(
                self.proxy, self.ca_bundle, self.idle_timeout, self.first_byte_timeout
            ),
            scheduler=SchedulerOptions(
                concurrency=self.concurrency,
                max_attempts=self.max_attempts,
                backoff_cap=self.max_backoff,
            ),
            overwrite=overwrite,
        )


def _settings_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add the network options to a command and hand them over as one Settings object."""
    options = [
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
        click.option(
            "--ca-bundle",
            type=click.Path(dir_okay=False),
            help="CA certificates file (default: SSL_CERT_FILE / REQUESTS_CA_BUNDLE).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(1, 40),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Tiles in flight at once (EE allows 40 per project).",
        ),
        click.option(
            "--idle-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=60.0,
            show_default=True,
            help="Seconds without data before a download is abandoned and retried.",
        ),
        click.option(
            "--first-byte-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=300.0,
            show_default=True,
            help="Seconds to wait for Earth Engine to start answering a tile.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1, 1000),
            default=8,
            show_default=True,
            help="Attempts per tile in one run before it is marked failed (the next run "
            "tries failed tiles again).",
        ),
        click.option(
            "--max-backoff",
            type=click.FloatRange(min=0, min_open=True),
            default=120.0,
            show_default=True,
            help="Longest wait in seconds between two attempts at a tile.",
        ),
        click.option("--quiet", is_flag=True, help="No progress output."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    names = [f.name for f in fields(Settings)]

    @functools.wraps(function)
    def wrapper(**kwargs: Any) -> Any:
        settings = Settings(**{name: kwargs.pop(name) for name in names})
        return function(settings=settings, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


def _grouped(cls: type, key: str, options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """A decorator adding ``options`` to a command and handing them over as one ``cls``."""
    names = [f.name for f in fields(cls)]

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(**kwargs: Any) -> Any:
            group = cls(**{name: kwargs.pop(name) for name in names})
            return function(**{key: group}, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorator


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
        return ee_adapter.image_from_script(Path(self.script))  # type: ignore[arg-type]


_source_options = _grouped(
    Source,
    "source",
    [
        click.option("--asset", help="Image asset id, e.g. USGS/SRTMGL1_003."),
        click.option(
            "--expression",
            "expression_file",
            type=click.Path(dir_okay=False),
            help="File with a serialized image (ee.Image.serialize()).",
        ),
        click.option(
            "--script", type=click.Path(dir_okay=False), help="Python file that defines `image`."
        ),
    ],
)


@dataclass(frozen=True, slots=True)
class GridArgs:
    """The output grid and pixel type, as geemap's download arguments."""

    region: str | None
    crs: str | None
    scale: float | None
    crs_transform: str | None
    shape: tuple[int, int] | None
    dtype: str | None

    def check(self) -> None:
        """Read the region now: a typo should not wait for Earth Engine to answer first."""
        if self.region:
            from engine.region_input import load_region

            load_region(self.region)

    def transform(self) -> list[float] | None:
        if not self.crs_transform:
            return None
        return _parse_numbers(self.crs_transform, 6, "--crs-transform")


_grid_options = _grouped(
    GridArgs,
    "grid",
    [
        click.option("--region", help="GeoJSON file, or west,south,east,north in degrees."),
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
        click.option("--dtype", type=click.Choice(DTYPES), help="Pixel type of the GeoTIFF."),
    ],
)


@dataclass(frozen=True, slots=True)
class JobArgs:
    """How the GeoTIFF is fetched and written (the same for one image or a collection)."""

    endpoint: str
    max_tile_bytes: int | None
    compress: str
    cog: bool
    keep_tiles: bool
    overwrite: bool
    dry_run: bool


_job_options = _grouped(
    JobArgs,
    "job",
    [
        click.option(
            "--endpoint",
            type=click.Choice(["urls", "compute"]),
            default="urls",
            show_default=True,
            help="getDownloadURL + GET, or computePixels.",
        ),
        click.option(
            "--max-tile-bytes", type=int, help="Cap on one request's size (EE: 50331648)."
        ),
        click.option(
            "--compress",
            type=click.Choice(["deflate", "lzw", "zstd", "none"]),
            default="deflate",
            show_default=True,
        ),
        click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF with overviews."),
        click.option("--keep-tiles", is_flag=True, help="Keep tile files after the merge."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output file."),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the grid, tile count, requests and size on disk; fetch nothing.",
        ),
    ],
)


@dataclass(frozen=True, slots=True)
class RecipeArgs:
    """A filtered, cloud-masked collection, as the tutorials build it."""

    collection: str
    start: str
    end: str
    max_cloud: float | None
    cloud_property: str
    cloud_mask: str
    divide: float
    no_divide: bool

    def recipe(self, region: dict[str, Any], bands: str | None, reducer: str, clip: str) -> Any:
        from engine.recipes import Composite

        return Composite(
            collection=self.collection,
            start=self.start,
            end=self.end,
            region=region,
            max_cloud=self.max_cloud,
            cloud_property=self.cloud_property,
            cloud_mask=self.cloud_mask,  # type: ignore[arg-type]
            divide=None if self.no_divide else self.divide,
            bands=tuple(_split(bands)),
            reducer=reducer,  # type: ignore[arg-type]
            clip=clip,  # type: ignore[arg-type]
        )


def _recipe_options(required_dates: bool) -> Callable[..., Any]:
    return _grouped(
        RecipeArgs,
        "recipe",
        [
            click.option(
                "--collection",
                default="COPERNICUS/S2_SR_HARMONIZED",
                show_default=True,
                help="Image collection id.",
            ),
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
            click.option(
                "--cloud-property",
                default="CLOUDY_PIXEL_PERCENTAGE",
                show_default=True,
                help="Image property --max-cloud compares.",
            ),
            click.option(
                "--cloud-mask",
                type=click.Choice(["qa60", "none"]),
                default="qa60",
                show_default=True,
                help="qa60: mask Sentinel-2 opaque and cirrus clouds (QA60 bits 10 and 11).",
            ),
            click.option(
                "--divide",
                type=float,
                default=10000,
                show_default=True,
                help="Divide pixel values by this (Sentinel-2 reflectance scale).",
            ),
            click.option("--no-divide", is_flag=True, help="Keep the raw pixel values."),
        ],
    )


@main.command(epilog=EPILOG_DOWNLOAD)
@_source_options
@_grid_options
@click.option("--bands", help="Comma-separated band names or regular expressions.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="GeoTIFF to write.")
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    help="State database (default: OUTPUT.eefetch.db beside the output).",
)
@_job_options
@click.option(
    "--preview",
    "preview_png",
    type=click.Path(dir_okay=False),
    help="Write a quick-look PNG of the image (B4,B3,B2 when present) instead of downloading.",
)
@_settings_options
def download(
    source: Source,
    grid: GridArgs,
    bands: str | None,
    output: str | None,
    state: str | None,
    job: JobArgs,
    preview_png: str | None,
    settings: Settings,
) -> None:
    """Download an image to one GeoTIFF (re-run the same command to resume)."""
    if not source.given():
        raise click.UsageError("give exactly one of --asset, --expression or --script")

    def action() -> None:
        grid.check()
        settings.connect()
        image = source.image()
        _download_image(image, grid, _split(bands), output, state, job, preview_png, settings)

    _run_guarded(settings.debug, action)


@main.command(epilog=EPILOG_COMPOSITE)
@_recipe_options(required_dates=True)
@click.option(
    "--bands", help="Bands to keep before reducing: names or patterns, e.g. 'B[1-8]' or B4,B3,B2."
)
@click.option(
    "--reducer",
    type=click.Choice(["median", "mean", "min", "max", "mosaic"]),
    default="median",
    show_default=True,
)
@click.option(
    "--clip",
    type=click.Choice(["bounds", "outline", "none"]),
    default="bounds",
    show_default=True,
    help="Clip to the region's bounding box (the tutorial's advice), its outline, or not.",
)
@_grid_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="GeoTIFF to write.")
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    help="State database (default: OUTPUT.eefetch.db beside the output).",
)
@_job_options
@click.option(
    "--preview",
    "preview_png",
    type=click.Path(dir_okay=False),
    help="Write a true-colour PNG of the composite (B4,B3,B2, 0-0.3) instead of downloading.",
)
@_settings_options
def composite(
    recipe: RecipeArgs,
    bands: str | None,
    reducer: str,
    clip: str,
    grid: GridArgs,
    output: str | None,
    state: str | None,
    job: JobArgs,
    preview_png: str | None,
    settings: Settings,
) -> None:
    """A per-pixel composite of a filtered, cloud-masked collection, downloaded resumably."""
    if not grid.region:
        raise click.UsageError("--region is required: a GeoJSON file or west,south,east,north")

    def action() -> None:
        from engine.recipes import composite as build_composite
        from engine.region_input import load_region

        region = load_region(grid.region)
        settings.connect()
        from engine.quicklook import Stretch

        image = build_composite(recipe.recipe(region, bands, reducer, clip))
        # Reflectance (divided by 10000) looks right stretched 0 to 0.3, as in the tutorial.
        stretch = None if recipe.no_divide else Stretch(min=(0.0,), max=(0.3,))
        _download_image(
            image, grid, None, output, state, job, preview_png, settings, stretch=stretch
        )

    _run_guarded(settings.debug, action)


@main.command()
@_source_options
@_grid_options
@click.option("--bands", help="Comma-separated band names or regular expressions.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="download.tif",
    show_default=True,
    help="Where the GeoTIFF would go (for the free-space check).",
)
@click.option(
    "--endpoint", type=click.Choice(["urls", "compute"]), default="urls", show_default=True
)
@click.option("--max-tile-bytes", type=int, help="Cap on one request's size (EE: 50331648).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_settings_options
def plan(
    source: Source,
    grid: GridArgs,
    bands: str | None,
    output: str,
    endpoint: str,
    max_tile_bytes: int | None,
    as_json: bool,
    settings: Settings,
) -> None:
    """Grid, tiles, requests and size on disk of a download, before fetching anything.

    Same options as `download`; `download --dry-run` and `composite --dry-run` print the same.
    """
    if not source.given():
        raise click.UsageError("give exactly one of --asset, --expression or --script")

    def action() -> None:
        from engine.estimate import plan_spec

        grid.check()
        settings.connect()
        job = JobArgs(endpoint, max_tile_bytes, "deflate", False, False, False, True)
        spec = _spec(source.image(), grid, _split(bands), output, job, settings)
        report = plan_spec(spec)
        click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.text())

    _run_guarded(settings.debug, action)


@main.command(epilog=EPILOG_COLLECTION)
@_recipe_options(required_dates=False)
@click.option(
    "--script",
    type=click.Path(dir_okay=False),
    help="Python file that defines `collection` (instead of the filter options).",
)
@click.option("--bands", help="Bands to keep: names or patterns, e.g. B4,B3,B2.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many images.")
@click.option(
    "--name-property",
    help="Name files by this image property (default: the image's system:index).",
)
@_grid_options
@click.option(
    "-o",
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the GeoTIFFs (one per image) and their state files.",
)
@click.option(
    "--parallel-images",
    type=click.IntRange(1, 40),
    default=4,
    show_default=True,
    help="Images in progress at once (tiles in flight stay within --concurrency).",
)
@_job_options
@_settings_options
def collection(
    recipe: RecipeArgs,
    script: str | None,
    bands: str | None,
    limit: int | None,
    name_property: str | None,
    grid: GridArgs,
    out_dir: str,
    parallel_images: int,
    job: JobArgs,
    settings: Settings,
) -> None:
    """Every image of a filtered collection, one GeoTIFF each, as one resumable run."""
    if not script and not (recipe.start and recipe.end):
        raise click.UsageError("give --start and --end (and other filters), or --script")
    if not script and not grid.region:
        raise click.UsageError("--region is required: a GeoJSON file or west,south,east,north")

    def action() -> None:
        from engine import collection as coll
        from engine.estimate import plan_spec
        from engine.progress import choose_progress, format_bytes

        settings.connect()
        if script:
            images_of = _collection_from_script(Path(script))
            if bands:
                images_of = images_of.select(_split(bands))
        else:
            from engine.recipes import composite_collection
            from engine.region_input import load_region

            region = load_region(grid.region)
            images_of = composite_collection(recipe.recipe(region, bands, "median", "none"))
        if limit:
            images_of = images_of.limit(limit)
        folder = Path(out_dir).expanduser().resolve()
        members = coll.list_images(images_of, None, name_property)

        def build(image: Any, output: Path) -> Any:
            return _spec(image, grid, None, str(output), job, settings)

        jobs = coll.collection_specs(images_of, folder, members, build)
        if job.dry_run:
            from engine.estimate import UNREASONABLE_BYTES

            reports = [(image.name, plan_spec(spec)) for image, spec in jobs]
            for name, report in reports:
                click.echo(f"{name}: {report.headline()} ({report.width} x {report.height})")
            total = sum(r.raw_bytes for _, r in reports)
            tiles = sum(r.tiles for _, r in reports)
            click.echo(f"total: {len(reports)} images, {format_bytes(total)}, {tiles} tiles")
            if total >= UNREASONABLE_BYTES:
                click.echo(
                    "warning: this is very large; fewer images (--limit, --max-cloud, dates), "
                    "bands, a coarser --scale or a smaller --region would shrink it",
                    err=True,
                )
            return
        folder.mkdir(parents=True, exist_ok=True)
        options = settings.run_options(job.overwrite)
        result = run_until_signalled(
            coll.run_collection(
                jobs, folder, options, choose_progress(settings.quiet), parallel_images
            )
        )
        if not result.complete:
            raise UserFacingError(str(coll.CollectionIncomplete(result)))
        for output in result.outputs:
            click.echo(str(output))

    _run_guarded(settings.debug, action)


@main.command(epilog=EPILOG_PREVIEW)
@click.argument("geotiff", required=False, type=click.Path(dir_okay=False))
@_source_options
@click.option("--region", help="GeoJSON file, or west,south,east,north (its bounding box).")
@click.option("--crs", help="CRS to draw the image in (default: the image's).")
@click.option("--bands", help="1 or 3 bands, e.g. B4,B3,B2 (default: B4,B3,B2 when present).")
@click.option("--min", "vmin", help="Value shown black: one number, or one per band.")
@click.option("--max", "vmax", help="Value shown at full brightness: one or one per band.")
@click.option("--gamma", type=click.FloatRange(min=0, min_open=True), help="Gamma, e.g. 1.4.")
@click.option("--palette", help="Colours for one band, e.g. 000000,ffffff or 0000ff,ffff00.")
@click.option(
    "--dimensions",
    type=click.IntRange(min=1, max=10000),
    default=800,
    show_default=True,
    help="Longer side of the picture in pixels.",
)
@click.option(
    "--format", "file_format", type=click.Choice(["png", "jpg"]), default="png", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Picture to write.")
@_settings_options
def preview(
    geotiff: str | None,
    source: Source,
    region: str | None,
    crs: str | None,
    bands: str | None,
    vmin: str | None,
    vmax: str | None,
    gamma: float | None,
    palette: str | None,
    dimensions: int,
    file_format: str,
    output: str | None,
    settings: Settings,
) -> None:
    """A quick-look picture: of a downloaded GeoTIFF, or of an image in Earth Engine."""
    if bool(geotiff) == source.given():
        raise click.UsageError("give a GeoTIFF file, or one of --asset, --expression or --script")
    stretch = _stretch(bands, vmin, vmax, gamma, palette)
    picture_format = "JPEG" if file_format == "jpg" else "PNG"

    def action() -> None:
        from engine.quicklook import preview_file, preview_image

        if geotiff:
            result = preview_file(
                geotiff,
                output,
                stretch=stretch,
                dimensions=dimensions,
                file_format=picture_format,
            )
        else:
            settings.connect()
            result = preview_image(
                source.image(),
                output or f"preview.{file_format}",
                region=region,
                crs=crs,
                stretch=stretch,
                dimensions=dimensions,
                file_format=picture_format,
                proxy=settings.proxy,
                ca_bundle=settings.ca_bundle,
            )
        _report_preview(result, settings.quiet)

    _run_guarded(settings.debug, action)


@main.command()
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@_settings_options
def resume(
    state: str,
    overwrite: bool,
    settings: Settings,
) -> None:
    """Resume the job saved in STATE, without the original script."""

    def action() -> None:
        from dataclasses import replace

        from engine import ee_adapter
        from engine.service import service_identity

        spec = _load_spec(state)
        settings.connect(spec.ee_url, spec.project)
        # The service reached now, which --ee-url may have changed: the job refuses another.
        spec = replace(spec, service=service_identity(ee_adapter.current_base_url()))
        _run_spec(spec, state, overwrite, settings)

    _run_guarded(settings.debug, action)


EPILOG_STATUS = """\b
Examples:
  eefetch status nanjing.tif.eefetch.db      # one job: tiles, bytes, last errors
  eefetch status scenes/                     # every job under a folder, one row each
  eefetch status scenes/ --json | jq '.[] | select(.tiles.failed > 0)'
  eefetch status nanjing.tif.eefetch.db --map status.png   # and a picture of the tiles

\b
STATE: done, fetching (a process is on it), merging, stopped (run the same command again),
failed tiles (run again to retry them), fetched, not merged (`eefetch merge`).
"""

EPILOG_SERVE = """\b
Examples:
  eefetch serve nanjing.tif.eefetch.db       # one job; open the URL it prints
  eefetch serve scenes/ --port 0             # every job under a folder, on a free port

\b
The page refreshes itself every few seconds while jobs run. It only reads state files (never
their lock) and shows no download URL; it listens on 127.0.0.1 unless --host says otherwise.
"""


@main.command(epilog=EPILOG_STATUS)
@click.argument("path", metavar="STATE_OR_FOLDER", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--map",
    "map_png",
    type=click.Path(dir_okay=False),
    help="Also draw the job's tiles, coloured by state, into this PNG.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def status(path: str, as_json: bool, map_png: str | None, debug: bool) -> None:
    """Show a job (tiles done / pending / failed, bytes, last errors), or every job in a folder."""

    def action() -> None:
        from engine import inventory

        if Path(path).is_dir():
            if map_png:
                raise click.UsageError("--map draws one job: give its state file, not a folder")
            _show_jobs(inventory.find_state_files(path), path, as_json, totals=True)
            return
        if map_png:
            _write_map(path, map_png)
        row = inventory.read_job(path)
        if row.status == "empty":
            raise UserFacingError(f"{path} holds no job yet; start one with `eefetch download`")
        if as_json:
            click.echo(json.dumps(_status_json(row), indent=2))
            return
        _show_one(row)

    _run_guarded(debug, action)


@main.command(name="list")
@click.argument("folder", type=click.Path(exists=True, file_okay=False), default=".")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def list_jobs(folder: str, as_json: bool, debug: bool) -> None:
    """The jobs under FOLDER (every *.eefetch.db, searched recursively)."""

    def action() -> None:
        from engine import inventory

        _show_jobs(inventory.find_state_files(folder), folder, as_json, totals=False)

    _run_guarded(debug, action)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--state-files",
    is_flag=True,
    help="Also remove the state files of finished jobs (a re-run then needs --overwrite).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def clean(folder: str, dry_run: bool, state_files: bool, debug: bool) -> None:
    """Remove the tile folders of finished (merged) jobs under FOLDER; others are kept.

    What jobs whose state file was deleted left under FOLDER goes too: their tile folders and
    the unfinished outputs their stopped runs kept.
    """

    def action() -> None:
        from engine import inventory
        from engine.progress import format_bytes

        removed, skipped = inventory.clean(
            inventory.find_state_files(folder),
            dry_run=dry_run,
            state_too=state_files,
            folder=Path(folder),
        )
        verb = "would remove" if dry_run else "removed"
        for item in removed:
            click.echo(f"{verb} {item.removed} ({format_bytes(item.bytes)})")
        for line in skipped:
            click.echo(f"skipped {line}", err=True)
        total = sum(item.bytes for item in removed)
        click.echo(f"{verb} {len(removed)} item(s), {format_bytes(total)}", err=True)

    _run_guarded(debug, action)


@main.command(epilog=EPILOG_SERVE)
@click.argument("path", metavar="STATE_OR_FOLDER", type=click.Path(exists=True))
@click.option("--port", default=8765, type=int, show_default=True, help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve(path: str, port: int, host: str, debug: bool) -> None:
    """A live, read-only web page of a job or of the jobs in a folder (Ctrl-C stops it)."""

    def action() -> None:
        from engine.webview import serve_forever

        def ready(url: str) -> None:
            click.echo(f"eefetch: serving {url} (read-only; Ctrl-C to stop)", err=True)
            click.echo(url)
            sys.stdout.flush()

        try:
            run_until_signalled(serve_forever(Path(path), host, port, ready))
        except KeyboardInterrupt:
            click.echo("eefetch: stopped serving", err=True)

    _run_guarded(debug, action)


@main.command()
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def merge(state: str, overwrite: bool, debug: bool) -> None:
    """Redo only the merge of a job whose tiles are all fetched (and kept)."""

    def action() -> None:
        from engine.job import merge_only

        output = merge_only(Path(state), overwrite=overwrite)
        click.echo(str(output))

    _run_guarded(debug, action)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, type=int, show_default=True, help="0 picks a free port.")
@click.option(
    "--profile",
    default="realistic",
    show_default=True,
    type=click.Choice(["clean", "realistic", "flaky", "hostile"]),
)
@click.option("--seed", default=0, type=int, show_default=True, help="Seed of the fault model.")
@click.option("--no-limits", is_flag=True, help="No size limits, quota or faults: an oracle.")
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve HTTPS with this certificate (PEM); clients then need its CA (--ca-bundle).",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False),
    help="The certificate's private key (PEM), if not in --certfile.",
)
def emulator(
    host: str,
    port: int,
    profile: str,
    seed: int,
    no_limits: bool,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Serve an offline Earth Engine emulator; prints its URL on the first line."""
    import ssl

    from engine.emulator.config import EmulatorConfig
    from engine.emulator.server import serve_forever

    if keyfile and not certfile:
        raise click.UsageError("--keyfile needs --certfile")
    context = None
    if certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise UserFacingError(
                f"cannot use {certfile} as the emulator's certificate: {exc}; give a PEM "
                "certificate and its key (--keyfile)"
            ) from exc
    config = EmulatorConfig.from_profile(profile, seed=seed, no_limits=no_limits)
    serve_forever(config, host, port, ssl_context=context)


# ----------------------------------------------------------------------------- helpers


def _spec(
    image: Any,
    grid: GridArgs,
    bands: list[str] | None,
    output: str,
    job: JobArgs,
    settings: Settings,
) -> Any:
    from engine import api
    from engine.spec import with_region

    spec = api.build_spec(
        image,
        Path(output),
        region=grid.region,
        crs=grid.crs,
        crs_transform=grid.transform(),
        scale=grid.scale,
        dtype=grid.dtype,
        shape=grid.shape,
        bands=bands or None,
        nodata=None,
        endpoint=job.endpoint,  # type: ignore[arg-type]
        max_tile_bytes=api._max_tile_bytes(job.max_tile_bytes, None),
        concurrency=settings.concurrency,
        compress=job.compress,
        cog=job.cog,
        keep_tiles=job.keep_tiles,
        ee_url=settings.ee_url,
        project=settings.project,
        warn=lambda message: click.echo(f"eefetch: warning: {message}", err=True),
    )
    return with_region(spec, _region_outline(grid.region))


def _region_outline(region: str | None) -> dict[str, Any] | None:
    """The region's outline for pictures of the job (``status --map``, ``serve``)."""
    if not region:
        return None
    from engine.jobmap import region_for_spec
    from engine.region_input import load_region

    return region_for_spec(load_region(region))


def _download_image(
    image: Any,
    grid: GridArgs,
    bands: list[str] | None,
    output: str | None,
    state: str | None,
    job: JobArgs,
    preview_png: str | None,
    settings: Settings,
    stretch: Any = None,
) -> None:
    """What download and composite share: preview, plan, or fetch and merge."""
    if preview_png:
        from engine.quicklook import Stretch, preview_image

        stretch = stretch or Stretch(bands=tuple(bands) if bands and len(bands) in (1, 3) else None)
        result = preview_image(
            image,
            preview_png,
            region=grid.region,
            crs=grid.crs,
            stretch=stretch,
            proxy=settings.proxy,
            ca_bundle=settings.ca_bundle,
        )
        _report_preview(result, settings.quiet)
        return
    if not output:
        raise click.UsageError("-o/--output is required: the GeoTIFF to write")
    spec = _spec(image, grid, bands, output, job, settings)
    if job.dry_run:
        from engine.estimate import plan_spec

        report = plan_spec(spec)
        click.echo(report.text())
        return
    _run_spec(spec, state, job.overwrite, settings)


def _run_spec(spec: Any, state: str | None, overwrite: bool, settings: Settings) -> None:
    from engine.api import DownloadIncomplete
    from engine.job import run_job
    from engine.paths import default_state_path
    from engine.progress import choose_progress, format_bytes

    state_path = Path(state) if state else default_state_path(Path(spec.output))
    options = settings.run_options(overwrite)
    quiet = settings.quiet
    result = run_until_signalled(run_job(spec, state_path, options, choose_progress(quiet)))
    summary = result.summary
    line = (
        f"{summary.fetched_tiles} tiles fetched ({format_bytes(summary.fetched_bytes)}), "
        f"{summary.retries} retries, {summary.splits} splits"
    )
    if not result.complete:
        click.echo(f"eefetch: {line}", err=True)
        raise UserFacingError(str(DownloadIncomplete(result)))
    if not quiet:
        click.echo(f"eefetch: {line}", err=True)
    click.echo(str(result.output))


def _stretch(
    bands: str | None, vmin: str | None, vmax: str | None, gamma: float | None, palette: str | None
) -> Any:
    from engine.quicklook import Stretch

    def numbers(text: str | None, option: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in _split(text))
        except ValueError as exc:
            raise click.BadParameter(f"{option} takes numbers separated by commas") from exc

    names = tuple(_split(bands)) or None
    if names and len(names) not in (1, 3):
        raise click.BadParameter("--bands takes 1 or 3 bands, e.g. B4,B3,B2")
    return Stretch(
        bands=names,
        min=numbers(vmin, "--min"),
        max=numbers(vmax, "--max"),
        gamma=gamma,
        palette=tuple(_split(palette)) or None,
    )


def _report_preview(result: Any, quiet: bool) -> None:
    if not quiet:
        ranges = ", ".join(
            f"{b} {lo:.4g}..{hi:.4g}"
            for b, lo, hi in zip(result.bands, result.min, result.max, strict=False)
        )
        click.echo(f"eefetch: {result.width} x {result.height} picture of {ranges}", err=True)
    click.echo(str(result.path))


def _show_one(row: Any) -> None:
    from engine.progress import format_bytes

    counts = row.tiles
    click.echo(f"job:     {row.output}")
    click.echo(f"state:   {row.state_label} ({row.status})")
    click.echo(
        "tiles:   "
        + ", ".join(
            f"{counts[k]} {k.replace('_', ' ')}"
            for k in ("done", "pending", "in_flight", "failed", "split")
        )
        + f" ({row.percent:.0f}% done)"
    )
    click.echo(
        f"fetched: {format_bytes(row.bytes_done)} of about {format_bytes(row.expected_bytes)}"
    )
    for item in row.last_errors:
        click.echo(f"error:   tile {item['tile']}: {item['error']}")
    hint = _next_step(row)
    if hint:
        click.echo(f"next:    {hint}")


def _write_map(state: str, picture: str) -> None:
    from engine.jobmap import write_map

    if not Path(picture).parent.is_dir():
        raise UserFacingError(
            f"--map {picture}: folder {Path(picture).parent} does not exist; create it or "
            "choose another path"
        )
    result = write_map(state, picture)
    click.echo(f"eefetch: wrote {picture} ({result.width} x {result.height})", err=True)


def _next_step(row: Any) -> str:
    if row.status == "merged" or row.running:
        return ""
    if row.status == "downloaded":
        return f"eefetch merge {row.state}"
    return f"eefetch resume {row.state}  (or run the same download command again)"


def _status_json(row: Any) -> dict[str, Any]:
    """The fields scripts relied on before (state, output, status, tiles, bytes_done,
    last_errors), plus the rest of the row."""
    return row.to_dict()


def _show_jobs(paths: list[Path], folder: str, as_json: bool, *, totals: bool) -> None:
    from engine import inventory

    rows = [inventory.read_job(p) for p in paths]
    if as_json:
        click.echo(json.dumps([_status_json(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no eefetch jobs under {folder} (looked for *.eefetch.db)")
        return
    click.echo(inventory.table(rows))
    if totals:
        click.echo(inventory.totals(rows))


def _collection_from_script(path: Path) -> Any:
    """Run a user's Python file and take the ``collection`` it defines."""
    import runpy

    import ee

    from engine.ee_adapter import EEUserError

    try:
        namespace = runpy.run_path(str(path), run_name="__eefetch_script__")
    except FileNotFoundError as exc:
        raise EEUserError(f"script {path} does not exist") from exc
    except Exception as exc:
        raise EEUserError(
            f"script {path} raised {type(exc).__name__}: {exc}; fix the script and run again"
        ) from exc
    found = namespace.get("collection")
    if not isinstance(found, ee.ImageCollection):
        raise EEUserError(
            f"script {path} defines no ee.ImageCollection named `collection`; assign the "
            "collection to download to `collection`"
        )
    return found


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _load_spec(state: str) -> Any:
    from engine.spec import JobSpec, SpecError
    from state import Store

    with Store.open(state, create=False) as store:
        job = store.job()
    if job is None:
        raise UserFacingError(f"{state} holds no job; start one with `eefetch download`")
    try:
        return JobSpec.from_dict(job.spec)
    except SpecError as exc:
        raise UserFacingError(f"state file {state}: {_one_line(exc)}") from exc


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserFacingError(
            f"{path} is not a text file; give a serialized expression (JSON)"
        ) from exc


def _parse_numbers(text: str, count: int, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError as exc:
        raise click.BadParameter(f"{option} takes {count} numbers separated by commas") from exc
    if len(values) != count:
        raise click.BadParameter(f"{option} takes {count} numbers, got {len(values)}")
    return values


if __name__ == "__main__":
    main()
