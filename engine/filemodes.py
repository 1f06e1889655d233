"""Who may read what eefetch leaves on disk.

Work files (the state database, tile folders, an unfinished output and its checkpoint) are the
owner's only, whatever the umask: the state holds download URLs, which are bearer
capabilities, and an unfinished output is nobody else's business. The published GeoTIFF is an
ordinary file and gets the mode any new file of the user gets (0666 less the umask).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600, or empty an existing one and make it 0600.

    A program that opens the file for writing afterwards (GDAL) truncates it and keeps the
    mode, so the file is never readable by others, not even for an instant.
    """
    os.close(open_private(path))


def open_private(path: Path) -> int:
    """A descriptor of ``path`` opened for writing from scratch, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # a file left by an older eefetch may be 0644
    except BaseException:
        os.close(fd)
        raise
    return fd


def public_mode(umask: int | None = None) -> int:
    """The mode of a new ordinary file: 0666 less ``umask`` (default: the process's)."""
    return 0o666 & ~(current_umask() if umask is None else umask)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (threads may be
    creating files meanwhile); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
