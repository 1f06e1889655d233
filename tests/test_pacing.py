"""The adaptive concurrency limit and the outage monitor, driven by a fake clock."""

import asyncio
from dataclasses import dataclass

import pytest

from engine.pacing import (
    AdaptiveLimiter,
    ConcurrencyProbe,
    OutageMonitor,
    ProbeSettings,
    rate_limit_pause,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limit_halves_on_rate_limit_and_grows_back_one_at_a_time() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(16, clock=clock, successes_per_step=2, decrease_cooldown=5.0)
    limiter.on_rate_limited()
    assert limiter.limit == 8
    limiter.on_rate_limited()  # within the cooldown: one burst counts once
    assert limiter.limit == 8
    clock.now = 10.0
    limiter.on_rate_limited()
    assert limiter.limit == 4
    for _ in range(4):
        limiter.on_success()
    assert limiter.limit == 6
    for _ in range(100):
        limiter.on_success()
    assert limiter.limit == 16


def test_limit_never_drops_below_one() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(2, clock=clock, decrease_cooldown=0.0)
    for step in range(5):
        clock.now = step
        limiter.on_rate_limited()
    assert limiter.limit == 1
    with pytest.raises(ValueError):
        AdaptiveLimiter(0)


def test_acquire_blocks_at_the_limit_and_wakes_on_release() -> None:
    async def scenario() -> list[str]:
        limiter = AdaptiveLimiter(2)
        events: list[str] = []
        await limiter.acquire()
        await limiter.acquire()

        async def third() -> None:
            await limiter.acquire()
            events.append("third in")

        task = asyncio.create_task(third())
        await asyncio.sleep(0.01)
        events.append("still waiting" if not task.done() else "too early")
        limiter.release()
        await asyncio.wait_for(task, 1)
        return events

    assert asyncio.run(scenario()) == ["still waiting", "third in"]


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def scenario() -> int:
        limiter = AdaptiveLimiter(1)
        await limiter.acquire()
        task = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        limiter.release()
        await asyncio.wait_for(limiter.acquire(), 1)
        return limiter.in_use

    assert asyncio.run(scenario()) == 1


def test_a_429_pauses_new_requests_and_the_pause_doubles_while_429s_keep_coming() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(16, clock=clock)
    limiter.on_rate_limited()
    assert limiter.pause_left() == 0.5
    clock.now = 0.1
    limiter.on_rate_limited()  # sent before the pause: it does not lengthen it
    assert limiter.pause_left() == pytest.approx(0.4)
    clock.now = 0.6
    limiter.on_rate_limited()  # refused again after the pause: twice as long
    assert limiter.pause_left() == pytest.approx(1.0)
    limiter.on_success()
    clock.now = 2.0
    limiter.on_rate_limited()  # a success between: back to the first pause
    assert limiter.pause_left() == 0.5
    assert [rate_limit_pause(n) for n in (1, 2, 3, 8, 20)] == [0.5, 1.0, 2.0, 30.0, 30.0]


def test_acquire_waits_out_the_pause_even_on_a_clock_that_does_not_move() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def scenario() -> int:
        limiter = AdaptiveLimiter(4, clock=clock, sleep=sleep)
        await limiter.acquire()
        limiter.on_rate_limited()
        limiter.release()
        await asyncio.wait_for(limiter.acquire(), 1)
        return limiter.in_use

    assert asyncio.run(scenario()) == 1
    assert slept == [0.5]


def test_the_pause_keeps_a_busy_server_from_being_hammered() -> None:
    # The server's quota is held by another client for 10 s (a stopped run's requests): every
    # request is refused. Without the pause each 429 freed a slot for the next refusal at the
    # simulation's step (50 ms): 1,000 and more 429s; with it, a few bursts.
    model = Model(per_connection=4 * MB, latency=1.0, busy_until=10.0)
    clock = FakeClock()
    limiter = AdaptiveLimiter(16, clock=clock)
    _, _, refused = simulate(model, limiter, clock, 200, 4 * MB)  # returns when all are done
    assert refused <= 10  # one per pause: 0.5, 1, 2, 4, 8 s


def test_outage_needs_consecutive_network_failures() -> None:
    monitor = OutageMonitor(threshold=3)
    assert not monitor.record_network_failure()
    assert not monitor.record_network_failure()
    monitor.record_success()
    assert not monitor.record_network_failure()
    assert not monitor.record_network_failure()
    assert monitor.record_network_failure()
    assert monitor.down and monitor.outages == 1


def test_probe_interval_doubles_up_to_a_cap_and_resets_on_recovery() -> None:
    monitor = OutageMonitor(threshold=1, first_probe_interval=2.0, max_probe_interval=60.0)
    monitor.record_network_failure()
    delays = [monitor.next_probe_delay() for _ in range(8)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    # 30 minutes of outage are covered by a bounded number of probes
    assert sum(delays) < 30 * 60
    monitor.record_recovery()
    assert not monitor.down
    assert monitor.next_probe_delay() == 2.0


# ---- the probe against server models, in simulated time ------------------------------------


@dataclass(frozen=True, kw_only=True)
class Model:
    """A server and link as a fluid model: each tile waits ``latency`` seconds, then streams at
    the smallest of the per-connection rate and its share of the link; beyond ``quota``
    concurrent requests, or before ``busy_until`` (its quota taken by another client), the
    server answers 429 at once."""

    per_connection: float
    link: float = float("inf")
    latency: float = 1.0
    quota: int = 10_000
    busy_until: float = 0.0


def simulate(
    model: Model, limiter: AdaptiveLimiter, clock: FakeClock, tiles: int, tile_bytes: float
) -> tuple[float, list[int], int]:
    """Run a job of ``tiles`` tiles through ``limiter`` on ``model``; returns (seconds,
    the limit every second, 429s answered). Deterministic: a fixed time step, no threads."""
    dt = 0.05
    waiting: list[float] = []  # time each started tile starts streaming
    streaming: list[float] = []  # bytes left per streaming tile
    retry_at: list[float] = []  # tiles refused with a 429, retried at
    pending = tiles
    limits: list[int] = []
    refused = 0
    next_tick = 1.0
    while pending or waiting or streaming or retry_at:
        now = clock.now
        ready = [t for t in retry_at if t <= now]
        retry_at = [t for t in retry_at if t > now]
        pending += len(ready)
        while pending and limiter.in_use < limiter.limit and limiter.pause_left() == 0:
            pending -= 1
            limiter.take()
            if now < model.busy_until or len(waiting) + len(streaming) >= model.quota:
                refused += 1
                limiter.on_rate_limited()
                limiter.release()
                retry_at.append(now + 2.0)
                continue
            waiting.append(now + model.latency)
        started = [t for t in waiting if t <= now]
        waiting = [t for t in waiting if t > now]
        streaming += [tile_bytes] * len(started)
        if streaming:
            rate = min(model.per_connection, model.link / len(streaming))
            streaming = [left - rate * dt for left in streaming]
            limiter.observe(int(rate * dt * len(streaming)))
            for _ in range(sum(1 for left in streaming if left <= 0)):
                limiter.release()
            streaming = [left for left in streaming if left > 0]
        clock.now += dt
        if clock.now >= next_tick:
            next_tick += 1.0
            limiter.tick()
            limits.append(limiter.limit)
    return clock.now, limits, refused


MB = 1e6


def fixed(model: Model, concurrency: int, tiles: int, tile_bytes: float) -> float:
    """Seconds the same job takes at a fixed concurrency."""
    clock = FakeClock()
    seconds, _, _ = simulate(
        model, AdaptiveLimiter(concurrency, clock=clock), clock, tiles, tile_bytes
    )
    return seconds


def test_the_probe_grows_to_the_quota_when_each_connection_is_the_limit() -> None:
    """The independent server model: 4 MB/s per connection, no cap on the link."""
    clock = FakeClock()
    limiter = AdaptiveLimiter.unpinned(clock=clock)
    model = Model(per_connection=4 * MB, latency=1.0)
    seconds, limits, _ = simulate(model, limiter, clock, tiles=600, tile_bytes=4 * MB)
    assert limits[0] == 16 and max(limits) == 40
    assert limits.index(40) <= 10  # reached within 10 s
    assert fixed(model, 40, 600, 4 * MB) / seconds >= 0.85


def test_the_probe_adds_connections_that_hide_latency_on_a_shared_link() -> None:
    """A 20 MB/s link: more connections than the link needs still pay, since each waits a
    second before its first byte; the probe finds that out instead of stopping at five."""
    clock = FakeClock()
    limiter = AdaptiveLimiter.unpinned(clock=clock)
    model = Model(per_connection=4 * MB, link=20 * MB, latency=1.0)
    seconds, limits, _ = simulate(model, limiter, clock, tiles=400, tile_bytes=4 * MB)
    assert limits[-1] >= 32
    best = min(fixed(model, n, 400, 4 * MB) for n in (8, 16, 40))
    assert best / seconds >= 0.95


def test_the_probe_climbs_back_to_just_below_a_quota_the_server_enforces() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter.unpinned(clock=clock)
    model = Model(per_connection=4 * MB, latency=1.0, quota=10)
    seconds, limits, refused = simulate(model, limiter, clock, tiles=400, tile_bytes=4 * MB)
    assert 1 <= refused <= 4  # each 429 came from trying one level past the quota
    assert limits[-1] == 10 and max(limits[-30:]) == 10
    assert fixed(model, 10, 400, 4 * MB) / seconds >= 0.85


def test_a_pinned_limiter_does_not_probe() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(16, clock=clock)
    _, limits, _ = simulate(Model(per_connection=4 * MB), limiter, clock, 200, 4 * MB)
    assert set(limits) == {16}


def test_a_window_of_empty_slots_decides_nothing() -> None:
    """The tail of a job (or an outage) leaves slots empty: that says nothing about what more
    connections would bring."""
    clock = FakeClock()
    probe = ConcurrencyProbe(ProbeSettings(start=8), clock)
    probe.slots(in_use=2, limit=8)
    for second in range(1, 30):
        clock.now = float(second)
        probe.observe(10_000_000)
        assert probe.sample() is None
    assert probe.level == 8


def test_probe_levels_are_checked() -> None:
    with pytest.raises(ValueError):
        ProbeSettings(start=50)
        ConcurrencyProbe(ProbeSettings(start=50))
    with pytest.raises(ValueError):
        ConcurrencyProbe(ProbeSettings(floor=0))
