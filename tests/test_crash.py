"""A seeded handful of SIGKILLs at random moments of a ~20 MB job (the CI crash campaign).

The larger campaign is ``scripts/crash_campaign.py``; this runs the same code with 5 kills.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "crash_campaign", REPO / "scripts" / "crash_campaign.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_campaign"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oracle() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", no_limits=True)) as emulator:
        yield emulator


@pytest.mark.slow
def test_five_sigkills_end_in_the_oracle_file_and_no_done_tile_is_fetched_again(
    tmp_path: Path, campaign: ModuleType, oracle: EmulatorThread
) -> None:
    config = campaign.CampaignConfig(
        workdir=tmp_path, kills=5, merge_kills=1, size_mb=20, seed=11, max_tile_bytes=1_000_000
    )
    with EmulatorThread(campaign.emulator_config(config)) as emulator:
        result = campaign.run_campaign(config, emulator, oracle)
    assert result.completed, result.final_stderr
    assert len(result.kills) == 5, f"the job finished before every kill: {result.kills}"
    assert result.refetched_done == [], "tiles done at a kill were fetched again"
    assert result.pixels_equal
    assert result.tiles >= 40
    phases = {kill.phase for kill in result.kills}
    assert phases & {"download", "writing a tile"}, f"no kill landed mid-download: {phases}"
    assert [kill.mode for kill in result.kills][-1] == "merge"
