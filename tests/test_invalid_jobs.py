"""Arguments that cannot make a correct download are refused in one line, before any request
for pixels; a state file an older eefetch filled with such a job ends in one line too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ee
import pytest
from click.testing import CliRunner

from engine import __version__, download_ee_image, ee_adapter
from engine.cli import main
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import InvalidJob
from engine.job import plan
from engine.paths import default_state_path
from engine.testing.cli import one_line_error, run_cli
from engine.testing.jobs import SMALL_REGION, dem_job
from state import NewTile, Store

PIXEL_ROUTES = ("thumbnails:create", "getPixels", "computePixels")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=5)) as running:
        yield running


def pixel_requests(emulator: EmulatorThread) -> int:
    requests = emulator.stats()["requests"]
    return sum(sum(requests.get(route, {}).values()) for route in PIXEL_ROUTES)


DEM = "USGS/SRTMGL1_003"  # float32 in the emulator
AS_UINT16 = "uint16 image"
REGION = [118.70, 32.00, 118.80, 32.06]
TRANSFORM = [30.0, 0.0, 660000.0, 0.0, -30.0, 3550000.0]

API_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "unmask -9999 in a uint16 image",
        AS_UINT16,
        {"unmask_value": -9999},
        "unmask_value -9999 does not fit uint16 (0..65535): Earth Engine would clamp it",
    ),
    ("unmask past uint8", DEM, {"dtype": "uint8", "unmask_value": 300}, "does not fit uint8"),
    (
        "unmask NaN in int16",
        DEM,
        {"dtype": "int16", "unmask_value": float("nan")},
        "cannot be stored in int16",
    ),
    ("unmask 1.5 in int16", DEM, {"dtype": "int16", "unmask_value": 1.5}, "is not a whole number"),
    ("unmask inf", DEM, {"dtype": "float32", "unmask_value": float("inf")}, "not a finite"),
    ("unmask past float32", DEM, {"dtype": "float32", "unmask_value": 1e39}, "not a finite"),
    ("unmask text", DEM, {"unmask_value": "0"}, "unmask_value must be a number"),
    ("shape without transform", DEM, {"shape": (10, 10), "scale": 30}, "shape needs crs_transform"),
    ("transform without shape", DEM, {"crs_transform": TRANSFORM}, "needs shape"),
    (
        "sheared transform",
        DEM,
        {"crs_transform": [30, 1.5, 660000, 0, -30, 3550000], "shape": (10, 10)},
        "has a shear",
    ),
    (
        "zero pixel size",
        DEM,
        {"crs_transform": [0, 0, 660000, 0, -30, 3550000], "shape": (10, 10)},
        "singular",
    ),
    ("scale zero", DEM, {"scale": 0}, "scale must be a positive"),
    ("scale NaN", DEM, {"scale": float("nan")}, "scale must be a positive"),
    ("band not in the image", DEM, {"scale": 30, "bands": ["B4"]}, "band 'B4' is not in"),
    ("unknown dtype", DEM, {"scale": 30, "dtype": "uint7"}, "unknown dtype 'uint7'"),
    ("concurrency zero", DEM, {"scale": 30, "concurrency": 0}, "concurrency must be"),
    ("concurrency negative", DEM, {"scale": 30, "num_threads": -2}, "concurrency must be"),
    (
        "tile smaller than a pixel",
        DEM,
        {"scale": 30, "dtype": "float64", "max_tile_bytes": 8},
        "less than one float64 pixel of one band in a request (9 bytes)",
    ),
    ("tile bytes zero", DEM, {"scale": 30, "max_tile_size": 0}, "max tile bytes must be between"),
    ("tile side zero", DEM, {"scale": 30, "max_tile_dim": 0}, "max_tile_dim must be a whole"),
    ("unknown endpoint", DEM, {"scale": 30, "endpoint": "fast"}, "unknown endpoint 'fast'"),
    (
        "idle timeout zero",
        DEM,
        {"scale": 30, "idle_timeout": 0},
        "idle_timeout must be a positive number",
    ),
]


@pytest.mark.parametrize(
    ("name", "source", "arguments", "says"), API_CASES, ids=[c[0] for c in API_CASES]
)
def test_the_python_api_refuses_before_any_pixel_request(
    tmp_path: Path,
    emulator: EmulatorThread,
    name: str,
    source: str,
    arguments: dict[str, Any],
    says: str,
) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    image = ee.Image(DEM).toUint16() if source == AS_UINT16 else ee.Image(DEM)
    before = pixel_requests(emulator)
    kwargs: dict[str, Any] = {"region": REGION, "crs": "EPSG:32650", "quiet": True, **arguments}
    with pytest.raises(InvalidJob) as refused:
        download_ee_image(image, tmp_path / "out.tif", **kwargs)
    message = str(refused.value)
    assert says in message, message
    assert "\n" not in message
    assert pixel_requests(emulator) == before
    assert list(tmp_path.iterdir()) == []  # no state file, no output


def test_a_folder_as_output_is_refused(tmp_path: Path, emulator: EmulatorThread) -> None:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    with pytest.raises(InvalidJob, match="is a folder; give the GeoTIFF file"):
        download_ee_image(ee.Image(DEM), tmp_path, region=REGION, scale=30, quiet=True)


CLI_CASES = [
    (
        "shape without transform",
        ["--scale", "30", "--shape", "10", "10"],
        "shape needs crs_transform",
    ),
    (
        "sheared transform",
        [
            "--crs",
            "EPSG:32650",
            "--crs-transform",
            "30,2,660000,0,-30,3550000",
            "--shape",
            "9",
            "9",
        ],
        "has a shear",
    ),
    (
        "tile smaller than a pixel",
        ["--scale", "30", "--max-tile-bytes", "2"],
        "one int16 pixel",
    ),
    ("tile bytes zero", ["--scale", "30", "--max-tile-bytes", "0"], "max tile bytes must be"),
    ("scale zero", ["--scale", "0"], "scale must be a positive"),
]


@pytest.mark.parametrize(("name", "args", "says"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_line_exits_2_with_one_line_and_fetches_nothing(
    tmp_path: Path, emulator: EmulatorThread, name: str, args: list[str], says: str
) -> None:
    before = pixel_requests(emulator)
    output = str(tmp_path / "out.tif")
    command = ["download", "--asset", DEM, "--region", SMALL_REGION, "-o", output]
    result = CliRunner().invoke(main, [*command, "--ee-url", emulator.url, *args])
    assert result.exit_code == 2, result.output
    assert says in one_line_error(result.stderr)
    assert pixel_requests(emulator) == before
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def bad_state(tmp_path: Path, emulator: EmulatorThread) -> Path:
    """A state file as an older eefetch left it: a uint16 job whose nodata is -9999."""
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    spec = dem_job(emulator.url, tmp_path / "old.tif", ee.Image(DEM).toUint16(), concurrency=4)
    stored = {**spec.to_dict(), "nodata": -9999}
    tiles = [
        NewTile(t.window.row_off, t.window.col_off, t.window.height, t.window.width, 0, 1)
        for t in plan(spec)
    ]
    state = default_state_path(Path(spec.output))
    with Store.open(state) as store:
        store.create_job(older_fingerprint(stored), stored, __version__, spec.output, tiles)
    return state


def older_fingerprint(spec: dict[str, Any]) -> str:
    """The fingerprint eefetch 0.1 stored (its rule, kept here to make such a file)."""
    identity = {key: spec[key] for key in ("expression", "grid", "band_ids", "dtype", "output")}
    identity |= {"nodata": repr(spec["nodata"]), "endpoint": spec["endpoint"]}
    identity |= {"max_tile_bytes": spec["max_tile_bytes"], "extra": spec["extra"]}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["resume", "merge"])
def test_a_stored_job_that_cannot_finish_ends_in_one_line(
    bad_state: Path, emulator: EmulatorThread, command: str
) -> None:
    before = pixel_requests(emulator)
    done = run_cli(command, str(bad_state))
    assert done.returncode == 1
    line = one_line_error(done.stderr)
    assert "does not fit uint16" in line and "start the download again" in line
    assert pixel_requests(emulator) == before


def test_a_new_call_on_that_state_file_ends_in_one_line(
    bad_state: Path, emulator: EmulatorThread
) -> None:
    """Same output, a valid nodata: the stored job is named as the problem, nothing fetched."""
    from engine.errors import JobError

    before = pixel_requests(emulator)
    with pytest.raises(JobError) as refused:
        download_ee_image(
            ee.Image(DEM).toUint16(),
            bad_state.parent / "old.tif",
            region=SMALL_REGION,
            crs="EPSG:32650",
            scale=30,
            max_tile_bytes=200_000,
            quiet=True,
        )
    message = str(refused.value)
    assert f"state file {bad_state}" in message and "does not fit uint16" in message
    assert "\n" not in message
    assert pixel_requests(emulator) == before
