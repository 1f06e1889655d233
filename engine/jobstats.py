"""What a snapshot of a job means: progress, MB/s over time, ETA, retries by cause, errors.

Pure arithmetic on ``engine.snapshot.Snapshot``; the clock is its ``facts.read_at``.
Everything comes from what the state records, and each number says what it is made of:

- throughput: bytes of the tile files recorded done, by the time they were recorded (the
  scheduler records done tiles in batches about once a second, so bins are 2 s or wider);
- ETA: the tiles still to fetch divided by the rate at which this run recorded tiles done over
  the last ``window`` seconds (the run's start is when its process took the job's lock);
- retries: the state counts failed attempts and 429 answers per tile, and keeps only the last
  error of each tile, so causes are "tiles whose last error was X", not every attempt's cause.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import inventory
from engine.snapshot import JobFacts, Snapshot

ETA_WINDOW_S = 120.0
THROUGHPUT_SPAN_S = 3600.0
MIN_BIN_S = 2.0
MAX_BINS = 60

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET = re.compile(
    r"(?i)\b(bearer\s+|(?:access_?token|token|key|sig|signature)=)[A-Za-z0-9._~+/=-]+"
)
_GAVE_UP = re.compile(r"^gave up after \d+ attempts: ")
_HTTP = re.compile(r"^HTTP (\d{3})\b")
_CAUSE_HEAD = re.compile(r"[:(\[]")


def redact(text: str) -> str:
    """``text`` without URLs or tokens: a download URL is a bearer capability for the pixels."""
    return _SECRET.sub(r"\1(hidden)", _URL.sub("(URL hidden)", text))


def cause(error: str, status: str = "pending") -> str:
    """A short name for the kind of an error message: 'HTTP 503', 'connection reset', ...

    Numbers become N so that messages that differ only by a size or a count group together.
    A split parent's error is why it was split.
    """
    text = _GAVE_UP.sub("", redact(error).strip())
    found = _HTTP.match(text)
    if found:
        name = f"HTTP {found.group(1)}"
    else:
        head = _CAUSE_HEAD.split(text, maxsplit=1)[0]
        name = re.sub(r"\d+", "N", " ".join(head.split()))[:60] or "other"
    return f"split: {name}" if status == "split" else name


@dataclass(frozen=True, slots=True)
class Throughput:
    """MB/s of recorded tile bytes in equal bins ending at ``end`` (seconds since the epoch)."""

    bin_seconds: float
    end: float
    mb_per_s: list[float]

    def starts(self) -> list[float]:
        return [self.end - self.bin_seconds * (len(self.mb_per_s) - i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.mb_per_s)


@dataclass(frozen=True, slots=True)
class Eta:
    """Seconds left at the recent rate, or None and why not."""

    seconds: float | None
    tiles_per_s: float | None
    mb_per_s: float | None
    remaining_tiles: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CauseCount:
    cause: str
    tiles: int
    failed_attempts: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class Retries:
    """Failed attempts and 429 answers the state counts, and the causes of the last errors."""

    failed_attempts: int
    rate_limited: int
    tiles_retried: int
    by_cause: list[CauseCount] = field(default_factory=list)


def throughput(
    snap: Snapshot,
    *,
    span: float = THROUGHPUT_SPAN_S,
    max_bins: int = MAX_BINS,
    min_bin: float = MIN_BIN_S,
) -> Throughput:
    """Recorded MB/s over the last ``span`` seconds of activity (up to now while running)."""
    done = snap.tiles.is_status("done")
    times, sizes = snap.tiles.updated_at[done], snap.tiles.bytes[done]
    facts = snap.facts
    if not len(times):
        return Throughput(min_bin, facts.read_at, [])
    end = max(facts.read_at if facts.running else float(times.max()), float(times.max()))
    start = max(float(times.min()), end - span)
    width = max(min_bin, (end - start) / max_bins)
    count = max(1, math.ceil((end - start) / width - 1e-9))
    edges = end - width * np.arange(count, -1, -1, dtype=np.float64)
    edges[0] = min(edges[0], start)
    keep = times >= edges[0]
    totals, _ = np.histogram(times[keep], bins=edges, weights=sizes[keep])
    return Throughput(width, end, [float(v) / width / 1e6 for v in totals])


def eta(snap: Snapshot, *, window: float = ETA_WINDOW_S) -> Eta:
    """Time to fetch what is left at the rate of the last ``window`` seconds of this run."""
    facts = snap.facts
    remaining = facts.counts["pending"] + facts.counts["in_flight"]
    if not remaining:
        return Eta(0.0, None, None, 0, "nothing left to fetch")
    if not facts.running:
        return Eta(None, None, None, remaining, "not running")
    since = facts.read_at - window
    if facts.run_started_at is not None:
        since = max(since, facts.run_started_at)
    elapsed = facts.read_at - since
    recent = snap.tiles.is_status("done") & (snap.tiles.updated_at >= since)
    tiles = int(recent.sum())
    if tiles == 0 or elapsed < 1.0:
        return Eta(None, None, None, remaining, "measuring: no tile done yet in this run")
    rate = tiles / elapsed
    mb_per_s = float(snap.tiles.bytes[recent].sum()) / elapsed / 1e6
    return Eta(remaining / rate, rate, mb_per_s, remaining)


def retries(snap: Snapshot) -> Retries:
    """Totals from the tiles' counters; causes from their last errors, largest first."""
    tiles = snap.tiles
    grouped: dict[str, list[int]] = {}
    for item in snap.errors:
        counts = grouped.setdefault(cause(item.error, item.status), [0, 0, 0])
        counts[0] += item.tiles
        counts[1] += item.attempts
        counts[2] += item.rate_limited
    by_cause = sorted(
        (CauseCount(name, *values) for name, values in grouped.items()),
        key=lambda c: (-c.tiles, c.cause),
    )
    return Retries(
        failed_attempts=int(tiles.attempts.sum()),
        rate_limited=int(tiles.rate_limited.sum()),
        tiles_retried=int(((tiles.attempts > 0) | (tiles.rate_limited > 0)).sum()),
        by_cause=by_cause,
    )


