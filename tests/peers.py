"""Peers and drivers of the network tests (test_proxy, test_tls, test_outage, test_hostile).

The proxies are real processes, tinyproxy (HTTP) and microsocks (SOCKS5), each on a free
port of 127.0.0.1, logging what they forwarded to a file, so a test proves from the proxy's
side that traffic went through it. They come from Debian's packages
(``scripts/system_deps.sh`` installs them); a missing program fails the test with the command
that fixes it, never a skip. Also here: a test certificate authority, the CLI run in a
process that refuses direct connections, the oracle comparison, and the outage and fault
runs that ``scripts/outage_soak.py`` and ``scripts/fault_sweep.py`` share with the tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import numpy as np
import rasterio
import trustme
from rasterio.io import MemoryFile
from reliability import dem_job

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.job import RunOptions, run_job
from engine.progress import SilentProgress
from engine.scheduler import SchedulerOptions
from engine.spec import JobSpec
from engine.transport import TransportOptions
from state import Store

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


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Return once something accepts connections on the port; fail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} did not listen on port {port} within {timeout} s")


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
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_listening(self.port, self.process)
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


@dataclass
class Authority:
    """A certificate authority made at test time, and the files a client or server needs."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_authority(folder: Path) -> Authority:
    """A fresh CA and a certificate for 127.0.0.1 and localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = folder / "test-ca.pem"
    cert_file = folder / "emulator-cert.pem"
    key_file = folder / "emulator-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    return Authority(ca, ca_file, cert_file, key_file)


def https_emulator(config: EmulatorConfig, authority: Authority) -> EmulatorThread:
    """An emulator serving HTTPS with the test authority's certificate (not yet started)."""
    return EmulatorThread(config, ssl_context=authority.server_context())


# ----------------------------------------------------------------------------- the CLI

REPO = Path(__file__).resolve().parents[1]
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


def cli_env(**variables: str) -> dict[str, str]:
    """The test process's environment without any proxy or CA setting, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in NETWORK_VARIABLES}
    env.update(variables)
    return env


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    forbid_direct: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``eefetch ARGS`` in a fresh process, refusing direct connections to ``forbid_direct``."""
    return subprocess.run(
        [sys.executable, "-c", GUARDED_CLI, ",".join(forbid_direct), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(env),
        check=False,
    )


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def dem_download(url: str, output: Path, *extra: str) -> list[str]:
    """A small SRTM-like download cut into about a dozen tiles."""
    return [
        "download",
        "--asset",
        "USGS/SRTMGL1_003",
        "--region",
        "118.70,32.00,118.80,32.06",
        "--crs",
        "EPSG:32650",
        "--scale",
        "30",
        "-o",
        str(output),
        "--ee-url",
        url,
        "--max-tile-bytes",
        "36000",  # 12000 pixels of the int16 DEM (3 request bytes each)
        "--quiet",
        *extra,
    ]


# ----------------------------------------------------------------------------- the oracle


def state_spec(state_path: Path) -> JobSpec:
    with Store.open(state_path, create=False) as store:
        job = store.job()
        assert job is not None, f"{state_path} holds no job"
        return JobSpec.from_dict(job.spec)


def oracle_render(spec: JobSpec) -> np.ndarray:
    """The whole grid in one request to a fresh no-limits emulator: what every tile adds up to."""
    with EmulatorThread(EmulatorConfig.from_profile("clean", no_limits=True)) as oracle:
        ee_adapter.initialize(ee_adapter.Connection(url=oracle.url))
        image = ee_adapter.prepared_image(spec)
        url = ee_adapter.download_url(image, spec.grid)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=120) as answer:
            body = answer.read()
    with MemoryFile(body) as memfile, memfile.open() as dataset:
        return dataset.read()


def assert_equals_oracle(output: Path, state_path: Path) -> None:
    """The merged GeoTIFF holds exactly the oracle's pixels on the job's grid."""
    spec = state_spec(state_path)
    expected = oracle_render(spec)
    with rasterio.open(output) as dataset:
        merged = dataset.read()
        assert tuple(dataset.transform)[:6] == tuple(spec.grid.transform)
    assert merged.shape == expected.shape
    np.testing.assert_array_equal(merged, expected)


