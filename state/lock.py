"""One process per job, one job per output: exclusive flocks on lock files.

`JobLock` locks `<state file>.lock`: one process works on a job at a time. `OutputLock` locks
`.<output>.eefetch.lock` beside the output: two jobs with different state files never write the
same output (its temporary merge file, its checkpoint, the published file) at once.

flock belongs to the open file, so the operating system drops it when the holder exits for any
reason, SIGKILL included: a dead process never leaves a stale lock. The file holds the holder's
pid only to name it in the error message; the lock, not the pid, is what excludes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Self

from state.errors import JobLockedError, StateError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class FileLock:
    """Context manager holding an exclusive lock on ``lock_path``; raises JobLockedError if
    another process (or another FileLock in this one) has it.

    Two locks on the same path conflict even inside one process (each opens the lock file
    anew), so a second download of the same job in the same interpreter is refused too.
    """

    def __init__(self, lock_path: str | Path) -> None:
        self.lock_path = Path(lock_path)
        self._fd: int | None = None

    def _busy_message(self, who: str) -> str:
        """What to tell the user when another process holds the lock."""
        return f"another eefetch process ({who}) holds {self.lock_path}; wait for it to finish"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise at once (never waits: the user should hear about the other
        process, not watch a silent hang)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_path} is already held by this lock")
        if fcntl is None:
            raise StateError(
                "eefetch cannot lock its state file on this platform (no fcntl.flock); "
                "run it on Linux or macOS"
            )
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"pid {pid}" if pid is not None else "pid unknown"
                raise JobLockedError(self._busy_message(who), pid=pid) from None
            except OSError as exc:
                os.close(fd)
                raise StateError(
                    f"cannot lock {self.lock_path} ({exc.strerror}); put the state file on a "
                    "local disk that supports file locks"
                ) from exc
            # The previous holder unlinks the file before unlocking it; if we locked that
            # unlinked file, the lock means nothing: open the path again.
            if _same_file(fd, self.lock_path):
                break
            os.close(fd)
        data = f"{os.getpid()}\n".encode("ascii")
        # The pid only names the holder in messages: a full disk must not fail the lock here
        # with a bare errno (the state file's own write then says what to do).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        self._fd = fd

    def _open(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot create lock file {self.lock_path} ({exc.strerror}); check that its "
                "folder exists and is writable"
            ) from exc

    def release(self) -> None:
        """Drop the lock and remove the lock file (removed while still held, so no other
        process can be left holding a lock on a file that is no longer at the path)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.lock_path):
                os.unlink(self.lock_path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class JobLock(FileLock):
    """One process per job: the lock on ``<state file>.lock``."""

    def __init__(self, state_path: str | Path) -> None:
        self.state_path = Path(state_path)
        super().__init__(f"{state_path}.lock")

    def _busy_message(self, who: str) -> str:
        return (
            f"another eefetch process ({who}) is already working on this job "
            f"({self.state_path}); wait for it to finish or stop it, then run the command again"
        )


class OutputLock(FileLock):
    """One job per output: the lock on ``.<output name>.eefetch.lock`` beside the output."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        super().__init__(self.output.with_name(f".{self.output.name}.eefetch.lock"))

    def _busy_message(self, who: str) -> str:
        return (
            f"another eefetch job ({who}) is writing {self.output}; wait for it to finish, or "
            "give this download another output with -o"
        )
