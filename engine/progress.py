"""Progress from one stream of events: a bar on a terminal or in a notebook, log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None: ...
    def tile_done(self, nbytes: int) -> None: ...
    def tiles_added(self, count: int) -> None: ...
    def note(self, message: str) -> None: ...
    def retry(self, message: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class Counters:
    total: int = 0
    done: int = 0
    bytes: int = 0
    retries: int = 0
    started_bytes: int = 0
    started_at: float = 0.0
    first_done_at: float | None = None  # this run's first finished tile
    first_done_bytes: int = 0

    def finished(self, nbytes: int, now: float) -> None:
        """Count one finished tile; the first one of the run starts the ETA's clock."""
        if self.first_done_at is None:
            self.first_done_at, self.first_done_bytes = now, self.bytes + nbytes
        self.done += 1
        self.bytes += nbytes


class SilentProgress:
    """Records nothing visible; for tests and the Python API when asked to be quiet."""

    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None:
        pass

    def tile_done(self, nbytes: int) -> None:
        pass

    def tiles_added(self, count: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def retry(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class LogProgress:
    """Plain periodic lines, for logs and pipes where a bar would be noise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    every: float = 10.0
    clock: Callable[[], float] = time.monotonic
    counters: Counters = field(default_factory=Counters)
    _last: float = 0.0

    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None:
        self.counters = Counters(total_tiles, done_tiles, done_bytes, 0, done_bytes, self.clock())
        self._last = self.clock()
        if done_tiles:
            self._print(f"resuming: {done_tiles}/{total_tiles} tiles already done")

    def tile_done(self, nbytes: int) -> None:
        now = self.clock()
        self.counters.finished(nbytes, now)
        if now - self._last >= self.every or self.counters.done == self.counters.total:
            self._last = now
            self._print(status_line(self.counters, now))

    def tiles_added(self, count: int) -> None:
        self.counters.total += count

    def note(self, message: str) -> None:
        self._print(message)

    def retry(self, message: str) -> None:
        self.counters.retries += 1
        self._print(f"retry: {message}")

    def close(self) -> None:
        pass

    def _print(self, text: str) -> None:
        print(f"eefetch: {text}", file=self.stream, flush=True)


class BarProgress:
    """A tqdm bar of tiles (tqdm.auto draws a widget in Jupyter, text on a terminal)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bar: Any = None  # a tqdm bar (the terminal's or the notebook's) once started
        self.counters = Counters()

    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None:
        from tqdm.auto import tqdm

        self.counters = Counters(total_tiles, done_tiles, done_bytes, 0, done_bytes, self._clock())
        self._bar = tqdm(
            total=total_tiles, initial=done_tiles, unit="tile", dynamic_ncols=True, desc="eefetch"
        )

    def tile_done(self, nbytes: int) -> None:
        self.counters.finished(nbytes, self._clock())
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(rate_text(self.counters, self._clock()), refresh=False)

    def tiles_added(self, count: int) -> None:
        self.counters.total += count
        if self._bar is not None:
            self._bar.total = self.counters.total
            self._bar.refresh()

    def note(self, message: str) -> None:
        self._write(message)

    def retry(self, message: str) -> None:
        self.counters.retries += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"eefetch: {message}", file=sys.stderr)
        else:
            print(f"eefetch: {message}", file=sys.stderr, flush=True)


def rate_text(counters: Counters, now: float) -> str:
    elapsed = max(now - counters.started_at, 1e-9)
    fetched = counters.bytes - counters.started_bytes
    text = f"{format_bytes(counters.bytes)}, {format_bytes(fetched / elapsed)}/s"
    eta = eta_seconds(counters, now)
    if eta is not None:
        text += f", ETA {format_seconds(eta)}"
    if counters.retries:
        text += f", {counters.retries} retries"
    return text


def eta_seconds(counters: Counters, now: float) -> float | None:
    """Time left at the rate tiles have been finishing since this run's first one.

    Not since the start: start-up and the first wave (every connection busy, nothing finished
    yet for a tile's whole download time) would count as slowness, and a run of 40 large tiles
    in flight said it needed several times its real time. None until two tiles have finished.
    """
    remaining = counters.total - counters.done
    if counters.first_done_at is None or remaining <= 0:
        return None
    span = now - counters.first_done_at
    rate = (counters.bytes - counters.first_done_bytes) / span if span > 0 else 0.0
    if rate <= 0:
        return None
    return remaining * (counters.bytes / max(1, counters.done)) / rate


def status_line(counters: Counters, now: float) -> str:
    return f"{counters.done}/{counters.total} tiles, {rate_text(counters, now)}"


def format_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def choose_progress(quiet: bool = False) -> Progress:
    """A bar where a person watches (terminal or notebook), log lines otherwise."""
    if quiet:
        return SilentProgress()
    if sys.stderr.isatty() or _in_notebook():
        return BarProgress()
    return LogProgress()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"
