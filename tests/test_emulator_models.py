"""The emulator's server models: profiles, the per-project concurrency quota and its counters,
rendering off the event loop (threads, worker processes) and the tile cache.

Behaviour only: the quota test holds every render on a gate the test opens itself, so what
it asserts does not depend on timing.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ee
import pytest
from test_emulator_server import FAKE, envelope, http_get, init_client

from engine.emulator import config as config_module
from engine.emulator import evaluate as model
from engine.emulator.config import PROFILES, SERVER_MODELS, EmulatorConfig
from engine.emulator.encode import ZIP_DATE
from engine.emulator.render import (
    ImageFacts,
    PixelGrid,
    TileJob,
    describe,
    expression_text,
    render_body,
)
from engine.emulator.server import EmulatorThread, Evaluator, create_app
from engine.emulator.stats import EmulatorStats
from engine.emulator.workers import ClientGone, Renderer
from engine.testing.cli import REPO

MB = 1e6
MIB = 2**20

# profile -> (fixed s, s per Mpx, per-connection B/s, total B/s, quota per project)
DOCUMENTED = {
    "realistic": (0.7, 0.3, 4 * MIB, 64 * MIB, 40),
    "per-connection": (1.0, 0.3, 4 * MB, None, 40),
    "high-latency": (3.0, 0.3, 4 * MB, None, 40),
    "slow-connections": (1.0, 0.3, 1 * MB, None, 40),
    "compute-heavy": (1.0, 2.0, 4 * MB, None, 40),
    "quota-10": (1.0, 0.3, 4 * MB, None, 10),
    "link-20": (1.0, 0.3, 4 * MB, 20 * MB, 40),
}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_server_model_has_its_documented_knobs(name: str) -> None:
    config = EmulatorConfig.from_profile(name)
    knobs = (
        config.latency_fixed_s,
        config.latency_per_mpix_s,
        config.conn_bandwidth,
        config.total_bandwidth,
        config.max_concurrent,
    )
    assert knobs == DOCUMENTED[name]
    assert config.profile == name and config.shaping_on and not config.faults_on
    assert config.api_latency_s == 0.2
    unshaped = EmulatorConfig.from_profile(name, shaping=False)
    assert not unshaped.shaping_on and unshaped.limits_on  # capacity runs keep the quota


def test_every_profile_is_documented() -> None:
    assert set(SERVER_MODELS) == set(DOCUMENTED) and set(SERVER_MODELS) <= set(PROFILES)
    config_doc = config_module.__doc__ or ""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The emulator") :]
    for name in PROFILES:
        assert f"``{name}``" in config_doc, f"{name} missing from config's docstring"
        assert f"`{name}`" in section, f"{name} missing from README's emulator section"


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        EmulatorConfig(max_concurrent=0)
    with pytest.raises(ValueError, match="conn_bandwidth"):
        EmulatorConfig(conn_bandwidth=0)
    with pytest.raises(ValueError, match="render_processes"):
        EmulatorConfig(render_processes=-1)


# ----------------------------------------------------------------------------- quota


class GatedImage:
    """A fake image whose render waits for the test to open the gate."""

    def __init__(self, image: Any, gate: threading.Event) -> None:
        self._image = image
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._image, name)

    def render(self, *args: Any, **kwargs: Any) -> Any:
        if not self._gate.wait(30):
            raise RuntimeError("the test never opened the gate")
        return self._image.render(*args, **kwargs)


@pytest.fixture
def gated() -> Iterator[tuple[EmulatorThread, threading.Event]]:
    """A quota of 3 concurrent requests per project; renders wait for the gate."""
    gate = threading.Event()
    evaluator = Evaluator(
        lambda expression: GatedImage(FAKE.evaluate(expression), gate),
        FAKE.to_info,
        FAKE.error,
    )
    config = EmulatorConfig.from_profile("clean", max_concurrent=3)
    with EmulatorThread(config, evaluator=evaluator) as emu:
        yield emu, gate
        gate.set()


def urls_for(url: str, project: str, count: int) -> list[str]:
    """`count` download URLs of distinct tiles, made under EE project `project`."""
    ee.Initialize(credentials=None, project=project, url=url)
    ee.data.setMaxRetries(0)
    image = ee.Image("TEST/IMG").select(["B1"])
    params = {"crs": "EPSG:32650", "crs_transform": [10, 0, 500000, 0, -10, 4000000]}
    return [image.getDownloadURL({**params, "dimensions": [4, 4 + i]}) for i in range(count)]


def test_quota_is_per_project_and_the_counters_are_exact(
    gated: tuple[EmulatorThread, threading.Event],
) -> None:
    emu, gate = gated
    init_client(emu.url)
    first = urls_for(emu.url, "proj-a", 5)
    other = urls_for(emu.url, "proj-b", 2)
    emu.reset_stats()
    results: dict[str, list[tuple[int, bytes]]] = {"proj-a": [], "proj-b": []}
    lock = threading.Lock()

    def fetch(project: str, url: str) -> None:
        status, _, body = http_get(url, timeout=60)
        with lock:
            results[project].append((status, body))

    jobs = [("proj-a", u) for u in first] + [("proj-b", u) for u in other]
    threads = [threading.Thread(target=fetch, args=job) for job in jobs]
    for t in threads:
        t.start()

    def settled() -> bool:
        projects = emu.stats()["projects"]
        a, b = projects.get("proj-a", {}), projects.get("proj-b", {})
        return (a.get("in_flight"), a.get("quota_rejections"), b.get("in_flight")) == (3, 2, 2)

    # The gate is shut, so no admitted request can end: 3 of proj-a's 5 are in, 2 were
    # refused, and proj-b's own 2 run beside them (quotas are per project).
    wait_for(settled, "3 + 2 requests in flight and 2 refusals")
    held = emu.stats()
    assert held["in_flight"] == 5 and held["max_in_flight"] == 5
    gate.set()
    for t in threads:
        t.join(60)
    assert sorted(s for s, _ in results["proj-a"]) == [200, 200, 200, 429, 429]
    assert sorted(s for s, _ in results["proj-b"]) == [200, 200]
    for status, body in results["proj-a"]:
        if status == 429:
            assert envelope(body) == {
                "code": 429,
                "message": "Too Many Requests: Request was rejected because the request rate "
                "or concurrency limit was exceeded.",
                "status": "RESOURCE_EXHAUSTED",
            }
    stats = emu.stats()
    assert stats["projects"] == {
        "proj-a": {"in_flight": 0, "max_in_flight": 3, "quota_rejections": 2},
        "proj-b": {"in_flight": 0, "max_in_flight": 2, "quota_rejections": 0},
    }
    assert stats["quota_rejections"] == 2 and stats["requests"]["getPixels"] == {
        "200": 5,
        "429": 2,
    }
    _, _, body = http_get(emu.url + "/_emulator/stats")
    assert json.loads(body)["projects"]["proj-a"]["max_in_flight"] == 3
    emu.reset_stats()
    assert emu.stats()["projects"] == {}


def test_the_maximum_restarts_from_the_requests_still_in_flight() -> None:
    stats = EmulatorStats()
    assert stats.admit("p", 2) and stats.admit("p", 2) and not stats.admit("p", 2)
    stats.leave("p")
    stats.reset()
    assert stats.projects() == {"p": {"in_flight": 1, "max_in_flight": 1, "quota_rejections": 0}}
    assert stats.admit("p", None) and stats.admit("p", None)
    assert stats.projects()["p"]["max_in_flight"] == 3


# ----------------------------------------------------------------------------- rendering

DEM = {
    "result": "0",
    "values": {
        "0": {
            "functionInvocationValue": {
                "functionName": "Image.load",
                "arguments": {"id": {"constantValue": "USGS/SRTMGL1_003"}},
            }
        }
    },
}
DEM_TEXT = expression_text(DEM)
GRID = PixelGrid("EPSG:4326", (0.001, 0.0, 118.7, 0.0, -0.001, 32.1), 48, 40)
JOBS = [
    TileJob(DEM_TEXT, GRID, ("elevation",), "GEO_TIFF"),
    TileJob(DEM_TEXT, GRID, ("elevation",), "GEO_TIFF", compress="deflate"),
    TileJob(DEM_TEXT, GRID, ("elevation",), "NPY"),
    TileJob(DEM_TEXT, GRID, ("elevation",), "ZIPPED_GEO_TIFF_PER_BAND", prefix="tile"),
    TileJob(
        DEM_TEXT, GRID, ("elevation",), "PNG", visualization={"ranges": [{"min": 0, "max": 99}]}
    ),
]


def rendered_by(config: EmulatorConfig, jobs: list[TileJob]) -> tuple[list[bytes], dict]:
    """The bodies a `Renderer` of `config` makes for `jobs`, and its cache counters."""

    async def main() -> list[bytes]:
        renderer = Renderer(config, stats, model.evaluate, bundled_model=True)
        renderer.start()
        try:
            return [await renderer.tile(job) for job in jobs]
        finally:
            renderer.close()

    stats = EmulatorStats()
    bodies = asyncio.run(main())
    return bodies, stats.snapshot()["tile_cache"]


def test_off_loop_rendering_gives_the_in_loop_bytes(tmp_path: Path) -> None:
    direct = [render_body(model.evaluate(DEM), job) for job in JOBS]
    assert len({*direct}) == len(JOBS) and direct[0][:2] in (b"II", b"MM")
    threads, _ = rendered_by(EmulatorConfig(), JOBS)
    processes, _ = rendered_by(EmulatorConfig(render_processes=1), JOBS)
    cached = EmulatorConfig(tile_cache_dir=str(tmp_path))
    first, counts_first = rendered_by(cached, JOBS)
    again, counts_again = rendered_by(cached, JOBS)  # another server on the same folder
    assert threads == direct and processes == direct and first == direct and again == direct
    assert counts_first == {"hits": 0, "misses": len(JOBS)}
    assert counts_again == {"hits": len(JOBS), "misses": 0}
    archive = zipfile.ZipFile(io.BytesIO(direct[3]))
    assert {m.date_time for m in archive.infolist()} == {ZIP_DATE}  # no clock in the bytes
    stored = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert stored == sorted(f"{job.key()}.bin" for job in JOBS)  # no temporary left behind


def test_image_facts_are_cached_beside_the_tiles(tmp_path: Path) -> None:
    config = EmulatorConfig(tile_cache_dir=str(tmp_path))
    evaluated: list[str] = []

    def counting(expression: dict[str, Any]) -> Any:
        evaluated.append(expression["result"])
        return model.evaluate(expression)

    async def describe(evaluate: Callable[[dict[str, Any]], Any]) -> list[Any]:
        renderer = Renderer(config, EmulatorStats(), evaluate, bundled_model=True)
        renderer.start()
        try:
            return [await renderer.describe(DEM_TEXT, grid) for grid in (GRID, None)]
        finally:
            renderer.close()

    first = asyncio.run(describe(counting))
    again = asyncio.run(describe(counting))  # another server on the same folder
    assert first == again and len(evaluated) == 2  # evaluated once per (expression, grid)
    on_grid, unbounded = first
    assert on_grid.grid == GRID and on_grid.bands == (("elevation", "int16"),)
    assert on_grid.work == model.evaluate(DEM).work(GRID.width, GRID.height)
    assert unbounded.grid is None and unbounded.work is None


def test_cache_keys_change_with_every_input() -> None:
    base = JOBS[0]
    other_grid = PixelGrid("EPSG:4326", GRID.transform, 48, 41)
    variants = [
        TileJob(DEM_TEXT, other_grid, base.band_ids, "GEO_TIFF"),
        TileJob(DEM_TEXT, GRID, base.band_ids, "NPY"),
        TileJob(DEM_TEXT, GRID, base.band_ids, "GEO_TIFF", prefix="other"),
        TileJob(DEM_TEXT, GRID, base.band_ids, "GEO_TIFF", compress="deflate"),
        TileJob(expression_text({**DEM, "result": "1"}), GRID, base.band_ids, "GEO_TIFF"),
    ]
    keys = {base.key(), *(v.key() for v in variants)}
    assert len(keys) == 1 + len(variants)
    shuffled = dict(reversed(list(DEM.items())))
    assert TileJob(expression_text(shuffled), GRID, ("elevation",), "GEO_TIFF").key() == (
        base.key()
    )


def test_worker_processes_serve_the_same_bytes_over_http(ee_emulator: Any) -> None:
    bodies = []
    for processes in (0, 1):
        emu = ee_emulator("clean", render_processes=processes)
        init_client(emu.url)
        url = ee.Image("USGS/SRTMGL1_003").getDownloadURL(
            {
                "crs": "EPSG:4326",
                "crs_transform": [0.001, 0, 118.7, 0, -0.001, 32.1],
                "dimensions": [64, 32],
                "format": "GEO_TIFF",
            }
        )
        status, _, body = http_get(url, timeout=60)
        assert status == 200
        bodies.append(body)
        emu.stop()
    assert bodies[0] == bodies[1]


def test_a_dead_worker_fails_one_render_and_the_pool_is_renewed() -> None:
    job = JOBS[0]

    async def main() -> tuple[str, bytes]:
        config = EmulatorConfig(render_processes=1)
        renderer = Renderer(config, EmulatorStats(), model.evaluate, bundled_model=True)
        renderer.start()
        try:
            await renderer.tile(job)
            pool = renderer._processes
            assert pool is not None
            for process in list(pool._processes.values()):
                process.kill()
            try:
                await renderer.tile(job)
                failure = "no error"
            except Exception as exc:
                failure = type(exc).__name__
            return failure, await renderer.tile(job)
        finally:
            renderer.close()

    failure, body = asyncio.run(main())
    assert failure == "RenderWorkerDied"
    assert body == render_body(model.evaluate(DEM), job)


def test_processes_need_the_bundled_model() -> None:
    with pytest.raises(ValueError, match="render_processes needs the bundled model"):
        create_app(EmulatorConfig(render_processes=1), evaluator=FAKE)


def test_api_calls_do_not_wait_behind_renders_and_a_render_nobody_waits_for_is_skipped() -> None:
    """A killed client leaves up to 40 renders queued: the next client's getInfo must not wait
    for them (API calls have their own pool), and those not yet started are never rendered."""
    release = threading.Event()
    rendered: list[str] = []

    def blocking(expression: dict[str, Any]) -> Any:
        rendered.append(expression["result"])
        assert release.wait(30), "the test never released the render"
        return model.evaluate(expression)

    async def main() -> tuple[ImageFacts, bool, list[str]]:
        config = EmulatorConfig(render_workers=1)
        renderer = Renderer(config, EmulatorStats(), blocking, bundled_model=True)
        renderer.start()
        try:
            busy = asyncio.ensure_future(renderer.tile(JOBS[0]))
            while not rendered:  # the only render thread is now held
                await asyncio.sleep(0.01)
            gone = asyncio.ensure_future(renderer.tile(JOBS[1], wanted=lambda: False))
            getinfo = renderer.run(describe, model.evaluate, DEM_TEXT, GRID)
            facts = await asyncio.wait_for(getinfo, 10)
            release.set()
            await busy
            try:
                await gone
            except ClientGone:
                return facts, True, list(rendered)
            return facts, False, list(rendered)
        finally:
            release.set()
            renderer.close()

    facts, skipped, renders = asyncio.run(main())
    assert facts.bands == (("elevation", "int16"),)  # answered while the render was held
    assert skipped and len(renders) == 1  # the second tile was never evaluated
