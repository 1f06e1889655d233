#!/usr/bin/env python3
"""Benchmark harness for issue 5: eefetch against geedim 2.0 (as geemap drives it), the bound a
bare aiohttp loop sets, the merge against gdal_translate, and a 100,000-tile job.

    python3 scripts/bench.py --quick            # small image, 1 repetition: a few minutes
    python3 scripts/bench.py                    # ~1 GB image, 3 alternating repetitions
    python3 scripts/bench.py --scenarios 1,2 --reps 5 --workdir /tmp/bench

It sets itself up from a fresh clone: the first run creates ``.venv-bench/`` beside the
repository's ``.venv/`` and installs ``eefetch[bench]`` there (geedim 2.0 and the profilers are
benchmark-only, never runtime dependencies), then re-runs itself with that interpreter.

Every measured program is its own child process: wall time from the parent, CPU time and
peak RSS from ``os.wait4`` (that child only). The emulator is a separate process too, started
once per scenario and shared by every tool of that scenario; its CPU time is read from
/proc before and after each run and reported apart (it renders pixels on the same cores as
the client). Requests and bytes come from the emulator's own counters, reset before each run.
Runs of different tools alternate (A B A B ...), and the report gives medians and the ratio
of each pair. Results go to ``WORKDIR/results.json`` and ``WORKDIR/report.md``.

geedim is kept offline: its STAC lookup is stubbed in the harness's driver only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV = REPO / ".venv-bench"
SCRIPT = REPO / "examples" / "tutorial_composite.py"
CRS = "EPSG:4326"
SCALE = 30.0
# ~1 GB: 8 float32 bands at 30 m over this box (about 4450 x 6680 pixels).
FULL_BOX = (118.2, 31.0, 119.4, 32.8)
# Quick mode: about 1110 x 1110 pixels (~40 MB).
QUICK_BOX = (118.6, 31.8, 118.9, 32.1)
SCALE_TILES = (250, 400)  # rows x columns of 512 x 512 tiles: 100,000 tiles
ZERO_EXPRESSION = '{"scope": [], "result": "0"}'  # a spec's expression for jobs never fetched


# ------------------------------------------------------------------------------------ setup


def ensure_bench_venv() -> None:
    """Re-run this script inside .venv-bench, creating and filling it first if needed."""
    if Path(sys.prefix).resolve() == BENCH_VENV.resolve():
        return
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".eefetch-bench-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        print(f"bench: creating {BENCH_VENV}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    if not stamp.exists() or stamp.read_text().strip() != want:
        print("bench: installing eefetch[bench] (geedim 2.0, py-spy)", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-e", f"{REPO}[bench]"], check=True)
        stamp.write_text(want)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def region_geometry(box: tuple[float, float, float, float]) -> dict[str, Any]:
    w, s, e, n = box
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def write_region(path: Path, box: tuple[float, float, float, float]) -> Path:
    feature = {"type": "Feature", "properties": {}, "geometry": region_geometry(box)}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


# ------------------------------------------------------------------------------ measuring


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu(pid: int) -> float:
    """CPU seconds of a live process and of its live descendants."""
    total = proc_cpu(pid)
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            for child in children.read_text().split():
                total += tree_cpu(int(child))
    return total


def loadavg() -> float:
    return os.getloadavg()[0]


class Emulator:
    """The emulator in its own process, with its counters reachable over HTTP."""

    def __init__(
        self, profile: str, seed: int, overrides: dict[str, Any], cpus: set[int] | None = None
    ) -> None:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_emulator",
            "--profile",
            profile,
            "--seed",
            str(seed),
            "--overrides",
            json.dumps(overrides),
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.process.kill()
            raise SystemExit(f"bench: the emulator did not start (said {self.url!r})")
        self.profile = profile

    def cpu(self) -> float:
        """CPU seconds of the emulator and of its live worker processes."""
        return tree_cpu(self.process.pid)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_emulator/stats", timeout=30) as answer:
            return json.load(answer)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/_emulator/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_child(
    command: list[str],
    *,
    emulator: Emulator | None = None,
    interrupt: Any = None,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """Run one measured program; wall, CPU and peak RSS of that child, emulator counters.

    ``cpus`` pins the child (and every thread it starts) to those CPUs.

    ``interrupt(emulator) -> bool`` is polled every 0.1 s; when it says so, the child gets
    SIGINT (Ctrl-C) and the in-flight count at that instant is recorded.
    """
    if emulator is not None:
        emulator.reset()
        emu_cpu0 = emulator.cpu()
    load0 = loadavg()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        # A harness started in the background (nohup ... &) inherits an ignored SIGINT, and
        # Python then never turns Ctrl-C into KeyboardInterrupt: give the child the default.
        preexec_fn=_child_setup(cpus),
    )
    result: dict[str, Any] = {"command": command}
    killed = threading.Event()

    def watch() -> None:
        # Never poll() here: that reaps the child, and the wait4 below then fails (ECHILD).
        while not killed.is_set():
            if time.monotonic() - started > timeout:
                process.kill()
                result["timed_out"] = True
                return
            if interrupt is not None and emulator is not None and interrupt(emulator):
                snap = emulator.stats()
                result["interrupted_at"] = time.monotonic() - started
                result["in_flight_at_interrupt"] = snap["in_flight"]
                result["tiles_done_at_interrupt"] = len(snap["tiles_served"])
                process.send_signal(signal.SIGINT)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    killed.set()
    watcher.join(5)
    process.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    result.update(
        returncode=process.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        load_before=load0,
        load_after=loadavg(),
    )
    if emulator is not None:
        result["emulator_cpu_s"] = emulator.cpu() - emu_cpu0
        snap = emulator.stats()
        result["requests"] = snap["requests"]
        result["requests_total"] = sum(sum(c.values()) for c in snap["requests"].values())
        result["tile_requests"] = sum(
            sum(snap["requests"].get(r, {}).values()) for r in ("getPixels", "computePixels")
        )
        result["bytes_served"] = snap["bytes_served"]
        result["tiles_served"] = len(snap["tiles_served"])
        result["tiles_served_twice"] = sum(1 for t in snap["tiles_served"] if t["count"] > 1)
        result["faults"] = snap["faults"]
        result["max_in_flight"] = snap["max_in_flight"]
        for key in ("projects", "tile_cache", "loop_lag", "quota_rejections"):
            result[key] = snap.get(key)
    return result


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_setup(cpus: set[int] | None) -> Any:
    """What a measured child runs before exec: default Ctrl-C, and its CPUs when pinned."""

    def setup() -> None:
        _default_sigint()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def driver(name: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), name, *args]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------- drivers
# Each driver runs in its own process (so its RSS and CPU are its own) and writes a small
# JSON of what it saw inside to --result.


def _connect(url: str) -> None:
    from engine import ee_adapter

    ee_adapter.initialize(ee_adapter.Connection(url=url))


def _image(region_file: str) -> Any:
    import runpy

    os.environ["EEFETCH_REGION"] = region_file
    return runpy.run_path(str(SCRIPT), run_name="__bench__")["image"]


def _region(region_file: str) -> dict[str, Any]:
    return json.loads(Path(region_file).read_text())["features"][0]["geometry"]


def drive_emulator(args: argparse.Namespace) -> None:
    from engine.emulator.config import EmulatorConfig
    from engine.emulator.server import serve_forever

    overrides = json.loads(args.overrides or "{}")
    serve_forever(EmulatorConfig.from_profile(args.profile, seed=args.seed, **overrides))


@contextlib.contextmanager
def _outcome(
    result: str | None, seen: dict[str, Any], t0: float, error_chars: int | None = None
) -> Iterator[None]:
    """Record how a driven download ended in its result file, whatever the ending: an error
    (its first ``error_chars``), Ctrl-C as ``interrupted`` (then exit 130, as a shell expects)."""
    try:
        yield
    except KeyboardInterrupt:
        seen.update(complete=False, interrupted=True)
        _dump(result, seen, t0)
        raise SystemExit(130) from None
    except Exception as exc:
        seen.update(complete=False, error=f"{type(exc).__name__}: {str(exc)[:error_chars]}")
    _dump(result, seen, t0)


def drive_eefetch(args: argparse.Namespace) -> None:
    """eefetch as a geemap user calls it: download_ee_image with geemap's arguments."""
    t0 = time.monotonic()
    from engine import DownloadIncomplete, download_ee_image
    from engine.progress import SilentProgress

    seen: dict[str, Any] = {}

    class Timing(SilentProgress):
        def note(self, message: str) -> None:
            if "tiles fetched" in message:
                seen["fetched_at"] = time.monotonic() - t0
                seen["peak_rss_mb_before_merge"] = _vm_hwm_mb()
            seen.setdefault("notes", []).append(message)

        def retry(self, message: str) -> None:
            seen["retries"] = seen.get("retries", 0) + 1

    _connect(args.url)
    image = _image(args.region)
    extra = json.loads(args.extra or "{}")
    with _outcome(args.result, seen, t0):
        try:
            result = download_ee_image(
                image,
                args.output,
                region=_region(args.region),
                crs=CRS,
                scale=SCALE,
                progress=Timing(),
                **extra,
            )
            seen.update(complete=True, counts=result.counts, summary=vars(result.summary))
        except DownloadIncomplete as exc:
            seen.update(complete=False, error=str(exc), counts=exc.result.counts)


