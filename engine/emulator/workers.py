"""Where the emulator's blocking work runs: never on its event loop.

The loop only paces latency and bandwidth, so the server model, not the emulator's CPU,
limits what a client gets. Tiles are rendered by a thread pool of the server process, or,
with `render_processes`, by worker processes that evaluate the JSON expression themselves
(evaluation is pure Python and a render holds the GIL for part of its time: in processes
neither competes with the loop's thread). API calls (`getInfo`, making a download id, the
client's files) have a small pool of their own, as Earth Engine answers them apart from pixel
computation: they never wait behind a queue of renders. A render whose client hung up before
its turn came is not started (a killed client leaves up to 40 of them). Model images are
never kept: only `ImageFacts`. An optional `TileCache` serves a tile rendered before without
rendering it again.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from engine.emulator.config import EmulatorConfig
from engine.emulator.faults import digest
from engine.emulator.render import (
    ImageFacts,
    PixelGrid,
    TileJob,
    describe,
    describe_job,
    render_job,
    render_with,
)
from engine.emulator.stats import EmulatorStats
from engine.emulator.tilecache import TileCache, model_fingerprint

API_WORKERS = 2


class RenderWorkerDied(RuntimeError):
    """A render worker process ended abruptly (killed, out of memory); the pool is renewed."""


class ClientGone(RuntimeError):
    """The client of a tile hung up before its render started; nothing was rendered."""


def _prepare_worker() -> None:
    """In each worker: leave Ctrl-C to the server, and import the model once, up front."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import engine.emulator.evaluate  # noqa: F401


def _ready() -> bool:
    return True


class Renderer:
    """The emulator's executors and tile cache; `start` on the server's loop, then `close`."""

    def __init__(
        self,
        config: EmulatorConfig,
        stats: EmulatorStats,
        evaluate: Callable[[dict[str, Any]], Any],
        *,
        bundled_model: bool,
    ) -> None:
        """`evaluate` is the server's model (threads); worker processes use the bundled one."""
        if config.render_processes and not bundled_model:
            raise ValueError(
                "render_processes needs the bundled model: a custom evaluator's images cannot "
                "cross processes; leave render_processes at 0 to render in threads"
            )
        self._config = config
        self._stats = stats
        self._evaluate = evaluate
        self._threads: ThreadPoolExecutor | None = None
        self._api: ThreadPoolExecutor | None = None
        self._processes: ProcessPoolExecutor | None = None
        self._cache: TileCache | None = None

    def start(self) -> None:
        """Create the pools (worker processes start now, in the background) and the cache."""
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, self._config.render_workers), thread_name_prefix="ee-emulator"
        )
        self._api = ThreadPoolExecutor(max_workers=API_WORKERS, thread_name_prefix="ee-api")
        if self._config.render_processes:
            self._processes = self._new_process_pool()
        if self._config.tile_cache_dir:
            self._cache = TileCache(Path(self._config.tile_cache_dir), model_fingerprint())

    def _new_process_pool(self) -> ProcessPoolExecutor:
        count = self._config.render_processes
        pool = ProcessPoolExecutor(
            max_workers=count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_prepare_worker,
        )
        for _ in range(count):
            pool.submit(_ready)  # each start spawns a worker, which imports the model now
        return pool

    def close(self) -> None:
        """Stop taking work; running renders finish on their own (never waited for)."""
        for pool in (self._threads, self._api, self._processes):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._threads = self._api = self._processes = None

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run the blocking work of an API call (evaluation, file I/O) in the API pool."""
        return await asyncio.get_running_loop().run_in_executor(self._api, func, *args)

    async def _render(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run the blocking work of a tile (rendering, encoding, the cache) in the render pool."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, func, *args)

    async def describe(self, expression: str, grid: PixelGrid | None) -> ImageFacts:
        """The facts of an expression's image on `grid`: from the cache, else evaluated (in a
        process or a thread)."""
        key = digest([expression, grid]) if self._cache is not None else ""
        if self._cache is not None:
            cached = await self.run(self._cache.get_facts, key)
            if cached is not None:
                return cached
        if self._processes is not None:
            facts = await self._in_process(describe_job, expression, grid)
        else:
            facts = await self.run(describe, self._evaluate, expression, grid)
        if self._cache is not None:
            await self.run(self._cache.put_facts, key, facts)
        return facts

    async def tile(self, job: TileJob, wanted: Callable[[], bool] = lambda: True) -> bytes:
        """The body of `job`: from the cache, else rendered (in a process or a thread), unless
        `wanted()` says, when its turn comes, that nobody waits for it any more."""
        key = job.key() if self._cache is not None else ""
        if self._cache is not None:
            cached = await self._render(self._cache.get, key)
            self._stats.record_cache(cached is not None)
            if cached is not None:
                return cached
        if not wanted():
            raise ClientGone(job.grid)
        if self._processes is not None:
            body = await self._in_process(render_job, job)
        else:
            body = await self._render(_render_if_wanted, self._evaluate, job, wanted)
        if self._cache is not None:
            await self._render(self._cache.put, key, body)
        return body

    async def _in_process(self, func: Callable[..., Any], *args: Any) -> Any:
        pool = self._processes
        assert pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, func, *args)
        except BrokenProcessPool:
            if self._processes is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._processes = self._new_process_pool()
            raise RenderWorkerDied("a render worker process died; the pool was renewed") from None


def _render_if_wanted(
    evaluate: Callable[[dict[str, Any]], Any], job: TileJob, wanted: Callable[[], bool]
) -> bytes:
    """In a render thread: the body, unless its client left while it waited for the thread."""
    if not wanted():
        raise ClientGone(job.grid)
    return render_with(evaluate, job)
