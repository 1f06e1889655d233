#!/usr/bin/env python3
"""Seed scale: the tutorial's jobs at full size, unattended, through a real proxy, measured.

Each job is the tutorial's Sentinel-2 SR harmonized 2022 median composite (QA60 cloud mask,
/10000, B1-B8, 10 m, EPSG:4326), fetched by the real ``eefetch composite`` command in its own
process from the bundled emulator (realistic profile, its own process) through tinyproxy, with
interruptions at chosen fractions of the tiles done: SIGKILL (the process frozen first, so what
it had done is read exactly), SIGINT (Ctrl-C), or the proxy stopped for a while and started
again on the same port. After each stop the same command runs again (resume) until the job
completes. The CLI runs with direct connections to the emulator refused, so every byte went
through the proxy.

Then it checks sampled windows of the GeoTIFF (windows across tile corners, and the grid's
corners) against the oracle (an emulator with no limits rendering the same grid), that no tile
the state recorded as done at a kill was served again, and reports per job: wall time, CPU
seconds of eefetch (each run's process, from wait4), of the emulator and of the proxy (from
/proc), eefetch's peak RSS, the disk high-water mark of the job's folder (output, tiles, state;
sampled by a background poller), the fetch bound of the emulator's server model for these
tiles, and the load average along the way.

    .venv/bin/python scripts/seed_scale.py --job huainan --write-benchmarks   # 3.7 GB
    .venv/bin/python scripts/seed_scale.py --job big --write-benchmarks       # 18.3 GB
    .venv/bin/python scripts/seed_scale.py --small                            # ~4 MB, CI size

Jobs: ``huainan`` is the tutorial's own (engine/data/huainan.geojson: 3.7 GB, two SIGKILLs and
a 2-minute proxy outage); ``big`` the same composite over Huainan's box grown 2.22 times each
way about its centre (18.3 GB, the tutorial's other download; one Ctrl-C); ``small`` a 4 MB
box inside Huainan with small tiles and a 5 s outage, which tests/test_seed_scale.py runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench.py and crash_campaign.py are this folder's scripts, not modules of the package.
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

import bench  # noqa: E402  (scripts/bench.py: the emulator's process, /proc CPU, the machine)
import crash_campaign  # noqa: E402  (done counts, freezing, served counts, the oracle check)

from engine.emulator.config import EmulatorConfig  # noqa: E402
from engine.grid import Window  # noqa: E402
from engine.progress import format_bytes  # noqa: E402
from engine.testing.cli import GUARDED_CLI, cli_env  # noqa: E402
from engine.testing.jobs import tutorial_args  # noqa: E402
from engine.testing.peers import TinyProxy, host_port  # noqa: E402
from state import Store  # noqa: E402

BENCHMARKS = REPO / "BENCHMARKS.md"
PROFILE = "realistic"
RSS_GOAL_MB = 400.0
DISK_SLACK = 1.1  # the disk goal: 1.1 x the output + one tile per connection
HUAINAN = "engine/data/huainan.geojson"
# Huainan's box (116.35-117.20 E, 31.90-33.00 N) grown 2.22 times each way about its centre:
# 21041 x 27163 pixels, 18.3 GB, the tutorial's other download.
BIG_BOX = "115.83,31.23,117.72,33.67"
SMALL_BOX = "116.70,32.40,116.7323,32.4323"  # inside Huainan: 360 x 360 pixels, 4.1 MB


@dataclass(frozen=True)
class Event:
    """Something done to a run once ``at`` (a fraction of the job's tiles) are done: ``kill``
    (SIGKILL), ``interrupt`` (SIGINT) or ``outage`` (the proxy stopped for ``outage_s``)."""

    at: float
    action: str


@dataclass(frozen=True)
class Preset:
    """One campaign job: where, what is done to it, how it is checked."""

    name: str
    region: str
    why: str
    events: tuple[Event, ...]
    outage_s: float = 120.0
    samples: int = 16  # oracle windows centred on tile corners (plus the grid's 4 corners)
    window: int = 512  # their side in pixels
    extra: tuple[str, ...] = ()
    run_timeout_s: float = 6 * 3600.0
    poll_s: float = 0.5  # the disk and load poller's interval


TWO_KILLS_AND_AN_OUTAGE = (Event(0.25, "kill"), Event(0.45, "outage"), Event(0.70, "kill"))
PRESETS = {
    "small": Preset(
        "small",
        SMALL_BOX,
        "a 4 MB box inside Huainan cut into ~36 tiles, 3 in flight: the CI version",
        TWO_KILLS_AND_AN_OUTAGE,
        outage_s=5.0,
        samples=6,
        window=96,
        extra=("--max-tile-bytes", "160000", "--concurrency", "3"),
        run_timeout_s=300.0,
        poll_s=0.1,
    ),
    "huainan": Preset(
        "huainan",
        HUAINAN,
        "the tutorial's job: Huainan's bounding box (geemap reported 3.71 GB)",
        TWO_KILLS_AND_AN_OUTAGE,
    ),
    "big": Preset(
        "big",
        BIG_BOX,
        "the tutorial's 18.3 GB download: the same composite over Huainan's box grown 2.22 "
        "times each way about its centre (the same pixel cost per byte as the tutorial's job, "
        "which the emulator renders at ~15-30 MB per CPU second here)",
        (Event(0.5, "interrupt"),),
    ),
}


def eefetch_args(preset: Preset, output: Path, url: str, proxy_url: str) -> list[str]:
    """The README's tutorial command for the preset's region (plus its extra options)."""
    return tutorial_args(preset.region, output, url, "--proxy", proxy_url, *preset.extra)


# ----------------------------------------------------------------------------- pure figures


def fetch_bound(
    tiles: Sequence[tuple[int, int]], config: EmulatorConfig, connections: int
) -> float:
    """The least wall time in which any client could fetch ``tiles`` (pixels, body bytes)
    from the server model ``config`` with ``connections`` requests in flight: each request
    waits its modelled compute (fixed + per megapixel), then streams its body at the
    per-connection rate, and all bodies share the total rate. API calls (0.2 s each) can
    overlap the fetch, so they are left out: a lower bound."""
    conn = config.conn_bandwidth or math.inf
    per_request = [
        config.latency_fixed_s + config.latency_per_mpix_s * pixels / 1e6 + nbytes / conn
        for pixels, nbytes in tiles
    ]
    link = sum(b for _, b in tiles) / config.total_bandwidth if config.total_bandwidth else 0.0
    return max(sum(per_request) / max(1, connections), link, max(per_request, default=0.0))


def disk_goal(output_bytes: int, largest_tile: int, connections: int) -> int:
    """The disk budget of issue 11: 1.1 x the output + one tile per connection."""
    return int(DISK_SLACK * output_bytes + largest_tile * connections)


def sample_windows(
    height: int,
    width: int,
    tiles: Sequence[Window],
    count: int,
    side: int,
    rng: random.Random,
) -> list[Window]:
    """The grid's four corners, and ``count`` windows centred on the bottom-right corners of
    randomly chosen tiles, where up to four tiles meet (a merge's seams); each ``side`` pixels
    a side at most, inside the grid."""
    h, w = min(side, height), min(side, width)
    windows = [
        Window(0, 0, h, w),
        Window(0, width - w, h, w),
        Window(height - h, 0, h, w),
        Window(height - h, width - w, h, w),
    ]
    inner = [t for t in tiles if t.row_off + t.height < height and t.col_off + t.width < width]
    for tile in rng.sample(inner, min(count, len(inner))):
        top = min(max(0, tile.row_off + tile.height - h // 2), height - h)
        left = min(max(0, tile.col_off + tile.width - w // 2), width - w)
        windows.append(Window(top, left, h, w))
    return windows


PROGRESS_LINE = re.compile(r"^\s*([\d.]+) eefetch: (\d+)/(\d+) tiles, ")
ETA = re.compile(r"ETA (\w+)")


def parse_duration(text: str) -> float:
    """Seconds from eefetch's ``format_seconds`` text: ``45s``, ``3m20s``, ``1h02m``."""
    parts = {unit: int(number) for number, unit in re.findall(r"(\d+)([hms])", text)}
    return 3600.0 * parts.get("h", 0) + 60.0 * parts.get("m", 0) + parts.get("s", 0)


def eta_ratios(log_lines: Sequence[str]) -> list[float]:
    """For each progress line of one run that printed an ETA: that ETA over the time the run
    really took from there to its last tile (1.0 is exact; > 1 pessimistic)."""
    points: list[tuple[float, float | None]] = []
    last: float | None = None
    for line in log_lines:
        match = PROGRESS_LINE.match(line)
        if match is None:
            continue
        at, done, total = match.groups()
        if done == total:
            last = float(at)
        eta = ETA.search(line)
        points.append((float(at), parse_duration(eta.group(1)) if eta else None))
    if last is None:
        return []
    return [eta / (last - at) for at, eta in points if eta is not None and last - at > 1.0]


# ----------------------------------------------------------------------------- watching


@dataclass
class DiskPoller:
    """Samples the job folder's size on disk (allocated blocks) and the load average in a
    background thread; keeps the high-water mark and what made it up."""

    folder: Path
    interval: float
    peak: int = 0
    peak_parts: dict[str, int] = field(default_factory=dict)
    peak_at: float = 0.0
    loads: list[float] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def start(self) -> DiskPoller:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        parts = folder_usage(self.folder)
        total = sum(parts.values())
        self.samples += 1
        self.loads.append(os.getloadavg()[0])
        if total > self.peak:
            self.peak, self.peak_parts = total, parts
            self.peak_at = time.monotonic() - self._started


def folder_usage(folder: Path) -> dict[str, int]:
    """Bytes on disk under ``folder`` by kind: tiles, output (the published or unfinished
    GeoTIFF), state (database, journal, lock, checkpoint)."""
    parts = {"tiles": 0, "output": 0, "state": 0}
    stack = [folder]
    while stack:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(stack.pop()):
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    size = entry.stat(follow_symlinks=False).st_blocks * 512
                    parts[_kind(entry.path)] += size
    return parts


def _kind(path: str) -> str:
    if "eefetch-tiles" in path:
        return "tiles"
    if path.endswith((".tif", ".eefetch-merge.tmp")):
        return "output"
    return "state"


@dataclass
class Run:
    """One process of the job, as seen from outside."""

    number: int
    ended_by: str
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    done_before: int
    done_after: int
    total: int
    startup_s: float | None  # until "resuming: ..." (a resumed run's start-up)
    log: str


class ProxyOutage:
    """The proxy stopped now and started again ``seconds`` later, on the same port."""

    def __init__(self, proxy: TinyProxy, seconds: float, cpu: Callable[[], None]) -> None:
        self.proxy = proxy
        self.seconds = seconds
        self.record_cpu = cpu
        self.stopped_at: float | None = None
        self.restarted_at: float | None = None
        self.fraction: float | None = None

    def begin(self, fraction: float) -> None:
        self.record_cpu()
        self.proxy.stop()
        self.stopped_at = time.monotonic()
        self.fraction = fraction

    def tick(self) -> None:
        """Start the proxy again once the outage has lasted its time."""
        due = self.stopped_at is not None and time.monotonic() - self.stopped_at >= self.seconds
        if due and self.restarted_at is None:
            self.proxy.start()
            self.restarted_at = time.monotonic()

    def finish(self) -> None:
        """Wait out the rest of an outage (the run ended during it)."""
        while self.stopped_at is not None and self.restarted_at is None:
            self.tick()
            time.sleep(0.1)

    @property
    def down_s(self) -> float | None:
        if self.stopped_at is None or self.restarted_at is None:
            return None
        return self.restarted_at - self.stopped_at


# ----------------------------------------------------------------------------- the campaign


class Campaign:
    """One job of a preset from the first run to the checks; ``report()`` holds the figures."""

    def __init__(self, preset: Preset, workdir: Path, seed: int, outage_s: float | None) -> None:
        self.preset = preset
        self.workdir = workdir
        self.seed = seed
        self.outage_s = preset.outage_s if outage_s is None else outage_s
        self.job_dir = workdir / "job"
        self.output = self.job_dir / f"{preset.name}.tif"
        self.state = Path(f"{self.output}.eefetch.db")
        self.runs: list[Run] = []
        self.missed: list[Event] = []
        self.kills: list[dict[str, Any]] = []
        self.seen_done: dict[str, int] = {}
        self.proxy_cpu_s = 0.0
        self.info: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.info["machine"] = bench.machine_facts()
        self.info["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with (
            bench.Emulator(PROFILE, self.seed, {}) as emulator,
            bench.Emulator("clean", 0, {"no_limits": True}) as oracle,
            TinyProxy(self.workdir / "proxy") as proxy,
        ):
            self.argv = eefetch_args(self.preset, self.output, emulator.url, proxy.url)
            env = cli_env()
            forbidden = host_port(emulator.url)
            self.command = [sys.executable, "-c", GUARDED_CLI, forbidden, *self.argv]
            self.info["plan"] = self._dry_run(env)
            emulator.reset()
            emulator_cpu0 = emulator.cpu()
            poller = DiskPoller(self.job_dir, self.preset.poll_s).start()
            outage = ProxyOutage(proxy, self.outage_s, lambda: self._add_proxy_cpu(proxy))
            started = time.monotonic()
            try:
                self._runs(emulator, outage, env)
            finally:
                poller.stop()
                outage.finish()
            self.info["job_wall_s"] = time.monotonic() - started
            self.info["emulator_cpu_s"] = emulator.cpu() - emulator_cpu0
            self._add_proxy_cpu(proxy)
            self.info["emulator"] = emulator.stats()
            self.info["proxy_requests"] = len(proxy.requests())
            self.info["proxy_starts"] = proxy.starts
            self.info["outage"] = {
                "at_fraction": outage.fraction,
                "down_s": outage.down_s,
                "seconds": self.outage_s,
            }
            self.info["disk"] = {
                "peak": poller.peak,
                "peak_parts": poller.peak_parts,
                "peak_at_s": poller.peak_at,
                "samples": poller.samples,
            }
            self.info["load"] = poller.loads
            self.info["served_now"] = crash_campaign.served_counts(emulator.url)
            self._check(oracle)
        return self.report()

    def _add_proxy_cpu(self, proxy: TinyProxy) -> None:
        if proxy.process is not None:
            self.proxy_cpu_s += bench.proc_cpu(proxy.process.pid)

    def _dry_run(self, env: dict[str, str]) -> str:
        done = subprocess.run(
            [*self.command, "--dry-run"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"seed_scale: the dry run failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def _runs(self, emulator: bench.Emulator, outage: ProxyOutage, env: dict[str, str]) -> None:
        pending = list(self.preset.events)
        stops = sum(e.action in ("kill", "interrupt") for e in pending)
        while len(self.runs) < stops + 3:
            run = self._one_run(len(self.runs) + 1, pending, outage, env, emulator)
            self.runs.append(run)
            if run.returncode == 0:
                break
        self.missed = pending

    def _one_run(
        self,
        number: int,
        pending: list[Event],
        outage: ProxyOutage,
        env: dict[str, str],
        emulator: bench.Emulator,
    ) -> Run:
        log_path = self.workdir / f"run{number}.log"
        lines: list[str] = []
        done_before, _ = crash_campaign.done_count(self.state)
        started = time.monotonic()
        process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A campaign started with nohup inherits an ignored SIGINT; Ctrl-C must work.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        reader = threading.Thread(target=_read_lines, args=(process, lines, started, log_path))
        reader.start()
        ended: dict[str, Any] = {}
        waiter = threading.Thread(target=_wait4, args=(process.pid, ended), daemon=True)
        waiter.start()
        ended_by = "completed"
        while waiter.is_alive():
            outage.tick()
            if time.monotonic() - started > self.preset.run_timeout_s:
                os.kill(process.pid, signal.SIGKILL)
                ended_by = "timed out"
            done, total = crash_campaign.done_count(self.state)
            if pending and total and done >= pending[0].at * total:
                event = pending.pop(0)
                fraction = done / total
                if event.action == "outage":
                    outage.begin(fraction)
                    continue
                with contextlib.suppress(ProcessLookupError):  # it ended just now
                    if event.action == "kill":
                        os.kill(process.pid, signal.SIGSTOP)
                        done, total = crash_campaign.done_count(self.state)
                        os.kill(process.pid, signal.SIGKILL)
                        ended_by = f"SIGKILL at {done}/{total} tiles"
                    else:
                        os.kill(process.pid, signal.SIGINT)
                        ended_by = f"SIGINT at {done}/{total} tiles"
                self.kills.append(
                    {"run": number, "action": event.action, "at": event.at, "done": done}
                )
                break
            waiter.join(0.05)
        waiter.join()
        reader.join(60)
        wall = time.monotonic() - started
        if ended_by.startswith("SIGKILL"):
            time.sleep(0.2)  # the emulator's accounting of bodies already sent
            served = crash_campaign.served_counts(emulator.url)
            for key in crash_campaign.done_tile_keys(self.state):
                self.seen_done.setdefault(key, served.get(key, 0))
        returncode = ended["returncode"]
        if returncode == 0 and ended_by != "completed":  # the signal came after the end
            late = self.kills.pop()
            pending.insert(0, Event(late["at"], late["action"]))
            ended_by = "completed"
        if ended_by == "completed" and returncode != 0:
            ended_by = f"exit {returncode} by itself"
        done_after, total = crash_campaign.done_count(self.state)
        usage = ended["usage"]
        return Run(
            number=number,
            ended_by=ended_by,
            returncode=returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / 1024,
            done_before=done_before,
            done_after=done_after,
            total=total,
            startup_s=_startup(lines),
            log=str(log_path),
        )

    def _check(self, oracle: bench.Emulator) -> None:
        """The oracle windows, the tiles, and what the emulator served again."""
        with Store.open(self.state, create=False) as store:
            done = store.tiles("done")
            counts = store.counts()
            planned = store.job()
        assert planned is not None
        spec = planned.spec
        grid = spec["grid"]
        tiles = [Window(t.row_off, t.col_off, t.height, t.width) for t in done]
        self.info["tiles"] = {
            "done": len(done),
            "counts": counts,
            "bytes": sum(t.bytes or 0 for t in done),
            "largest": max((t.bytes or 0 for t in done), default=0),
            "sizes": [(t.width * t.height, t.bytes or 0) for t in done],
            "attempts": sum(t.attempts for t in done),
        }
        self.info["grid"] = {"width": grid["width"], "height": grid["height"]}
        complete = bool(self.runs) and self.runs[-1].returncode == 0
        self.info["complete"] = complete
        self.info["output_bytes"] = self.output.stat().st_size if complete else 0
        served = self.info["served_now"]
        self.info["refetched_done"] = sum(
            1 for key, count in self.seen_done.items() if count < 1 or served.get(key, 0) != count
        )
        self.info["served_twice"] = sum(1 for count in served.values() if count > 1)
        if not complete:
            self.info["oracle"] = {"windows": 0, "mismatches": None}
            return
        rng = random.Random(self.seed)
        windows = sample_windows(
            grid["height"], grid["width"], tiles, self.preset.samples, self.preset.window, rng
        )
        cpu0, started = oracle.cpu(), time.monotonic()
        wrong = crash_campaign.oracle_mismatches(self.output, self.state, oracle.url, windows)
        pixels = sum(w.width * w.height for w in windows)
        self.info["oracle"] = {
            "windows": len(windows),
            "side": self.preset.window,
            "pixels": pixels,
            "mismatches": [asdict(w) for w in wrong],
            "cpu_s": oracle.cpu() - cpu0,
            "wall_s": time.monotonic() - started,
            "bytes": pixels * 4 * 8,
        }

    def report(self) -> dict[str, Any]:
        """Every figure of the job, the goals and bounds beside them."""
        info = self.info
        tiles = info.get("tiles", {})
        config = EmulatorConfig.from_profile(PROFILE)
        in_flight = int(info.get("emulator", {}).get("max_in_flight", 0)) or 1
        quota = config.max_concurrent or 40
        sizes = tiles.get("sizes", [])
        output = int(info.get("output_bytes", 0))
        cpu = sum(r.cpu_s for r in self.runs)
        total_cpu = cpu + info.get("emulator_cpu_s", 0.0) + self.proxy_cpu_s
        served = info.get("emulator", {}).get("bytes_served", 0)
        last_log = Path(self.runs[-1].log).read_text().splitlines() if self.runs else []
        oracle = info.get("oracle", {})
        peak_rss = max((r.peak_rss_mb for r in self.runs), default=0.0)
        goal = disk_goal(output, tiles.get("largest", 0), in_flight)
        logs = "".join(Path(r.log).read_text() for r in self.runs)
        return {
            "job": self.preset.name,
            "why": self.preset.why,
            "region": self.preset.region,
            "command": "eefetch "
            + shlex.join(eefetch_args(self.preset, Path(self.output.name), "$EMULATOR", "$PROXY")),
            "started": info.get("started"),
            "machine": info.get("machine"),
            "plan": info.get("plan", ""),
            "complete": info.get("complete", False),
            "missed_events": [asdict(e) for e in self.missed],
            "runs": [asdict(r) for r in self.runs],
            "kills": self.kills,
            "grid": info.get("grid"),
            "tiles": {k: v for k, v in tiles.items() if k != "sizes"},
            "output_bytes": output,
            "wall_s": info.get("job_wall_s"),
            "eefetch_cpu_s": cpu,
            "emulator_cpu_s": info.get("emulator_cpu_s"),
            "emulator_cpu_s_per_gb": info.get("emulator_cpu_s", 0.0) / max(served / 1e9, 1e-9),
            "proxy_cpu_s": self.proxy_cpu_s,
            "cpu_bound_s": total_cpu / (os.cpu_count() or 1),
            "peak_rss_mb": peak_rss,
            "rss_goal_mb": RSS_GOAL_MB,
            "disk": {**info.get("disk", {}), "goal": goal},
            "fetch_bound_s": {
                f"quota ({quota} in flight)": fetch_bound(sizes, config, quota),
                f"eefetch's most in flight ({in_flight})": fetch_bound(sizes, config, in_flight),
            },
            "emulator": {
                key: info.get("emulator", {}).get(key)
                for key in (
                    "bytes_served",
                    "max_in_flight",
                    "quota_rejections",
                    "client_aborts",
                    "requests",
                )
            },
            "served_twice": info.get("served_twice"),
            "refetched_done": info.get("refetched_done"),
            "outage": {
                **info.get("outage", {}),
                "probes": logs.count("probing again"),
                "back": logs.count("network is back"),
            },
            "proxy_requests": info.get("proxy_requests"),
            "proxy_starts": info.get("proxy_starts"),
            "oracle": oracle,
            "eta_ratios_last_run": eta_ratios(last_log),
            "load": _spread(info.get("load", [])),
        }


def _read_lines(
    process: subprocess.Popen[str], lines: list[str], started: float, log_path: Path
) -> None:
    """The run's output, each line stamped with seconds since the run started."""
    assert process.stdout is not None
    with log_path.open("w") as log:
        for line in process.stdout:
            stamped = f"{time.monotonic() - started:8.1f} {line.rstrip()}"
            lines.append(stamped)
            log.write(stamped + "\n")
            log.flush()


def _wait4(pid: int, ended: dict[str, Any]) -> None:
    """Reap the run and keep its resource usage (CPU and peak RSS of that process)."""
    _, status, usage = os.wait4(pid, 0)
    ended["returncode"] = os.waitstatus_to_exitcode(status)
    ended["usage"] = usage


def _startup(lines: Sequence[str]) -> float | None:
    for line in lines:
        if "eefetch: resuming:" in line:
            return float(line.split()[0])
    return None


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# ----------------------------------------------------------------------------- the report


def markdown(report: dict[str, Any], invocation: str) -> str:
    """The job's block for BENCHMARKS.md."""
    machine = report["machine"] or {}
    disk = report["disk"]
    tiles = report["tiles"]
    oracle = report["oracle"]
    outage = report["outage"]
    output = report["output_bytes"]
    wall = report["wall_s"] or 0.0
    load = report["load"]
    bounds = report["fetch_bound_s"]
    eta = report["eta_ratios_last_run"]
    plan = [line for line in report["plan"].splitlines() if line.split(":")[0] in PLAN_KEYS]
    lines = [
        f"Command: `{invocation}`  ",
        f"Run: started {report['started']} on {machine.get('cpu')}, {machine.get('cpus')} CPUs, "
        f"{machine.get('mem_gb')} GB, {machine.get('platform')}, Python {machine.get('python')}, "
        f"eefetch commit `{machine.get('eefetch_commit')}`; load average (1 min) during the job "
        f"{load.get('min', 0):.1f} / {load.get('median', 0):.1f} / {load.get('max', 0):.1f} "
        "(min / median / max): other sessions shared the 2 cores.  ",
        f"Job: {report['why']}. The command (emulator `{PROFILE}` profile in its own process, "
        "tinyproxy between them, direct connections to the emulator refused):",
        "",
        "```",
        report["command"],
        *plan,
        "```",
        "",
        "| run | ended by | wall s | eefetch CPU s | peak RSS MB | tiles done before → after "
        "| start-up to resume s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        startup = "" if run["startup_s"] is None else f"{run['startup_s']:.1f}"
        lines.append(
            f"| {run['number']} | {run['ended_by']} | {run['wall_s']:.0f} | {run['cpu_s']:.0f} "
            f"| {run['peak_rss_mb']:.0f} | {run['done_before']} → {run['done_after']} of "
            f"{run['total']} | {startup} |"
        )
    fetch = "; ".join(f"{v:.0f} s at {k}" for k, v in bounds.items())
    cpu_bound = report["cpu_bound_s"]
    served = report["emulator"]["bytes_served"] or 0
    lines += [
        "",
        "| figure | measured | goal or bound | measured / goal |",
        "|---|---|---|---|",
        f"| wall time, first start to the published file | {wall:.0f} s ({wall / 60:.1f} min) "
        f"| fetch bound of the profile for these tiles: {fetch}; CPU bound (all CPU seconds "
        f"below / {machine.get('cpus')} cores): {cpu_bound:.0f} s "
        f"| {wall / max(cpu_bound, 1e-9):.2f} x the CPU bound |",
        f"| eefetch CPU (all runs) | {report['eefetch_cpu_s']:.0f} s "
        f"({report['eefetch_cpu_s'] / max(tiles['bytes'] / 1e9, 1e-9):.1f} s per GB) | | |",
        f"| emulator CPU (renders every pixel) | {report['emulator_cpu_s']:.0f} s "
        f"({report['emulator_cpu_s_per_gb']:.1f} s per GB served) | | |",
        f"| tinyproxy CPU | {report['proxy_cpu_s']:.0f} s | | |",
        f"| eefetch peak RSS (largest of the runs) | {report['peak_rss_mb']:.0f} MB "
        f"| < {RSS_GOAL_MB:.0f} MB | {report['peak_rss_mb'] / RSS_GOAL_MB:.2f} |",
        f"| disk high-water mark of the job folder | {format_bytes(disk['peak'])} (tiles "
        f"{format_bytes(disk['peak_parts'].get('tiles', 0))}, output "
        f"{format_bytes(disk['peak_parts'].get('output', 0))}, state "
        f"{format_bytes(disk['peak_parts'].get('state', 0))}; {disk['samples']} samples) "
        f"| ≤ 1.1 x output + {report['emulator']['max_in_flight']} x largest tile = "
        f"{format_bytes(disk['goal'])} | {disk['peak'] / max(disk['goal'], 1):.2f} |",
        f"| output GeoTIFF | {format_bytes(output)} (deflate) for "
        f"{format_bytes(tiles['bytes'])} of tiles | | |",
        "",
        f"- Tiles: {tiles['done']} done, {tiles['counts'].get('split', 0)} split, "
        f"{tiles['counts'].get('failed', 0)} failed; largest {format_bytes(tiles['largest'])}; "
        f"failed attempts recorded {tiles['attempts']}; the emulator "
        f"served {format_bytes(served)}, {report['served_twice']} tiles in full more than once "
        f"(in flight at a stop), most in flight at once {report['emulator']['max_in_flight']}, "
        f"429s for concurrency {report['emulator']['quota_rejections']}; requests whose client "
        f"had hung up {report['emulator']['client_aborts']}.",
        f"- Done tiles fetched again after a kill: {report['refetched_done']}.",
        f"- Oracle: {oracle.get('windows')} windows of up to {oracle.get('side')} x "
        f"{oracle.get('side')} px (the grid's corners and windows across tile corners), "
        f"{oracle.get('pixels', 0) / 1e6:.1f} Mpx x 8 bands: "
        f"{len(oracle.get('mismatches') or []) if oracle.get('mismatches') is not None else '-'} "
        "differ; the oracle rendered them at "
        f"{oracle.get('bytes', 0) / 1e6 / max(oracle.get('cpu_s', 0), 1e-9):.0f} MB per CPU s.",
    ]
    if outage.get("down_s"):
        lines.append(
            f"- Proxy outage: tinyproxy stopped at {outage['at_fraction']:.0%} of the tiles, "
            f"down {outage['down_s']:.0f} s, started again on the same port; eefetch printed "
            f"{outage['probes']} 'probing again' and {outage['back']} 'network is back' lines; "
            f"the proxy carried {report['proxy_requests']} requests over "
            f"{report['proxy_starts']} starts."
        )
    if eta:
        lines.append(
            f"- ETA printed by the last run over its real time to the last tile: median "
            f"{statistics.median(eta):.2f} (min {min(eta):.2f}, max {max(eta):.2f}, "
            f"{len(eta)} lines)."
        )
    if report["missed_events"]:
        lines.append(
            f"- Interruptions that never came (the run ended first): {report['missed_events']}."
        )
    return "\n".join(lines)


PLAN_KEYS = ("grid", "bands", "tiles", "size", "disk")


def write_block(path: Path, name: str, block: str) -> None:
    """Replace the job's block between its markers in ``path`` (temporary file, rename)."""
    begin, end = f"<!-- seed-scale:{name}:begin -->", f"<!-- seed-scale:{name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"seed_scale: {path} has no {begin} ... {end} markers; add them first")
    head, rest = text.split(begin, 1)
    updated = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(updated)
    os.replace(temp, path)


def remove_outputs(campaign: Campaign) -> None:
    """The job's GeoTIFF, state and tiles (GBs); the logs and report stay."""
    shutil.rmtree(campaign.job_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=sorted(PRESETS), default="huainan")
    parser.add_argument("--small", action="store_true", help="the CI version (--job small)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--outage-s", type=float, default=None, help="length of the outage")
    parser.add_argument("--keep-outputs", action="store_true", help="keep GeoTIFF, state, tiles")
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="write the job's block into BENCHMARKS.md"
    )
    args = parser.parse_args(argv)
    preset = PRESETS["small" if args.small else args.job]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"eefetch-seed-{preset.name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"seed_scale: {preset.name} job in {workdir}", flush=True)
    campaign = Campaign(preset, workdir, args.seed, args.outage_s)
    report = campaign.run()
    invocation = shlex.join([".venv/bin/python", "scripts/seed_scale.py", *sys.argv[1:]])
    text = markdown(report, invocation)
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (workdir / "report.md").write_text(text + "\n")
    print(text, flush=True)
    if not args.keep_outputs:
        remove_outputs(campaign)
    ok = report["complete"] and not report["missed_events"] and not report["refetched_done"]
    ok = ok and report["oracle"].get("mismatches") == []
    if args.write_benchmarks:
        write_block(BENCHMARKS, preset.name, text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
