"""The adaptive concurrency limit and the outage monitor, driven by a fake clock."""

import asyncio

import pytest

from engine.pacing import AdaptiveLimiter, OutageMonitor


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
