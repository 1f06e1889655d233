"""Making what is on disk survive a crash: fsync by path, for files and for folders."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync ``path``: a file's data, or a folder's entries (a rename in it is not durable
    until its folder is synced; without this a crash can forget the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
