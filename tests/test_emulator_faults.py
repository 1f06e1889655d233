"""The emulator's seeded faults and performance model, observed on the wire."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import ee
import pytest
from test_emulator_server import FAKE, download_url, envelope, http_get, init_client

from engine.emulator.config import API_FAULT_KINDS, PROFILES, TILE_FAULT_KINDS, EmulatorConfig
from engine.emulator.faults import FaultModel, fault_schedule
from engine.emulator.server import EmulatorThread

STATUS_FAULTS = {
    "http_500": (500, "INTERNAL"),
    "http_502": (502, "UNAVAILABLE"),
    "http_503": (503, "UNAVAILABLE"),
    "http_504": (504, "DEADLINE_EXCEEDED"),
}
QUOTA_TEXT = (
    "Too Many Requests: Request was rejected because the request rate or concurrency limit "
    "was exceeded."
)


def only(kind: str, **extra: Any) -> EmulatorConfig:
    """Every tile request meets `kind`."""
    return EmulatorConfig.from_profile("clean", fault_rate=1.0, fault_weights={kind: 1.0}, **extra)


def raw_get(
    url: str, timeout: float = 5
) -> tuple[int, dict[str, str], bytes, BaseException | None]:
    """GET with http.client, keeping what arrived before a failure."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        headers = dict(resp.getheaders())
        chunks: list[bytes] = []
        try:
            while chunk := resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536):
                chunks.append(chunk)
            error: BaseException | None = None
            if resp.length:
                error = http.client.IncompleteRead(b"".join(chunks), resp.length)
        except (OSError, http.client.HTTPException) as exc:
            error = exc
        return resp.status, headers, b"".join(chunks), error
    finally:
        conn.close()


@pytest.fixture
def started() -> Iterator[list[EmulatorThread]]:
    """Emulators started by a test, stopped after it."""
    running: list[EmulatorThread] = []
    yield running
    for emu in running:
        emu.stop()


def start(running: list[EmulatorThread], config: EmulatorConfig) -> EmulatorThread:
    emu = EmulatorThread(config, evaluator=FAKE).start()
    running.append(emu)
    init_client(emu.url)
    return emu


# ----------------------------------------------------------------------------- pure model


def test_profiles_and_overrides() -> None:
    assert {"clean", "realistic", "flaky", "hostile"} <= set(PROFILES)
    hostile = EmulatorConfig.from_profile("hostile", seed=9, stall_s=1.0)
    assert (hostile.fault_rate, hostile.seed, hostile.stall_s) == (0.35, 9, 1.0)
    assert hostile.fault_weights["html"] > 0 and hostile.fault_weights["stall"] > 0
    assert EmulatorConfig.from_profile("clean").faults_on is False
    assert EmulatorConfig.from_profile("hostile", no_limits=True).faults_on is False
    with pytest.raises(ValueError, match="unknown profile"):
        EmulatorConfig.from_profile("nope")
    with pytest.raises(ValueError, match="unknown fault kinds"):
        EmulatorConfig(fault_weights={"meteor": 1.0})


def test_fault_rates_follow_the_profile() -> None:
    for name, rate in (("flaky", 0.10), ("hostile", 0.35)):
        config = EmulatorConfig.from_profile(name)
        model = FaultModel(config)
        hits = [model.decide("getPixels", f"tile{i}", 0, tile=True) for i in range(4000)]
        share = sum(h is not None for h in hits) / len(hits)
        assert abs(share - rate) < 0.03, (name, share)
        kinds = {h.kind for h in hits if h is not None}
        assert kinds == {k for k, w in config.fault_weights.items() if w > 0}
        api = [model.decide("value:compute", f"x{i}", 0, tile=False) for i in range(4000)]
        assert {h.kind for h in api if h is not None} <= set(API_FAULT_KINDS)


def test_schedule_depends_on_seed_identity_and_attempt_only() -> None:
    config = EmulatorConfig.from_profile("hostile", seed=3)
    first = fault_schedule(config, "getPixels", "tile-a", 40)
    assert first == fault_schedule(config, "getPixels", "tile-a", 40)
    assert first != fault_schedule(config.replace(seed=4), "getPixels", "tile-a", 40)
    assert first != fault_schedule(config, "getPixels", "tile-b", 40)
    assert fault_schedule(config, "computePixels", "tile-a", 200).count("expired") == 0


