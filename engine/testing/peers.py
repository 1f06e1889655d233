"""Real proxy processes for the network tests and scripts: tinyproxy (HTTP) and microsocks
(SOCKS5), each on a free port of 127.0.0.1, logging what they forwarded to a file, so a test
proves from the proxy's side that traffic went through it. They come from Debian's packages
(``scripts/system_deps.sh`` installs them); a missing program fails with the command that
fixes it, never a skip.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from engine.testing.cli import run_guarded_cli
from engine.testing.jobs import quiet_dem_args

TINYPROXY_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")
MICROSOCKS_CONNECT = re.compile(r"client\[\d+\] \S+: connected to (\S+)")


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_program(name: str) -> str:
    """The program's path, or a failure that says how to install it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; run scripts/system_deps.sh (as root it installs "
            f"it with apt-get), or `sudo apt-get install {name}`"
        )
    return path


def wait_listening(
    port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 10.0
) -> None:
    """Return once something accepts connections on the port; fail if the process (the
    program ``name``) died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s")


class ProxyProcess:
    """A proxy program run on one fixed port, which it keeps across kill and restart."""

    scheme = "http"

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.log_path = folder / f"{type(self).__name__.lower()}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_listening(self.port, self.process, command[0])
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: the proxy vanishes mid-transfer, as a crashed or rebooted one does."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TinyProxy(ProxyProcess):
    """tinyproxy: forwards plain HTTP requests and tunnels CONNECT, one log line each."""

    def command(self) -> list[str]:
        config = self.folder / f"tinyproxy-{self.port}.conf"
        config.write_text(
            f"Port {self.port}\n"
            "Listen 127.0.0.1\n"
            "Timeout 600\n"
            f'LogFile "{self.log_path}"\n'
            "LogLevel Connect\n"
            "MaxClients 200\n"
            "Allow 127.0.0.1\n"
            "DisableViaHeader Yes\n"
        )
        return [require_program("tinyproxy"), "-d", "-c", str(config)]

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request it received: ("CONNECT", "host:port") for TLS."""
        return TINYPROXY_REQUEST.findall(self.log_text())


class MicroSocks(ProxyProcess):
    """microsocks: a SOCKS5 server that logs one line per connection it opens."""

    scheme = "socks5"

    def command(self) -> list[str]:
        return [require_program("microsocks"), "-i", "127.0.0.1", "-p", str(self.port)]

    def connections(self) -> list[str]:
        """The "host:port" of every connection it opened for a client."""
        return MICROSOCKS_CONNECT.findall(self.log_text())


def host_port(url: str) -> str:
    """The "host:port" of a URL, as the guarded CLI and the proxies' logs name it."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def guarded_download(
    url: str,
    output: Path,
    env: Mapping[str, str],
    *extra: str,
    forbid_direct: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The quiet DEM download from the emulator at ``url`` with exactly the environment
    ``env``; with ``forbid_direct`` a direct connection to the emulator is refused, so a run
    that works proves its traffic took the proxy."""
    return run_guarded_cli(
        quiet_dem_args(url, output, *extra),
        env,
        forbid_direct=[host_port(url)] if forbid_direct else [],
        timeout=timeout,
    )