# ----------------------------------------------------------------------------- outages


class OutageProgress(SilentProgress):
    """Calls ``kill`` once ``kill_after`` tiles are done, and ``restart`` ``outage_s`` later.

    Driven by the job's own progress calls, so the kill lands mid-job on every machine
    whatever its speed.
    """

    def __init__(
        self,
        kill: Callable[[], None],
        restart: Callable[[], None],
        kill_after: int,
        outage_s: float,
    ) -> None:
        super().__init__()
        self.kill = kill
        self.restart = restart
        self.kill_after = kill_after
        self.outage_s = outage_s
        self.done = 0
        self.notes: list[str] = []
        self.killed_at: float | None = None
        self.restarted_at: float | None = None
        self.timer: threading.Timer | None = None

    def tile_done(self, nbytes: int) -> None:
        self.done += 1
        if self.done == self.kill_after and self.killed_at is None:
            self.kill()
            self.killed_at = time.monotonic()
            self.timer = threading.Timer(self.outage_s, self._restart)
            self.timer.start()

    def _restart(self) -> None:
        self.restart()
        self.restarted_at = time.monotonic()

    def note(self, message: str) -> None:
        self.notes.append(message)

    def join(self) -> None:
        if self.timer is not None:
            self.timer.join()


@dataclass
class OutageReport:
    """What one run through a proxy outage cost."""

    complete: bool
    tiles: int
    failed: int
    most_attempts: int
    max_attempts: int
    outages: int
    retries: int
    probes: int
    down_s: float
    wall_s: float
    proxy_requests_before_kill: int
    proxy_requests_after_restart: int
    tiles_served_twice: int
    output: Path
    state_path: Path

    def lines(self) -> list[str]:
        return [
            f"complete: {self.complete}",
            f"tiles: {self.tiles} (failed {self.failed})",
            f"most attempts spent on one tile: {self.most_attempts} of {self.max_attempts}",
            f"outages detected: {self.outages}, probes while down: {self.probes}",
            f"retries recorded: {self.retries}",
            f"proxy down for {self.down_s:.1f} s; whole job {self.wall_s:.1f} s",
            f"proxy requests before the kill: {self.proxy_requests_before_kill}, "
            f"after the restart: {self.proxy_requests_after_restart}",
            f"tiles the emulator served twice: {self.tiles_served_twice}",
        ]


def dem_spec(output: Path, url: str, concurrency: int, max_tile_bytes: int = 24_000) -> JobSpec:
    """A job of about 18 tiles of an SRTM-like DEM in UTM (the client must be initialised).

    ``max_tile_bytes`` counts 3 request bytes per pixel of the int16 DEM."""
    return dem_job(
        url,
        output,
        region=[118.70, 32.00, 118.84, 32.08],
        max_tile_bytes=max_tile_bytes,
        concurrency=concurrency,
    )


def run_through_outage(
    folder: Path,
    *,
    outage_s: float,
    kill_after: int = 6,
    scheduler: SchedulerOptions,
    latency_s: float = 0.1,
) -> OutageReport:
    """Download ~18 tiles through tinyproxy, killing it mid-job for ``outage_s`` seconds."""
    config = EmulatorConfig.from_profile("clean", seed=21, latency_fixed_s=0.0)
    config = config.replace(latency_fixed_s=latency_s)
    proxy = TinyProxy(folder / "proxy")
    output = folder / "outage.tif"
    state_path = Path(f"{output}.eefetch.db")
    with EmulatorThread(config) as emulator, proxy:
        ee_adapter.initialize(ee_adapter.Connection(url=emulator.url, proxy=proxy.url))
        spec = dem_spec(output, emulator.url, scheduler.concurrency)
        options = RunOptions(
            concurrency=scheduler.concurrency,
            transport=TransportOptions(proxy=proxy.url, connect_timeout=5.0),
            scheduler=scheduler,
        )
        progress = OutageProgress(proxy.kill, proxy.start, kill_after, outage_s)
        started = time.monotonic()
        # A job that never recovers fails, not hangs.
        budget = outage_s + 2 * scheduler.max_probe_interval + 120.0
        try:
            result = asyncio.run(
                asyncio.wait_for(run_job(spec, state_path, options, progress), budget)
            )
        finally:
            progress.join()
        wall = time.monotonic() - started
        stats = emulator.stats()
        log = proxy.log_text()
    with Store.open(state_path, create=False) as store:
        most = max(tile.attempts for tile in store.tiles("done"))
    runs = log.split("Initializing tinyproxy")
    before, after = runs[1], "".join(runs[2:])
    down = (progress.restarted_at or 0.0) - (progress.killed_at or 0.0)
    return OutageReport(
        complete=result.complete,
        tiles=result.counts["done"],
        failed=result.counts["failed"],
        most_attempts=most,
        max_attempts=scheduler.max_attempts,
        outages=result.summary.outages,
        retries=result.summary.retries,
        probes=sum("probing again" in note for note in progress.notes),
        down_s=down,
        wall_s=wall,
        proxy_requests_before_kill=len(TINYPROXY_REQUEST.findall(before)),
        proxy_requests_after_restart=len(TINYPROXY_REQUEST.findall(after)),
        tiles_served_twice=sum(item["count"] > 1 for item in stats["tiles_served"]),
        output=output,
        state_path=state_path,
    )