def test_rate_limit_bursts_span_attempts() -> None:
    config = only("rate_limit", burst_max=4).replace(fault_rate=0.3)
    runs = []
    for i in range(300):
        schedule = fault_schedule(config, "getPixels", f"t{i}", 12)
        run = 0
        for kind in schedule:
            run = run + 1 if kind else 0
            runs.append(run)
    assert max(runs) >= 3


# ----------------------------------------------------------------------------- on the wire


@pytest.mark.parametrize("kind", sorted(STATUS_FAULTS))
def test_server_error_faults(started: list[EmulatorThread], kind: str) -> None:
    emu = start(started, only(kind))
    status, _, body = http_get(download_url(["B1"], 8, 8))
    code, name = STATUS_FAULTS[kind]
    assert status == code
    error = envelope(body)
    assert (error["code"], error["status"]) == (code, name) and error["message"]
    assert emu.stats()["faults"] == {kind: 1}


@pytest.mark.parametrize("kind", ["rate_limit_retry_after", "rate_limit"])
def test_rate_limit_faults(started: list[EmulatorThread], kind: str) -> None:
    start(started, only(kind, retry_after_s=7))
    status, headers, body = http_get(download_url(["B1"], 8, 8))
    assert status == 429
    assert envelope(body) == {"code": 429, "message": QUOTA_TEXT, "status": "RESOURCE_EXHAUSTED"}
    assert headers.get("Retry-After") == ("7" if kind == "rate_limit_retry_after" else None)


def test_short_body(started: list[EmulatorThread]) -> None:
    emu = start(started, only("short_body", chunk_size=4096))
    status, headers, body, error = raw_get(download_url(["B3"], 100, 100))
    assert status == 200
    assert int(headers["Content-Length"]) > len(body)
    assert isinstance(error, http.client.IncompleteRead)
    stats = emu.stats()
    assert stats["faults"] == {"short_body": 1} and stats["tiles_served"] == []


def test_resets_before_and_during_the_body(started: list[EmulatorThread]) -> None:
    emu = start(started, only("reset", chunk_size=4096))
    seen = set()
    for i in range(12):
        try:
            status, headers, body, error = raw_get(download_url(["B3"], 100, 100 + i))
        except (ConnectionError, http.client.RemoteDisconnected):
            seen.add("before")
            continue
        assert status == 200 and error is not None
        assert int(headers["Content-Length"]) > len(body)
        seen.add("during")
    assert seen == {"before", "during"}
    stats = emu.stats()
    assert set(stats["requests"]["getPixels"]) == {"0", "200"}
    assert stats["faults"] == {"reset": 12} and stats["tiles_served"] == []


def test_stall_sends_headers_then_nothing(started: list[EmulatorThread]) -> None:
    emu = start(started, only("stall", stall_s=3.0, seed=1))
    url = download_url(["B3"], 50, 50)
    began = time.monotonic()
    status, headers, body, error = raw_get(url, timeout=0.7)
    assert status == 200 and int(headers["Content-Length"]) > len(body)
    assert isinstance(error, (socket.timeout, TimeoutError))
    assert time.monotonic() - began < 2.5
    assert emu.stats()["faults"] == {"stall": 1}
    deadline = time.monotonic() + 1.5
    while emu.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emu.stats()["in_flight"] == 0  # a client that hung up frees its quota slot


def test_trickle_is_slow_but_complete(started: list[EmulatorThread]) -> None:
    emu = start(started, only("trickle", trickle_bandwidth=100_000.0, chunk_size=8192))
    url = download_url(["B3"], 100, 100)  # ~40 kB
    began = time.monotonic()
    status, headers, body, error = raw_get(url)
    assert status == 200 and error is None and len(body) == int(headers["Content-Length"])
    assert time.monotonic() - began >= 0.3
    assert emu.stats()["tiles_served"][0]["count"] == 1


def test_html_captive_portal(started: list[EmulatorThread]) -> None:
    start(started, only("html"))
    status, headers, body = http_get(download_url(["B1"], 8, 8))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body.startswith(b"<!DOCTYPE html>")


def test_expired_fault_expires_the_id(started: list[EmulatorThread]) -> None:
    emu = start(started, only("expired"))
    url = download_url(["B1"], 8, 8)
    for _ in range(2):
        status, _, body = http_get(url)
        assert status == 404 and envelope(body)["status"] == "NOT_FOUND"
    assert emu.stats()["faults"] == {"expired": 1}


