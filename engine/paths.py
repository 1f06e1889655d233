"""Where a job keeps its files, beside the output. No heavy imports: `eefetch status` uses it."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_path(output: Path) -> Path:
    """The state database of the job that writes ``output``."""
    return output.with_name(output.name + ".eefetch.db")


def state_target(state: str | os.PathLike[str] | None, output: Path) -> Path | str:
    """Where a job's state is: the state given (a file, or a database URL kept as text), else
    the file beside the output."""
    if state is None:
        return default_state_path(output.expanduser().resolve())
    from state import is_database_url  # here, not at the top: `status` imports this module

    return state if isinstance(state, str) and is_database_url(state) else Path(state)


def tiles_folder(state_path: Path) -> Path:
    """The folder that holds a job's tile files until the merge."""
    name = state_path.name.removesuffix(".db")
    return state_path.with_name(name + "-tiles")


def worker_tiles_folder(output: Path) -> Path:
    """The tile folder of a job whose state is on a server, when no --tiles is given: beside
    the output, under a name ``eefetch clean`` never takes for a dead job's leftovers (no state
    file beside it says whose it is)."""
    return output.with_name(output.name + ".eefetch-worker-tiles")


def job_tiles_folder(
    state: Path | str, output: Path, job_name: str | None, root: Path | None
) -> Path:
    """Where a job keeps its tile files: ``root/JOB`` when a tile folder is given (--tiles: one
    every worker reaches, each job in a folder of its own), else beside the state file, or
    beside the output for a job whose state is on a server."""
    if root is not None:
        return Path(root).expanduser().resolve() / (job_name or output.name.removesuffix(".tif"))
    if isinstance(state, str) and "://" in state:
        return worker_tiles_folder(output)
    return tiles_folder(Path(state))
