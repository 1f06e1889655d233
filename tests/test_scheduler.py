"""The scheduler against a real SQLite state file and scripted fetch outcomes.

The fetch function here stands in for the network only; the state store, the retry policy,
the limiter and the outage monitor are the real ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.errors import ErrorKind, FetchError
from engine.scheduler import JobStopped, Scheduler, SchedulerOptions
from engine.tilestore import StoredTile
from state import NewTile, Store, TileRecord

FAST = SchedulerOptions(
    concurrency=4,
    max_attempts=4,
    flush_every=0.01,
    backoff_base=0.001,
    backoff_cap=0.01,
    first_probe_interval=0.001,
    max_probe_interval=0.01,
)


def make_store(tmp_path: Path, count: int, size: int = 64) -> Store:
    store = Store.open(tmp_path / "job.db")
    tiles = [NewTile(0, i * size, size, size, 0, 1) for i in range(count)]
    store.create_job("fp", {"test": True}, "0", str(tmp_path / "out.tif"), tiles)
    return store


def stored(tile: TileRecord) -> StoredTile:
    return StoredTile(Path(f"t{tile.id}.tif"), 100 + tile.id, f"{tile.id:064x}")


class ScriptedFetch:
    """Per tile id, a list of errors to raise on successive attempts before succeeding."""

    def __init__(
        self,
        script: dict[int, list[FetchError]] | None = None,
        default: Callable[[TileRecord], FetchError | None] | None = None,
    ) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.calls: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, tile: TileRecord) -> StoredTile:
        self.calls[tile.id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            queued = self.script.get(tile.id)
            if queued:
                raise queued.pop(0)
            if self.default is not None:
                error = self.default(tile)
                if error is not None:
                    raise error
            return stored(tile)
        finally:
            self.in_flight -= 1


async def always_up() -> bool:
    return True


def run(scheduler: Scheduler):
    return asyncio.run(asyncio.wait_for(scheduler.run(), 30))


def test_every_tile_is_fetched_once_and_recorded(tmp_path: Path) -> None:
    store = make_store(tmp_path, 50)
    fetch = ScriptedFetch()
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert summary.fetched_tiles == 50
    assert set(fetch.calls.values()) == {1}
    assert fetch.max_in_flight <= FAST.concurrency
    counts = store.counts()
    assert counts["done"] == 50 and counts["pending"] == 0 and counts["in_flight"] == 0
    assert all(t.checksum for t in store.tiles("done"))


def test_transient_errors_are_retried_until_success(tmp_path: Path) -> None:
    store = make_store(tmp_path, 5)
    first = store.tiles()[0].id
    fetch = ScriptedFetch(
        {
            first: [
                FetchError(ErrorKind.HTTP, "Service unavailable", status=503),
                FetchError(ErrorKind.BODY, "short body: 5 of 10 bytes"),
            ]
        }
    )
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert fetch.calls[first] == 3
    assert summary.retries == 2
    assert store.counts()["done"] == 5


def test_deterministic_400_fails_that_tile_at_once_and_the_rest_go_on(tmp_path: Path) -> None:
    store = make_store(tmp_path, 6)
    bad = store.tiles()[2].id
    fetch = ScriptedFetch(
        {bad: [FetchError(ErrorKind.EE, "Image.load: asset not found", status=400)]}
    )
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert fetch.calls[bad] == 1
    assert summary.failed == 1
    counts = store.counts()
    assert counts["failed"] == 1 and counts["done"] == 5
    assert "asset not found" in store.last_errors(1)[0][1]


def test_a_tile_that_runs_out_of_attempts_is_failed(tmp_path: Path) -> None:
    store = make_store(tmp_path, 3)
    bad = store.tiles()[0].id
    fetch = ScriptedFetch({bad: [FetchError(ErrorKind.HTTP, "Bad gateway", status=502)] * 10})
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert fetch.calls[bad] == FAST.max_attempts
    assert summary.failed == 1
    assert "gave up after 4 attempts" in store.last_errors(1)[0][1]


def test_too_big_tiles_are_split_and_the_halves_fetched(tmp_path: Path) -> None:
    store = make_store(tmp_path, 1, size=1024)
    parent = store.tiles()[0].id

    def too_big(tile: TileRecord) -> FetchError | None:
        if tile.width * tile.height > 512 * 512:
            return FetchError(ErrorKind.EE, "User memory limit exceeded.", status=400)
        return None

    fetch = ScriptedFetch(default=too_big)
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert summary.splits >= 2
    done = store.tiles("done")
    assert sum(t.width * t.height for t in done) == 1024 * 1024
    assert all(t.width * t.height <= 512 * 512 for t in done)
    assert store.counts()["split"] >= 1
    assert fetch.calls[parent] == 1


def test_an_outage_pauses_without_spending_attempts(tmp_path: Path) -> None:
    store = make_store(tmp_path, 20)
    network = {"up": False, "probes": 0}

    def maybe_down(tile: TileRecord) -> FetchError | None:
        return None if network["up"] else FetchError(ErrorKind.CONNECT, "Cannot connect to proxy")

    async def probe() -> bool:
        network["probes"] += 1
        if network["probes"] >= 6:  # the network comes back after a while
            network["up"] = True
        return network["up"]

    fetch = ScriptedFetch(default=maybe_down)
    scheduler = Scheduler(store, fetch, probe, owner="a", itemsizes=[4], options=FAST)
    summary = run(scheduler)
    assert network["probes"] >= 6
    assert summary.outages >= 1
    assert summary.failed == 0
    assert store.counts()["done"] == 20
    # the failures during the outage did not eat the tiles' attempt budget
    assert all(t.attempts < FAST.max_attempts for t in store.tiles("done"))


def test_rate_limits_lower_the_concurrency(tmp_path: Path) -> None:
    store = make_store(tmp_path, 30)
    limited = {
        t.id: [FetchError(ErrorKind.HTTP, "Too Many Requests", status=429, retry_after=0.0)]
        for t in store.tiles()[:10]
    }
    fetch = ScriptedFetch(limited)
    scheduler = Scheduler(
        store, fetch, always_up, owner="a", itemsizes=[4], options=replace(FAST, concurrency=8)
    )
    limits: list[int] = []
    inner = fetch.__call__

    async def watching(tile: TileRecord) -> StoredTile:
        limits.append(scheduler.limiter.limit)
        return await inner(tile)

    scheduler.fetch = watching
    run(scheduler)
    assert limits[0] == 8
    assert min(limits) <= 4  # halved at least once
    assert store.counts()["done"] == 30


def test_credential_errors_stop_the_job_and_leave_tiles_claimable(tmp_path: Path) -> None:
    store = make_store(tmp_path, 10)
    fetch = ScriptedFetch(
        default=lambda t: FetchError(ErrorKind.HTTP, "Caller does not have permission", status=403)
    )
    with pytest.raises(JobStopped, match="permission"):
        run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    counts = store.counts()
    assert counts["in_flight"] == 0 and counts["failed"] == 0
    assert counts["pending"] == 10


def test_cancellation_releases_every_claim(tmp_path: Path) -> None:
    store = make_store(tmp_path, 40)

    async def slow(tile: TileRecord) -> StoredTile:
        await asyncio.sleep(10)
        return stored(tile)

    async def scenario() -> None:
        scheduler = Scheduler(store, slow, always_up, owner="a", itemsizes=[4], options=FAST)
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    counts = store.counts()
    assert counts["in_flight"] == 0
    assert counts["pending"] == 40
    assert all(t.attempts == 0 for t in store.tiles())


def test_an_unexpected_exception_costs_an_attempt_not_the_job(tmp_path: Path) -> None:
    store = make_store(tmp_path, 4)
    odd = store.tiles()[1].id
    calls: Counter[int] = Counter()

    async def sometimes_broken(tile: TileRecord) -> StoredTile:
        calls[tile.id] += 1
        if tile.id == odd and calls[tile.id] == 1:
            raise KeyError("surprise")
        return stored(tile)

    summary = run(
        Scheduler(store, sometimes_broken, always_up, owner="a", itemsizes=[4], options=FAST)
    )
    assert summary.retries == 1 and calls[odd] == 2
    assert store.counts()["done"] == 4


def test_a_burst_of_429s_does_not_spend_the_attempts_of_a_tile(tmp_path: Path) -> None:
    store = make_store(tmp_path, 2)
    busy = store.tiles()[0].id
    too_many = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429)
    bad_gateway = FetchError(ErrorKind.HTTP, "Bad gateway", status=502)
    # Five 429s and then three errors of the tile's own: seven failures with FAST's budget
    # of four attempts, yet only three of them count.
    fetch = ScriptedFetch({busy: [too_many] * 5 + [bad_gateway] * 3})
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert summary.failed == 0
    assert fetch.calls[busy] == 9
    assert store.counts()["done"] == 2


def test_endless_429s_still_end_the_tile_after_a_ceiling(tmp_path: Path) -> None:
    store = make_store(tmp_path, 1)
    busy = store.tiles()[0].id
    too_many = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429)
    fetch = ScriptedFetch({busy: [too_many] * 100})
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[4], options=FAST))
    assert summary.failed == 1
    assert fetch.calls[busy] == 4 * FAST.max_attempts


def test_429s_of_an_earlier_run_do_not_spend_the_attempts_of_a_resumed_tile(
    tmp_path: Path,
) -> None:
    """A run meets seven 429s on one tile and is stopped; after the resume the tile's own
    errors still have their whole budget (the 429s were counted apart, and kept)."""
    store = make_store(tmp_path, 2)
    busy = store.tiles()[0].id
    too_many = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429)
    disk_full = FetchError(ErrorKind.DISK, "No space left on device")
    first = ScriptedFetch({busy: [too_many] * 7 + [disk_full]})
    with pytest.raises(JobStopped):
        run(Scheduler(store, first, always_up, owner="a", itemsizes=[4], options=FAST))
    resumed = store.tile(busy)
    assert resumed is not None and (resumed.attempts, resumed.rate_limited) == (0, 7)
    bad_gateway = FetchError(ErrorKind.HTTP, "Bad gateway", status=502)
    second = ScriptedFetch({busy: [bad_gateway] * (FAST.max_attempts - 1)})
    summary = run(Scheduler(store, second, always_up, owner="b", itemsizes=[4], options=FAST))
    assert summary.failed == 0
    assert store.counts()["done"] == 2


def test_the_429_ceiling_holds_across_runs(tmp_path: Path) -> None:
    store = make_store(tmp_path, 1)
    busy = store.tiles()[0].id
    too_many = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429)
    disk_full = FetchError(ErrorKind.DISK, "No space left on device")
    ceiling = 4 * FAST.max_attempts
    with pytest.raises(JobStopped):
        run(
            Scheduler(
                store,
                ScriptedFetch({busy: [too_many] * (ceiling - 2) + [disk_full]}),
                always_up,
                owner="a",
                itemsizes=[4],
                options=FAST,
            )
        )
    second = ScriptedFetch({busy: [too_many] * 100})
    summary = run(Scheduler(store, second, always_up, owner="b", itemsizes=[4], options=FAST))
    assert summary.failed == 1
    assert second.calls[busy] == 2


def test_the_last_tiles_are_cut_when_connections_would_idle(tmp_path: Path) -> None:
    """Two 32 MiB tiles and eight slots: instead of two connections working while six idle,
    the tiles are cut (in the state, so a resume keeps the cut) and every part is fetched."""
    store = Store.open(tmp_path / "job.db")
    tiles = [NewTile(0, 0, 2048, 2048, 0, 4), NewTile(0, 2048, 2048, 2048, 0, 4)]
    store.create_job("fp", {"test": True}, "0", str(tmp_path / "out.tif"), tiles)
    fetch = ScriptedFetch()
    options = replace(FAST, concurrency=8)
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[2] * 4, options=options))
    counts = store.counts()
    assert counts["split"] == 2 and counts["done"] == 8
    assert summary.tail_splits == 2 and summary.failed == 0
    assert sorted(fetch.calls) == sorted(t.id for t in store.tiles("done"))
    assert all(n == 1 for n in fetch.calls.values())


def test_the_cut_is_off_when_asked(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "job.db")
    store.create_job("fp", {}, "0", str(tmp_path / "o.tif"), [NewTile(0, 0, 2048, 2048, 0, 4)])
    options = replace(FAST, concurrency=8, split_tail=False)
    run(Scheduler(store, ScriptedFetch(), always_up, owner="a", itemsizes=[2] * 4, options=options))
    assert store.counts() == {**store.counts(), "split": 0, "done": 1}


def test_the_last_wave_is_cut_once_when_fewer_tiles_than_connections_are_left(
    tmp_path: Path,
) -> None:
    """Six 32 MiB tiles and four slots, all claimed at once: the first four go out whole, and
    when three are left for four connections they are cut, once, into a part per slot."""
    store = Store.open(tmp_path / "job.db")
    tiles = [NewTile(0, 2048 * i, 2048, 2048, 0, 4) for i in range(6)]
    store.create_job("fp", {}, "0", str(tmp_path / "out.tif"), tiles)
    fetch = ScriptedFetch()
    options = replace(FAST, concurrency=4)
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[2] * 4, options=options))
    counts = store.counts()
    assert summary.tail_splits == 1
    assert counts["split"] == 1 and counts["done"] == 7
    assert all(n == 1 for n in fetch.calls.values())


@pytest.mark.slow
def test_tiles_waiting_for_a_retry_are_not_the_last_wave(tmp_path: Path) -> None:
    """After 429s most of a job may wait for its retry time; a claim then gets only the tiles
    already due, which must not pass for the job's last wave: the cut waits for the real one.
    Here tile 1 is due again within a second and tile 2 after 2.5 s: the cut takes tile 2."""
    store = Store.open(tmp_path / "job.db")
    tiles = [NewTile(0, 2048 * i, 2048, 2048, 0, 4) for i in range(40)]
    store.create_job("fp", {}, "0", str(tmp_path / "out.tif"), tiles)
    first, second = (t.id for t in store.tiles()[:2])
    busy = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429, retry_after=0.0)
    longer = FetchError(ErrorKind.HTTP, "Too Many Requests", status=429, retry_after=2.5)
    fetch = ScriptedFetch({first: [busy], second: [longer]})
    options = replace(FAST, concurrency=8)
    summary = run(Scheduler(store, fetch, always_up, owner="a", itemsizes=[2] * 4, options=options))
    assert summary.tail_splits == 1 and summary.failed == 0
    assert [t.id for t in store.tiles("split")] == [second]
    assert store.counts()["pending"] == 0
