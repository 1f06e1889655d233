"""Shared test set-up: no test may reach anything but loopback."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# The suite's property tests draw the same examples on every run (a test that passes passes
# again, whatever the machine). Searching for new counterexamples is a campaign of its own:
# `./scripts/test tests/test_fuzz.py --hypothesis-profile=explore`, run again and again (each
# run draws new examples; a counterexample found is kept in .hypothesis/ and tried first).
settings.register_profile("suite", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("suite")


def pytest_configure(config: pytest.Config) -> None:
    """Started in the background (``nohup``, ``cmd &`` in a script), pytest inherits an ignored
    SIGINT, and so would every eefetch a test starts: the tests of Ctrl-C would then meet a run
    that cannot be interrupted, and it would finish instead. The children get the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Every download takes slots of its project's quota from a per-user file under
    # $XDG_STATE_HOME (state/quota.py): the tests, and the eefetch processes they start, keep
    # theirs in a folder of this session, never in the user's own.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="eefetch-test-state-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's quota folder goes with the session."""
    folder = os.environ.get("XDG_STATE_HOME", "")
    if Path(folder).name.startswith("eefetch-test-state-"):
        shutil.rmtree(folder, ignore_errors=True)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback_host(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InternetAccessError(RuntimeError):
    """Raised when a test tries to reach a host that is not on this machine."""


def _check(address: object) -> None:
    if isinstance(address, tuple) and address and not _is_loopback_host(address[0]):
        raise InternetAccessError(f"test tried to reach {address!r}; tests must stay on 127.0.0.1")


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object):
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and not _is_loopback_host(host):
        raise InternetAccessError(f"test tried to resolve {host!r}; tests must stay on 127.0.0.1")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _no_internet() -> None:
    """Fail any test that tries to open a connection off this machine."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture
def ee_emulator():
    """Factory for emulators on 127.0.0.1 with the bundled model, stopped after the test.

    `ee_emulator("flaky", seed=3, stall_s=1.0)` returns a started `EmulatorThread`; its `.url`
    goes to `ee.Initialize(url=...)` or the engine, `.stats()` reads the server's counters.
    """
    from engine.emulator import EmulatorConfig, EmulatorThread

    started: list[EmulatorThread] = []

    def start(profile: str = "clean", **overrides: object) -> EmulatorThread:
        emulator = EmulatorThread(EmulatorConfig.from_profile(profile, **overrides)).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="module")
def oracle():
    """An emulator with no limits, whose one-request render is what a job must merge to."""
    from engine.testing.oracle import oracle_emulator

    with oracle_emulator() as emulator:
        yield emulator


@pytest.fixture
def tinyproxy(tmp_path: Path):
    """A tinyproxy process of the test's own (an HTTP proxy that logs what it carried)."""
    from engine.testing.peers import TinyProxy

    with TinyProxy(tmp_path / "proxy") as proxy:
        yield proxy


@pytest.fixture
def microsocks(tmp_path: Path):
    """A microsocks process of the test's own (a SOCKS5 proxy that logs what it opened)."""
    from engine.testing.peers import MicroSocks

    with MicroSocks(tmp_path / "proxy") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL server for the session (tests/pg.py), or a skip saying why
    there can be none here."""
    from tests.pg import PostgresCluster, missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return pg_cluster.create_database()


@pytest.fixture
def own_cluster():
    """A PostgreSQL server of the test's own, free to restart or stop."""
    from tests.pg import PostgresCluster, missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with PostgresCluster() as cluster:
        yield cluster


class StateTargets:
    """Calling it gives a new, empty state target of one kind: an SQLite path in the test's
    folder, or the URL of a new database on the session's PostgreSQL server."""

    def __init__(self, kind: str, make: Callable[[], Path | str]) -> None:
        self.kind = kind
        self._make = make

    def __call__(self) -> Path | str:
        return self._make()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_target(request: pytest.FixtureRequest, tmp_path: Path) -> StateTargets:
    """New state targets, on SQLite and then on PostgreSQL (the test runs once for each)."""
    if request.param == "sqlite":
        count = iter(range(1_000_000))
        return StateTargets("sqlite", lambda: tmp_path / f"state-{next(count)}.eefetch")
    cluster = request.getfixturevalue("pg_cluster")
    return StateTargets("postgresql", cluster.create_database)
