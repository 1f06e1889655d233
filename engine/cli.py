"""The ``eefetch`` command: commands only.

Options are declared once in ``engine/cli_options.py``; how a command turns errors into one
line is ``engine/cli_command.py``; what status prints is ``engine/cli_output.py``. The work is
in the engine: ``engine.request`` builds a job exactly as the Python API does.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine import __version__
from engine import cli_options as opt
from engine.cli_command import Group, OneLineError
from engine.cli_output import report_preview, show_job, show_jobs, show_rows, status_json
from engine.emulator.config import PROFILES as EMULATOR_PROFILES
from engine.paths import state_target

if TYPE_CHECKING:
    from engine.recipes import Clip, Reducer
from engine.defaults import (
    CLIPS,
    DEFAULT_PARALLEL_IMAGES,
    EE_MAX_CONCURRENCY,
    REDUCERS,
)

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
  eefetch download --asset USGS/SRTMGL1_003 --like landcover.tif -o dem.tif
                                          # the grid of another raster, pixel for pixel
  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.zarr              # a Zarr store (xarray, rioxarray)

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
  eefetch collection ... -o scenes.zarr   # one Zarr store, dimensions (time, band, y, x)
  eefetch status scenes/        # one row per image

One GeoTIFF and one state file per image, named from the image ids. All images share one
concurrency budget. Run the same command again to resume: finished images are skipped.
With --state postgresql://... every image is a job PREFIX.IMAGE in that database (PREFIX:
--job, by default the folder's name); the same command run on several machines shares the
work (README, "Several machines").
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


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG_MAIN
)
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


@main.command(epilog=EPILOG_DOWNLOAD)
@opt.source_options
@opt.request_options
@opt.target_options(
    "Write a quick-look PNG of the image (B4,B3,B2 when present) instead of downloading."
)
@opt.fetch_options
def download(
    source: opt.Source,
    job: opt.RequestArgs,
    target: opt.TargetArgs,
    fetch: opt.FetchArgs,
) -> None:
    """Download an image to one GeoTIFF (re-run the same command to resume)."""
    if not source.given():
        raise click.UsageError("give exactly one of --asset, --expression or --script")
    job.check()
    connection = fetch.network.connect()
    image = source.image()
    if target.preview_png:
        _preview_of(image, job, target.preview_png, connection, fetch.quiet, bands=job.band_list())
        return
    request = job.request(_required_output(target.output))
    _download(image, request, target, fetch, connection)


@main.command(epilog=EPILOG_COMPOSITE)
@opt.recipe_options(required_dates=True)
@opt.choice("--reducer", REDUCERS)
@opt.choice(
    "--clip",
    CLIPS,
    help="Clip to the region's bounding box (the tutorial's advice), its outline, or not.",
)
@opt.request_options
@opt.target_options(
    "Write a true-colour PNG of the composite (B4,B3,B2, 0-0.3) instead of downloading."
)
@opt.fetch_options
def composite(
    recipe: opt.RecipeArgs,
    reducer: Reducer,
    clip: Clip,
    job: opt.RequestArgs,
    target: opt.TargetArgs,
    fetch: opt.FetchArgs,
) -> None:
    """A per-pixel composite of a filtered, cloud-masked collection, downloaded resumably.

    --bands are kept before reducing, as in the tutorial.
    """
    from engine.recipes import composite as build_composite
    from engine.region_input import load_region

    if not job.region:
        raise click.UsageError("--region is required: a GeoJSON file or west,south,east,north")
    region = load_region(job.region)
    connection = fetch.network.connect()
    image = build_composite(recipe.recipe(region, job.bands, reducer, clip))
    if target.preview_png:
        from engine.quicklook import Stretch

        # Reflectance (divided by 10000) looks right stretched 0 to 0.3, as in the tutorial.
        stretch = None if recipe.no_divide else Stretch(min=(0.0,), max=(0.3,))
        _preview_of(image, job, target.preview_png, connection, fetch.quiet, stretch=stretch)
        return
    request = job.request(_required_output(target.output), select_bands=False)
    _download(image, request, target, fetch, connection)


@main.command()
@opt.source_options
@opt.request_options
@opt.output_option(
    default="download.tif",
    show_default=True,
    help="Where the GeoTIFF would go (for the free-space check).",
)
@opt.concurrency
@opt.as_json
@opt.connection_options
def plan(
    source: opt.Source,
    job: opt.RequestArgs,
    output: str,
    concurrency: int | None,
    as_json: bool,
    network: opt.ConnectionArgs,
) -> None:
    """Grid, tiles, requests and size on disk of a download, before fetching anything.

    Same options as `download`; `download --dry-run` and `composite --dry-run` print the same.
    """
    from engine import ee_adapter
    from engine.estimate import plan_spec
    from engine.request import build_job
    from engine.sample import measure

    if not source.given():
        raise click.UsageError("give exactly one of --asset, --expression or --script")
    job.check()
    request = job.request(output)
    request.check(concurrency)
    connection = network.connect()
    ee_adapter.set_workload_tag(request.workload_tag)
    spec = build_job(source.image(), request, connection, concurrency=concurrency, warn=_warn)
    report = plan_spec(spec, measure(spec, connection))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.text())


@main.command(epilog=EPILOG_COLLECTION)
@opt.recipe_options(required_dates=False)
@opt.file_option(
    "--script", help="Python file that defines `collection` (instead of the filter options)."
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many images.")
@click.option(
    "--name-property",
    help="Name files by this image property (default: the image's system:index).",
)
@opt.request_options
@click.option(
    "-o",
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the GeoTIFFs (one per image) and their state files.",
)
@opt.shown(
    "--parallel-images",
    type=click.IntRange(1, EE_MAX_CONCURRENCY),
    default=DEFAULT_PARALLEL_IMAGES,
    help="Images in progress at once (tiles in flight stay within --concurrency).",
)
@opt.collection_state
@opt.collection_prefix
@opt.overwrite
@opt.dry_run
@opt.fetch_options
def collection(
    recipe: opt.RecipeArgs,
    script: str | None,
    limit: int | None,
    name_property: str | None,
    job: opt.RequestArgs,
    out_dir: str,
    parallel_images: int,
    state: str | None,
    job_prefix: str | None,
    overwrite: bool,
    dry_run: bool,
    fetch: opt.FetchArgs,
) -> None:
    """Every image of a filtered collection, one GeoTIFF each, as one resumable run."""
    from engine import collection as images_of
    from engine import ee_adapter
    from engine.errors import CollectionIncomplete
    from engine.progress import choose_progress
    from engine.quota_gate import call_slot
    from engine.request import build_job
    from engine.runner import run_until_signalled

    if not script and not (recipe.start and recipe.end):
        raise click.UsageError("give --start and --end (and other filters), or --script")
    if not script and not job.region:
        raise click.UsageError("--region is required: a GeoJSON file or west,south,east,north")
    if job_prefix is not None and state is None:
        raise click.UsageError("--job names the images' jobs in a --state database; give both")
    folder = Path(out_dir).expanduser().resolve()
    where = images_of.Where.given(state, job_prefix, folder, "--state")
    request = job.request(folder / "image.tif", select_bands=False)
    settings = fetch.run.settings(overwrite)
    request.check(settings.concurrency)
    connection = fetch.network.connect()
    ee_adapter.set_workload_tag(request.workload_tag)
    if script:
        chosen = ee_adapter.collection_from_script(Path(script))
        if job.band_list():
            chosen = chosen.select(job.band_list())
    else:
        from engine.recipes import composite_collection
        from engine.region_input import load_region

        region = load_region(job.region)
        chosen = composite_collection(recipe.recipe(region, job.bands, "median", "none"))
    if limit:
        chosen = chosen.limit(limit)
    members = images_of.list_images(chosen, None, name_property)
    if request.format == "zarr" or folder.suffix.lower() == ".zarr":
        _stack(chosen, members, request, settings, connection, dry_run, fetch, where, job_prefix)
        return

    def build(image: Any, output: Path) -> Any:
        return build_job(
            image,
            request.for_output(output),
            connection,
            concurrency=settings.concurrency,
            warn=_warn,
            slot=call_slot(where.state_for(output), settings.project_quota),
        )

    jobs = images_of.collection_specs(chosen, folder, members, build)
    if dry_run:
        _plan_collection(jobs)
        return
    folder.mkdir(parents=True, exist_ok=True)
    result = run_until_signalled(
        images_of.run_collection(
            jobs,
            folder,
            settings.run_options(connection),
            choose_progress(fetch.quiet),
            parallel_images,
            where,
        )
    )
    if not result.complete:
        raise CollectionIncomplete(result)
    for output in result.outputs:
        click.echo(str(output))


@main.command(epilog=EPILOG_PREVIEW)
@click.argument("geotiff", required=False, type=click.Path(dir_okay=False))
@opt.source_options
@opt.region
@click.option("--crs", help="CRS to draw the image in (default: the image's).")
@opt.stretch_options
@opt.file_option("-o", "--output", help="Picture to write.")
@opt.connection_options
@opt.quiet
def preview(
    geotiff: str | None,
    source: opt.Source,
    region: str | None,
    crs: str | None,
    look: opt.StretchArgs,
    output: str | None,
    network: opt.ConnectionArgs,
    quiet: bool,
) -> None:
    """A quick-look picture: of a downloaded GeoTIFF, or of an image in Earth Engine."""
    from engine.quicklook import preview_file, preview_image

    if bool(geotiff) == source.given():
        raise click.UsageError("give a GeoTIFF file, or one of --asset, --expression or --script")
    stretch = look.stretch()
    if geotiff:
        result = preview_file(
            geotiff,
            output,
            stretch=stretch,
            dimensions=look.dimensions,
            file_format=look.picture_format,
        )
    else:
        connection = network.connect()
        result = preview_image(
            source.image(),
            output or f"preview.{look.file_format}",
            region=region,
            crs=crs,
            stretch=stretch,
            dimensions=look.dimensions,
            file_format=look.picture_format,
            proxy=connection.proxy,
            ca_bundle=connection.ca_bundle,
        )
    report_preview(result, quiet)


@main.command()
@click.argument("state")
@opt.job_name
@opt.overwrite
@opt.fetch_options
def resume(
    state: str,
    job_name: str | None,
    overwrite: bool,
    fetch: opt.FetchArgs,
) -> None:
    """Resume the job saved in STATE (a state file, or a database URL with --job), without
    the original script."""
    _resume(state, job_name, overwrite, fetch)


EPILOG_WORKER = """\b
Examples:
  eefetch download --asset USGS/SRTMGL1_003 --region 73,18,135,54 --scale 30 \\
      -o /shared/dem.tif --state postgresql://eefetch@db:5432/eefetch --job dem \\
      --tiles /shared/tiles            # machine 1: creates the job, and works on it
  eefetch worker --state postgresql://eefetch@db:5432/eefetch --job dem \\
      --tiles /shared/tiles            # machines 2, 3, ...: join it
  eefetch status postgresql://eefetch@db:5432/eefetch --job dem

