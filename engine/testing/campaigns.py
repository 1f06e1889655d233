"""The outage and fault runs that ``tests/test_outage.py`` and ``tests/test_hostile.py`` run
once and ``scripts/outage_soak.py`` and ``scripts/fault_sweep.py`` repeat at length."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.job import RunOptions, run_job
from engine.progress import SilentProgress
from engine.scheduler import SchedulerOptions
from engine.testing.jobs import dem_spec, state_of
from engine.testing.peers import TINYPROXY_REQUEST, TinyProxy
from engine.transport import TransportOptions
from state import Store


class OutageProgress(SilentProgress):
    """Calls ``kill`` once ``kill_after`` tiles are done, and ``restart`` ``outage_s`` later.

    Driven by the job's own progress calls, so the kill lands mid-job on every machine
    whatever its speed.
    """

    def __init__(
        self,
        kill: Callable[[], object],
        restart: Callable[[], object],
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
    state_path = state_of(output)
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
    state_path = state_of(output)
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
