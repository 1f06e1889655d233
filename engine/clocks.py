"""Noticing steps of the wall clock while a job runs.

Retry times and leases live in the state file as wall-clock times, because another process
(or the next run) must read them. Within one process a suspend or an NTP step can move the wall
clock by hours at once; :class:`ClockWatch` tells how far, by comparing it with a monotonic
clock, so the scheduler can move its stored times by the same amount.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STEP_TOLERANCE_S = 2.0
"""Drift smaller than this (NTP slewing, a slow call between the two readings) is not a step."""


class ClockWatch:
    """Measures how far the wall clock stepped since the last look."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tolerance: float = STEP_TOLERANCE_S,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._tolerance = tolerance
        self._offset = wall() - monotonic()

    def step(self) -> float:
        """Seconds the wall clock jumped since the last call (0.0 if it kept pace)."""
        offset = self._wall() - self._monotonic()
        delta = offset - self._offset
        if abs(delta) < self._tolerance:
            return 0.0
        self._offset = offset
        return delta


class DatabaseClock:
    """The state database's clock, read from this machine's: its own time plus the last
    measured difference.

    Workers on several machines time leases and retries on the database's clock (a worker whose
    clock is wrong must not steal or lose tiles). Times a worker stamps itself, such as when a
    download URL was made, must be on that clock too, so that another worker judges their age
    right; measuring the difference now and then costs one query instead of one per stamp.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.offset = 0.0

    def __call__(self) -> float:
        return self._wall() + self.offset

    def measure(self, read_database: Callable[[], float]) -> float:
        """Read the database's clock once and keep the difference (the midpoint of the call
        stands for the instant it was read); returns the difference."""
        before = self._wall()
        remote = read_database()
        after = self._wall()
        self.offset = remote - (before + after) / 2
        return self.offset
