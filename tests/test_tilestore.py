"""The tile store against real GeoTIFF bodies: what is published, what is refused, what is left."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from engine.tilestore import (
    StoredTile,
    TileExpectation,
    TileStore,
    TileValidationError,
    check_name,
    sniff_body,
)

CRS = "EPSG:32633"
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def geotiff_bytes(
    width: int = 96,
    height: int = 64,
    count: int = 2,
    dtype: str = "uint16",
    *,
    compress: str | None = None,
    transform: tuple[float, ...] = TRANSFORM,
) -> bytes:
    data = np.random.default_rng(7).integers(0, 200, (count, height, width)).astype(dtype)
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": CRS,
        "transform": Affine(*transform),
    }
    if compress:
        profile.update(compress=compress, tiled=True, blockxsize=32, blockysize=32)
    with MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(data)
        return bytes(memory.read())


def expectation(**changes: object) -> TileExpectation:
    values: dict[str, object] = {
        "width": 96,
        "height": 64,
        "count": 2,
        "dtype": "uint16",
        "crs": CRS,
        "transform": TRANSFORM,
    }
    values.update(changes)
    return TileExpectation(**values)


async def chunked(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        await asyncio.sleep(0)
        yield body[start : start + size]


def write(
    store: TileStore,
    body: bytes | AsyncIterator[bytes],
    expect: TileExpectation | None = None,
    length: int | None = -1,
    name: str = "t00000001.tif",
) -> StoredTile:
    chunks = chunked(body) if isinstance(body, bytes) else body
    if length == -1:
        length = len(body) if isinstance(body, bytes) else None
    return asyncio.run(store.write_stream(name, chunks, expect or expectation(), length))


def leftovers(store: TileStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir()) if store.root.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> TileStore:
    return TileStore(tmp_path / "out.tif.eefetch-tiles")


def test_write_stream_publishes_checked_file(store: TileStore) -> None:
    body = geotiff_bytes()
    stored = write(store, body)
    assert stored.path == store.final_path("t00000001.tif")
    assert stored.bytes == len(body)
    assert stored.checksum == hashlib.sha256(body).hexdigest()
    assert stored.path.read_bytes() == body
    assert leftovers(store) == ["t00000001.tif"]
    assert store.describe("t00000001.tif") == stored


def test_write_stream_without_length_and_compressed(store: TileStore) -> None:
    body = geotiff_bytes(compress="deflate")
    stored = write(store, body, length=None)
    assert stored.bytes == len(body)


def test_write_stream_replaces_an_earlier_file(store: TileStore) -> None:
    write(store, geotiff_bytes())
    body = geotiff_bytes(compress="lzw")
    assert write(store, body).path.read_bytes() == body


def test_short_body(store: TileStore) -> None:
    body = geotiff_bytes()
    with pytest.raises(TileValidationError, match=rf"short body: {len(body) - 10} of {len(body)}"):
        write(store, body[:-10], length=len(body))
    assert leftovers(store) == []


def test_long_body(store: TileStore) -> None:
    body = geotiff_bytes()
    with pytest.raises(TileValidationError, match="long body"):
        write(store, body, length=len(body) - 1)
    assert leftovers(store) == []


def test_truncated_body_without_length_is_caught_by_the_geotiff_check(store: TileStore) -> None:
    body = geotiff_bytes()
    with pytest.raises(TileValidationError, match=r"truncated|not a readable GeoTIFF"):
        write(store, body[: len(body) // 2], length=None)
    assert leftovers(store) == []


def test_html_body_fails_on_the_first_chunk(store: TileStore) -> None:
    pulled: list[int] = []

    async def portal() -> AsyncIterator[bytes]:
        for index in range(1000):
            pulled.append(index)
            yield b"\n  <!DOCTYPE html><html><title>Sign in</title>" + b"x" * 1000

    with pytest.raises(TileValidationError, match="HTML page, not a GeoTIFF"):
        write(store, portal())
    assert pulled == [0]
    assert leftovers(store) == []


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"PK\x03\x04zipzipzip", "ZIP archive"),
        (b'{"error": {"code": 429}}', "JSON"),
        (b"GIF89a......", "not a TIFF"),
        (b"<html>", "HTML"),
        (b"", "empty body"),
    ],
)
def test_bodies_that_are_not_tiffs(store: TileStore, head: bytes, message: str) -> None:
    with pytest.raises(TileValidationError, match=message):
        write(store, head, length=None)
    assert leftovers(store) == []


def test_sniff_waits_for_enough_bytes() -> None:
    assert sniff_body(b"II", complete=False) is False
    assert sniff_body(b"II*\x00", complete=False) is True
    assert sniff_body(b"MM\x00+\x00\x08\x00\x00", complete=True) is True
    with pytest.raises(TileValidationError, match="only 2 byte"):
        sniff_body(b"II", complete=True)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        (expectation(width=90), "tile is 96x64, expected 90x64"),
        (expectation(height=65), "tile is 96x64, expected 96x65"),
        (expectation(count=3), "tile has 2 band"),
        (expectation(dtype="float32"), "data type is uint16, expected float32"),
        (expectation(crs="EPSG:4326"), "tile CRS"),
        (expectation(transform=(10.0, 0.0, 500010.0, 0.0, -10.0, 4000000.0)), "transform"),
    ],
)
def test_wrong_tile_is_refused(store: TileStore, expect: TileExpectation, message: str) -> None:
    with pytest.raises(TileValidationError, match=message):
        write(store, geotiff_bytes(), expect)
    assert leftovers(store) == []


def test_transform_within_float_noise_and_optional_georeferencing(store: TileStore) -> None:
    noisy = (10.0 + 1e-12, 0.0, 500000.0 + 1e-8, 0.0, -10.0, 4000000.0 - 1e-8)
    write(store, geotiff_bytes(), expectation(transform=noisy))
    write(store, geotiff_bytes(), expectation(crs=None, transform=None), name="t2.tif")


def test_io_error_propagates_and_cleans_up(store: TileStore) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield geotiff_bytes()[:500]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        write(store, failing())
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(store) == []


def test_cancellation_removes_the_part_file(store: TileStore) -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield geotiff_bytes()[:500]
            started.set()
            await asyncio.sleep(60)
            yield b""

        task = asyncio.create_task(store.write_stream("t1.tif", slow(), expectation(), None))
        await started.wait()
        await asyncio.sleep(0.05)
        assert len(list(store.root.glob("t1.tif.*.part"))) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert leftovers(store) == []


@pytest.mark.parametrize("name", ["../escape.tif", "a/b.tif", "..", "", ".hidden", "a\\b"])
def test_unsafe_names_are_rejected(store: TileStore, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe tile name"):
        store.final_path(name)
    with pytest.raises(ValueError):
        check_name(name)


def test_paths(store: TileStore) -> None:
    assert store.final_path("t000123.tif") == store.root / "t000123.tif"
    first, second = store.part_path("t000123.tif"), store.part_path("t000123.tif")
    assert first != second  # one part file per attempt
    for part in (first, second):
        assert part.parent == store.root
        assert re.fullmatch(r"t000123\.tif\.[0-9a-f]{8}\.part", part.name)


def test_two_attempts_at_one_tile_never_share_a_part_file(store: TileStore) -> None:
    """A late attempt and its retry streaming at once: each writes its own part file, so
    neither truncates the other, and the published tile is whole."""
    body = geotiff_bytes()

    async def scenario() -> list[StoredTile]:
        gate = asyncio.Event()

        async def halves() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            await gate.wait()
            yield body[len(body) // 2 :]

        first = asyncio.create_task(store.write_stream("t1.tif", halves(), expectation(), None))
        second = asyncio.create_task(store.write_stream("t1.tif", halves(), expectation(), None))
        # Both attempts hold their first half (bounded wait: no fixed sleep to outlast).
        deadline = asyncio.get_running_loop().time() + 30
        while len(list(store.root.glob("t1.tif.*.part"))) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the two part files never appeared"
            await asyncio.sleep(0.01)
        assert len(list(store.root.glob("t1.tif.*.part"))) == 2
        gate.set()
        return [await first, await second]

    results = asyncio.run(scenario())
    assert {r.checksum for r in results} == {hashlib.sha256(body).hexdigest()}
    assert leftovers(store) == ["t1.tif"]
    assert store.final_path("t1.tif").read_bytes() == body


def test_remove_unless_touches_only_files_it_recognises(store: TileStore) -> None:
    write(store, geotiff_bytes(), name="t1.tif")
    write(store, geotiff_bytes(), name="t2.tif")
    (store.root / "notes.txt").write_text("mine")
    removed = store.remove_unless(lambda n: n == "t1.tif", lambda n: n.startswith("t"))
    assert removed == 1
    assert leftovers(store) == ["notes.txt", "t1.tif"]


def test_verify(store: TileStore) -> None:
    stored = write(store, geotiff_bytes())
    name = "t00000001.tif"
    assert store.verify(name, expectation(), stored.checksum) is None
    assert store.verify(name, expectation(), None) is None
    assert store.verify(name, expectation(), stored.checksum, fast=True, size=stored.bytes) is None
    assert store.verify("t2.tif", expectation(), None) == "missing"
    assert store.verify(name, expectation(width=95), None) == "tile is 96x64, expected 95x64"
    assert store.verify(name, expectation(), None, size=stored.bytes + 1).startswith("truncated")

    data = bytearray(stored.path.read_bytes())
    data[-100] ^= 0xFF
    stored.path.write_bytes(bytes(data))
    assert store.verify(name, expectation(), stored.checksum) == "checksum mismatch"
    assert store.verify(name, expectation(), stored.checksum, fast=True) is None

    stored.path.write_bytes(bytes(data[: len(data) // 2]))
    assert store.verify(name, expectation(), stored.checksum).startswith("truncated")
    assert store.verify(name, expectation(), None, fast=True).startswith("truncated")


def test_verify_without_checksum_decodes_pixels(store: TileStore) -> None:
    stored = write(store, geotiff_bytes(compress="deflate"))
    with rasterio.open(stored.path) as dataset:
        offset = int(dataset.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        length = int(dataset.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    data = bytearray(stored.path.read_bytes())
    data[offset : offset + length] = b"\x00" * length
    stored.path.write_bytes(bytes(data))
    assert store.verify("t00000001.tif", expectation(), None, fast=True) is None
    assert store.verify("t00000001.tif", expectation(), None) is not None


def test_remove_stale_parts_and_remove(store: TileStore) -> None:
    assert store.remove_stale_parts() == 0
    write(store, geotiff_bytes())
    write(store, geotiff_bytes(), name="t2.tif")
    store.part_path("t3.tif").write_bytes(b"II*\x00partial")
    store.part_path("t4.tif").write_bytes(b"")
    (store.root / "t5.tif.part").write_bytes(b"II*")  # an older eefetch's part file
    assert store.remove_stale_parts() == 3
    assert leftovers(store) == ["t00000001.tif", "t2.tif"]
    store.remove("t2.tif")
    store.remove("t2.tif")
    assert leftovers(store) == ["t00000001.tif"]
    (store.root / "notes.txt").write_text("not ours")
    store.remove_all()
    assert leftovers(store) == ["notes.txt"]
    (store.root / "notes.txt").unlink()
    store.remove_all()
    assert not store.root.exists()


def test_a_reserve_keeps_room_for_the_end_of_a_run(store: TileStore) -> None:
    store.reserve(4096)
    reserve = store.root / ".eefetch-reserve"
    assert reserve.stat().st_size == 4096
    assert store.sizes() == {".eefetch-reserve": 4096}  # listed, but never taken for a tile
    store.reserve(4096)  # idempotent
    store.free_reserve()
    assert not reserve.exists()
    store.free_reserve()  # already given back: nothing to do
    store.reserve(4096)
    store.remove_all()
    assert not store.root.exists()
