"""JobLock: one process per job, proven with real second processes (including SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from state import JobLock, JobLockedError, StateError

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from state.lock import JobLock
lock = JobLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
if sys.argv[2] == "sleep":
    time.sleep(60)
lock.release()
"""


def _spawn_holder(state: Path, mode: str = "sleep") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    state = tmp_path / "job.eefetch"
    proc = _spawn_holder(state)
    yield state, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _expected_message(pid: int, state: Path) -> str:
    return (
        f"another eefetch process (pid {pid}) is already working on this job ({state}); "
        "wait for it to finish or stop it, then run the command again"
    )


def test_second_process_is_refused_with_the_holders_pid(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    state, proc = holder
    with pytest.raises(JobLockedError) as info:
        JobLock(state).acquire()
    assert str(info.value) == _expected_message(proc.pid, state)
    assert info.value.pid == proc.pid
    assert isinstance(info.value, StateError)


def test_lock_frees_when_the_holder_is_sigkilled(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    state, proc = holder
    with pytest.raises(JobLockedError):
        JobLock(state).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The dead process's lock file is still there, pid and all: the lock is what counts.
    assert Path(f"{state}.lock").read_text().strip() == str(proc.pid)
    with JobLock(state) as lock:
        assert lock.held
        assert Path(f"{state}.lock").read_text().strip() == str(os.getpid())
    assert not Path(f"{state}.lock").exists()


def test_clean_exit_releases_and_removes_the_lock_file(tmp_path: Path) -> None:
    state = tmp_path / "job.eefetch"
    proc = _spawn_holder(state, mode="exit")
    assert proc.wait() == 0
    assert not Path(f"{state}.lock").exists()
    with JobLock(state):
        pass


def test_we_hold_it_and_another_process_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "job.eefetch"
    code = (
        "import sys\n"
        "from state.lock import JobLock, JobLockedError\n"
        "try:\n"
        "    JobLock(sys.argv[1]).acquire()\n"
        "except JobLockedError as exc:\n"
        "    print(exc.pid)\n"
        "    sys.exit(3)\n"
    )
    with JobLock(state):
        out = subprocess.run(
            [sys.executable, "-c", code, str(state)], cwd=REPO, capture_output=True, text=True
        )
    assert out.returncode == 3, out.stderr
    assert out.stdout.strip() == str(os.getpid())


def test_same_process_cannot_take_the_same_job_twice(tmp_path: Path) -> None:
    state = tmp_path / "job.eefetch"
    with JobLock(state), pytest.raises(JobLockedError, match=f"pid {os.getpid()}"):
        JobLock(state).acquire()
    with JobLock(state):  # released by the with block above
        pass


def test_release_is_idempotent_and_lock_reusable(tmp_path: Path) -> None:
    lock = JobLock(tmp_path / "s")
    lock.acquire()
    with pytest.raises(RuntimeError):
        lock.acquire()
    lock.release()
    lock.release()
    lock.acquire()
    lock.release()


def test_missing_folder_is_a_state_error(tmp_path: Path) -> None:
    state = tmp_path / "no-such-folder" / "job.eefetch"
    with pytest.raises(StateError, match=r"cannot create lock file .*folder exists"):
        JobLock(state).acquire()


def test_a_lock_on_an_unlinked_file_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A latecomer that opened the lock file just before the holder removed it must not count
    a lock on that removed file: it opens the path again."""
    state = tmp_path / "job.eefetch"
    lock_path = Path(f"{state}.lock")
    lock_path.write_text("")
    stale_fd = os.open(lock_path, os.O_RDWR)
    lock_path.unlink()
    opened: list[int] = []
    real_open = JobLock._open

    def fake_open(self: JobLock) -> int:
        fd = stale_fd if not opened else real_open(self)
        opened.append(fd)
        return fd

    monkeypatch.setattr(JobLock, "_open", fake_open)
    with JobLock(state):
        assert opened[0] == stale_fd and len(opened) == 2
        assert lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(OSError):
        os.fstat(stale_fd)  # closed by acquire
