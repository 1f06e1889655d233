"""Where a job keeps its files, beside the output. No heavy imports: `eefetch status` uses it."""

from __future__ import annotations

from pathlib import Path


def default_state_path(output: Path) -> Path:
    """The state database of the job that writes ``output``."""
    return output.with_name(output.name + ".eefetch.db")


def tiles_folder(state_path: Path) -> Path:
    """The folder that holds a job's tile files until the merge."""
    name = state_path.name.removesuffix(".db")
    return state_path.with_name(name + "-tiles")
