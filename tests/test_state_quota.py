"""The shared Earth Engine quota: the AIMD rule, slots and their leases, one limit seen by
every process, and many processes hammering one project (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from state import DEFAULT_PROJECT_QUOTA, Quota, default_quota_path, quota_target
from state.quota import Aimd

REPO = Path(__file__).resolve().parents[1]
PROCS = str(Path(__file__).with_name("state_procs.py"))
Target = Callable[[], "Path | str"]


@pytest.fixture
def target(state_target: Target) -> Path | str:
    return state_target()


@pytest.fixture
def quota(target: Path | str) -> Iterator[Quota]:
    with Quota.open(target, successes_per_step=2, decrease_cooldown=5.0) as q:
        yield q


# ---- the rule ----------------------------------------------------------------------------------


def step(state: Aimd, outcome: str, now: float, ceiling: int = 8) -> Aimd:
    return state.after(
        outcome,
        ceiling=ceiling,
        now=now,
        successes_per_step=3,
        decrease_cooldown=5.0,
    )


def test_aimd_halves_on_429_once_per_cooldown_and_grows_by_one() -> None:
    s = Aimd(8, 0, 0.0)
    s = step(s, "rate_limited", 10.0)
    assert s == Aimd(4, 0, 15.0)
    assert step(s, "rate_limited", 14.9) == s  # the same burst
    s = step(s, "rate_limited", 15.0)
    assert s == Aimd(2, 0, 20.0)
    for _ in range(2):
        s = step(s, "success", 16.0)
    assert s.limit == 2 and s.successes == 2
    s = step(s, "success", 16.0)
    assert s == Aimd(3, 0, 20.0)
    one = Aimd(1, 0, 0.0)
    assert step(one, "rate_limited", 1.0).limit == 1  # never below one
    top = Aimd(8, 0, 0.0)
    for _ in range(10):
        top = step(top, "success", 1.0)
    assert top.limit == 8 and top.successes <= 3  # never above the ceiling


# ---- slots -------------------------------------------------------------------------------------


def test_slots_up_to_the_limit_and_lowest_first(quota: Quota) -> None:
    status = quota.configure("p", 3, now=0.0)
    assert (status.ceiling, status.limit, status.in_use) == (3, 3, 0)
    assert [quota.acquire_slot("p", o, 10.0, now=0.0) for o in "abcd"] == [0, 1, 2, None]
    assert quota.release_slot("p", "b", 1, now=1.0)
    assert not quota.release_slot("p", "b", 1, now=1.0)  # already given back
    assert not quota.release_slot("p", "a", 2, now=1.0)  # not a's
    assert quota.acquire_slot("p", "e", 10.0, now=1.0) == 1
    assert quota.acquire_slot("other", "a", 10.0, now=1.0) == 0  # projects are apart
    other = quota.status("other")
    assert other is not None and other.ceiling == DEFAULT_PROJECT_QUOTA
    assert quota.status("never-used") is None


def test_slots_of_a_dead_owner_expire_and_renewed_ones_do_not(quota: Quota) -> None:
    quota.configure("p", 2, now=0.0)
    assert quota.acquire_slot("p", "dead", 10.0, now=0.0) == 0
    assert quota.acquire_slot("p", "live", 10.0, now=0.0) == 1
    assert quota.renew_slots("live", 10.0, now=8.0) == 1  # live's slot until 18
    assert quota.acquire_slot("p", "new", 10.0, now=9.9) is None
    assert quota.acquire_slot("p", "new", 10.0, now=10.0) == 0  # dead's slot, free again
    assert quota.acquire_slot("p", "new2", 10.0, now=17.9) is None
    status = quota.status("p", now=17.9)
    assert status is not None and status.in_use == 2
    assert not quota.release_slot("p", "dead", 0, now=18.0)  # it was given to another
    assert quota.release_owner("new") == 1 and quota.release_owner("new") == 0


def test_the_limit_follows_outcomes_and_the_ceiling(quota: Quota) -> None:
    quota.configure("p", 8, now=0.0)
    slots = [quota.acquire_slot("p", f"o{k}", 30.0, now=0.0) for k in range(8)]
    assert None not in slots
    assert quota.release_slot("p", "o0", 0, outcome="rate_limited", now=1.0)
    assert quota.status("p", now=1.0).limit == 4
    assert quota.release_slot("p", "o1", 1, outcome="rate_limited", now=2.0)
    assert quota.status("p", now=2.0).limit == 4  # in cooldown
    assert quota.acquire_slot("p", "x", 30.0, now=2.0) is None  # six in flight, limit four
    for k in range(2, 6):
        quota.release_slot("p", f"o{k}", k, outcome="success", now=3.0)
    assert quota.status("p", now=3.0).limit == 6  # +1 per 2
    assert quota.configure("p", 5, now=4.0).limit == 5  # a lower ceiling lowers the limit
    assert quota.configure("p", None, now=4.0).ceiling == 5  # no ceiling given: kept
    assert quota.configure("p", 12, now=4.0).limit == 5  # a higher one is grown into
    with pytest.raises(ValueError, match="between 1 and 10000"):
        quota.configure("p", 0)
    with pytest.raises(ValueError, match="unknown outcome"):
        quota.release_slot("p", "o6", 6, outcome="maybe")


def test_one_processes_429_slows_the_others(target: Path | str) -> None:
    with Quota.open(target) as a, Quota.open(target) as b:
        a.configure("p", 12)
        assert [b.acquire_slot("p", "b", 30.0) for _ in range(12)] == list(range(12))
        a.record("p", "rate_limited")
        status = b.status("p")
        assert status is not None and (status.limit, status.in_use) == (6, 12)
        for slot in range(7):
            b.release_slot("p", "b", slot)
        assert a.acquire_slot("p", "a", 30.0) == 0  # five in flight under a limit of six
        assert a.acquire_slot("p", "a", 30.0) is None  # twelve would have fitted before the 429


@pytest.mark.slow
def test_many_processes_never_exceed_the_limit(target: Path | str, tmp_path: Path) -> None:
    """Three processes of four threads hammer a limit of five. The test itself holds all five
    slots until every process has been refused once, so the refusals are certain, whatever
    the timing, and no hammer may hold a slot before the test gives its slots back."""
    with Quota.open(target) as q:
        q.configure("p", 5)
        held = [q.acquire_slot("p", "test", 60.0) for _ in range(5)]
        assert held == list(range(5))
        test_start = time.monotonic()
        marks = [tmp_path / f"w{k}.refused" for k in range(3)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    PROCS,
                    "quota-hammer",
                    str(target),
                    "p",
                    f"w{k}",
                    "4",
                    "8",
                    str(marks[k]),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(3)
        ]
        deadline = time.monotonic() + 120
        while not all(m.exists() for m in marks):
            assert time.monotonic() < deadline, (
                "a process was never refused while all slots were held"
            )
            assert all(p.poll() is None for p in procs), "a process ended while all slots were held"
            time.sleep(0.05)
        test_end = time.monotonic()
        for slot in held:
            q.release_slot("p", "test", slot)
    intervals: list[tuple[float, float]] = [(test_start, test_end)] * 5
    refused = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0
        result = json.loads(out.splitlines()[-1])
        intervals += [tuple(i) for i in result["intervals"]]
        refused += result["refused"]
    assert len(intervals) == 5 + 3 * 4 * 8
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    in_use = peak = 0
    for _, change in events:
        in_use += change
        peak = max(peak, in_use)
    assert peak <= 5, f"{peak} requests held slots at once; the limit is 5"
    assert refused >= 3
    with Quota.open(target) as q:
        status = q.status("p")
        assert status is not None and status.in_use == 0


# ---- where the quota lives ---------------------------------------------------------------------


def test_where_the_quota_lives(tmp_path: Path) -> None:
    home = Path("/home/u")
    assert default_quota_path({}, home) == home / ".local/state/eefetch/quota.db"
    assert default_quota_path({"XDG_STATE_HOME": "/s"}, home) == Path("/s/eefetch/quota.db")
    assert (
        default_quota_path({"XDG_STATE_HOME": "rel"}, home)
        == home / ".local/state/eefetch/quota.db"
    )
    url = "postgresql://u@db.example:5432/jobs"
    assert quota_target(url, {}) == url
    assert quota_target(tmp_path / "job.eefetch", {"XDG_STATE_HOME": "/s"}) == Path(
        "/s/eefetch/quota.db"
    )
    path = default_quota_path({"XDG_STATE_HOME": str(tmp_path / "state")})
    with Quota.open(path) as q:
        assert q.acquire_slot("p", "a", 10.0) == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
