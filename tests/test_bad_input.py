"""Bad input on the command line: one clear line (what is wrong, what to do), no traceback.

Most cases run in-process through click's CliRunner (fast); those where something outside
Python could print (GDAL/PROJ on stderr) or where the whole job must run go through a real
subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner
from emulator_fixture import clean_emulator

from engine.cli import main
from engine.defaults import EE_MAX_SIDE_URLS
from engine.ee_adapter import BandInfo
from engine.emulator.server import EmulatorThread
from engine.request import lossy_cast_message
from engine.testing.cli import REPO, one_line_error, run_cli
from engine.testing.jobs import SMALL_REGION, dem_args, state_of
from engine.testing.oracle import assert_matches_oracle
from state import Store

DEM = ("--asset", "USGS/SRTMGL1_003")


emulator = clean_emulator(seed=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "not-json.geojson").write_text("this is not { json")
    (folder / "empty.geojson").write_text("")
    (folder / "no-features.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (folder / "no-coords.geojson").write_text('{"type": "Polygon", "coordinates": []}')
    (folder / "raises.py").write_text("raise ValueError('the collection is empty')\n")
    (folder / "no-image.py").write_text("import ee\ncomposite = ee.Image(1)\n")
    (folder / "not-image.py").write_text("image = 42\n")
    (folder / "expression.txt").write_text("Image.load('USGS/SRTMGL1_003')\n")
    (folder / "expression.bin").write_bytes(b"\xff\xfe\x00binary")
    return folder


def cli(emulator: EmulatorThread, tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `eefetch download ... ARGS` in-process; (exit code, the one line it printed)."""
    result = CliRunner().invoke(
        main,
        ["download", "-o", str(tmp_path / "out.tif"), "--ee-url", emulator.url, *args],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, one_line_error(result.stderr)


def download(
    *image: str, region: str = SMALL_REGION, crs: str | None = None, scale: str = "30"
) -> list[str]:
    """The arguments of a download of ``image`` (--asset, --script or --expression and its
    value) on a grid, so that each case below shows only what is wrong with it."""
    return [*image, "--region", region, *(["--crs", crs] if crs else []), "--scale", scale]


CASES = [
    (
        "region file is not JSON",
        download(*DEM, region="{inputs}/not-json.geojson"),
        ["not-json.geojson is not GeoJSON", "give a GeoJSON Polygon, Feature or"],
    ),
    (
        "region file is empty",
        download(*DEM, region="{inputs}/empty.geojson"),
        ["empty.geojson is not GeoJSON", "give a GeoJSON"],
    ),
    (
        "region has no features",
        download(*DEM, region="{inputs}/no-features.geojson"),
        ["is a FeatureCollection with no features"],
    ),
    (
        "region has no coordinates",
        download(*DEM, region="{inputs}/no-coords.geojson"),
        ["Polygon with no coordinates"],
    ),
    (
        "region file missing",
        download(*DEM, region="{inputs}/nowhere.geojson"),
        ["nowhere.geojson does not exist", "west,south,east,north"],
    ),
    (
        "bbox with three numbers",
        download(*DEM, region="118.7,32.0,118.8"),
        ["does not exist", "give a GeoJSON file or west,south,east,north"],
    ),
    (
        "bbox upside down",
        download(*DEM, region="118.7,32.1,118.8,32.0"),
        ["south must be below north"],
    ),
    (
        "output is a folder",
        [*download(*DEM), "-o", "{inputs}"],
        ["is a folder; give the GeoTIFF file to write (-o FILE.tif)"],
    ),
    (
        "crs unknown",
        download(*DEM, crs="NOT:A-CRS"),
        ["unknown crs 'NOT:A-CRS'", "give an EPSG code"],
    ),
    (
        "scale zero",
        download(*DEM, crs="EPSG:4326", scale="0"),
        ["scale must be a positive, finite number of metres, got 0.0"],
    ),
    (
        "scale negative",
        download(*DEM, crs="EPSG:4326", scale="-30"),
        ["scale must be a positive, finite number of metres, got -30.0"],
    ),
    (
        "band that does not exist",
        [*download(*DEM), "--bands", "B4"],
        ["band 'B4' is not in the image; it has elevation"],
    ),
    (
        "asset that does not exist",
        download("--asset", "NO/SUCH/ASSET"),
        ["'NO/SUCH/ASSET' not found"],
    ),
    (
        "script raises",
        download("--script", "{inputs}/raises.py"),
        ["raises.py raised ValueError: the collection is empty", "fix the script"],
    ),
    (
        "script defines no image",
        download("--script", "{inputs}/no-image.py"),
        ["defines no variable named `image`", "assign the ee.Image"],
    ),
    (
        "script image is not an image",
        download("--script", "{inputs}/not-image.py"),
        ["`image` in", "is a int, not an ee.Image"],
    ),
    (
        "expression is not JSON",
        download("--expression", "{inputs}/expression.txt"),
        ["the expression is not JSON", "give the output of image.serialize()"],
    ),
    (
        "expression is binary",
        download("--expression", "{inputs}/expression.bin"),
        ["is not a text file", "serialized expression"],
    ),
]


@pytest.mark.parametrize(("name", "args", "says"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(
    tmp_path: Path,
    emulator: EmulatorThread,
    inputs: Path,
    name: str,
    args: list[str],
    says: list[str],
) -> None:
    code, line = cli(emulator, tmp_path, *[a.format(inputs=inputs) for a in args])
    assert code in (1, 2), name
    for text in says:
        assert text in line, f"{name}: {line!r} lacks {text!r}"
    assert not (tmp_path / "out.tif").exists()


def test_a_crs_proj_does_not_know_prints_nothing_but_our_line(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """PROJ complains on stderr by itself unless GDAL's errors are routed to logging."""
    output = tmp_path / "out.tif"
    done = run_cli(*dem_args(emulator.url, output, crs="EPSG:999999", max_tile_bytes=None))
    assert done.returncode == 2  # a command describing an impossible download: misuse
    assert one_line_error(done.stderr) == (
        "Error: unknown crs 'EPSG:999999': give an EPSG code such as 'EPSG:32650' or a WKT string"
    )


def test_debug_shows_the_traceback(tmp_path: Path, emulator: EmulatorThread) -> None:
    output = tmp_path / "out.tif"
    done = run_cli(
        *dem_args(emulator.url, output, "--debug", scale=-1, crs=None, max_tile_bytes=None)
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "scale must be a positive" in done.stderr


@pytest.mark.slow
def test_a_dtype_that_cannot_hold_the_data_is_warned_about_in_one_line(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """Decision: float reflectance to uint8 is warned about, not refused (see api.py)."""
    output = tmp_path / "out.tif"
    done = run_cli(
        "download",
        "--script",
        str(REPO / "examples" / "tutorial_composite.py"),
        "--region",
        "118.70,32.00,118.72,32.02",
        "--crs",
        "EPSG:4326",
        "--scale",
        "30",
        "--dtype",
        "uint8",
        "--bands",
        "B2,B3",
        "-o",
        str(output),
        "--ee-url",
        emulator.url,
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "eefetch: warning: dtype uint8 cannot hold band(s) B2 (float32), B3 (float32): Earth "
        "Engine will clamp values to 0..255 and drop fractions; choose float32 (or no dtype), "
        "or scale the image first"
    ]
    with rasterio.open(output) as dataset:
        assert dataset.dtypes == ("uint8", "uint8")
    fine = run_cli(*_dem(emulator, tmp_path / "fine.tif"), "--dtype", "float64")
    assert fine.returncode == 0 and "warning" not in fine.stderr


def _dem(emulator: EmulatorThread, output: Path, region: str = SMALL_REGION) -> list[str]:
    return dem_args(emulator.url, output, region=region, crs="EPSG:4326", max_tile_bytes=None)


@pytest.mark.slow
def test_a_grid_wider_than_ee_allows_in_one_tile_is_split_not_rejected(
    tmp_path: Path, emulator: EmulatorThread, oracle: EmulatorThread
) -> None:
    output = tmp_path / "strip.tif"
    done = run_cli(*_dem(emulator, output, region="118.0,32.0,122.5,32.0004"))
    assert done.returncode == 0, done.stderr
    with rasterio.open(output) as dataset:
        width = dataset.width
    assert width > EE_MAX_SIDE_URLS
    with Store.open(state_of(output), create=False) as store:
        done_tiles = store.tiles("done")
    assert len(done_tiles) >= 2
    assert max(t.width for t in done_tiles) <= EE_MAX_SIDE_URLS
    served = emulator.stats()["tiles_served"]
    assert max(json.loads(item["key"])["width"] for item in served) <= EE_MAX_SIDE_URLS
    assert_matches_oracle(output, state_of(output), oracle)


def test_the_lossy_cast_rule_names_only_bands_that_do_not_fit() -> None:
    def band(name: str, dtype: str) -> BandInfo:
        return BandInfo(name, dtype, None, None, None)

    assert lossy_cast_message([band("a", "uint8"), band("b", "int8")], "int16") is None
    assert lossy_cast_message([band("a", "float32")], "float64") is None
    assert lossy_cast_message([band("a", "int32")], "float32") is None  # precision: not reported
    message = lossy_cast_message([band("dem", "int16"), band("mask", "uint8")], "uint8")
    assert message == (
        "dtype uint8 cannot hold band(s) dem (int16): Earth Engine will clamp values to 0..255; "
        "choose int16 (or no dtype), or scale the image first"
    )
