"""A local Earth Engine emulator that the official client talks to unchanged.

`start_emulator` (async), `EmulatorThread` (sync, for tests and scripts) and `serve_forever`
(the `eefetch emulator` command) run it; `EmulatorConfig.from_profile` shapes it.
"""

from engine.emulator.config import PROFILES, EmulatorConfig
from engine.emulator.server import (
    EmulatorThread,
    Evaluator,
    RunningEmulator,
    create_app,
    serve_forever,
    start_emulator,
)

__all__ = [
    "PROFILES",
    "EmulatorConfig",
    "EmulatorThread",
    "Evaluator",
    "RunningEmulator",
    "create_app",
    "serve_forever",
    "start_emulator",
]
