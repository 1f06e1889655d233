"""The job fingerprint: everything that changes a pixel of the output, and nothing else.

The rule is in docs/CONTRACTS.md ("The job fingerprint"): the image, grid, bands, type, nodata
(as a value of the type), output and the Earth Engine *service* make the job; endpoint,
max_tile_bytes and max_tile_dim only shape the stored plan, so changing them resumes the job
with that plan.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import ee_adapter
from engine.defaults import EE_MAX_SIDE_URLS
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import SpecError
from engine.fetch import TileFetcher
from engine.grid import Grid
from engine.job import open_job
from engine.paths import default_state_path, tiles_folder
from engine.service import GOOGLE, service_identity, url_is_for
from engine.spec import JobSpec, identity_differences, resumed_spec
from engine.testing.cli import one_line_error, run_cli
from engine.testing.jobs import SMALL_REGION, dem_args, dem_job
from engine.testing.oracle import assert_matches_oracle, served
from engine.testing.peers import free_port
from engine.tilestore import TileStore
from engine.transport import Transport, TransportOptions
from state import Store, TileUpdate, TileUrl

GRID = Grid("EPSG:32650", (30.0, 0.0, 660000.0, 0.0, -30.0, 3550000.0), 300, 200)
STRIP = "118.0,32.0,122.5,32.0004"  # 16,699 x 3 pixels at 30 m in EPSG:4326


def spec(**changes: object) -> JobSpec:
    """A spec made from scratch (``replace`` would keep the service derived from ee_url)."""
    fields: dict[str, object] = {
        "expression": "{}",
        "grid": GRID,
        "band_ids": ("elevation",),
        "dtype": "uint16",
        "nodata": 0,
        "output": "/data/dem.tif",
    }
    return JobSpec(**{**fields, **changes})


# ----------------------------------------------------------------------------- the rule


def test_google_hosts_and_the_default_are_one_service() -> None:
    for url in (
        None,
        "",
        "https://earthengine.googleapis.com",
        "https://earthengine.googleapis.com/",
        "https://EarthEngine-HighVolume.googleapis.com",
        "https://earthengine-highvolume.googleapis.com:443/",
    ):
        assert service_identity(url) == GOOGLE, url


def test_any_other_url_is_a_service_of_its_own() -> None:
    one = service_identity("http://127.0.0.1:8000")
    assert one == "http://127.0.0.1:8000" != GOOGLE
    assert service_identity("http://localhost:8000/") == one  # the same socket
    assert service_identity("http://127.0.0.1:8001") != one  # a restarted emulator elsewhere
    assert service_identity("https://127.0.0.1:8000") != one
    assert service_identity("http://earthengine.googleapis.com") != GOOGLE  # not Google's TLS


def test_a_url_belongs_to_the_base_url_with_its_scheme_host_and_port() -> None:
    base = "http://127.0.0.1:8000"
    assert url_is_for("http://127.0.0.1:8000/v1/projects/p/thumbnails/t:getPixels", base)
    assert url_is_for("http://localhost:8000/v1/x", base)
    assert not url_is_for("http://127.0.0.1:8001/v1/x", base)
    assert not url_is_for("https://127.0.0.1:8000/v1/x", base)
    google = "https://earthengine.googleapis.com"
    assert url_is_for("https://earthengine.googleapis.com:443/v1/x:getPixels", google)
    assert not url_is_for("https://earthengine-highvolume.googleapis.com/v1/x", google)


def test_what_changes_pixels_is_in_the_fingerprint() -> None:
    first = spec().fingerprint()
    for changed in (
        spec(service="http://127.0.0.1:8000"),
        spec(ee_url="http://127.0.0.1:8000"),  # an old spec without service: its ee_url
        spec(expression='{"other": 1}'),
        spec(band_ids=("other",)),
        spec(dtype="int16"),
        spec(nodata=7),
        spec(output="/data/other.tif"),
        spec(grid=Grid(GRID.crs, GRID.transform, 301, 200)),
    ):
        assert changed.fingerprint() != first, changed


def test_how_tiles_are_fetched_or_cut_is_not_in_the_fingerprint() -> None:
    first = spec().fingerprint()
    for same in (
        spec(endpoint="compute"),
        spec(max_tile_bytes=100_000),
        spec(extra={"max_tile_dim": 512}),
        spec(plan_concurrency=3),
        spec(compress="zstd", cog=True, keep_tiles=True),
        spec(project="other-project"),
        spec(ee_url="https://earthengine-highvolume.googleapis.com"),
    ):
        assert same.fingerprint() == first, same


def test_nodata_is_hashed_as_a_value_of_the_output_type() -> None:
    assert spec(nodata=0).fingerprint() == spec(nodata=0.0).fingerprint()
    assert spec(nodata=np.uint16(0)).fingerprint() == spec(nodata=0).fingerprint()
    assert spec(nodata=0).nodata == 0 and isinstance(spec(nodata=0.0).nodata, int)
    as_float32 = spec(dtype="float32", nodata=0.1)
    assert as_float32.nodata == float(np.float32(0.1))
    assert as_float32.fingerprint() == spec(dtype="float32", nodata=np.float32(0.1)).fingerprint()
    assert (
        spec(dtype="float32", nodata=0).fingerprint()
        == spec(dtype="float32", nodata=0.0).fingerprint()
    )
    nan = spec(dtype="float64", nodata=float("nan"))
    assert math.isnan(nan.nodata)
    assert nan.fingerprint() == spec(dtype="float64", nodata=np.float32("nan")).fingerprint()


@pytest.mark.parametrize(
    ("dtype", "value", "says"),
    [
        ("uint16", -9999, "does not fit uint16 (0..65535)"),
        ("uint8", 256, "does not fit uint8 (0..255)"),
        ("int16", 1.5, "is not a whole number"),
        ("int32", float("nan"), "cannot be stored in int32"),
        ("float32", float("inf"), "is not a finite float32"),
        ("float32", 1e39, "is not a finite float32"),
        ("uint16", True, "must be a number"),
        ("uint16", "0", "must be a number"),
    ],
)
def test_a_nodata_value_the_type_cannot_hold_is_refused(
    dtype: str, value: object, says: str
) -> None:
    with pytest.raises(SpecError, match=says.replace("(", r"\(").replace(")", r"\)")):
        spec(dtype=dtype, nodata=value)


def test_a_state_file_of_an_older_eefetch_reads_as_the_same_job() -> None:
    """Specs stored before the service was recorded: their ee_url names the service."""
    old = spec().to_dict()
    del old["service"]
    assert JobSpec.from_dict(old).fingerprint() == spec().fingerprint()
    old["ee_url"] = "http://127.0.0.1:8000"
    assert JobSpec.from_dict(old).service == "http://127.0.0.1:8000"
    old["nodata"] = 0.0
    old["ee_url"] = None
    assert JobSpec.from_dict(old).fingerprint() == spec().fingerprint()


def test_what_differs_is_named() -> None:
    differs = identity_differences(spec(), spec(service="http://127.0.0.1:9", nodata=3))
    assert differs == ["nodata (0 -> 3)", f"service ({GOOGLE} -> http://127.0.0.1:9)"]


def test_a_resume_keeps_the_stored_plan_and_says_so_once() -> None:
    stored = spec(max_tile_bytes=200_000, extra={"max_tile_dim": 1024})
    asked = []

    def largest() -> int:
        asked.append(1)
        return 512

    same, notes = resumed_spec(stored, stored, 12, largest)
    assert same == stored and notes == [] and not asked
    run, notes = resumed_spec(stored, spec(max_tile_bytes=100_000, endpoint="compute"), 12, largest)
    assert (run.max_tile_bytes, run.extra, run.endpoint) == (
        200_000,
        {"max_tile_dim": 1024},
        "compute",
    )
    assert not asked  # urls -> compute: any stored tile fits computePixels
    assert len(notes) == 1 and notes[0].startswith("kept the stored plan (12 tiles) although")
    assert "max_tile_bytes 200000 -> 100000" in notes[0]
    assert "max_tile_dim 1024 -> None" in notes[0]
    assert "the remaining tiles are fetched with endpoint compute" in notes[0]


def test_a_plan_with_tiles_too_wide_for_urls_keeps_the_compute_endpoint() -> None:
    stored = spec(endpoint="compute")
    run, notes = resumed_spec(stored, spec(), 1, lambda: EE_MAX_SIDE_URLS + 1)
    assert run.endpoint == "compute"
    assert f"the plan has tiles of {EE_MAX_SIDE_URLS + 1} pixels a side" in notes[0]
    run, _ = resumed_spec(stored, spec(), 1, lambda: EE_MAX_SIDE_URLS)
    assert run.endpoint == "urls"


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=3)) as running:
        yield running


def plan_only(emulator: EmulatorThread, output: Path, **arguments: object) -> int:
    """Create the job the CLI would create for these arguments, fetch nothing; its tiles."""
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    job = dem_job(emulator.url, output, **arguments)
    state = default_state_path(output)
    with Store.open(state) as store:
        assert open_job(store, job, state)[0]
        return len(store.tiles())


@pytest.mark.slow
def test_a_job_does_not_resume_against_another_service(tmp_path: Path) -> None:
    """The output of one service never takes tiles of another (emulator -> real EE alike)."""
    output = tmp_path / "city.tif"
    config = EmulatorConfig.from_profile("clean", seed=3)
    with EmulatorThread(config) as first, EmulatorThread(config) as second:  # two ports
        done = run_cli(*dem_args(first.url, output))
        assert done.returncode == 0, done.stderr
        again = run_cli(*dem_args(second.url, output))
        resumed = run_cli("resume", str(default_state_path(output)), "--ee-url", second.url)
        assert served(second, "getPixels") == 0
    for refused in (again, resumed):
        assert refused.returncode == 1, refused.stderr
        line = one_line_error(refused.stderr)
        assert "holds another job" in line
        assert f"service ({first.url} -> {second.url})" in line
        assert f"to resume, use {first.url} again (an emulator: its --port)" in line


def test_a_stored_url_of_another_origin_is_made_again(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """A fresh URL on a port where nothing listens any more is not fetched (no fake outage)."""
    output = tmp_path / "dem.tif"
    plan_only(emulator, output)
    state = default_state_path(output)
    dead = f"http://127.0.0.1:{free_port()}/v1/projects/p/thumbnails/gone:getPixels"
    with Store.open(state) as store:
        tile = store.tiles()[0]
        record = store.job()
        assert record is not None
        job = JobSpec.from_dict(record.spec)
    tile = replace(tile, url=dead, url_made_at=time.time())
    recorded: list[TileUpdate] = []
    image = ee_adapter.prepared_image(job)

    async def fetch() -> int:
        async with Transport(TransportOptions(proxy=None), emulator.url) as transport:
            with ThreadPoolExecutor(1) as executor:
                tiles = TileStore(tiles_folder(state))
                fetcher = TileFetcher(
                    job, record.uid, image, transport, tiles, executor, recorded.append
                )
                return (await fetcher(tile)).bytes

    assert asyncio.run(fetch()) > 0
    (made,) = [u for u in recorded if isinstance(u, TileUrl)]
    assert made.url is not None and url_is_for(made.url, emulator.url)
    assert served(emulator, "getPixels") == 1


@pytest.mark.slow
def test_changed_tile_settings_resume_with_the_stored_plan(
    tmp_path: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    output = tmp_path / "dem.tif"
    planned = plan_only(emulator, output)
    assert planned >= 4
    done = run_cli(*dem_args(emulator.url, output), "--max-tile-bytes", "100000")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "stored plan" in line]
    assert len(notes) == 1, done.stderr
    assert (
        f"kept the stored plan ({planned} tiles) although max_tile_bytes 200000 -> 100000"
        in (notes[0])
    )
    assert served(emulator, "getPixels") == planned
    assert_matches_oracle(output, default_state_path(output), oracle)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("planned_with", "asked", "fetched_with"),
    [("compute", "urls", "computePixels"), ("urls", "compute", "computePixels")],
)
def test_a_changed_endpoint_resumes_and_fetches_as_the_plan_allows(
    tmp_path: Path,
    emulator: EmulatorThread,
    oracle: EmulatorThread,
    planned_with: str,
    asked: str,
    fetched_with: str,
) -> None:
    """compute -> urls: the one 16,699 px wide tile is beyond download URLs, compute stays."""
    output = tmp_path / "strip.tif"
    arguments = {"region": STRIP, "crs": "EPSG:4326", "endpoint": planned_with}
    planned = plan_only(emulator, output, concurrency=1, max_tile_bytes=50331648, **arguments)
    args = [a if a != SMALL_REGION else STRIP for a in dem_args(emulator.url, output)]
    args[args.index("EPSG:32650")] = "EPSG:4326"
    done = run_cli(*args, "--max-tile-bytes", "50331648", "--endpoint", asked, "--concurrency", "1")
    assert done.returncode == 0, done.stderr
    assert f"kept the stored plan ({planned} tiles)" in done.stderr
    if planned_with == "compute":
        assert planned == 1 and "fetching with endpoint compute still" in done.stderr
    assert served(emulator, fetched_with) == planned
    assert served(emulator, "getPixels") == 0
    assert_matches_oracle(output, default_state_path(output), oracle)
