"""What a failed tile attempt means, and how long to wait before the next one.

Pure functions only: the scheduler feeds in a :class:`FetchError` and a random source and
gets back a :class:`Verdict`. This is the one place that decides whether a tile is retried,
split, given a new download URL, failed, or whether the whole job must stop.
"""

from __future__ import annotations

import email.utils
import enum
import random
from dataclasses import dataclass

from engine.errors import ErrorKind, FetchError


class Action(enum.Enum):
    RETRY = "retry"
    SPLIT = "split"
    REMAKE_URL = "remake_url"
    FAIL = "fail"
    STOP_JOB = "stop_job"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str
    retry_after: float | None = None
    network_down: bool = False  # counts toward outage detection
    rate_limited: bool = False  # lowers the concurrency


TOO_BIG_MARKERS = (
    "total request size",
    "user memory limit exceeded",
    "computation timed out",
    "pixel grid dimensions",
    "number of bands",
    "too many bands",
)
TRANSIENT_MARKERS = (
    "too many concurrent aggregations",
    "too many requests",
    "rate limit",
    "quota exceeded",
    "internal error",
    "service unavailable",
    "backend error",
)
AUTH_MARKERS = (
    "not signed up",
    "permission",
    "not authorized",
    "unauthenticated",
    "invalid_grant",
    "credentials",
    "does not have",
    "caller does not have",
)


def classify(error: FetchError) -> Verdict:
    """Sort one failure into what it means for the tile and for the job."""
    text = error.message.lower()
    reason = str(error)
    if error.kind is ErrorKind.DISK:
        return Verdict(Action.STOP_JOB, reason)
    if error.kind in (ErrorKind.CONNECT, ErrorKind.TIMEOUT):
        return Verdict(Action.RETRY, reason, network_down=True)
    if error.kind is ErrorKind.BODY:
        return Verdict(Action.RETRY, reason)
    if any(marker in text for marker in TOO_BIG_MARKERS):
        return Verdict(Action.SPLIT, reason)
    status = error.status
    if status == 429 or any(marker in text for marker in TRANSIENT_MARKERS):
        return Verdict(Action.RETRY, reason, retry_after=error.retry_after, rate_limited=True)
    if status is not None and status >= 500:
        return Verdict(Action.RETRY, reason, retry_after=error.retry_after)
    if status in (401, 403) or any(marker in text for marker in AUTH_MARKERS):
        return Verdict(Action.STOP_JOB, reason)
    if error.during_download and status is not None and 400 <= status < 500:
        return Verdict(Action.REMAKE_URL, reason)
    if status is not None and 400 <= status < 500:
        return Verdict(Action.FAIL, reason)
    if error.kind is ErrorKind.EE and status is None:
        # The client gives no status for its own errors; an unknown one is most likely
        # a deterministic rejection of the expression, which a retry cannot mend.
        return Verdict(Action.FAIL, reason)
    return Verdict(Action.RETRY, reason)


def backoff_delay(
    attempt: int, rng: random.Random, *, base: float = 2.0, cap: float = 120.0
) -> float:
    """Full-jitter exponential backoff: uniform over [0, min(cap, base * 2**attempt)].

    Full jitter spreads the retries of many tiles that failed together, so they do not
    come back as one burst and fail together again.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    verdict: Verdict, attempt: int, rng: random.Random, *, base: float = 2.0, cap: float = 120.0
) -> float:
    """The wait before the next attempt: the server's Retry-After if it gave one, else backoff.

    A second of jitter on top of Retry-After keeps tiles told the same time from returning
    in one burst.
    """
    if verdict.retry_after is not None:
        return verdict.retry_after + rng.uniform(0.0, 1.0)
    return backoff_delay(attempt, rng, base=base, cap=cap)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, 24 * 3600.0)
