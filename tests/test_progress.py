"""The progress line's rate and ETA, on an injected clock."""

from __future__ import annotations

import io

from engine.progress import Counters, LogProgress, eta_seconds


def test_the_eta_ignores_start_up_and_the_first_wave() -> None:
    # 100 tiles of 10 MB; nothing finishes for the first 120 s (start-up, 40 tiles in
    # flight), then one tile a second: 60 left after 40 more seconds means 60 s to go.
    counters = Counters(total=100, started_at=0.0)
    for second in range(120, 161):
        counters.finished(10_000_000, float(second))
    assert counters.done == 41
    eta = eta_seconds(counters, 160.0)
    assert eta is not None and abs(eta - 59.0) < 1e-6


def test_no_eta_before_two_tiles_have_finished_or_when_none_is_left() -> None:
    counters = Counters(total=2, started_at=0.0)
    assert eta_seconds(counters, 5.0) is None
    counters.finished(1000, 5.0)
    assert eta_seconds(counters, 5.0) is None  # one tile: no rate yet
    counters.finished(1000, 6.0)
    assert eta_seconds(counters, 6.0) is None  # nothing left


def test_a_resumed_run_counts_its_own_tiles_for_the_rate() -> None:
    # 50 of 100 tiles came from an earlier run; this one finishes a 10 MB tile every 2 s.
    counters = Counters(total=100, done=50, bytes=500_000_000, started_bytes=500_000_000)
    for second in range(10, 31, 2):
        counters.finished(10_000_000, float(second))
    eta = eta_seconds(counters, 30.0)
    assert eta is not None and abs(eta - 39 * 2.0) < 1e-6


def test_the_log_line_shows_the_eta() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = LogProgress(stream=stream, every=0.0, clock=lambda: now[0])
    progress.start(4, 0, 0)
    for second in (100.0, 101.0):
        now[0] = second
        progress.tile_done(1_000_000)
    assert stream.getvalue().splitlines()[-1] == "eefetch: 2/4 tiles, 2.0 MB, 19.8 KB/s, ETA 2s"