def summary(facts: JobFacts) -> dict[str, Any]:
    """The job in a few numbers, as the folder view lists it (``status --json``'s names)."""
    counts = facts.counts
    output_exists = _exists(facts.output_path)
    return {
        "name": facts.name,
        "state": str(facts.path.resolve()),
        "output": facts.output_path,
        "status": facts.job_status,
        "state_label": inventory.label(facts.job_status, counts, facts.running, output_exists),
        "running": facts.running,
        "tiles": counts,
        "percent": inventory.percent_done(facts.job_status, counts),
        "bytes_done": facts.bytes_done,
        "expected_bytes": inventory.expected_bytes(facts.spec),
        "output_exists": output_exists,
    }


def details(snap: Snapshot) -> dict[str, Any]:
    """Everything the live page shows of one job, as JSON-ready values (no URL, no token)."""
    facts = snap.facts
    grid = facts.spec.get("grid", {})
    flow = throughput(snap)
    return {
        **summary(facts),
        "grid": {"width": grid.get("width"), "height": grid.get("height"), "crs": grid.get("crs")},
        "bands": len(facts.spec.get("band_ids", [])),
        "has_region": facts.region is not None,
        "read_at": facts.read_at,
        "created_at": facts.created_at,
        "run_started_at": facts.run_started_at,
        "throughput": {
            "bin_seconds": flow.bin_seconds,
            "starts": flow.starts(),
            "mb_per_s": flow.mb_per_s,
        },
        "eta": asdict(eta(snap)),
        "retries": asdict(retries(snap)),
        "recent_errors": [
            {"tile": tile, "at": when, "error": redact(error)}
            for tile, when, error in snap.recent_errors
        ],
    }


def _exists(path: str) -> bool:
    try:
        return bool(path) and Path(path).exists()
    except OSError:
        return False