def test_api_faults_reach_the_client(started: list[EmulatorThread]) -> None:
    config = EmulatorConfig.from_profile(
        "clean", api_fault_rate=1.0, fault_weights={"http_503": 1.0}
    )
    emu = start(started, config)
    with pytest.raises(ee.EEException, match=r"The service is currently unavailable\."):
        ee.Image("TEST/IMG").getInfo()
    with pytest.raises(ee.EEException, match=r"The service is currently unavailable\."):
        download_url(["B1"], 8, 8)
    stats = emu.stats()
    assert stats["requests"]["value:compute"] == {"503": 1}
    assert stats["requests"]["thumbnails:create"] == {"503": 1}


def _outcomes(emu: EmulatorThread, order: list[int], parallel: bool) -> dict[tuple[int, int], int]:
    """Status per (tile, attempt) when tiles are fetched in `order` (a tile may repeat)."""
    init_client(emu.url)
    urls = {i: download_url(["B1"], 5, 5 + i) for i in set(order)}
    seen: dict[int, int] = {}
    out: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def fetch(i: int, attempt: int) -> None:
        status = http_get(urls[i])[0]
        with lock:
            out[(i, attempt)] = status

    jobs: list[tuple[int, int]] = []
    for i in order:
        jobs.append((i, seen.get(i, 0)))
        seen[i] = seen.get(i, 0) + 1
    if parallel:
        # One thread per tile, each fetching its own attempts in sequence.
        def tile_worker(i: int) -> None:
            for tile, attempt in jobs:
                if tile == i:
                    fetch(tile, attempt)

        threads = [threading.Thread(target=tile_worker, args=(i,)) for i in sorted(set(order))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, attempt in jobs:
            fetch(i, attempt)
    return out


def test_same_seed_same_faults_whatever_the_order(started: list[EmulatorThread]) -> None:
    weights = {"rate_limit": 1.0, "http_500": 1.0, "http_503": 1.0, "expired": 1.0}
    config = EmulatorConfig.from_profile("clean", seed=11, fault_rate=0.5, fault_weights=weights)
    tiles = list(range(6))
    a = _outcomes(start(started, config), tiles * 3, parallel=False)
    b = _outcomes(start(started, config), list(reversed(tiles)) * 3, parallel=True)
    assert a == b
    assert len(set(a.values())) > 1  # the schedule did inject faults
    c = _outcomes(start(started, config.replace(seed=12)), tiles * 3, parallel=False)
    assert c != a


def test_latency_and_bandwidth_shape_the_answer(started: list[EmulatorThread]) -> None:
    config = EmulatorConfig.from_profile(
        "clean", latency_fixed_s=0.3, conn_bandwidth=200_000.0, chunk_size=8192
    )
    start(started, config)
    url = download_url(["B3"], 100, 100)  # ~40 kB: 0.2 s at 200 kB/s
    began = time.monotonic()
    status, _, body = http_get(url)
    assert status == 200 and len(body) > 40_000
    assert time.monotonic() - began >= 0.45


def test_faults_leave_discovery_alone(started: list[EmulatorThread]) -> None:
    config = EmulatorConfig.from_profile("hostile", fault_rate=1.0, api_fault_rate=0.0)
    emu = start(started, config)
    assert emu.stats()["requests"]["discovery"] == {"200": 2}
    assert set(TILE_FAULT_KINDS) >= set(config.fault_weights)
    status, _, body = http_get(emu.url + "/v1/projects/test-proj/algorithms")
    assert status == 200 and "algorithms" in json.loads(body)


def test_total_bandwidth_is_shared(started: list[EmulatorThread]) -> None:
    config = EmulatorConfig.from_profile("clean", total_bandwidth=200_000.0, chunk_size=8192)
    start(started, config)
    urls = [download_url(["B3"], 100, 100 + i) for i in range(2)]  # ~40 kB each
    began = time.monotonic()
    threads = [threading.Thread(target=http_get, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - began >= 0.35  # 80 kB through one 200 kB/s pipe


def test_compute_pixels_meets_faults_too(started: list[EmulatorThread]) -> None:
    emu = start(started, only("http_503"))
    grid = {
        "dimensions": {"width": 4, "height": 4},
        "affineTransform": {"scaleX": 10, "translateX": 0, "scaleY": -10, "translateY": 0},
        "crsCode": "EPSG:32650",
    }
    request = {"expression": ee.Image("TEST/IMG"), "fileFormat": "GEO_TIFF", "grid": grid}
    with pytest.raises(ee.EEException, match=r"The service is currently unavailable\."):
        ee.data.computePixels(request)
    assert emu.stats()["requests"]["computePixels"] == {"503": 1}