When the last tile is done, one worker merges (the others say which and exit).
"""


@main.command(epilog=EPILOG_WORKER)
@opt.state
@opt.job_name
@opt.overwrite
@opt.fetch_options
def worker(
    state: str | None,
    job_name: str | None,
    overwrite: bool,
    fetch: opt.FetchArgs,
) -> None:
    """Join a job whose state is on a PostgreSQL server, from this machine."""
    from state import is_database_url

    if not state or not is_database_url(state):
        raise click.UsageError(
            "a worker joins a job whose state is on a server: give --state "
            "postgresql://user@host:port/db and --job NAME (an SQLite state file is worked "
            "on by one process: eefetch resume FILE)"
        )
    _resume(state, job_name, overwrite, fetch)


def _resume(state: str, job_name: str | None, overwrite: bool, fetch: opt.FetchArgs) -> None:
    """What resume and worker share: the stored job, run on the service reached now."""
    from dataclasses import replace

    from engine import ee_adapter
    from engine.service import service_identity

    settings = fetch.run.settings(overwrite)
    spec, name = _stored_spec(state, job_name)
    connection = fetch.network.connect(spec.ee_url, spec.project)
    ee_adapter.set_workload_tag(spec.extra.get("workload_tag"))
    # The service reached now, which --ee-url may have changed: the job refuses another.
    spec = replace(spec, service=service_identity(ee_adapter.current_base_url()))
    _run_spec(spec, state_target(state, Path(spec.output)), name, settings, connection, fetch.quiet)


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
@click.argument("path", metavar="STATE_OR_FOLDER")
@opt.job_name
@opt.as_json
@opt.file_option(
    "--map", "map_png", help="Also draw the job's tiles, coloured by state, into this PNG."
)
def status(path: str, job_name: str | None, as_json: bool, map_png: str | None) -> None:
    """Show a job (tiles done / pending / failed, bytes, workers, last errors), or every job in
    a folder or a state database."""
    from engine import inventory
    from state import is_database_url

    server = is_database_url(path)
    if not server and not Path(path).exists():
        raise OneLineError(f"{path} does not exist; give a state file, a folder or a database URL")
    if not server and Path(path).is_dir():
        if map_png:
            raise click.UsageError("--map draws one job: give its state file, not a folder")
        show_jobs(inventory.find_state_files(path), path, as_json, totals=True)
        return
    if server and job_name is None:
        names = inventory.job_names(path)
        if len(names) != 1:
            if map_png:
                raise click.UsageError("--map draws one job: name it with --job")
            rows = [inventory.read_job(path, job=name) for name in names]
            show_rows(rows, path, as_json, totals=True)
            return
        job_name = names[0]
    row = inventory.read_job(path, job=job_name)
    if row.status == "empty":
        raise OneLineError(f"{path} holds no job yet; start one with `eefetch download`")
    if map_png:
        _write_map(path, map_png, row.name if server else job_name)
    if as_json:
        click.echo(json.dumps(status_json(row), indent=2))
        return
    show_job(row)


@main.command(name="list")
@click.argument("folder", type=click.Path(exists=True, file_okay=False), default=".")
@opt.as_json
def list_jobs(folder: str, as_json: bool) -> None:
    """The jobs under FOLDER (every *.eefetch.db, searched recursively)."""
    from engine import inventory

    show_jobs(inventory.find_state_files(folder), folder, as_json, totals=False)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--state-files",
    is_flag=True,
    help="Also remove the state files of finished jobs (a re-run then needs --overwrite).",
)
def clean(folder: str, dry_run: bool, state_files: bool) -> None:
    """Remove the tile folders of finished (merged) jobs under FOLDER; others are kept.

    Also what jobs whose state file was deleted left behind: an unfinished output and its
    checkpoint, a tile folder.
    """
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


@main.command(epilog=EPILOG_SERVE)
@click.argument("path", metavar="STATE_OR_FOLDER", type=click.Path(exists=True))
@opt.shown("--port", default=8765, type=int, help="0 picks a free port.")
@opt.shown("--host", default="127.0.0.1", help="Address to listen on.")
def serve(path: str, port: int, host: str) -> None:
    """A live, read-only web page of a job or of the jobs in a folder (Ctrl-C stops it)."""
    from engine.runner import run_until_signalled
    from engine.webview import serve_forever

    def ready(url: str) -> None:
        click.echo(f"eefetch: serving {url} (read-only; Ctrl-C to stop)", err=True)
        click.echo(url)
        sys.stdout.flush()

    try:
        run_until_signalled(serve_forever(Path(path), host, port, ready))
    except KeyboardInterrupt:
        click.echo("eefetch: stopped serving", err=True)


@main.command()
@click.argument("state")
@opt.job_name
@opt.tile_folder
@opt.overwrite
def merge(state: str, job_name: str | None, tile_folder: str | None, overwrite: bool) -> None:
    """Merge a job whose tiles are all fetched (and kept): STATE is its state file, or a
    database URL with --job."""
    from engine.job import merge_only

    folder = Path(tile_folder) if tile_folder else None
    merged = merge_only(state, overwrite=overwrite, job=job_name, tile_folder=folder)
    click.echo(str(merged))


@main.command()
@opt.shown("--host", default="127.0.0.1")
@opt.shown("--port", default=0, type=int, help="0 picks a free port.")
@opt.shown(
    "--profile",
    default="realistic",
    type=click.Choice(sorted(EMULATOR_PROFILES)),
    help="A server model (README, 'The emulator'); realistic is the default.",
)
@opt.shown("--seed", default=0, type=int, help="Seed of the fault model.")
@click.option("--no-limits", is_flag=True, help="No size limits, quota or faults: an oracle.")
@click.option(
    "--no-shaping", is_flag=True, help="No latency or bandwidth shaping (limits are kept)."
)
@click.option("--tile-cache", type=click.Path(file_okay=False), help="Keep rendered tiles here.")
@opt.shown(
    "--render-processes",
    type=click.IntRange(min=0),
    default=0,
    help="Render in N worker processes (0: threads).",
)
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
    no_shaping: bool,
    tile_cache: str | None,
    render_processes: int,
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
            raise OneLineError(
                f"cannot use {certfile} as the emulator's certificate: {exc}; give a PEM "
                "certificate and its key (--keyfile)"
            ) from exc
    config = EmulatorConfig.from_profile(
        profile,
        seed=seed,
        no_limits=no_limits,
        shaping=not no_shaping,
        tile_cache_dir=tile_cache,
        render_processes=render_processes,
    )
    serve_forever(config, host, port, ssl_context=context)


# ----------------------------------------------------------------------------- helpers


def _required_output(output: str | None) -> str:
    if not output:
        raise click.UsageError("-o/--output is required: the GeoTIFF to write")
    return output


def _warn(message: str) -> None:
    click.echo(f"eefetch: warning: {message}", err=True)


def _preview_of(
    image: Any,
    job: opt.RequestArgs,
    output: str,
    connection: Any,
    quiet: bool,
    *,
    bands: list[str] | None = None,
    stretch: Any = None,
) -> None:
    """What download and composite share: a quick-look PNG of the image instead."""
    from engine.quicklook import Stretch, preview_image

    stretch = stretch or Stretch(bands=tuple(bands) if bands and len(bands) in (1, 3) else None)
    result = preview_image(
        image,
        output,
        region=job.region,
        crs=job.crs,
        stretch=stretch,
        proxy=connection.proxy,
        ca_bundle=connection.ca_bundle,
    )
    report_preview(result, quiet)


def _download(
    image: Any,
    request: Any,
    target: opt.TargetArgs,
    fetch: opt.FetchArgs,
    connection: Any,
) -> None:
    """What download and composite share: plan (--dry-run), or fetch and merge."""
    from engine import ee_adapter
    from engine.estimate import plan_spec
    from engine.quota_gate import call_slot
    from engine.request import build_job
    from engine.sample import measure

    settings = fetch.run.settings(target.overwrite)
    request.check(settings.concurrency)
    settings.run_options(connection)  # refuse impossible settings before Earth Engine's calls
    ee_adapter.set_workload_tag(request.workload_tag)
    state = state_target(target.state, request.output)
    slot = None if target.dry_run else call_slot(state, settings.project_quota)
    spec = build_job(
        image, request, connection, concurrency=settings.concurrency, warn=_warn, slot=slot
    )
    if target.dry_run:
        click.echo(plan_spec(spec, measure(spec, connection)).text())
        return
    _run_spec(spec, state, target.job_name, settings, connection, fetch.quiet)


def _run_spec(
    spec: Any, state: Path | str, job_name: str | None, settings: Any, connection: Any, quiet: bool
) -> None:
    from engine.errors import DownloadIncomplete
    from engine.job import run_job
    from engine.progress import choose_progress, format_bytes
    from engine.runner import run_until_signalled

    options = settings.run_options(connection)
    result = run_until_signalled(
        run_job(spec, state, options, choose_progress(quiet), job=job_name)
    )
    summary = result.summary
    line = (
        f"{summary.fetched_tiles} tiles fetched ({format_bytes(summary.fetched_bytes)}), "
        f"{summary.retries} retries, {summary.splits} splits"
    )
    if not result.complete:
        click.echo(f"eefetch: {line}", err=True)
        raise DownloadIncomplete(result)
    if not quiet:
        click.echo(f"eefetch: {line}", err=True)
    if result.merged_by is not None:
        click.echo(f"eefetch: all tiles are fetched; {result.merged_by} merges", err=True)
    click.echo(str(result.output))


def _stack(
    chosen: Any,
    members: Any,
    request: Any,
    settings: Any,
    connection: Any,
    dry_run: bool,
    fetch: opt.FetchArgs,
    where: Any,
    job_name: str | None,
) -> None:
    """A collection to one Zarr store with a time dimension: one job (``engine.stack``),
    whose state is a file beside the store, or job ``job_name`` in ``where``'s database."""
    from dataclasses import replace

    from engine.errors import OtherJobError
    from engine.estimate import plan_spec
    from engine.stack import stack_job, stack_output

    output = stack_output(request.output.parent)
    request = replace(request, output=output, output_format="zarr")
    spec = stack_job(
        chosen, members, request, connection, concurrency=settings.concurrency, warn=_warn
    )
    if dry_run:
        click.echo(f"{len(members)} images, stacked along time into {output}")
        click.echo(plan_spec(spec).text())
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    target = where.state_for(output)
    try:
        _run_spec(spec, target, job_name, settings, connection, fetch.quiet)
    except OtherJobError as exc:
        raise where.reworded(exc, target, job_name) from exc


