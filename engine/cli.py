"""The ``eefetch`` command. Argument handling only: the work is in engine.api and engine.job."""

from __future__ import annotations

import asyncio
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

T = TypeVar("T")

EPILOG_DOWNLOAD = """\b
Examples:
  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.tif
  eefetch download --script composite.py --region city.geojson --crs EPSG:4326 \\
      --scale 10 -o nanjing.tif
  eefetch download --asset USGS/SRTMGL1_003 --region 118.5,31.8,119.2,32.3 \\
      --scale 30 -o dem.tif --ee-url http://127.0.0.1:8765   # offline, the emulator

Run the same command again after any interruption: it resumes where it stopped.
"""


class UserFacingError(click.ClickException):
    """One line, no traceback (unless --debug)."""

    def format_message(self) -> str:
        return self.message


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.ee_adapter import EEUserError
    from engine.grid import GridError
    from engine.job import JobError
    from engine.merge import MergeError
    from engine.scheduler import JobStopped
    from state import StateError

    return (EEUserError, GridError, JobError, MergeError, JobStopped, StateError, OSError)


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
        raise UserFacingError(_one_line(exc)) from exc


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eefetch")
def main() -> None:
    """Download Earth Engine images of any size to one GeoTIFF, resumably."""


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
            default=8,
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


@main.command(epilog=EPILOG_DOWNLOAD)
@click.option("--asset", help="Image asset id, e.g. USGS/SRTMGL1_003.")
@click.option(
    "--expression",
    "expression_file",
    type=click.Path(dir_okay=False),
    help="File with a serialized image (ee.Image.serialize()).",
)
@click.option("--script", type=click.Path(dir_okay=False), help="Python file that defines `image`.")
@click.option("--region", help="GeoJSON file, or west,south,east,north in degrees.")
@click.option("--crs", help="Output CRS, e.g. EPSG:4326.")
@click.option("--scale", type=float, help="Pixel size in metres (also for geographic CRSs).")
@click.option("--crs-transform", help="Six numbers: xScale,xShear,xOrigin,yShear,yScale,yOrigin.")
@click.option("--shape", nargs=2, type=int, help="HEIGHT WIDTH, with --crs-transform.")
@click.option("--bands", help="Comma-separated band names or regular expressions.")
@click.option(
    "--dtype",
    type=click.Choice(
        ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]
    ),
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="GeoTIFF to write."
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    help="State database (default: OUTPUT.eefetch.db beside the output).",
)
@click.option(
    "--endpoint",
    type=click.Choice(["urls", "compute"]),
    default="urls",
    show_default=True,
    help="getDownloadURL + GET, or computePixels.",
)
@click.option("--max-tile-bytes", type=int, help="Cap on one request's size (EE: 50331648).")
@click.option(
    "--compress",
    type=click.Choice(["deflate", "lzw", "zstd", "none"]),
    default="deflate",
    show_default=True,
)
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF with overviews.")
@click.option("--keep-tiles", is_flag=True, help="Keep tile files after the merge.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@_settings_options
def download(
    asset: str | None,
    expression_file: str | None,
    script: str | None,
    region: str | None,
    crs: str | None,
    scale: float | None,
    crs_transform: str | None,
    shape: tuple[int, int] | None,
    bands: str | None,
    dtype: str | None,
    output: str,
    state: str | None,
    endpoint: str,
    max_tile_bytes: int | None,
    compress: str,
    cog: bool,
    keep_tiles: bool,
    overwrite: bool,
    settings: Settings,
) -> None:
    """Download an image to one GeoTIFF (re-run the same command to resume)."""
    given = [
        name
        for name, value in (
            ("--asset", asset),
            ("--expression", expression_file),
            ("--script", script),
        )
        if value
    ]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --asset, --expression or --script")

    def action() -> None:
        from engine import api, ee_adapter

        settings.connect()
        if asset:
            image = ee_adapter.image_from_asset(asset)
        elif expression_file:
            image = ee_adapter.image_from_expression(_read_text(expression_file))
        else:
            image = ee_adapter.image_from_script(Path(script))  # type: ignore[arg-type]
        transform = _parse_numbers(crs_transform, 6, "--crs-transform") if crs_transform else None
        spec = api.build_spec(
            image,
            Path(output),
            region=region,
            crs=crs,
            crs_transform=transform,
            scale=scale,
            dtype=dtype,
            shape=shape,
            bands=bands.split(",") if bands else None,
            nodata=None,
            endpoint=endpoint,
            max_tile_bytes=api._max_tile_bytes(max_tile_bytes, None),  # type: ignore[arg-type]
            concurrency=settings.concurrency,
            compress=compress,
            cog=cog,
            keep_tiles=keep_tiles,
            ee_url=settings.ee_url,
            project=settings.project,
        )
        _run_spec(spec, state, overwrite, settings)

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
        spec = _load_spec(state)
        settings.connect(spec.ee_url, spec.project)
        _run_spec(spec, state, overwrite, settings)

    _run_guarded(settings.debug, action)


@main.command()
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def status(state: str, as_json: bool, debug: bool) -> None:
    """Show a job: tiles done / pending / failed, bytes, last errors."""

    def action() -> None:
        from engine.progress import format_bytes
        from state import Store

        with Store.open(state, create=False) as store:
            job = store.job()
            if job is None:
                raise UserFacingError(f"{state} holds no job yet")
            counts = store.counts()
            data = {
                "state": str(Path(state).resolve()),
                "output": job.output_path,
                "status": job.status,
                "tiles": counts,
                "bytes_done": store.bytes_done(),
                "last_errors": [{"tile": t, "error": e} for t, e in store.last_errors(5)],
            }
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"job:     {data['output']}")
        click.echo(f"status:  {data['status']}")
        click.echo(
            "tiles:   "
            + ", ".join(
                f"{counts[k]} {k.replace('_', ' ')}"
                for k in ("done", "pending", "in_flight", "failed", "split")
            )
        )
        click.echo(f"fetched: {format_bytes(data['bytes_done'])}")
        for item in data["last_errors"]:
            click.echo(f"error:   tile {item['tile']}: {item['error']}")

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
def emulator(host: str, port: int, profile: str, seed: int, no_limits: bool) -> None:
    """Serve an offline Earth Engine emulator; prints its URL on the first line."""
    from engine.emulator.config import EmulatorConfig
    from engine.emulator.server import serve_forever

    config = EmulatorConfig.from_profile(profile, seed=seed, no_limits=no_limits)
    serve_forever(config, host, port)


def _run_spec(spec: Any, state: str | None, overwrite: bool, settings: Settings) -> None:
    from engine.api import DownloadIncomplete
    from engine.job import default_state_path, run_job
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


def _load_spec(state: str) -> Any:
    from engine.spec import JobSpec
    from state import Store

    with Store.open(state, create=False) as store:
        job = store.job()
    if job is None:
        raise UserFacingError(f"{state} holds no job; start one with `eefetch download`")
    return JobSpec.from_dict(job.spec)


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
