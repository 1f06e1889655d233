"""One attempt at one tile: a URL (or a computePixels call), a streamed GET, a checked file.

This is the bridge between the scheduler (which only sees "a tile in, a stored file or a
FetchError out") and the EE adapter, the transport and the tile store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

from engine import ee_adapter
from engine.errors import ErrorKind, FetchError
from engine.grid import Grid
from engine.pacing import Meter
from engine.quota_gate import QuotaGate
from engine.service import url_is_for
from engine.spec import JobSpec
from engine.tiles import tile_expectation, tile_grid, tile_name
from engine.tilestore import StoredTile, TileStore, TileValidationError
from engine.transport import Body, Transport
from state import TileRecord, TileUpdate, TileUrl

if TYPE_CHECKING:
    import ee

T = TypeVar("T")
URL_LIFETIME = 3600.0  # reuse a stored download URL for an hour; EE keeps them a few hours


class TileFetcher:
    """Fetches tiles of one job; callable as the scheduler's ``fetch``."""

    def __init__(
        self,
        spec: JobSpec,
        job_uid: str,
        image: ee.Image,
        transport: Transport,
        tiles: TileStore,
        executor: Executor,
        record: Callable[[TileUpdate], None],
        clock: Callable[[], float] = time.time,
        *,
        meter: Meter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        quota: QuotaGate | None = None,
    ) -> None:
        """``meter`` hears how long each tile waited for its first byte and how many bytes
        arrive (the concurrency probe measures goodput with them). ``quota``: every request
        (making a URL, the GET, a computePixels call) holds a slot of the project's shared
        quota while it is in flight. ``clock`` stamps the URLs made (and judges their age): a
        clock every worker of the job shares."""
        self.spec = spec
        self.job_uid = job_uid
        self.image = image
        self.transport = transport
        self.tiles = tiles
        self.executor = executor
        self.record = record
        self.clock = clock
        self.meter = meter
        self.monotonic = monotonic
        self.quota = quota
        self.band_count = len(spec.band_ids)

    async def __call__(self, tile: TileRecord) -> StoredTile:
        grid = tile_grid(self.spec, tile)
        image = self._tile_image(tile)
        if self.spec.endpoint == "compute":
            return await self._compute(tile, image, grid)
        url = tile.url
        if (
            url is None
            or tile.url_made_at is None
            or self.clock() - tile.url_made_at > URL_LIFETIME
            or not url_is_for(url, ee_adapter.current_base_url())
        ):
            async with self._slot():
                url = await self._in_thread(ee_adapter.download_url, image, grid)
            self.record(TileUrl(tile.id, url, self.clock()))
        async with self._slot():
            asked = self.monotonic()
            async with self.transport.stream("GET", url) as body:
                return await self._store(tile, body, asked)

    async def _compute(self, tile: TileRecord, image: ee.Image, grid: Grid) -> StoredTile:
        url, payload = await self._in_thread(
            ee_adapter.compute_pixels_request,
            image,
            grid,
            self.spec.project,
            ee_adapter.current_base_url(),
        )
        headers = await self._in_thread(ee_adapter.auth_headers)
        async with self._slot():
            asked = self.monotonic()
            async with self.transport.stream(
                "POST", url, json=payload, headers=headers, during_download=False
            ) as body:
                return await self._store(tile, body, asked)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A slot of the project's quota for one request (none to take without a gate)."""
        return self.quota.slot() if self.quota is not None else contextlib.nullcontext()

    def _tile_image(self, tile: TileRecord) -> ee.Image:
        if tile.band_start == 0 and tile.band_stop == self.band_count:
            return self.image
        return self.image.slice(tile.band_start, tile.band_stop)

    async def _store(self, tile: TileRecord, body: Body, asked: float) -> StoredTile:
        expect = tile_expectation(self.spec, tile)
        chunks = body.chunks()
        if self.meter is not None:
            self.meter.first_byte(self.monotonic() - asked)
            chunks = _metered(chunks, self.meter)
        try:
            return await self.tiles.write_stream(
                tile_name(self.job_uid, tile.id), chunks, expect, body.length
            )
        except TileValidationError as exc:
            raise FetchError(ErrorKind.BODY, str(exc)) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise FetchError(
                    ErrorKind.DISK,
                    f"cannot write tile files in {self.tiles.root}: "
                    f"{exc.strerror}; free some space (or make the folder writable), then "
                    "run the same command again",
                ) from exc
            raise FetchError(ErrorKind.BODY, f"writing the tile failed: {exc}") from exc

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)


async def _metered(chunks: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
    """The chunks, counted as they arrive."""
    async for chunk in chunks:
        meter.observe(len(chunk))
        yield chunk
