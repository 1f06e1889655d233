"""A server (or proxy) that compresses its answers: tiles still land, errors still read.

eefetch asks for uncompressed bodies (``Accept-Encoding: identity``) and hashes tile bytes as
they arrive; here a real reverse proxy on 127.0.0.1 compresses every answer of the emulator
whatever the request asked, as misbehaving middleboxes do, and forwards the EE API calls too
(which the earthengine-api client sends through requests, which decodes by itself).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from pathlib import Path

import ee
import pytest
from aiohttp import ClientSession, web

from engine import download_ee_image, ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.errors import ErrorKind, FetchError
from engine.testing.oracle import assert_matches_oracle
from engine.transport import Decoder, content_encoding, decode_error_body

HOP_BY_HOP = {"host", "accept-encoding", "content-length", "transfer-encoding", "connection"}
REGION = [118.70, 32.00, 118.80, 32.06]


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # "deflate" as some servers send it: raw
    return raw.compress(body) + raw.flush()


class CompressingProxy:
    """A reverse proxy to ``upstream`` that compresses every answer with ``encoding``."""

    def __init__(self, upstream: str, encoding: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.encoding = encoding
        self.asked: list[tuple[str, str]] = []  # (path, Accept-Encoding) of each request
        self.compressed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> CompressingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    async def _start(self) -> None:
        self._session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        self.asked.append((request.path, request.headers.get("Accept-Encoding", "")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as answer:
            body = await answer.read()
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in HOP_BY_HOP | {"content-encoding"}
            }
        self.compressed += 1
        packed = compress(body, self.encoding)
        kept["Content-Encoding"] = "deflate" if self.encoding == "raw-deflate" else self.encoding
        return web.Response(status=answer.status, body=packed, headers=kept)

    def tile_requests(self) -> list[str]:
        """The Accept-Encoding of each tile request (getPixels, computePixels)."""
        return [
            asked
            for path, asked in self.asked
            if path.endswith(":getPixels") or path.endswith("image:computePixels")
        ]


@pytest.mark.parametrize(
    ("encoding", "endpoint"),
    [("gzip", "urls"), ("deflate", "urls"), ("raw-deflate", "urls"), ("gzip", "compute")],
)
def test_tiles_from_a_compressing_server_land_correctly(
    tmp_path: Path, oracle: EmulatorThread, encoding: str, endpoint: str
) -> None:
    with (
        EmulatorThread(EmulatorConfig.from_profile("clean", seed=4)) as emulator,
        CompressingProxy(emulator.url, encoding) as proxy,
    ):
        ee_adapter.initialize(ee_adapter.Connection(url=proxy.url))  # API calls compressed too
        output = tmp_path / "dem.tif"
        result = download_ee_image(
            ee.Image("USGS/SRTMGL1_003"),
            output,
            region=REGION,
            crs="EPSG:32650",
            scale=30,
            max_tile_bytes=100_000,
            endpoint=endpoint,
            quiet=True,
        )
    assert result.complete and result.summary.retries == 0
    asked = proxy.tile_requests()
    assert len(asked) == result.counts["done"] >= 4
    assert set(asked) == {"identity"}
    assert proxy.compressed > len(asked)  # the EE API answers were compressed as well
    assert_matches_oracle(output, result.state_path, oracle)


def test_a_compressed_memory_error_still_splits_the_tile(
    tmp_path: Path, oracle: EmulatorThread
) -> None:
    config = EmulatorConfig.from_profile("clean", seed=2, memory_budget=150_000)
    with EmulatorThread(config) as emulator, CompressingProxy(emulator.url, "gzip") as proxy:
        ee_adapter.initialize(ee_adapter.Connection(url=proxy.url))
        output = tmp_path / "dem.tif"
        result = download_ee_image(
            ee.Image("USGS/SRTMGL1_003"),
            output,
            region=[118.70, 32.00, 118.92, 32.13],
            crs="EPSG:32650",
            scale=30,
            quiet=True,
        )
        refused = emulator.stats()["requests"]["getPixels"].get("400", 0)
    assert refused >= 1  # EE said "User memory limit exceeded." (gzipped) ...
    assert result.complete and result.summary.splits >= 1  # ... and the tile was split
    assert result.summary.failed == 0
    assert_matches_oracle(output, result.state_path, oracle)


def test_the_decoder_refuses_truncated_bombs_and_unknown_codings() -> None:
    body = bytes(range(256)) * 1000
    packed = gzip.compress(body)
    decoder = Decoder("gzip", len(body))
    assert decoder.feed(packed[:100]) + decoder.feed(packed[100:]) + decoder.finish() == body
    truncated = Decoder("gzip", len(body))
    truncated.feed(packed[:-20])
    with pytest.raises(FetchError, match="truncated gzip body") as error:
        truncated.finish()
    assert error.value.kind is ErrorKind.BODY
    with pytest.raises(FetchError, match="expands past 1000 bytes"):
        Decoder("gzip", 1000).feed(gzip.compress(bytes(10**6)))
    with pytest.raises(FetchError, match="bad gzip body"):
        Decoder("gzip", 10**6).feed(b"not gzip at all")
    with pytest.raises(FetchError, match="compressed the body with 'br'"):
        Decoder("br", 10**6)
    assert content_encoding("x-gzip") == "gzip" and content_encoding(" Identity ") is None
    message = b'{"error": {"code": 400, "message": "User memory limit exceeded."}}'
    assert decode_error_body(gzip.compress(message), "gzip") == message
    assert decode_error_body(b"garbage", "gzip") == b""
