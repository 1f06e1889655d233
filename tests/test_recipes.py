"""The composite recipe builds the tutorial's expression, and the CLI downloads it resumably."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner
from emulator_fixture import clean_emulator
from tutorial import tutorial_recipe

from engine.cli import main
from engine.emulator import EmulatorThread
from engine.errors import InvalidJob
from engine.recipes import composite
from engine.region_input import load_region
from engine.spec import JobSpec
from engine.testing.cli import REPO
from engine.testing.ee_offline import offline_ee
from engine.testing.jobs import tutorial_args
from state import Store

NANJING = REPO / "engine" / "data" / "nanjing.geojson"
SMALL = "118.70,32.00,118.78,32.05"


def test_composite_is_the_tutorials_expression_byte_for_byte() -> None:
    with offline_ee():
        tutorial = runpy.run_path(str(REPO / "examples" / "tutorial_composite.py"))["image"]
        built = composite(tutorial_recipe(load_region(str(NANJING))))
        assert built.serialize() == tutorial.serialize()


def test_options_change_the_expression_where_they_should() -> None:
    region = load_region(SMALL)
    with offline_ee():
        base = composite(tutorial_recipe(region)).serialize()
        outline = composite(tutorial_recipe(region, clip="outline")).serialize()
        mean = composite(tutorial_recipe(region, reducer="mean")).serialize()
        no_cloud_filter = composite(tutorial_recipe(region, max_cloud=None)).serialize()
        raw = composite(tutorial_recipe(region, divide=None, cloud_mask="none")).serialize()
    assert "Geometry.bounds" in base and "Geometry.bounds" not in outline
    assert "reduce.median" in base and "reduce.mean" in mean
    assert "CLOUDY_PIXEL_PERCENTAGE" in base and "CLOUDY_PIXEL_PERCENTAGE" not in no_cloud_filter
    assert "QA60" in base and "QA60" not in raw and "Image.divide" not in raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start": "2023-01-01"}, "is not before"),
        ({"reducer": "mode"}, "unknown reducer"),
        ({"divide": 0}, "divide by zero"),
    ],
)
def test_bad_recipes_are_refused_with_what_to_do(changes: dict, message: str) -> None:
    with offline_ee(), pytest.raises(InvalidJob, match=message):
        composite(tutorial_recipe(load_region(SMALL), **changes))


emulator = clean_emulator(seed=4)


def test_composite_command_downloads_the_recipe_and_resumes(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    output = tmp_path / "small.tif"
    args = tutorial_args(
        SMALL, output, emulator.url, "--max-tile-bytes", "1000000", "--quiet", scale=30
    )
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().endswith(str(output))
    with rasterio.open(output) as dataset:
        assert dataset.count == 8
        assert list(dataset.descriptions) == [f"B{i}" for i in range(1, 9)]
        assert dataset.dtypes[0] == "float32"
        data = dataset.read(masked=True)
    assert 0 < float(data.mean()) < 1  # reflectance: divided by 10000
    with Store.open(Path(f"{output}.eefetch.db"), create=False) as store:
        job = store.job()
        assert job is not None and job.status == "merged"
        spec = JobSpec.from_dict(job.spec)
    with offline_ee():
        expected = composite(tutorial_recipe(load_region(SMALL))).serialize()
    assert json.loads(spec.expression) == json.loads(expected)

    served = sum(item["count"] for item in emulator.stats()["tiles_served"])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert sum(item["count"] for item in emulator.stats()["tiles_served"]) == served


def test_composite_needs_a_region(emulator: EmulatorThread) -> None:
    result = CliRunner().invoke(
        main, ["composite", "--start", "2022-01-01", "--end", "2022-02-01", "-o", "x.tif"]
    )
    assert result.exit_code == 2
    assert "--region is required" in result.output