# ----------------------------------------------------------------------------- faults


@dataclass
class FaultReport:
    """What one job under the emulator's hostile fault mix cost."""

    rate: float
    seed: int
    complete: bool
    tiles: int
    failed: int
    wall_s: float
    tile_requests: int
    api_requests: int
    bytes_served: int
    bytes_kept: int
    retries: int
    outages: int
    most_attempts: int
    faults: dict[str, int]
    output: Path
    state_path: Path

    @property
    def requests_per_tile(self) -> float:
        return self.tile_requests / max(1, self.tiles)

    @property
    def bytes_wasted(self) -> int:
        return max(0, self.bytes_served - self.bytes_kept)


def hostile_config(rate: float, seed: int, stall_s: float = 30.0) -> EmulatorConfig:
    """The hostile profile's fault mix at ``rate``, with latency cut so a test stays short."""
    return EmulatorConfig.from_profile(
        "hostile",
        seed=seed,
        fault_rate=rate,
        api_fault_rate=min(rate, 0.05),
        stall_s=stall_s,
        retry_after_s=1,
        latency_fixed_s=0.05,
        latency_per_mpix_s=0.0,
        api_latency_s=0.0,
    )


def run_under_faults(
    folder: Path,
    *,
    rate: float,
    seed: int,
    scheduler: SchedulerOptions,
    transport: TransportOptions,
    max_tile_bytes: int = 24_000,
    budget_s: float = 600.0,
) -> FaultReport:
    """One job against an emulator injecting the hostile profile's faults at ``rate``."""
    output = folder / f"faults-{rate:.2f}-{seed}.tif"
    state_path = Path(f"{output}.eefetch.db")
    with EmulatorThread(hostile_config(rate, seed)) as emulator:
        ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
        spec = dem_spec(output, emulator.url, scheduler.concurrency, max_tile_bytes)
        options = RunOptions(
            concurrency=scheduler.concurrency, transport=transport, scheduler=scheduler, seed=seed
        )
        started = time.monotonic()
        result = asyncio.run(asyncio.wait_for(run_job(spec, state_path, options), budget_s))
        wall = time.monotonic() - started
        stats = emulator.stats()
    with Store.open(state_path, create=False) as store:
        done = store.tiles("done")
        failed = store.tiles("failed")
    kept = sum(tile.bytes or 0 for tile in done)
    requests = stats["requests"]
    return FaultReport(
        rate=rate,
        seed=seed,
        complete=result.complete,
        tiles=len(done) + len(failed),
        failed=len(failed),
        wall_s=wall,
        tile_requests=sum(requests.get("getPixels", {}).values()),
        api_requests=sum(requests.get("thumbnails:create", {}).values())
        + sum(requests.get("value:compute", {}).values()),
        bytes_served=stats["bytes_served"],
        bytes_kept=kept,
        retries=result.summary.retries,
        outages=result.summary.outages,
        most_attempts=max((tile.attempts for tile in done + failed), default=0),
        faults=dict(stats["faults"]),
        output=output,
        state_path=state_path,
    )
