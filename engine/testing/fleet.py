"""Workers of one job as separate processes, for tests/test_workers.py and
scripts/bench_workers.py: the CLI started in the background (optionally with a skewed clock)
and waits on what the state database says."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from engine.testing.cli import REPO
from state import Store, TileRecord

# The CLI with this process's wall clock moved by argv[1] seconds, as on a machine whose clock
# is wrong; monotonic clocks (timeouts) and the database's clock are not affected.
SKEWED_CLI = """
import sys, time
skew = float(sys.argv[1])
real = time.time
time.time = lambda: real() + skew
from engine.cli import main
sys.argv = ["eefetch", *sys.argv[2:]]
main()
"""


def start_eefetch(args: Sequence[str], *, skew: float = 0.0) -> subprocess.Popen[str]:
    """``eefetch ARGS`` in its own process (its clock ``skew`` seconds off), output piped."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.Popen(
        [sys.executable, "-c", SKEWED_CLI, str(skew), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def worker_args(url: str, job: str, ee_url: str, *extra: str) -> list[str]:
    return ["worker", "--state", url, "--job", job, "--ee-url", ee_url, *extra]


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    """Wait for the process; (exit status, stdout, stderr)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"eefetch did not end within {timeout} s:\n{err[-3000:]}") from None
    return process.returncode, out, err


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = 120,
    processes: Sequence[subprocess.Popen[str]] = (),
) -> None:
    """Poll ``condition`` until it holds; fail (with the processes' errors) after ``timeout``
    or when a process ended before it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"a process ended before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def tiles_of(url: str, job: str) -> list[TileRecord]:
    """Every leaf tile of the job, as stored now."""
    with Store.open(url, job=job, create=False) as store:
        return store.tiles()


def counts_of(url: str, job: str) -> dict[str, int]:
    with Store.open(url, job=job, create=False) as store:
        return store.counts()


def job_exists(url: str, job: str) -> bool:
    with Store.open(url, create=True) as store:
        return any(record.name == job for record in store.jobs())


def owned_by_pid(tiles: Sequence[TileRecord], pid: int) -> list[TileRecord]:
    """The tiles in flight for the worker process ``pid`` (owners are ``host:pid:random``)."""
    return [
        t
        for t in tiles
        if t.status == "in_flight" and t.claim_owner and t.claim_owner.split(":")[1] == str(pid)
    ]
