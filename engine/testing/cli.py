"""``eefetch`` run as a user runs it: in its own process, its output captured."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

# The checkout the tests run from: the CLI's processes start there, so they import the same
# engine as the test whether or not the package is installed.
REPO = Path(__file__).resolve().parents[2]
NETWORK_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
# Runs the CLI with direct connections to some host:port refused, so a run that works at all
# proves its traffic took the proxy (the proxy's own connections come from another process).
GUARDED_CLI = """
import socket, sys
forbidden = {item for item in sys.argv[1].split(",") if item}
real_connect = socket.socket.connect
def connect(self, address):
    target = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else ""
    if target in forbidden:
        raise ConnectionRefusedError(f"the test forbids a direct connection to {target}")
    return real_connect(self, address)
socket.socket.connect = connect
from engine.cli import main
sys.argv = ["eefetch", *sys.argv[2:]]
main()
"""


def run_cli(
    *args: str, timeout: float = 240, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`eefetch ARGS` as a user runs it, in its own process (loopback never through a proxy)."""
    full_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
        check=False,
    )


def start_cli(
    args: Sequence[str],
    *,
    wrapper: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """`eefetch ARGS` started in the background, for a test that interrupts it; ``wrapper``
    is a script that runs the CLI its own way (paused at a moment, its event loop watched),
    ``env`` adds to the environment."""
    program = [str(wrapper)] if wrapper is not None else ["-m", "engine.cli"]
    return subprocess.Popen(
        [sys.executable, *program, *args],
        cwd=REPO,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_env(**variables: str) -> dict[str, str]:
    """This process's environment without any proxy or CA setting, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in NETWORK_VARIABLES}
    env.update(variables)
    return env


def run_guarded_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    forbid_direct: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``eefetch ARGS`` in a fresh process, refusing direct connections to ``forbid_direct``
    ("host:port" items), with exactly the environment ``env``."""
    return subprocess.run(
        [sys.executable, "-c", GUARDED_CLI, ",".join(forbid_direct), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(env),
        check=False,
    )


def one_line_error(stderr: str) -> str:
    """The single line a failing command printed; fails if it printed more or a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    return lines[0]


@contextmanager
def emulator_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``eefetch emulator ARGS`` in its own process: yields it and the URL it printed first,
    and stops it afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "emulator", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"eefetch emulator did not start (it said {url!r})")
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load_script(name: str, module_name: str | None = None) -> ModuleType:
    """``scripts/NAME.py`` loaded as a module (registered in ``sys.modules`` under
    ``module_name``, else ``name``), so a test can call a script's functions."""
    registered = module_name or name
    spec = importlib.util.spec_from_file_location(registered, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no scripts/{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[registered] = module
    spec.loader.exec_module(module)
    return module