def _plan_collection(jobs: list[tuple[Any, Any]]) -> None:
    from engine.estimate import UNREASONABLE_BYTES, plan_spec
    from engine.progress import format_bytes

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


def _write_map(state: str, picture: str, job_name: str | None = None) -> None:
    from engine.jobmap import write_map

    if not Path(picture).parent.is_dir():
        raise OneLineError(
            f"--map {picture}: folder {Path(picture).parent} does not exist; create it or "
            "choose another path"
        )
    result = write_map(state, picture, job=job_name)
    click.echo(f"eefetch: wrote {picture} ({result.width} x {result.height})", err=True)


def _stored_spec(state: str, job_name: str | None) -> tuple[Any, str]:
    """The spec of the job in ``state`` (named ``job_name``, or its only job), and its name."""
    from engine.errors import JobError, SpecError
    from engine.spec import JobSpec
    from state import Store, is_database_url

    if not is_database_url(state) and not Path(state).is_file():
        raise JobError(f"state file {state} does not exist; check the path")
    with Store.open(state, job=job_name, create=False) as store:
        job = store.job()
        label = store.target
    if job is None:
        what = "no job" if job_name is None else f"no job named {job_name}"
        raise JobError(f"{label} holds {what}; start one with `eefetch download`")
    try:
        return JobSpec.from_dict(job.spec), job.name
    except SpecError as exc:
        raise SpecError(f"state {label}: {exc}") from exc


if __name__ == "__main__":
    main()
