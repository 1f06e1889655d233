"""Opening a state file a second time in one process keeps the first connection's locks.

A POSIX lock belongs to the process and the file: closing any descriptor of the file drops
all of them. A probe that read the header with open()/close() while another of the process's
connections had the database open (a collection opens the shared quota file once per image)
dropped that connection's SQLite locks, and another process could then checkpoint and delete
the WAL under it: a fresh-clone test run met "database disk image is malformed" this way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from state import Quota, Store

# SQLite's unix VFS takes a read lock on these bytes of the database file for a reader
# (SHARED_FIRST = PENDING_BYTE + 2, SHARED_SIZE = 510).
SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510

PROBE = f"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, {SHARED_SIZE}, {SHARED_FIRST})
    print("free")
except OSError:
    print("held")
"""


def read_locked_by_another_process(path: Path) -> bool:
    """Whether some other process holds SQLite's shared (reader) lock on ``path``."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "held"


def test_a_second_quota_in_one_process_keeps_the_firsts_locks(tmp_path: Path) -> None:
    path = tmp_path / "quota.db"
    with Quota.open(path) as first:
        first.configure("p", 4)
        assert first.status("p") is not None
        assert read_locked_by_another_process(path)  # an open WAL connection keeps it
        with Quota.open(path) as second:
            assert second.acquire_slot("p", "b", 30.0) == 0
        assert read_locked_by_another_process(path)
        assert first.status("p") is not None


def test_a_second_store_on_one_state_file_keeps_the_firsts_locks(tmp_path: Path) -> None:
    path = tmp_path / "job.eefetch.db"
    with Store.open(path) as first:
        first.counts()
        assert read_locked_by_another_process(path)  # an open WAL connection keeps it
        with Store.open(path) as second:
            second.counts()
        assert read_locked_by_another_process(path)
