"""The clean emulator most test modules share among their tests, written once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread


def clean_emulator(seed: int) -> Callable[[], Iterator[EmulatorThread]]:
    """A module-scoped fixture: one emulator of the clean profile with ``seed`` for the module's
    tests. Assign it to the fixture's name: ``emulator = clean_emulator(seed=5)``."""

    @pytest.fixture(scope="module")
    def emulator() -> Iterator[EmulatorThread]:
        with EmulatorThread(EmulatorConfig.from_profile("clean", seed=seed)) as running:
            yield running

    return emulator
