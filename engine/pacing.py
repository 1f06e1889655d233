"""How fast to go: an adaptive concurrency limit and an outage monitor.

Both are small state machines driven by the scheduler's observations. Time comes in as a
clock function so that tests run them without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class AdaptiveLimiter:
    """A semaphore whose size halves on a rate-limit answer and grows back one at a time.

    Additive increase, multiplicative decrease: the rule TCP uses to share a link, here to
    stay under Earth Engine's per-project concurrency quota without having to configure it.
    """

    def __init__(
        self,
        maximum: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        successes_per_step: int = 4,
        decrease_cooldown: float = 5.0,
    ) -> None:
        if maximum < 1:
            raise ValueError("concurrency must be at least 1")
        self.maximum = maximum
        self._limit = maximum
        self._in_use = 0
        self._clock = clock
        self._successes = 0
        self._successes_per_step = successes_per_step
        self._cooldown = decrease_cooldown
        self._last_decrease = -float("inf")
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self) -> None:
        while self._in_use >= self._limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_use += 1

    def release(self) -> None:
        self._in_use -= 1
        self._wake()

    def on_success(self) -> None:
        self._successes += 1
        if self._limit < self.maximum and self._successes >= self._successes_per_step:
            self._successes = 0
            self._limit += 1
            self._wake()

    def on_rate_limited(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._successes = 0
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
        delay = min(self.max_probe_interval, self.first_probe_interval * (2**self.probes))
        self.probes += 1
        return delay

    def record_recovery(self) -> None:
        self._down = False
        self.consecutive_failures = 0
        self.probes = 0
