"""Error sorting and backoff: the policy that decides each failed tile's fate."""

import random

import pytest

from engine.errors import ErrorKind, FetchError
from engine.retry import (
    Action,
    backoff_delay,
    classify,
    parse_retry_after,
    retry_delay,
)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (FetchError(ErrorKind.CONNECT, "Cannot connect to proxy"), Action.RETRY),
        (FetchError(ErrorKind.TIMEOUT, "download stalled"), Action.RETRY),
        (FetchError(ErrorKind.BODY, "short body: 10 of 100 bytes"), Action.RETRY),
        (FetchError(ErrorKind.HTTP, "Bad gateway", status=502), Action.RETRY),
        (FetchError(ErrorKind.HTTP, "Too Many Requests: ...", status=429), Action.RETRY),
        (FetchError(ErrorKind.EE, "Too many concurrent aggregations."), Action.RETRY),
        (
            FetchError(
                ErrorKind.EE,
                "Total request size (56623104 bytes) must be less than or equal to 50331648 bytes.",
                status=400,
            ),
            Action.SPLIT,
        ),
        (FetchError(ErrorKind.EE, "User memory limit exceeded.", status=400), Action.SPLIT),
        (FetchError(ErrorKind.EE, "Computation timed out."), Action.SPLIT),
        (
            FetchError(
                ErrorKind.EE,
                "Pixel grid dimensions (12958x8118) must be less than or equal to 10000.",
            ),
            Action.SPLIT,
        ),
        (
            FetchError(ErrorKind.HTTP, "Download id expired", status=404, during_download=True),
            Action.REMAKE_URL,
        ),
        (
            FetchError(ErrorKind.EE, "Image.load: Image asset 'x' not found.", status=400),
            Action.FAIL,
        ),
        (
            FetchError(ErrorKind.HTTP, "Caller does not have permission", status=403),
            Action.STOP_JOB,
        ),
        (FetchError(ErrorKind.DISK, "No space left on device"), Action.STOP_JOB),
    ],
)
def test_errors_are_sorted_by_what_they_mean(error: FetchError, action: Action) -> None:
    assert classify(error).action is action


def test_network_failures_count_toward_outage_and_429_lowers_concurrency() -> None:
    assert classify(FetchError(ErrorKind.CONNECT, "refused")).network_down
    assert not classify(FetchError(ErrorKind.HTTP, "oops", status=500)).network_down
    verdict = classify(FetchError(ErrorKind.HTTP, "slow down", status=429, retry_after=7.0))
    assert verdict.rate_limited and verdict.retry_after == 7.0


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(120.0, 2.0 * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not a fixed sleep
    with pytest.raises(ValueError):
        backoff_delay(-1, rng)


def test_retry_after_wins_over_backoff() -> None:
    rng = random.Random(2)
    verdict = classify(FetchError(ErrorKind.HTTP, "x", status=429, retry_after=30.0))
    delay = retry_delay(verdict, 0, rng)
    assert 30.0 <= delay <= 31.0


def test_same_seed_gives_same_delays() -> None:
    a = [backoff_delay(n, random.Random(5)) for n in range(5)]
    b = [backoff_delay(n, random.Random(5)) for n in range(5)]
    assert a == b


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5", 5.0),
        (" 0 ", 0.0),
        ("-3", None),
        ("nonsense", None),
        ("", None),
        (None, None),
        ("Wed, 25 Nov 2026 16:00:10 GMT", 10.0),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = 1795622400.0  # 2026-11-25 16:00:00 UTC
    assert parse_retry_after(header, now) == expected