def drive_geedim(args: argparse.Namespace) -> None:
    """geedim 2.0 as geemap.download_ee_image drives it: prepareForExport, then toGeoTIFF."""
    t0 = time.monotonic()
    import warnings

    import geedim  # noqa: F401  (registers the ee.Image.gd accessor)
    from geedim import stac

    # Harness only: the image has no id, but never let geedim reach for the internet.
    stac.STACClient.get = lambda self, ee_id: None
    warnings.simplefilter("ignore", RuntimeWarning)
    seen: dict[str, Any] = {}
    _connect(args.url)
    # ee_adapter turns the client's own retries off for eefetch; geemap users keep EE's
    # default (5 retries of 429s inside the client), so restore it for geedim.
    import ee

    ee.data.setMaxRetries(5)
    image = _image(args.region)
    with _outcome(args.result, seen, t0, error_chars=300):  # geedim errors can be pages
        prepared = image.gd.prepareForExport(region=_region(args.region), crs=CRS, scale=SCALE)
        seen["shape"] = list(prepared.gd.shape)
        seen["dtype"] = prepared.gd.dtype
        prepared.gd.toGeoTIFF(args.output, overwrite=True)
        seen["complete"] = True


def even_splits(total: int, parts: int) -> list[int]:
    """`total` cut into `parts` sizes that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def bare_windows(height: int, width: int, tile_bytes: int, pixel_cost: int) -> list[Any]:
    """Square-ish windows with all bands, each within `tile_bytes` of EE request bytes
    (`pixel_cost` = sum over bands of itemsize + 1, as EE counts a request), row-major."""
    from engine.grid import Window

    side = max(1, math.isqrt(tile_bytes // pixel_cost))
    heights = even_splits(height, -(-height // side))
    widths = even_splits(width, -(-width // side))
    windows = []
    row = 0
    for h in heights:
        col = 0
        for w in widths:
            windows.append(Window(row, col, h, w))
            col += w
        row += h
    return windows


def drive_bare(args: argparse.Namespace) -> None:
    """The bound: a bare aiohttp loop with exactly `--concurrency` tiles in flight.

    Per tile: a download URL (the EE client's getDownloadURL, in a thread, as eefetch does),
    then a GET whose body is written to `--write-dir` (or counted and dropped without it).
    No state, no checks, no merge. Tiles are eefetch's own plan, or with `--tile-mib T`
    square-ish windows of all bands within T MiB of EE request bytes (what eefetch's
    `max_tile_bytes` counts). A 429 or 5xx is retried after its Retry-After (0.5 s without
    one), so a loop above a server's quota still finishes.
    """
    t0 = time.monotonic()
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import aiohttp

    from engine import ee_adapter
    from engine.ee_adapter import Connection
    from engine.errors import FetchError
    from engine.job import itemsizes, plan
    from engine.request import DownloadRequest, build_job
    from engine.spec import default_nodata

    _connect(args.url)
    image = _image(args.region)
    concurrency = args.concurrency
    spec = build_job(
        image,
        DownloadRequest(
            output=Path(args.output), region=_region(args.region), crs=CRS, scale=SCALE
        ),
        Connection(url=args.url),
        concurrency=concurrency,
    )
    nbands = len(spec.band_ids)
    if args.tile_mib:
        cost = sum(int(size) + 1 for size in itemsizes(spec))
        windows = bare_windows(spec.grid.height, spec.grid.width, int(args.tile_mib * 2**20), cost)
        jobs = [(w, 0, nbands) for w in windows]
    else:
        jobs = [(t.window, t.band_start, t.band_stop) for t in plan(spec)]
    prepared = ee_adapter.prepare_image(
        ee_adapter.deserialize(spec.expression),
        spec.band_ids,
        spec.dtype,
        default_nodata(spec.dtype) if spec.nodata is None else spec.nodata,
    )
    write_dir = Path(args.write_dir) if args.write_dir else None
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Any] = {"tiles": len(jobs), "bytes": 0, "retries": 0, "statuses": {}}
    started = time.monotonic() - t0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(concurrency)
        pending = list(enumerate(jobs))[::-1]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        connector = aiohttp.TCPConnector(limit=concurrency)

        async def backoff(retry_after: str | float | None) -> None:
            seen["retries"] += 1
            await asyncio.sleep(float(retry_after) if retry_after else 0.5)

        async def one(session: aiohttp.ClientSession, index: int, job: Any) -> None:
            window, lo, hi = job
            tile_image = prepared if (lo, hi) == (0, nbands) else prepared.slice(lo, hi)
            grid = spec.grid.window_grid(window)
            while True:
                try:
                    url = await asyncio.wait_for(
                        loop.run_in_executor(executor, ee_adapter.download_url, tile_image, grid),
                        300,
                    )
                except FetchError as exc:
                    if exc.status == 429 or (exc.status or 0) >= 500:
                        await backoff(exc.retry_after)
                        continue
                    raise
                async with session.get(url) as response:
                    key = str(response.status)
                    seen["statuses"][key] = seen["statuses"].get(key, 0) + 1
                    if response.status == 429 or response.status >= 500:
                        await backoff(response.headers.get("Retry-After"))
                        continue
                    response.raise_for_status()
                    out = open(write_dir / f"{index}.tif", "wb") if write_dir else None  # noqa: SIM115
                    try:
                        async for chunk in response.content.iter_chunked(1 << 20):
                            seen["bytes"] += len(chunk)
                            if out is not None:
                                out.write(chunk)
                    finally:
                        if out is not None:
                            out.close()
                    return

        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=timeout
        ) as session:

            async def worker() -> None:
                while pending:
                    index, job = pending.pop()
                    await one(session, index, job)

            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
        executor.shutdown()

    asyncio.run(main())
    seen.update(
        fetch_started_at=started,
        fetch_s=time.monotonic() - t0 - started,
        pixel_bytes=spec.grid.width * spec.grid.height * sum(itemsizes(spec)),
        complete=True,
    )
    _dump(args.result, seen, t0)


def _merge_inputs(state_path: Path) -> tuple[Any, list[tuple[Any, Path]]]:
    from engine.grid import TilePlan, Window
    from engine.paths import tiles_folder
    from engine.spec import JobSpec
    from state import Store

    with Store.open(state_path, create=False) as store:
        job = store.job()
        assert job is not None
        spec = JobSpec.from_dict(job.spec)
        done = store.tiles("done")
    folder = tiles_folder(state_path)
    pieces = [
        (
            TilePlan(Window(t.row_off, t.col_off, t.height, t.width), t.band_start, t.band_stop),
            folder / str(t.path),
        )
        for t in done
    ]
    return spec, pieces


def drive_merge(args: argparse.Namespace) -> None:
    """eefetch's merge alone (engine.merge.merge_tiles) over the tiles a job kept."""
    t0 = time.monotonic()
    from engine.merge import merge_tiles

    spec, pieces = _merge_inputs(Path(args.state))
    merge_tiles(
        spec.grid,
        spec.band_ids,
        spec.dtype,
        pieces,
        Path(args.output),
        nodata=spec.nodata,
        compress=spec.compress,
        overwrite=True,
    )
    _dump(args.result, {"complete": True, "tiles": len(pieces)}, t0)


def merge_options(spec: Any, pieces: list[Any]) -> dict[str, object]:
    """The creation options eefetch's merge uses for this job (to give GDAL the same)."""
    from engine import merge

    blocksize = 512
    count = len(spec.band_ids)
    interleave = merge.choose_interleave(count, spec.dtype, blocksize)
    bigtiff = merge.bigtiff_option(
        spec.grid.width, spec.grid.height, count, spec.dtype, blocksize=blocksize
    )
    return merge.creation_options(spec.dtype, spec.compress, blocksize, bigtiff, interleave)


def drive_vrt(args: argparse.Namespace) -> None:
    """Write the VRT over the kept tiles and the gdal_translate options, as JSON."""
    from engine.merge import write_vrt

    spec, pieces = _merge_inputs(Path(args.state))
    write_vrt(spec.grid, spec.band_ids, spec.dtype, pieces, Path(args.output), spec.nodata)
    options = merge_options(spec, pieces)
    Path(args.result).write_text(json.dumps({k: str(v) for k, v in options.items()}))


def drive_rio_copy(args: argparse.Namespace) -> None:
    """gdal_translate through rasterio's bundled GDAL (the same GDAL as eefetch's merge)."""
    t0 = time.monotonic()
    import rasterio
    import rasterio.shutil

    options = json.loads(Path(args.options).read_text())
    with rasterio.Env():
        rasterio.shutil.copy(args.vrt, args.output, driver="GTiff", **options)
    _dump(args.result, {"complete": True}, t0)


def _vm_hwm_mb() -> float:
    """This process's peak RSS so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dump(path: str | None, data: dict[str, Any], t0: float) -> None:
    data["driver_wall_s"] = time.monotonic() - t0
    if path:
        Path(path).write_text(json.dumps(data, default=str))


def _pixel_transform(west: float, north: float) -> tuple[float, ...]:
    """A north-up EPSG:4326 transform whose pixel is SCALE metres at the equator."""
    pixel = SCALE / (2 * math.pi * 6378137 / 360)
    return (pixel, 0, west, 0, -pixel, north)


def _remove_leftovers(workdir: Path, output_name: str) -> None:
    """Remove an earlier run's output, state and tiles (every name that starts as the output)."""
    for leftover in workdir.glob(f"{output_name}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def drive_scale(args: argparse.Namespace) -> None:
    """Scenario 5: plan, create, resume-scan and status of a 100,000-tile job (no pixels)."""
    t0 = time.monotonic()
    import random

    from engine.grid import grid_from_transform
    from engine.job import open_job, plan, reconcile
    from engine.paths import tiles_folder
    from engine.spec import JobSpec
    from engine.tiles import tile_name
    from engine.tilestore import TileStore
    from state import JobLock, Store, TileDone

    rows, cols = (int(v) for v in args.tiles.split("x"))
    grid = grid_from_transform(CRS, _pixel_transform(100.0, 40.0), rows * 512, cols * 512)
    workdir = Path(args.workdir)
    state_path = workdir / "scale.tif.eefetch.db"
    _remove_leftovers(workdir, "scale.tif")
    spec = JobSpec(
        expression=ZERO_EXPRESSION,
        grid=grid,
        band_ids=("b1",),
        dtype="uint8",
        nodata=0,
        output=str(workdir / "scale.tif"),
        max_tile_bytes=512 * 512 * 2,
    )
    out: dict[str, Any] = {"grid": [grid.width, grid.height]}
    t = time.perf_counter()
    tiles = plan(spec)
    out["plan_s"] = time.perf_counter() - t
    out["tiles"] = len(tiles)
    t = time.perf_counter()
    with Store.open(state_path) as store:
        open_job(store, spec, state_path)
    out["plan_and_create_s"] = time.perf_counter() - t
    # Half the tiles done, with their (tiny) files on disk; a few failed.
    folder = TileStore(tiles_folder(state_path))
    folder.root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    with Store.open(state_path) as store:
        records = store.tiles("pending")
        done = rng.sample(records, len(records) // 2)
        updates = []
        uid = store.job().uid
        for record in done:
            name = tile_name(uid, record.id)
            (folder.root / name).write_bytes(b"II*\x00" + b"\x00" * 12)
            updates.append(TileDone(record.id, name, 16, "0" * 64))
        for start in range(0, len(updates), 5000):
            store.apply(updates[start : start + 5000], time.time())
    out["done_tiles"] = len(done)
    t = time.perf_counter()
    with JobLock(state_path), Store.open(state_path) as store:
        created, _, _ = open_job(store, spec, state_path)
        assert not created
        store.reset_failed()
        store.release_all_claims()
        notes = reconcile(store, folder, spec, store.job().uid)
    out["resume_scan_s"] = time.perf_counter() - t
    out["resume_notes"] = notes
    t = time.perf_counter()
    with Store.open(state_path, create=False) as store:
        job = store.job()
        status = {
            "status": job.status if job else None,
            "tiles": store.counts(),
            "bytes_done": store.bytes_done(),
            "last_errors": store.last_errors(5),
        }
    out["status_in_process_s"] = time.perf_counter() - t
    out["status"] = status
    out["state_bytes"] = state_path.stat().st_size
    _dump(args.result, out, t0)


def drive_mkmerge(args: argparse.Namespace) -> None:
    """Scenario 5b: a job's worth of synthetic tiles (eefetch's plan, S2-like pixels) and a
    state file saying they are done, so the merge benchmark has a multi-GB input."""
    import numpy as np
    import rasterio
    from affine import Affine

    from engine.grid import grid_from_transform
    from engine.job import open_job
    from engine.paths import tiles_folder
    from engine.spec import JobSpec
    from engine.tiles import tile_name
    from state import Store, TileDone

    side = int(args.side)
    grid = grid_from_transform(CRS, _pixel_transform(118.0, 33.0), side, side)
    workdir = Path(args.workdir)
    output = workdir / "bigmerge.tif"
    state_path = workdir / "bigmerge.tif.eefetch.db"
    _remove_leftovers(workdir, "bigmerge.tif")
    spec = JobSpec(
        expression=ZERO_EXPRESSION,
        grid=grid,
        band_ids=tuple(f"B{i}" for i in range(1, 9)),
        dtype="float32",
        nodata=float(np.finfo("float32").min),
        output=str(output),
        keep_tiles=True,
    )
    folder = tiles_folder(state_path)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with Store.open(state_path) as store:
        open_job(store, spec, state_path)
        uid = store.job().uid
        updates = []
        for record in store.tiles("pending"):
            h, w = record.height, record.width
            yy, xx = np.mgrid[
                record.row_off : record.row_off + h, record.col_off : record.col_off + w
            ]
            base = 0.12 + 0.06 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
            data = np.empty((8, h, w), dtype="float32")
            for b in range(8):
                noise = rng.integers(0, 60, size=(h, w)) / 10000.0
                data[b] = np.round((base + 0.01 * b + noise) * 10000) / 10000
            name = tile_name(uid, record.id)
            sub = grid.window_grid(
                __import__("engine.grid", fromlist=["Window"]).Window(
                    record.row_off, record.col_off, h, w
                )
            )
            with rasterio.open(
                folder / name,
                "w",
                driver="GTiff",
                width=w,
                height=h,
                count=8,
                dtype="float32",
                crs=CRS,
                transform=Affine(*sub.transform),
            ) as dst:
                dst.write(data)
            size = (folder / name).stat().st_size
            updates.append(TileDone(record.id, name, size, "0" * 64))
        store.apply(updates, time.time())
    total = sum(p.stat().st_size for p in folder.iterdir())
    Path(args.result).write_text(json.dumps({"tiles": len(updates), "tile_bytes": total}))


DRIVERS = {
    "_emulator": drive_emulator,
    "_eefetch": drive_eefetch,
    "_geedim": drive_geedim,
    "_bare": drive_bare,
    "_merge": drive_merge,
    "_vrt": drive_vrt,
    "_rio_copy": drive_rio_copy,
    "_scale": drive_scale,
    "_mkmerge": drive_mkmerge,
}


# ----------------------------------------------------------------------------- scenarios


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        box = QUICK_BOX if args.quick else FULL_BOX
        self.region = write_region(self.work / "region.geojson", box)
        self.results: dict[str, Any] = {
            "meta": machine_info(args),
            "box": box,
            "scenarios": {},
        }
        self.counter = 0
        # --pin: the emulator stands for Earth Engine's servers, whose CPU is not the user's.
        self.emulator_cpus = {0} if args.pin else None
        self.tool_cpus = set(range(1, os.cpu_count() or 2)) if args.pin else None

    def path(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{self.counter:03d}-{stem}"

    def save(self) -> None:
        (self.work / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def log(self, text: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        print(f"bench {stamp} load {loadavg():.2f}: {text}", flush=True)

    # one run of one tool ------------------------------------------------------------

    def run_tool(
        self,
        tool: str,
        emulator: Emulator,
        *,
        output: Path | None = None,
        extra: dict[str, Any] | None = None,
        interrupt: Any = None,
        fresh: bool = True,
        env: dict[str, str] | None = None,
        region: Path | None = None,
        bare: tuple[float, int] | None = None,
    ) -> dict[str, Any]:
        """One measured run; `bare=(tile MiB, concurrency)` runs the bare loop on square
        tiles of that size, writing them to disk (without it: eefetch's plan, bodies dropped)."""
        output = output or self.path(f"{tool}.tif")
        if fresh:
            clean_outputs(output)
        result_file = output.with_suffix(".json")
        result_file.unlink(missing_ok=True)
        region = region or self.region
        common = ["--url", emulator.url, "--region", str(region), "--output", str(output)]
        if tool == "eefetch":
            extra = {**json.loads(self.args.eefetch_extra or "{}"), **(extra or {})}
            command = driver("_eefetch", *common, "--extra", json.dumps(extra))
        elif tool == "geedim":
            command = driver("_geedim", *common)
        elif tool == "bare" and bare is not None:
            tiles_dir = Path(str(output) + "-tiles")
            command = driver(
                "_bare",
                *common,
                "--tile-mib",
                str(bare[0]),
                "--concurrency",
                str(bare[1]),
                "--write-dir",
                str(tiles_dir),
            )
        elif tool == "bare":
            command = driver("_bare", *common, "--concurrency", str(self.args.concurrency))
        else:
            raise ValueError(tool)
        command += ["--result", str(result_file)]
        result = run_child(
            command,
            emulator=emulator,
            interrupt=interrupt,
            timeout=self.args.timeout,
            log=output.with_suffix(".log"),
            env=env,
            cpus=self.tool_cpus,
        )
        result["tool"] = tool
        result["inside"] = read_json(result_file)
        result["output"] = str(output)
        result["output_bytes"] = output.stat().st_size if output.exists() else None
        result["complete"] = bool(result["inside"].get("complete")) and result["returncode"] == 0
        self.log(
            f"{tool:8s} wall {result['wall_s']:7.1f} s cpu {result['cpu_s']:6.1f} s "
            f"rss {result['peak_rss_mb']:6.0f} MB emu-cpu {result.get('emulator_cpu_s', 0):6.1f}"
            f" s req {result.get('requests_total')} bytes {result.get('bytes_served')} "
            f"rc {result['returncode']} complete {result['complete']}"
        )
        return result

    def alternate(
        self, name: str, profile: str, tools: list[str], reps: int, seed: int = 1
    ) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        with Emulator(profile, seed, self.overrides(), self.emulator_cpus) as emulator:
            self.log(f"scenario {name}: {profile} emulator at {emulator.url}")
            for rep in range(reps):
                order = tools if rep % 2 == 0 else tools[::-1]
                for tool in order:
                    result = self.run_tool(tool, emulator)
                    result["rep"] = rep
                    runs[tool].append(result)
                    if not self.args.keep_outputs:
                        clean_outputs(Path(result["output"]), keep_log=True)
                    self.save()
        return {"profile": profile, "runs": runs}

    def overrides(self) -> dict[str, Any]:
        return json.loads(self.args.emulator_overrides or "{}")

    # scenarios ----------------------------------------------------------------------

    def scenario1(self) -> None:
        result = self.alternate("1", "realistic", ["eefetch", "geedim"], self.args.reps)
        self.results["scenarios"]["1"] = result
        self.save()

    def scenario2(self) -> None:
        result = self.alternate("2", "clean", ["eefetch", "bare"], self.args.reps)
        self.results["scenarios"]["2"] = result
        self.save()

    def scenario3(self) -> None:
        reps = max(1, self.args.reps - 1) if not self.args.quick else 1
        result = self.alternate("3", "flaky", ["eefetch", "geedim"], reps, seed=3)
        self.results["scenarios"]["3"] = result
        self.save()

    def scenario4(self) -> None:
        """Ctrl-C at 50 % of the tiles and the same call again, against an uninterrupted run."""
        out: dict[str, Any] = {"profile": "realistic"}
        with Emulator("realistic", 4, self.overrides(), self.emulator_cpus) as emulator:
            self.log(f"scenario 4: realistic emulator at {emulator.url}")
            for tool in ("eefetch", "geedim"):
                whole = self.run_tool(tool, emulator)
                total_tiles = whole.get("tiles_served") or 1
                clean_outputs(Path(whole["output"]), keep_log=True)
                target = max(1, total_tiles // 2)

                def at_half(emu: Emulator, target: int = target) -> bool:
                    return len(emu.stats()["tiles_served"]) >= target

                # The emulator's counters are reset by each run; the interrupted run and
                # its resume are summed by hand, and tiles served twice counted across both.
                output = self.path(f"{tool}-interrupted.tif")
                first = self.run_tool(tool, emulator, output=output, interrupt=at_half)
                served_first = emulator.stats()["tiles_served"]
                second = self.run_tool(tool, emulator, output=output, fresh=False)
                served_second = emulator.stats()["tiles_served"]
                first_keys = {t["key"] for t in served_first}
                again = sum(1 for t in served_second if t["key"] in first_keys)
                out[tool] = {
                    "uninterrupted": whole,
                    "interrupted": first,
                    "resumed": second,
                    "total_wall_s": first["wall_s"] + second["wall_s"],
                    "total_bytes": first["bytes_served"] + second["bytes_served"],
                    "tiles_fetched_again": again,
                    "complete": second["complete"],
                }
                if not self.args.keep_outputs:
                    clean_outputs(output, keep_log=True)
                self.save()
        self.results["scenarios"]["4"] = out
        self.save()

    def merge_compare(self, name: str, state: Path, reps: int) -> dict[str, Any]:
        """eefetch's merge vs GDAL's CreateCopy of a VRT over the same tiles, same options."""
        vrt = self.work / f"{name}.vrt"
        options_file = self.work / f"{name}-options.json"
        subprocess.run(
            driver(
                "_vrt", "--state", str(state), "--output", str(vrt), "--result", str(options_file)
            ),
            check=True,
            cwd=REPO,
        )
        options = json.loads(options_file.read_text())
        translate = shutil.which("gdal_translate")
        runs: dict[str, list[dict[str, Any]]] = {"eefetch-merge": [], "rio-copy": []}
        if translate:
            runs["gdal_translate"] = []
        for rep in range(reps):
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            for tool in order:
                output = self.work / f"{name}-{tool}.tif"
                output.unlink(missing_ok=True)
                result_file = self.work / f"{name}-{tool}.json"
                if tool == "eefetch-merge":
                    command = driver("_merge", "--state", str(state), "--output", str(output))
                    command += ["--result", str(result_file)]
                elif tool == "rio-copy":
                    command = driver("_rio_copy", "--vrt", str(vrt), "--output", str(output))
                    command += ["--options", str(options_file), "--result", str(result_file)]
                else:
                    command = [translate or "gdal_translate", "-q", "-of", "GTiff"]
                    for key, value in options.items():
                        value = {"True": "YES", "False": "NO"}.get(value, value)
                        command += ["-co", f"{key.upper()}={value}"]
                    command += [str(vrt), str(output)]
                os.sync()  # no tool should pay for the writeback of the last one's output
                result = run_child(command, timeout=self.args.timeout)
                result["tool"] = tool
                result["rep"] = rep
                result["output_bytes"] = output.stat().st_size if output.exists() else None
                result["complete"] = result["returncode"] == 0
                runs[tool].append(result)
                self.log(
                    f"merge {name} {tool:14s} wall {result['wall_s']:7.1f} s cpu "
                    f"{result['cpu_s']:6.1f} s rss {result['peak_rss_mb']:6.0f} MB "
                    f"out {result['output_bytes']}"
                )
                output.unlink(missing_ok=True)
                self.save()
        return {"options": options, "gdal_translate": translate, "runs": runs}

    def scenario_merge_real(self) -> None:
        """The merge alone on the real tiles of the scenario image (kept by one eefetch run)."""
        with Emulator("clean", 1, self.overrides(), self.emulator_cpus) as emulator:
            output = self.path("eefetch-kept.tif")
            kept = self.run_tool("eefetch", emulator, output=output, extra={"keep_tiles": True})
        state = Path(str(output) + ".eefetch.db")
        result = self.merge_compare("merge-real", state, self.args.reps)
        result["source_run"] = kept
        self.results["scenarios"]["merge"] = result
        if not self.args.keep_outputs:
            clean_outputs(output)
        self.save()

    def scenario_rss(self) -> None:
        """Where eefetch's whole-job peak RSS comes from: the same job as is, with GDAL's block
        cache capped to 64 MB for the whole process, and with glibc's mmap threshold fixed at
        1 MiB (so large freed buffers go back to the system instead of staying in arenas)."""
        variants: dict[str, dict[str, str]] = {
            "default": {},
            "GDAL_CACHEMAX=64": {"GDAL_CACHEMAX": "64"},
            "MALLOC_MMAP_THRESHOLD_=1MiB": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        with Emulator(self.args.rss_profile, 1, self.overrides(), self.emulator_cpus) as emulator:
            for rep in range(max(1, self.args.reps - 1)):
                order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
                for variant in order:
                    env = variants[variant] or None
                    result = self.run_tool("eefetch", emulator, env=env)
                    result["variant"] = variant
                    runs[variant].append(result)
                    clean_outputs(Path(result["output"]), keep_log=True)
                    self.save()
        self.results["scenarios"]["rss"] = {"runs": runs, "profile": self.args.rss_profile}
        self.save()

    def scenario5(self) -> None:
        rows, cols = SCALE_TILES if not self.args.quick else (50, 40)
        out: dict[str, Any] = {}
        scale_dir = self.work / "scale"
        scale_dir.mkdir(exist_ok=True)
        result_file = scale_dir / "scale.json"
        run = run_child(
            driver(
                "_scale",
                "--tiles",
                f"{rows}x{cols}",
                "--workdir",
                str(scale_dir),
                "--result",
                str(result_file),
            ),
            timeout=self.args.timeout,
        )
        run["inside"] = read_json(result_file)
        out["scale"] = run
        self.log(f"scale: {json.dumps(run['inside'])[:400]}")
        state = scale_dir / "scale.tif.eefetch.db"
        status_runs = []
        for _ in range(max(3, self.args.reps)):
            status = run_child(
                [sys.executable, "-m", "engine.cli", "status", str(state), "--json"],
                timeout=300,
            )
            status_runs.append(status)
        baseline = [
            run_child([sys.executable, "-c", "import engine.cli"], timeout=300)
            for _ in range(max(3, self.args.reps))
        ]
        out["status_cli"] = status_runs
        out["import_engine_cli"] = baseline
        self.log(
            "status cli: "
            + ", ".join(f"{r['wall_s']:.2f}" for r in status_runs)
            + " s; import engine.cli alone: "
            + ", ".join(f"{r['wall_s']:.2f}" for r in baseline)
            + " s"
        )
        shutil.rmtree(scale_dir / "scale.tif.eefetch-tiles", ignore_errors=True)
        # The multi-GB merge on synthetic tiles.
        side = self.args.merge_side or (2048 if self.args.quick else 12800)
        info_file = self.work / "bigmerge-info.json"
        made = run_child(
            driver(
                "_mkmerge",
                "--side",
                str(side),
                "--workdir",
                str(self.work),
                "--result",
                str(info_file),
            ),
            timeout=self.args.timeout,
        )
        made["inside"] = read_json(info_file)
        self.log(f"made merge input: {made['inside']} in {made['wall_s']:.0f} s")
        state = self.work / "bigmerge.tif.eefetch.db"
        out["bigmerge"] = self.merge_compare(
            "bigmerge", state, 1 if self.args.quick else max(1, self.args.big_merge_reps)
        )
        out["bigmerge"]["input"] = made
        self.results["scenarios"]["5"] = out
        if not self.args.keep_outputs:
            shutil.rmtree(self.work / "bigmerge.tif.eefetch-tiles", ignore_errors=True)
        self.save()

    # the server-model sweep (issue 12) ---------------------------------------------------

    def sweep_run(
        self,
        tool: str,
        emulator: Emulator,
        region: Path,
        bare: tuple[float, int] | None = None,
    ) -> dict[str, Any]:
        """One sweep run, its outputs removed afterwards (the log is kept)."""
        stem = tool if bare is None else f"bare-{bare[0]:g}x{bare[1]}"
        result = self.run_tool(
            tool, emulator, output=self.path(f"{stem}.tif"), region=region, bare=bare
        )
        result["bare"] = list(bare) if bare else None
        clean_outputs(Path(result["output"]), keep_log=True)
        self.save()
        return result

    def scenario_sweep(self) -> None:
        """Issue 12: per server model, the best bare loop over (tile size, concurrency), the
        emulator's capacity with the model's shaping off, and eefetch's and geedim's
        defaults, alternating, medians over repeats."""
        from engine.emulator.config import EmulatorConfig

        args = self.args
        models = args.sweep_models.split(",")
        tiles = [float(t) for t in args.sweep_tiles.split(",")]
        concurrencies = sorted((int(c) for c in args.sweep_concurrency.split(",")), reverse=True)
        region = write_region(self.work / "sweep-region.geojson", sweep_box(args.sweep_mb))
        cache = self.work / "tile-cache"
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
        base = {"tile_cache_dir": str(cache), "render_processes": args.render_processes}
        out: dict[str, Any] = {
            "job_mb": args.sweep_mb,
            "box": sweep_box(args.sweep_mb),
            "tiles_mib": tiles,
            "concurrency": concurrencies,
            "reps": args.reps,
            "full_grid": args.sweep_full,
            "emulator": base,
            "models": {},
        }
        self.results["scenarios"]["sweep"] = out
        started = time.monotonic()
        # Warm the tile cache: every tiling the sweep will ask for, rendered once, unshaped.
        with Emulator("clean", 1, {**base, **self.overrides()}, self.emulator_cpus) as emulator:
            self.log(f"sweep: warming the tile cache at {emulator.url}")
            warm = [self.sweep_run("bare", emulator, region, (t, 8)) for t in tiles]
            warm += [self.sweep_run(tool, emulator, region) for tool in ("eefetch", "geedim")]
        out["warmup"] = warm
        out["pixel_bytes"] = next(
            (r["inside"].get("pixel_bytes") for r in warm if r["inside"].get("pixel_bytes")), None
        )
        for model in models:
            quota = EmulatorConfig.from_profile(model).max_concurrent or max(concurrencies)
            # A client that knows the quota may use exactly it: try it too.
            steps = sorted({*concurrencies, min(quota, max(concurrencies))}, reverse=True)
            entry: dict[str, Any] = {"quota": quota, "grid": [], "reps": [], "steps": steps}
            out["models"][model] = entry
            overrides = {**base, **self.overrides()}
            with Emulator(model, 1, overrides, self.emulator_cpus) as emulator:
                self.log(f"sweep: model {model} at {emulator.url}")
                for tile in tiles:
                    previous: dict[str, Any] | None = None
                    for concurrency in steps:
                        run = self.sweep_run("bare", emulator, region, (tile, concurrency))
                        entry["grid"].append(run)
                        if not args.sweep_full and previous and not gained(run, previous):
                            break  # fewer in flight did not help: fewer still will not
                        previous = run
                best = max(entry["grid"], key=fetch_mbps)
                entry["best"] = best["bare"]
                tools = ["bare", "eefetch", "geedim"]
                for rep in range(args.reps):
                    for tool in tools if rep % 2 == 0 else tools[::-1]:
                        bare = tuple(best["bare"]) if tool == "bare" else None
                        run = self.sweep_run(tool, emulator, region, bare)
                        run["rep"] = rep
                        entry["reps"].append(run)
            # The same server with the model's latency and bandwidth shaping off (its quota
            # kept): what it can serve at most, through the best loop's tiles, all slots used.
            unshaped = {**overrides, "shaping": False}
            with Emulator(model, 1, unshaped, self.emulator_cpus) as emulator:
                capacity_bare = (best["bare"][0], min(quota, max(concurrencies)))
                entry["capacity"] = [
                    self.sweep_run("bare", emulator, region, capacity_bare) for _ in range(3)
                ]
            self.log(f"sweep: model {model} done; {time.monotonic() - started:.0f} s so far")
        out["elapsed_s"] = time.monotonic() - started
        self.save()
        if args.write_benchmarks:
            write_sweep_section(REPO / "BENCHMARKS.md", sweep_report(self.results))
            self.log("sweep: table written to BENCHMARKS.md")

    def scenario_render(self) -> None:
        """The emulator's render in threads or in 2 worker processes: cold tiles (no tile
        cache), clean profile, the bare loop at 8 MiB x 8 on the sweep's job, alternating."""
        region = write_region(self.work / "sweep-region.geojson", sweep_box(self.args.sweep_mb))
        runs: dict[str, list[dict[str, Any]]] = {"threads": [], "processes": []}
        for rep in range(self.args.reps):
            for mode in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                overrides = {
                    **self.overrides(),
                    "render_processes": 2 if mode == "processes" else 0,
                }
                with Emulator("clean", 1, overrides, self.emulator_cpus) as emulator:
                    time.sleep(3)  # both modes start serving with their workers ready
                    result = self.sweep_run("bare", emulator, region, (8, 8))
                result["mode"] = mode
                runs[mode].append(result)
                self.log(f"render {mode}: {fetch_mbps(result):.1f} MB/s")
        self.results["scenarios"]["render"] = {"runs": runs}
        self.save()

    def profile(self) -> None:
        """One eefetch run (clean profile) under py-spy: on-CPU samples of all threads."""
        spy = shutil.which("py-spy") or str(BENCH_VENV / "bin" / "py-spy")
        raw = self.work / "profile-eefetch.txt"
        with Emulator("clean", 1, self.overrides(), self.emulator_cpus) as emulator:
            output = self.path("eefetch-profiled.tif")
            result_file = output.with_suffix(".json")
            command = [
                spy,
                "record",
                "--threads",
                "--rate",
                "50",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                *driver(
                    "_eefetch",
                    "--url",
                    emulator.url,
                    "--region",
                    str(self.region),
                    "--output",
                    str(output),
                    "--result",
                    str(result_file),
                ),
            ]
            result = run_child(command, emulator=emulator, timeout=self.args.timeout)
        result["summary"] = summarise_profile(raw)
        self.results["profile"] = result
        clean_outputs(output)
        self.save()
        self.log("profile:\n" + "\n".join(result["summary"]["table"][:25]))


def summarise_profile(raw: Path) -> dict[str, Any]:
    """Busy samples by thread and by the innermost eefetch/library frame of interest."""
    by_thread: dict[str, int] = {}
    by_leaf: dict[str, int] = {}
    by_frame: dict[str, int] = {}
    total = 0
    idle_markers = (
        "select (selectors",
        "epoll",
        "_wait_for_tstate_lock",
        "wait (threading",
        "_worker (concurrent",
    )
    if not raw.exists():
        return {"table": ["(no profile written)"]}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if any(marker in leaf for marker in idle_markers) or "sleep" in leaf:
            continue
        total += count
        thread = frames[0].split(": ", 1)[-1] if frames else "?"
        by_thread[thread] = by_thread.get(thread, 0) + count
        by_leaf[leaf] = by_leaf.get(leaf, 0) + count
        for frame in set(frames):
            if "engine/" in frame or "state/" in frame or "rasterio" in frame:
                by_frame[frame] = by_frame.get(frame, 0) + count
    table = [f"busy samples: {total}"]
    table += ["-- by thread"]
    table += [
        f"{n / max(total, 1):6.1%} {k}" for k, n in sorted(by_thread.items(), key=lambda x: -x[1])
    ][:8]
    table += ["-- by leaf frame (self)"]
    table += [
        f"{n / max(total, 1):6.1%} {k}" for k, n in sorted(by_leaf.items(), key=lambda x: -x[1])
    ][:20]
    table += ["-- by eefetch/rasterio frame (inclusive)"]
    table += [
        f"{n / max(total, 1):6.1%} {k}" for k, n in sorted(by_frame.items(), key=lambda x: -x[1])
    ][:25]
    return {"total": total, "table": table}


SWEEP_BEGIN = "<!-- sweep:begin (written by scripts/bench.py --scenarios sweep) -->"
SWEEP_END = "<!-- sweep:end -->"
SWEEP_CENTRE = (118.8, 32.0)


def sweep_box(megabytes: float) -> tuple[float, float, float, float]:
    """A square lon/lat box around the sweep's centre holding `megabytes` of 8 float32 bands
    at SCALE metres (about: the grid snaps to whole pixels)."""
    side_px = math.sqrt(megabytes * 1e6 / 32)
    half = side_px * SCALE / 111319.49079327357 / 2
    x, y = SWEEP_CENTRE
    return (round(x - half, 6), round(y - half, 6), round(x + half, 6), round(y + half, 6))


def fetch_mbps(run: dict[str, Any]) -> float:
    """A bare run's fetch rate: body MB over the time from first request to last byte."""
    inside = run.get("inside") or {}
    if not run.get("complete") or not inside.get("fetch_s"):
        return 0.0
    return inside["bytes"] / 1e6 / inside["fetch_s"]


def gained(run: dict[str, Any], previous: dict[str, Any], margin: float = 0.05) -> bool:
    """Whether `run` fetched faster than `previous` by more than `margin` (noise)."""
    return fetch_mbps(run) > (1 + margin) * fetch_mbps(previous)


def job_mbps(run: dict[str, Any], pixel_bytes: float) -> float | None:
    """End to end: the image's MB of pixels over the whole program's wall time."""
    if not run.get("complete") or not run.get("wall_s"):
        return None
    return pixel_bytes / 1e6 / run["wall_s"]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def write_sweep_section(path: Path, block: str) -> None:
    """Replace what lies between the sweep markers of `path` (temporary file, then rename)."""
    text = path.read_text()
    begin, end = text.find(SWEEP_BEGIN), text.find(SWEEP_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"bench: {path} has no sweep markers; add {SWEEP_BEGIN} and {SWEEP_END}")
    updated = text[: begin + len(SWEEP_BEGIN)] + "\n" + block + text[end:]
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(updated)
    os.replace(temp, path)


def sweep_report(results: dict[str, Any]) -> str:
    """The sweep's markdown: summary per model, per-tool figures, the bare grid."""
    sweep = results["scenarios"]["sweep"]
    meta = results["meta"]
    pixels = sweep.get("pixel_bytes") or 0
    workers = sweep["emulator"].get("render_processes")
    render = f"{workers} worker processes" if workers else "threads of its own process"
    lines = [
        f"Generated {meta['date']} by `{meta['command']}` at eefetch commit "
        f"`{meta['eefetch_commit']}` ({sweep.get('elapsed_s', 0) / 60:.0f} min).",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['mem_gb']} GB, {meta['platform']}, "
        f"Python {meta['python']}; load average at start {meta['load_at_start'][0]:.1f}; "
        f"geedim {meta['versions'].get('geedim')}, earthengine-api "
        f"{meta['versions'].get('earthengine-api')}, aiohttp {meta['versions'].get('aiohttp')}.",
        f"Job: the tutorial's Sentinel-2 median composite (8 bands, float32) over the box "
        f"{sweep['box']}, {CRS}, {SCALE:g} m: {pixels / 1e6:.0f} MB of pixels. Tile cache warm "
        f"(every tiling rendered once before the measured runs); the emulator renders in "
        f"{render}. {sweep['reps']} alternating repetitions of (best bare loop, eefetch, "
        "geedim) per model; medians.",
        "",
        "| model | best bare loop (tile MiB x in flight) | best bare MB/s | eefetch MB/s | "
        "geedim MB/s | eefetch / best bare | eefetch / geedim | geedim / best bare | "
        "emulator capacity MB/s (shaping off) | capacity / best bare (fetch) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = [
        "",
        "| model | tool | MB/s (median) | wall s median (runs) | CPU s per GB | peak RSS MB | "
        "vs best bare | vs geedim | 429s for concurrency | tiles rendered (cache misses) | "
        "emulator loop lag ms (median of each run's max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    grids = [
        "",
        "Bare-loop grid (fetch MB/s, one run each; from the most tiles in flight down, a tile "
        "size stops at the first step that is not 5 % faster, unless `--sweep-full`; the "
        "model's quota is one of the steps; · = not run). Tiles are square-ish windows of all "
        "bands within that many MiB of EE request bytes, evened out over the grid:",
        "",
    ]
    tiles = sweep["tiles_mib"]
    grids.append("| model | in flight | " + " | ".join(f"{t:g} MiB" for t in tiles) + " |")
    grids.append("|---|---|" + "---|" * len(tiles))
    for model, entry in sweep["models"].items():
        reps = entry.get("reps", [])
        by_tool: dict[str, list[dict[str, Any]]] = {}
        for run in reps:
            by_tool.setdefault(run["tool"], []).append(run)
        speed = {tool: med([job_mbps(r, pixels) for r in runs]) for tool, runs in by_tool.items()}
        bare_fetch = med([fetch_mbps(r) for r in by_tool.get("bare", [])])
        capacity = med([fetch_mbps(r) for r in entry.get("capacity", [])])
        best = entry.get("best") or [0, 0]
        lines.append(
            f"| {model} | {best[0]:g} x {best[1]} | {number(speed.get('bare'))} | "
            f"{number(speed.get('eefetch'))} | {number(speed.get('geedim'))} | "
            f"{ratio(speed.get('eefetch'), speed.get('bare'))} | "
            f"{ratio(speed.get('eefetch'), speed.get('geedim'))} | "
            f"{ratio(speed.get('geedim'), speed.get('bare'))} | {number(capacity)} | "
            f"{ratio(capacity, bare_fetch)} |"
        )
        for tool, runs in by_tool.items():
            ok = [r for r in runs if r["complete"]]
            per_gb = med([r["cpu_s"] / (pixels / 1e9) for r in ok]) if pixels else None
            rejected = sum(
                sum(p.get("quota_rejections", 0) for p in (r.get("projects") or {}).values())
                for r in runs
            )
            misses = sum((r.get("tile_cache") or {}).get("misses", 0) for r in runs)
            lag = med([(r.get("loop_lag") or {}).get("max_s") for r in runs])
            label = f"bare {best[0]:g} MiB x {best[1]}" if tool == "bare" else tool
            walls = ", ".join(f"{r['wall_s']:.1f}" + ("" if r["complete"] else "!") for r in runs)
            details.append(
                f"| {model} | {label} | {number(speed.get(tool))} | "
                f"{number(med([r['wall_s'] for r in ok]))} ({walls}) | {number(per_gb)} | "
                f"{max((r['peak_rss_mb'] for r in runs), default=0):.0f} | "
                f"{ratio(speed.get(tool), speed.get('bare'))} | "
                f"{ratio(speed.get(tool), speed.get('geedim'))} | {rejected} | {misses} | "
                f"{lag * 1000:.0f} |"
            )
        cells: dict[tuple[int, float], float] = {}
        for run in entry.get("grid", []):
            cells[(run["bare"][1], run["bare"][0])] = fetch_mbps(run)
        for concurrency in entry.get("steps", sweep["concurrency"]):
            row = [
                number(cells.get((concurrency, t)), 0) if (concurrency, t) in cells else "·"
                for t in tiles
            ]
            grids.append(f"| {model} | {concurrency} | " + " | ".join(row) + " |")
    warm = sweep.get("warmup") or []
    cold = ", ".join(
        f"{r['bare'][0]:g} MiB {fetch_mbps(r):.0f}" for r in warm if r.get("bare") and r["bare"]
    )
    notes = [
        "",
        f"Warm-up, cold tile cache (clean profile, 8 in flight, fetch MB/s): {cold}: what the "
        "emulator serves while it renders every pixel on these 2 cores.",
        "",
        "MB/s = the image's MB of pixels over the program's whole wall time (start-up, "
        "getInfo, fetch, and for eefetch and geedim the GeoTIFF written); the bare loop only "
        "fetches and writes its tiles to disk. Capacity: the bare loop at the best tile size "
        "with every slot of the quota in flight, against the same model with latency and "
        "bandwidth shaping off; compared with the best bare loop's fetch rate (same measure). "
        "`!` marks a run that did not finish.",
    ]
    return "\n".join(lines + details + grids + notes) + "\n"


def clean_outputs(output: Path, keep_log: bool = False) -> None:
    """Remove a run's output, state file and tiles (and its driver JSON and log unless kept)."""
    for path in output.parent.glob(output.name + "*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not keep_log:
        output.with_suffix(".json").unlink(missing_ok=True)
        output.with_suffix(".log").unlink(missing_ok=True)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **machine_facts(),
        "command": "python3 scripts/bench.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "reps": args.reps,
    }


def machine_facts() -> dict[str, Any]:
    """The machine, the moment and the software a measurement ran on."""

    def version(module: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import rasterio

    translate = shutil.which("gdal_translate")
    gdal_cli = (
        subprocess.run([translate, "--version"], capture_output=True, text=True).stdout.strip()
        if translate
        else None
    )
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_at_start": os.getloadavg(),
        "eefetch_commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "versions": {
            m: version(m)
            for m in ("eefetch", "geedim", "earthengine-api", "aiohttp", "rasterio", "numpy")
        },
        "gdal_rasterio": rasterio.__gdal_version__,
        "gdal_translate": gdal_cli,
    }


# -------------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def report(results: dict[str, Any]) -> str:
    """Markdown tables of medians and pair-by-pair ratios."""
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"- date: {meta['date']}; command: `{meta['command']}`")
    lines.append(
        f"- machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['mem_gb']} GB; "
        f"{meta['platform']}; Python {meta['python']}; load at start {meta['load_at_start']}"
    )
    lines.append(
        f"- versions: {meta['versions']}; GDAL (rasterio) {meta['gdal_rasterio']}; "
        f"gdal_translate: {meta['gdal_translate']}; eefetch commit {meta['eefetch_commit']}"
    )
    lines.append(f"- region box {results['box']}, {CRS}, {SCALE:g} m")
    scenarios = results["scenarios"]
    for key in ("1", "2", "3"):
        if key not in scenarios:
            continue
        s = scenarios[key]
        lines.append(f"\n### Scenario {key} ({s['profile']} profile)\n")
        lines.append(
            "| tool | runs ok | wall s (median) | CPU s | peak RSS MB | emulator CPU s | "
            "requests | tile requests | MB served | output MB | load |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for tool, runs in s["runs"].items():
            ok = sum(1 for r in runs if r["complete"])
            lines.append(
                f"| {tool} | {ok}/{len(runs)} | {med([r['wall_s'] for r in runs]):.1f} "
                f"({listed(runs, 'wall_s', 1)}) | "
                f"{med([r['cpu_s'] for r in runs]):.1f} | "
                f"{max(r['peak_rss_mb'] for r in runs):.0f} | "
                f"{med([r.get('emulator_cpu_s') for r in runs]):.1f} | "
                f"{med([r.get('requests_total') for r in runs]):.0f} | "
                f"{med([r.get('tile_requests') for r in runs]):.0f} | "
                f"{med([r.get('bytes_served', 0) / 1e6 for r in runs]):.0f} | "
                f"{med([(r.get('output_bytes') or 0) / 1e6 for r in runs]):.0f} | "
                f"{med([r['load_before'] for r in runs]):.1f} |"
            )
        tools = list(s["runs"])
        if len(tools) == 2:
            a, b = tools
            ratios = [
                x["wall_s"] / y["wall_s"] for x, y in zip(s["runs"][a], s["runs"][b], strict=False)
            ]
            lines.append(
                f"\nwall {a}/{b} pair by pair: {', '.join(f'{r:.2f}' for r in ratios)}; "
                f"median {med(ratios):.2f}"
            )
            if b == "bare":
                fetch = [r["inside"].get("fetched_at") for r in s["runs"][a] if r["inside"]]
                bare = [r["inside"].get("driver_wall_s") for r in s["runs"][b] if r["inside"]]
                pairs = [(y / x) if x and y else None for x, y in zip(fetch, bare, strict=False)]
                lines.append(
                    "throughput eefetch/bare, fetch phase only (bare driver time / eefetch time "
                    f"to all tiles fetched): {', '.join(f'{p:.2f}' for p in pairs if p)}; "
                    f"median {med([p for p in pairs if p]):.2f}"
                )
                e2e = [
                    y["wall_s"] / x["wall_s"]
                    for x, y in zip(s["runs"][a], s["runs"][b], strict=False)
                ]
                lines.append(
                    "throughput eefetch/bare, end to end incl. merge: "
                    f"{', '.join(f'{p:.2f}' for p in e2e)}; median {med(e2e):.2f}"
                )
        for tool, runs in s["runs"].items():
            for r in runs:
                inside = r["inside"]
                if not r["complete"] or inside.get("summary") or inside.get("error"):
                    summary = inside.get("summary") or {}
                    lines.append(
                        f"- {tool} rep {r['rep']}: complete={r['complete']} rc={r['returncode']} "
                        f"retries={summary.get('retries', inside.get('retries'))} "
                        f"splits={summary.get('splits')} failed={summary.get('failed')} "
                        f"faults={r.get('faults')} error={inside.get('error', '')[:200]}"
                    )
    if "4" in scenarios:
        s = scenarios["4"]
        lines.append("\n### Scenario 4 (realistic, SIGINT at 50 % of tiles, then the same call)\n")
        lines.append(
            "| tool | uninterrupted wall s | interrupted + resumed wall s | ratio | "
            "uninterrupted MB | total MB | tiles in flight at SIGINT | tiles fetched again |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for tool in ("eefetch", "geedim"):
            if tool not in s:
                continue
            t = s[tool]
            whole = t["uninterrupted"]
            lines.append(
                f"| {tool} | {whole['wall_s']:.1f} | {t['interrupted']['wall_s']:.1f} + "
                f"{t['resumed']['wall_s']:.1f} = {t['total_wall_s']:.1f} | "
                f"{t['total_wall_s'] / whole['wall_s']:.2f} | {whole['bytes_served'] / 1e6:.0f} | "
                f"{t['total_bytes'] / 1e6:.0f} | "
                f"{t['interrupted'].get('in_flight_at_interrupt')} | {t['tiles_fetched_again']} |"
            )
    if "rss" in scenarios:
        profile = scenarios["rss"].get("profile", "clean")
        lines.append(f"\n### eefetch peak RSS variants ({profile} profile)\n")
        lines.append("| variant | wall s | peak RSS MB before merge | peak RSS MB whole job |")
        lines.append("|---|---|---|---|")
        for variant, runs in scenarios["rss"]["runs"].items():
            lines.append(
                f"| {variant} | {listed(runs, 'wall_s', 1)} | "
                + ", ".join(f"{r['inside'].get('peak_rss_mb_before_merge', 0):.0f}" for r in runs)
                + f" | {listed(runs, 'peak_rss_mb', 0)} |"
            )
    if "merge" in scenarios:
        lines.append("\n### Merge alone, real tiles of the scenario image\n")
        lines += merge_table(scenarios["merge"])
    if "5" in scenarios:
        s = scenarios["5"]
        inside = s["scale"]["inside"]
        lines.append("\n### Scenario 5: scale\n")
        lines.append(
            f"- {inside.get('tiles')} tiles ({inside.get('grid')} px grid): plan "
            f"{inside.get('plan_s', float('nan')):.2f} s; plan + create state "
            f"{inside.get('plan_and_create_s', float('nan')):.2f} s; resume scan (lock, open, "
            f"reset failed, release claims, reconcile {inside.get('done_tiles')} done tiles "
            f"with files) {inside.get('resume_scan_s', float('nan')):.2f} s; status in-process "
            f"{inside.get('status_in_process_s', float('nan')):.3f} s; state file "
            f"{inside.get('state_bytes', 0) / 1e6:.1f} MB; peak RSS of that process "
            f"{s['scale']['peak_rss_mb']:.0f} MB"
        )
        lines.append(
            f"- `eefetch status STATE --json` as a subprocess: median "
            f"{med([r['wall_s'] for r in s['status_cli']]):.2f} s "
            f"({listed(s['status_cli'], 'wall_s', 2)}); "
            f"`python -c 'import engine.cli'` alone: median "
            f"{med([r['wall_s'] for r in s['import_engine_cli']]):.2f} s"
        )
        big = s["bigmerge"]
        made = big["input"]["inside"]
        lines.append(
            f"\n#### Multi-GB merge ({made.get('tiles')} synthetic tiles, "
            f"{made.get('tile_bytes', 0) / 1e9:.2f} GB of tile files)\n"
        )
        lines += merge_table(big)
    if "render" in scenarios:
        lines.append("\n### The emulator's render: threads or 2 worker processes (cold)\n")
        lines.append("| mode | fetch MB/s median (runs) | emulator CPU s | loop lag max ms |")
        lines.append("|---|---|---|---|")
        for mode, runs in scenarios["render"]["runs"].items():
            speeds = [fetch_mbps(r) for r in runs]
            lines.append(
                f"| {mode} | {med(speeds):.1f} ({', '.join(f'{v:.1f}' for v in speeds)}) | "
                f"{listed(runs, 'emulator_cpu_s', 1)} | "
                + ", ".join(f"{(r.get('loop_lag') or {}).get('max_s', 0) * 1000:.0f}" for r in runs)
                + " |"
            )
    if "sweep" in scenarios and scenarios["sweep"].get("models"):
        lines.append("\n### Server-model sweep\n")
        lines.append(sweep_report(results))
    if "profile" in results:
        lines.append("\n### Profile (py-spy, all threads, one eefetch run, clean profile)\n")
        lines.append("```")
        lines += results["profile"]["summary"]["table"]
        lines.append("```")
    return "\n".join(lines) + "\n"


def listed(runs: list[dict[str, Any]], key: str, digits: int) -> str:
    return ", ".join(f"{r[key]:.{digits}f}" for r in runs)


def merge_table(m: dict[str, Any]) -> list[str]:
    lines = [f"creation options: `{m['options']}`\n"]
    lines.append("| tool | wall s (median; runs) | CPU s | peak RSS MB | output MB |")
    lines.append("|---|---|---|---|---|")
    for tool, runs in m["runs"].items():
        lines.append(
            f"| {tool} | {med([r['wall_s'] for r in runs]):.1f} "
            f"({listed(runs, 'wall_s', 1)}) | "
            f"{med([r['cpu_s'] for r in runs]):.1f} | {max(r['peak_rss_mb'] for r in runs):.0f} | "
            f"{med([(r.get('output_bytes') or 0) / 1e6 for r in runs]):.0f} |"
        )
    base = m["runs"]["eefetch-merge"]
    for other in ("rio-copy", "gdal_translate"):
        if other in m["runs"]:
            ratios = [
                x["wall_s"] / y["wall_s"] for x, y in zip(base, m["runs"][other], strict=False)
            ]
            lines.append(
                f"\nwall eefetch-merge/{other} pair by pair: "
                f"{', '.join(f'{r:.2f}' for r in ratios)}; median {med(ratios):.2f}"
            )
    return lines


# ---------------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in DRIVERS:
        name = sys.argv[1]
        parser = argparse.ArgumentParser(prog=f"bench.py {name}")
        for option in (
            "--url",
            "--region",
            "--output",
            "--result",
            "--extra",
            "--state",
            "--vrt",
            "--options",
            "--tiles",
            "--workdir",
            "--side",
            "--overrides",
            "--profile",
            "--write-dir",
        ):
            parser.add_argument(option)
        parser.add_argument("--tile-mib", type=float, default=None)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--concurrency", type=int, default=8)
        sys.path.insert(0, str(REPO))
        DRIVERS[name](parser.parse_args(sys.argv[2:]))
        return

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small image, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--scenarios",
        default="1,2,4,3,merge,5,profile",
        help="comma-separated, run in this order: 1,2,4,3,merge,5,profile "
        "(also: rss, sweep, render)",
    )
    parser.add_argument("--workdir", default=str(REPO / ".bench-work"))
    parser.add_argument(
        "--concurrency", type=int, default=None, help="bare loop's (default: eefetch's default)"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--merge-side", type=int, default=None, help="big merge grid side (px)")
    parser.add_argument("--big-merge-reps", type=int, default=1)
    parser.add_argument("--emulator-overrides", default=None, help="JSON of EmulatorConfig knobs")
    parser.add_argument("--rss-profile", default="realistic", help="emulator profile for rss")
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="emulator on CPU 0, measured tools on the others (the server's CPU is not yours)",
    )
    parser.add_argument(
        "--eefetch-extra", default=None, help="JSON of extra download_ee_image keywords"
    )
    parser.add_argument("--no-venv", action="store_true", help="run in the current interpreter")
    sweep = parser.add_argument_group("server-model sweep (--scenarios sweep)")
    sweep.add_argument(
        "--sweep-models",
        default="realistic,per-connection,high-latency,slow-connections,compute-heavy,"
        "quota-10,link-20",
        help="emulator profiles to sweep",
    )
    sweep.add_argument("--sweep-mb", type=float, default=256, help="job size, MB of pixels")
    sweep.add_argument("--sweep-tiles", default="2,4,8,16,48", help="bare tile sizes, MiB")
    sweep.add_argument("--sweep-concurrency", default="8,16,24,40", help="bare tiles in flight")
    sweep.add_argument("--sweep-full", action="store_true", help="every grid point, no pruning")
    sweep.add_argument("--render-processes", type=int, default=0, help="emulator render processes")
    sweep.add_argument("--keep-cache", action="store_true", help="reuse WORKDIR/tile-cache")
    sweep.add_argument(
        "--write-benchmarks",
        action="store_true",
        help="write the sweep's tables into BENCHMARKS.md between its markers",
    )
    args = parser.parse_args()
    if not args.no_venv:
        ensure_bench_venv()
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    sys.path.insert(0, str(REPO))
    if args.concurrency is None:
        from engine.defaults import DEFAULT_CONCURRENCY

        args.concurrency = DEFAULT_CONCURRENCY
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    bench = Bench(args)
    wanted = args.scenarios.split(",")
    steps = {
        "1": bench.scenario1,
        "2": bench.scenario2,
        "3": bench.scenario3,
        "4": bench.scenario4,
        "merge": bench.scenario_merge_real,
        "5": bench.scenario5,
        "rss": bench.scenario_rss,
        "profile": bench.profile,
        "sweep": bench.scenario_sweep,
        "render": bench.scenario_render,
    }
    for key in wanted:
        try:
            steps[key]()
        except Exception as exc:  # one broken scenario must not lose the others' figures
            bench.log(f"scenario {key} failed: {type(exc).__name__}: {exc}")
            bench.results["scenarios"].setdefault("errors", {})[key] = repr(exc)
        (bench.work / "report.md").write_text(report(bench.results))
    text = report(bench.results)
    (bench.work / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
