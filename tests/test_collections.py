"""Collections: one GeoTIFF per image, safe names, one shared budget, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ee
import pytest
import rasterio
from click.testing import CliRunner

from engine import CollectionIncomplete, download_ee_image_collection, ee_adapter
from engine.cli import main
from engine.collection import (
    CollectionResult,
    collection_specs,
    image_names,
    list_images,
    run_collection,
    safe_name,
)
from engine.ee_adapter import Connection
from engine.emulator import EmulatorConfig, EmulatorThread
from engine.errors import EarthEngineError, InvalidJob
from engine.job import RunOptions
from engine.recipes import Composite, composite_collection
from engine.region_input import load_region
from engine.request import DownloadRequest, build_job
from engine.runner import run_sync

REGION = "118.70,32.00,118.76,32.04"
START, END = "2022-01-01", "2022-12-31"
# The emulator's generated 2022 scenes over this corner of Nanjing (tile 50SPA, relative orbit
# 132, every 5 days) with less than 10 % cloud.
EXPECTED = [
    "20220312T025204_20220312T025325_T50SPA",
    "20220327T025200_20220327T025345_T50SPA",
    "20221107T025148_20221107T025256_T50SPA",
    "20221227T025144_20221227T025207_T50SPA",
]


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("COPERNICUS/S2_SR/20220115T025101", "COPERNICUS_S2_SR_20220115T025101"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "image"),
        (".hidden", "hidden"),
        ("a\\b:c*d?e", "a_b_c_d_e"),
        ("Nanjing été", "Nanjing_ete"),
        ("", "image"),
        ("x" * 300, "x" * 120),
    ],
)
def test_names_cannot_leave_the_folder(raw: str, safe: str) -> None:
    name = safe_name(raw)
    assert name == safe
    assert "/" not in name and "\\" not in name and ".." not in name
    assert not name.startswith(".")


def test_names_are_unique_and_follow_geemaps_arguments() -> None:
    infos = [
        {"properties": {"system:index": "A/1", "DATE": "2022-01-01"}},
        {"properties": {"system:index": "A_1", "DATE": "2022-01-01"}},
    ]
    assert [i.name for i in image_names(infos)] == ["A_1", "A_1_2"]
    assert [i.name for i in image_names(infos, "s2_")] == ["s2_A_1", "s2_A_1_2"]
    assert [i.name for i in image_names(infos, column="DATE")] == ["2022-01-01", "2022-01-01_2"]
    assert [i.name for i in image_names(infos, ["one.tif", "two"])] == ["one", "two"]
    with pytest.raises(InvalidJob, match="one per image"):
        image_names(infos, ["only-one"])
    with pytest.raises(InvalidJob, match="no property"):
        image_names(infos, column="MISSING")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=7)) as running:
        yield running


def scenes(emulator: EmulatorThread) -> ee.ImageCollection:
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    recipe = Composite(
        "COPERNICUS/S2_SR_HARMONIZED",
        START,
        END,
        load_region(REGION),
        max_cloud=10,
        bands=("B4", "B3", "B2"),
    )
    return composite_collection(recipe)


def served(emulator: EmulatorThread) -> int:
    return sum(item["count"] for item in emulator.stats()["tiles_served"])


@pytest.mark.slow
def test_download_collection_then_resume_skips_finished_images(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    collection = scenes(emulator)
    kwargs = {
        "region": REGION,
        "crs": "EPSG:4326",
        "scale": 30,
        "max_tile_bytes": 100_000,
        "concurrency": 2,
        "quiet": True,
    }
    result = download_ee_image_collection(collection, tmp_path / "scenes", **kwargs)
    assert result.complete
    names = sorted(p.stem for p in result.outputs)
    assert names == EXPECTED
    for output in result.outputs:
        assert output.parent == (tmp_path / "scenes").resolve()
        assert Path(f"{output}.eefetch.db").exists()
        with rasterio.open(output) as dataset:
            assert dataset.count == 3 and list(dataset.descriptions) == ["B4", "B3", "B2"]
    tiles_each = result.results[EXPECTED[0]].counts["done"]
    assert tiles_each >= 2

    before = served(emulator)
    again = download_ee_image_collection(collection, tmp_path / "scenes", **kwargs)
    assert again.complete and served(emulator) == before
    assert all("already complete" in " ".join(r.notes) for r in again.results.values())

    lost = (tmp_path / "scenes" / f"{EXPECTED[2]}.tif").resolve()
    lost.unlink()
    Path(f"{lost}.eefetch.db").unlink()
    third = download_ee_image_collection(collection, tmp_path / "scenes", **kwargs)
    assert third.complete and lost.exists()
    assert served(emulator) - before == third.results[EXPECTED[2]].counts["done"]


@pytest.mark.slow
def test_images_share_one_concurrency_budget(tmp_path: Path, emulator: EmulatorThread) -> None:
    collection = scenes(emulator)
    folder = (tmp_path / "shared").resolve()
    members = list_images(collection)

    def build(image: ee.Image, output: Path):
        return build_job(
            image,
            DownloadRequest(
                output=output, region=REGION, crs="EPSG:4326", scale=30, max_tile_bytes=100_000
            ),
            Connection(),
            concurrency=2,
        )

    jobs = collection_specs(collection, folder, members, build)
    emulator.reset_stats()
    result = run_sync(run_collection(jobs, folder, RunOptions(concurrency=2), parallel_images=4))
    assert result.complete and len(result.outputs) == len(EXPECTED)
    stats = emulator.stats()
    assert served(emulator) >= 4 * len(EXPECTED)
    assert 1 <= stats["max_in_flight"] <= 2  # four images at once, two requests at most


def test_collection_command_dry_run_and_download(tmp_path: Path, emulator: EmulatorThread) -> None:
    base = [
        "collection",
        "--start",
        START,
        "--end",
        END,
        "--max-cloud",
        "10",
        "--bands",
        "B4,B3,B2",
        "--region",
        REGION,
        "--scale",
        "60",
        "--crs",
        "EPSG:4326",
        "--limit",
        "2",
        "-o",
        str(tmp_path / "cli"),
        "--ee-url",
        emulator.url,
        "--quiet",
    ]
    dry = CliRunner().invoke(main, [*base, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "total: 2 images" in dry.stdout and not (tmp_path / "cli").exists()
    real = CliRunner().invoke(main, base)
    assert real.exit_code == 0, real.output
    outputs = real.stdout.split()
    assert [Path(p).stem for p in outputs] == EXPECTED[:2]


def test_an_empty_collection_says_what_to_change(emulator: EmulatorThread, tmp_path: Path) -> None:
    collection = scenes(emulator).filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", -1))
    with pytest.raises(EarthEngineError, match="collection is empty"):
        download_ee_image_collection(collection, tmp_path, region=REGION, scale=30, quiet=True)


def test_an_unfinished_collection_says_how_to_resume(tmp_path: Path) -> None:
    result = CollectionResult(tmp_path, errors={"scene_a": "disk full"})
    message = str(CollectionIncomplete(result))
    assert "1 of 1 image(s)" in message and "scene_a: disk full" in message
    assert "run the same command again" in message and f"eefetch status {tmp_path}" in message


def test_collection_from_a_script(tmp_path: Path, emulator: EmulatorThread) -> None:
    script = tmp_path / "scenes.py"
    script.write_text(
        "import ee\n"
        "collection = (ee.ImageCollection('COPERNICUS/S2_SR_HARMONIZED')\n"
        "    .filterDate('2022-03-27', '2022-03-28')\n"
        "    .filterBounds(ee.Geometry.Rectangle([118.70, 32.00, 118.76, 32.04])))\n"
    )
    result = CliRunner().invoke(
        main,
        [
            "collection",
            "--script",
            str(script),
            "--bands",
            "B4",
            "--region",
            REGION,
            "--scale",
            "60",
            "-o",
            str(tmp_path / "out"),
            "--dry-run",
            "--ee-url",
            emulator.url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{EXPECTED[1]}: ") and "total: 1 images" in result.stdout
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    refused = CliRunner().invoke(
        main, ["collection", "--script", str(empty), "-o", str(tmp_path), "--ee-url", emulator.url]
    )
    assert refused.exit_code == 1 and "named `collection`" in refused.output


def test_a_collection_state_that_is_not_a_server_is_refused_before_any_work(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """Each image keeps its state in a file beside it unless the state is a server: one file
    for every image would serialise them on its lock, so it is refused in one line."""
    with pytest.raises(InvalidJob, match="PostgreSQL URL"):
        download_ee_image_collection(
            scenes(emulator), tmp_path / "scenes", region=REGION, scale=60,
            state=str(tmp_path / "all.eefetch.db"), quiet=True,
        )  # fmt: skip
    assert not (tmp_path / "scenes").exists() and not (tmp_path / "all.eefetch.db").exists()
    command = ["collection", "--start", START, "--end", END, "--region", REGION, "--scale", "60"]
    state = tmp_path / "cli.eefetch.db"
    where = ["-o", str(tmp_path / "cli"), "--ee-url", emulator.url, "--state", str(state)]
    refused = CliRunner().invoke(main, [*command, *where])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "Error: --state for a collection is a PostgreSQL URL (postgresql://user@host:port/db), "
        f"got '{state}'; without it every image keeps its state in a file beside it"
    )
    assert not (tmp_path / "cli").exists() and not state.exists()


def test_a_collection_whose_arguments_changed_says_what_will_help(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """Other bands into the same folder: each image's state holds another download, which
    running the command again cannot change; the advice is another folder, or starting over."""
    base = ["collection", "--start", START, "--end", END, "--max-cloud", "10", "--limit", "1"]
    grid = ["--region", REGION, "--scale", "60", "--crs", "EPSG:4326", "--quiet"]
    where = ["-o", str(tmp_path / "scenes"), "--ee-url", emulator.url]
    first = CliRunner().invoke(main, [*base, *grid, *where, "--bands", "B4"])
    assert first.exit_code == 0, first.output
    changed = CliRunner().invoke(main, [*base, *grid, *where, "--bands", "B4,B3"])
    assert changed.exit_code == 1
    line = changed.stderr.strip().splitlines()[-1]
    assert "holds another download (it differs in expression, band_ids); write the " in line
    assert "collection to another folder with -o, or delete the state files (*.eefetch.db)" in line
    assert "run the same command again" not in changed.stderr
    assert "--state" not in changed.stderr  # a collection's file states cannot be chosen
