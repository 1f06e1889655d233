"""How fast to go: an adaptive concurrency limit and an outage monitor.

Both are small state machines driven by the scheduler's observations. Time comes in as a
clock function so that tests run them without sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.defaults import DEFAULT_CONCURRENCY, EE_MAX_CONCURRENCY

RATE_LIMIT_PAUSE_S = 0.5  # no new request for this long after a 429 ...
RATE_LIMIT_PAUSE_CAP_S = 30.0  # ... doubling while 429s keep coming, up to this


def rate_limit_pause(
    streak: int, base: float = RATE_LIMIT_PAUSE_S, cap: float = RATE_LIMIT_PAUSE_CAP_S
) -> float:
    """How long to send nothing new after the ``streak``-th 429 with no success between."""
    return min(cap, base * 2.0 ** max(0, streak - 1))


class Meter(Protocol):
    """What hears of each tile's latency and bytes (the limiter, for its probe)."""

    def first_byte(self, seconds: float) -> None: ...

    def observe(self, nbytes: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How a run whose concurrency the user did not pin looks for one (``ConcurrencyProbe``).

    The defaults were fitted with the server models of ``scripts/bench.py`` (BENCHMARKS.md).
    """

    start: int = DEFAULT_CONCURRENCY  # what the old fixed default was: fine on a capped link
    floor: int = 2
    ceiling: int = EE_MAX_CONCURRENCY
    window_s: float = 3.0  # shortest measurement of goodput at one level
    latency_windows: float = 2.0  # a window lasts at least this many first-byte delays
    growth: float = 2.0  # the next level tried, while more connections pay
    gain: float = 0.05  # what a level must add over the one before to count as better
    busy: float = 0.85  # a window counts only if the slots were this full (not the tail)
    reprobe_s: float = 120.0  # how long a settled level holds before one step up is tried
    rate_limit_hold_s: float = 300.0  # no level above one that met a 429, for this long


class Phase(enum.Enum):
    GROW = "grow"  # trying more connections while they pay
    SETTLED = "settled"  # on the best level found; one step up again after a while
    RECOVER = "recover"  # after a 429: one more connection a window, up to below that level


class ConcurrencyProbe:
    """Finds how many tiles in flight move the most bytes, by trying more while it pays.

    Goodput (bytes received per second, counted as they stream, so large tiles do not make it
    lumpy) is measured one window at a time; a window lasts long enough for new connections'
    first bytes to arrive. While a level moves ``gain`` more than the one before, the next,
    ``growth`` times larger, is tried; when it does not, the probe settles on the best level
    and tries one step up again every ``reprobe_s``. A 429 halves the level, and the probe
    then climbs back one connection a window to just below where the 429 came, the quota
    Earth Engine enforces for the project. Windows in which the slots were not full (the job's
    tail, an outage) decide nothing. A pure state machine: the clock comes in, nothing sleeps.
    """

    def __init__(
        self, settings: ProbeSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or ProbeSettings()
        s = self.settings
        if not 1 <= s.floor <= s.start <= s.ceiling:
            raise ValueError("probe levels must satisfy 1 <= floor <= start <= ceiling")
        self._clock = clock
        self.level = s.start
        self.phase = Phase.GROW
        self._cap = s.ceiling
        self._cap_until = -float("inf")
        self._best: tuple[int, float] | None = None  # (level, goodput) of the best window
        self._previous: float | None = None  # goodput of the level before, while growing
        self._settled_at = 0.0
        self._latency = 0.0  # a running estimate of the time to a tile's first byte
        self._window_start = clock()
        self._bytes = 0
        self._full_time = 0.0  # of this window, with the slots (nearly) all taken
        self._full_since: float | None = None

    def observe(self, nbytes: int) -> None:
        """Bytes of tile bodies received (any tile, any time)."""
        self._bytes += nbytes

    def first_byte(self, seconds: float) -> None:
        """How long a tile waited for its first byte (a request's latency)."""
        self._latency = seconds if self._latency == 0.0 else 0.8 * self._latency + 0.2 * seconds

    def slots(self, in_use: int, limit: int) -> None:
        """The slots in use changed (a tile started or ended): how full they are over a window
        is integrated exactly, not sampled, since tiles tend to end together."""
        now = self._clock()
        full = in_use >= limit * self.settings.busy
        if full and self._full_since is None:
            self._full_since = now
        elif not full and self._full_since is not None:
            self._full_time += now - self._full_since
            self._full_since = None

    def sample(self) -> int | None:
        """Call often (every second or so); returns a new level when the window just closed
        changed it, else None."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < max(self.settings.window_s, self.settings.latency_windows * self._latency):
            return None
        full_time = self._full_time
        if self._full_since is not None:
            full_time += now - self._full_since
        goodput = self._bytes / elapsed
        self._start_window(now)
        if full_time < elapsed * self.settings.busy:
            return None
        return self._decide(goodput, now)

    def rate_limited(self) -> int:
        """The server said too many: halve, and climb back to just below this level."""
        s = self.settings
        now = self._clock()
        self._cap = max(s.floor, self.level - 1)
        self._cap_until = now + s.rate_limit_hold_s
        self.level = max(s.floor, self.level // 2)
        self.phase = Phase.RECOVER
        self._best = None
        self._previous = None
        self._start_window(now)
        return self.level

    def _start_window(self, now: float) -> None:
        self._window_start = now
        self._bytes = 0
        self._full_time = 0.0
        if self._full_since is not None:
            self._full_since = now

    def _decide(self, goodput: float, now: float) -> int | None:
        s = self.settings
        if now >= self._cap_until:
            self._cap = s.ceiling
        if self._best is None or goodput > self._best[1]:
            self._best = (self.level, goodput)
        if self.phase is Phase.RECOVER:
            if self.level >= self._cap:
                return self._settle(now, self.level)
            return self._set(self.level + 1)
        if self.phase is Phase.SETTLED:
            if now - self._settled_at < s.reprobe_s or self.level >= self._cap:
                return None
            self.phase = Phase.GROW  # try one step up again
            self._previous = goodput
            return self._set(self._grown())
        if self._previous is not None and goodput < self._previous * (1.0 + s.gain):
            # More connections did not pay (a shared link, a busy server, our own CPU).
            return self._settle(now, self._best[0])
        self._previous = goodput
        if self.level >= self._cap:
            return self._settle(now, self.level)
        return self._set(self._grown())

    def _settle(self, now: float, level: int) -> int | None:
        self.phase = Phase.SETTLED
        self._settled_at = now
        self._previous = None
        return self._set(level)

    def _grown(self) -> int:
        return min(self._cap, max(self.level + 1, math.ceil(self.level * self.settings.growth)))

    def _set(self, level: int) -> int | None:
        level = max(self.settings.floor, min(self._cap, level))
        if level == self.level:
            return None
        self.level = level
        return level


class AdaptiveLimiter:
    """A semaphore whose size follows what the network and Earth Engine allow.

    Pinned (the user chose a concurrency): the size halves on a rate-limit answer and grows
    back one at a time, additive increase and multiplicative decrease, the rule TCP uses to
    share a link, here to stay under Earth Engine's per-project quota. Unpinned (``probe``):
    a :class:`ConcurrencyProbe` sets the size from measured goodput, and 429s still halve it.

    A 429 also pauses every new request (``rate_limit_pause``), doubling while 429s keep
    coming after each pause: a 429 frees its slot at once, so without the pause the freed
    slots sent other tiles into the same refusal, about 50 requests a second for the 10 s a
    resumed job's server was still busy with the stopped run's requests (seed_scale).
    """

    def __init__(
        self,
        maximum: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        successes_per_step: int = 4,
        decrease_cooldown: float = 5.0,
        probe: ConcurrencyProbe | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if maximum < 1:
            raise ValueError("concurrency must be at least 1")
        self.maximum = maximum
        self.probe = probe
        self._limit = probe.level if probe is not None else maximum
        self._in_use = 0
        self._clock = clock
        self._successes = 0
        self._successes_per_step = successes_per_step
        self._cooldown = decrease_cooldown
        self._last_decrease = -float("inf")
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sleep = sleep
        self._paused_until = -float("inf")
        self._rate_limited_streak = 0

    @classmethod
    def unpinned(
        cls, settings: ProbeSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> AdaptiveLimiter:
        """A limiter whose size a probe finds (the user gave no concurrency)."""
        probe = ConcurrencyProbe(settings, clock)
        return cls(probe.settings.ceiling, clock=clock, probe=probe)

    def observe(self, nbytes: int) -> None:
        """Bytes of tile bodies received, for the probe."""
        if self.probe is not None:
            self.probe.observe(nbytes)

    def first_byte(self, seconds: float) -> None:
        """A tile's time to its first byte, for the probe's windows."""
        if self.probe is not None:
            self.probe.first_byte(seconds)

    def tick(self) -> None:
        """Let the probe look at the last window (call every second or so)."""
        if self.probe is None:
            return
        level = self.probe.sample()
        if level is not None:
            self._limit = level
            self.probe.slots(self._in_use, self._limit)
            self._wake()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    def pause_left(self) -> float:
        """Seconds before a new request may start, after the last 429."""
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self) -> None:
        slept_until = -float("inf")
        while self._paused_until > slept_until and (wait := self.pause_left()) > 0:
            slept_until = self._paused_until  # a clock that does not move still ends it
            await self._sleep(wait)
        while self._in_use >= self._limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.take()

    def take(self) -> None:
        """Take a slot now (``acquire`` once one is free)."""
        self._in_use += 1
        if self.probe is not None:
            self.probe.slots(self._in_use, self._limit)

    def release(self) -> None:
        self._in_use -= 1
        if self.probe is not None:
            self.probe.slots(self._in_use, self._limit)
        self._wake()

    def on_success(self) -> None:
        self._rate_limited_streak = 0
        if self.probe is not None:
            return  # the probe decides when more connections are worth it
        self._successes += 1
        if self._limit < self.maximum and self._successes >= self._successes_per_step:
            self._successes = 0
            self._limit += 1
            self._wake()

    def on_rate_limited(
        self, pause: float = RATE_LIMIT_PAUSE_S, pause_cap: float = RATE_LIMIT_PAUSE_CAP_S
    ) -> None:
        """A 429: pause new requests (``pause`` doubling up to ``pause_cap``), lower the limit."""
        now = self._clock()
        if now >= self._paused_until:  # a request sent during a pause does not lengthen it
            self._rate_limited_streak += 1
            self._paused_until = now + rate_limit_pause(self._rate_limited_streak, pause, pause_cap)
        if now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._successes = 0
        if self.probe is not None:
            self._limit = self.probe.rate_limited()
        else:
            self._limit = max(1, self._limit // 2)

    def _wake(self) -> None:
        free = self._limit - self._in_use
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


@dataclass
class OutageMonitor:
    """Tells a network outage from unlucky tiles.

    Several network-level failures in a row with no success between them mean the network or
    the proxy is down: the scheduler then stops spending tile attempts and probes instead,
    with an interval that doubles up to ``max_probe_interval``.
    """

    threshold: int = 3
    first_probe_interval: float = 2.0
    max_probe_interval: float = 300.0
    consecutive_failures: int = 0
    probes: int = 0
    outages: int = 0
    _down: bool = field(default=False, repr=False)

    @property
    def down(self) -> bool:
        return self._down

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_network_failure(self) -> bool:
        """Count one failure; True when this failure starts (or continues) an outage."""
        self.consecutive_failures += 1
        if not self._down and self.consecutive_failures >= self.threshold:
            self._down = True
            self.outages += 1
            self.probes = 0
        return self._down

    def next_probe_delay(self) -> float:
        delay = min(self.max_probe_interval, self.first_probe_interval * 2.0**self.probes)
        self.probes += 1
        return delay

    def record_recovery(self) -> None:
        self._down = False
        self.consecutive_failures = 0
        self.probes = 0
