"""Tile files on disk: streamed, checked, then published atomically.

A tile is only ever visible under its final name once it has been fully received, checked to
be the GeoTIFF that was asked for, and fsynced: a crash leaves at most a ``.part`` file, which
``remove_stale_parts`` clears on the next run. Resume can therefore trust any final file whose
checksum still matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import secrets
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiofiles
import numpy as np
import rasterio
from aiofiles.threadpool.binary import AsyncBufferedIOBase
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.windows import Window as RioWindow

from engine.durable import fsync_path
from engine.grid import Transform

PART_SUFFIX = ".part"
RESERVE_NAME = ".eefetch-reserve"
RESERVE_BYTES = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_SNIFF_BYTES = 8
_SNIPPET_BYTES = 120
_HASH_CHUNK = 1 << 20
# Received bytes are written and hashed in a worker thread once this many have arrived: the
# event loop only gathers chunks, and one thread hop per MiB costs little.
_WRITE_BATCH = 1 << 20
_DECODE_BYTES = 4 << 20
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Opening one tile must not make GDAL list a folder that may hold thousands of tiles.
_GDAL_OPEN_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@dataclass(frozen=True)
class TileExpectation:
    """What a tile file must be: shape, band count, type, and optionally georeferencing."""

    width: int
    height: int
    count: int
    dtype: str
    crs: str | None = None
    transform: Transform | None = None


@dataclass(frozen=True)
class StoredTile:
    """A published tile file, with what the state store records to detect later changes."""

    path: Path
    bytes: int
    checksum: str


class TileValidationError(Exception):
    """The body received is not the tile that was asked for; the message says why."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a plain file name; tile names must never escape the store."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(f"unsafe tile name {name!r}: use letters, digits, '_', '-' and '.'")
    return name


def sniff_body(head: bytes, *, complete: bool) -> bool:
    """Judge the first bytes of a body: True if it starts like a TIFF, False if more are needed.

    Raises TileValidationError as soon as the bytes show something else (an HTML page from a
    proxy, a ZIP archive, a JSON error), so a wrong body is not downloaded to the end.
    ``complete`` says the body has ended, so a short head is final.
    """
    stripped = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if stripped.startswith(b"<"):
        raise TileValidationError(
            "tile body is an HTML page, not a GeoTIFF (a proxy or captive portal answered)"
        )
    if stripped.startswith((b"{", b"[")):
        raise TileValidationError(
            f"tile body is JSON, not a GeoTIFF (an error response?): {_snippet(head)}"
        )
    if head.startswith(b"PK"):
        raise TileValidationError(
            "tile body is a ZIP archive, not a GeoTIFF (the request must ask for GEO_TIFF)"
        )
    if len(head) >= 4:
        if head[:4] in _TIFF_MAGICS:
            return True
        raise TileValidationError(f"tile body is not a TIFF: it starts with {_snippet(head)}")
    if complete:
        if not head:
            raise TileValidationError("empty body: 0 bytes")
        raise TileValidationError(f"tile body is not a TIFF: only {len(head)} byte(s)")
    return False


def _snippet(data: bytes) -> str:
    return repr(bytes(data[:_SNIPPET_BYTES]))


def sha256_file(path: Path) -> str:
    """Hash a file in bounded memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


async def _write_hashed(handle: AsyncBufferedIOBase, digest: hashlib._Hash, data: bytes) -> None:
    """Hash ``data`` in a worker thread (hashlib lets go of the GIL), then write it."""
    await asyncio.to_thread(digest.update, data)
    await handle.write(data)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _check_tiff_header(path: Path, size: int) -> None:
    """Catch a cut-off file cheaply: the first IFD must start inside the file."""
    with path.open("rb") as handle:
        head = handle.read(16)
    sniff_body(head, complete=True)
    if len(head) < 8:
        raise TileValidationError(f"truncated: {size} bytes, shorter than a TIFF header")
    little = head[:2] == b"II"
    order = "<" if little else ">"
    if head[2:4] in (b"*\x00", b"\x00*"):
        (ifd,) = struct.unpack(order + "I", head[4:8])
    else:
        if len(head) < 16:
            raise TileValidationError(f"truncated: {size} bytes, shorter than a BigTIFF header")
        (ifd,) = struct.unpack(order + "Q", head[8:16])
    if ifd >= size:
        raise TileValidationError(f"truncated: first directory at byte {ifd}, file is {size} bytes")


def _same_crs(actual: CRS, wanted: str) -> bool:
    try:
        expected = CRS.from_user_input(wanted)
    except CRSError as exc:
        raise TileValidationError(f"expected CRS {wanted!r} is not understood: {exc}") from exc
    if actual == expected:
        return True
    epsg = expected.to_epsg()
    return epsg is not None and actual.to_epsg() == epsg


def _same_transform(actual: Sequence[float], wanted: Sequence[float]) -> bool:
    """Equal up to float noise: a millionth of a pixel, whatever the units."""
    pixel = max(abs(wanted[0]), abs(wanted[4]), 1e-300)
    return all(
        math.isclose(a, w, rel_tol=1e-9, abs_tol=1e-6 * pixel)
        for a, w in zip(actual, wanted, strict=True)
    )


_BLOCK_TAGS = {273: "offsets", 279: "counts", 324: "offsets", 325: "counts"}
_INTEGER_TYPES = {3: "u2", 4: "u4", 16: "u8"}  # SHORT, LONG, LONG8


def block_ends(path: Path) -> np.ndarray:
    """The end byte (offset + length) of every data block of a TIFF's first image, in file
    order; 0 where a block is absent.

    Read from the block tables themselves (a few reads, whatever the number of blocks): both
    the tile check (a truncated download) and the merge (a write that failed on a full disk)
    ask whether every block lies inside the file, and asking GDAL block by block costs two
    calls per block, tens of milliseconds per tile. Raises TileValidationError for a table
    that cannot be read.
    """
    try:
        with path.open("rb") as handle:
            return _read_block_ends(handle)
    except (struct.error, ValueError, KeyError, OverflowError) as exc:
        raise TileValidationError(f"the TIFF's block table cannot be read: {exc}") from exc


def _read_block_ends(handle: BinaryIO) -> np.ndarray:
    head = handle.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    pointer, entry, count_format = ("Q", 20, "Q") if big else ("I", 12, "H")
    (ifd,) = struct.unpack(order + pointer, head[8:16] if big else head[4:8])
    handle.seek(ifd)
    (entries,) = struct.unpack(order + count_format, handle.read(8 if big else 2))
    table = handle.read(entries * entry)
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(table) - entry + 1, entry):
        tag, kind = struct.unpack(order + "HH", table[start : start + 4])
        if tag not in _BLOCK_TAGS:
            continue
        (count,) = struct.unpack(order + pointer, table[start + 4 : start + (12 if big else 8)])
        inline = table[start + (12 if big else 8) : start + entry]
        dtype = np.dtype(order + _INTEGER_TYPES[kind])
        size = count * dtype.itemsize
        if size <= len(inline):
            raw = inline[:size]
        else:
            (offset,) = struct.unpack(order + pointer, inline)
            handle.seek(offset)
            raw = handle.read(size)
        if len(raw) < size:
            raise ValueError("the block table runs past the end of the file")
        found[_BLOCK_TAGS[tag]] = np.frombuffer(raw, dtype=dtype).astype(np.uint64)
    offsets, counts = found["offsets"], found["counts"]
    if len(offsets) != len(counts):
        raise ValueError(f"{len(offsets)} block offsets for {len(counts)} block sizes")
    present = (offsets > 0) & (counts > 0)
    return np.where(present, offsets + counts, np.uint64(0))


def block_position(dataset: rasterio.io.DatasetReader, index: int) -> tuple[int, int, int]:
    """(band, row, col) of the block at ``index`` of the block table."""
    block_h, block_w = dataset.block_shapes[0]
    cols = -(-dataset.width // block_w)
    per_band = -(-dataset.height // block_h) * cols
    interleave = dataset.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "PIXEL")
    band = index // per_band + 1 if interleave == "BAND" else 1
    row, col = divmod(index % per_band, cols)
    return band, row, col


def _check_blocks(path: Path, dataset: rasterio.io.DatasetReader, size: int) -> None:
    """Every data block must end inside the file; catches truncation without decoding."""
    ends = block_ends(path)
    beyond = np.flatnonzero(ends > size)
    if beyond.size:
        band, row, col = block_position(dataset, int(beyond[0]))
        raise TileValidationError(
            f"truncated: band {band} block ({row}, {col}) ends at byte {int(ends[beyond[0]])}, "
            f"file is {size} bytes"
        )


def _decode_all(dataset: rasterio.io.DatasetReader) -> None:
    """Read every pixel once in bounded strips, so corrupt compressed data is caught now.

    One buffer serves every strip: several tiles are checked at once, and fresh strips for
    each read would leave the heap of every worker thread holding its own.
    """
    width, count, dtype = dataset.width, dataset.count, np.dtype(dataset.dtypes[0])
    rows = max(1, _DECODE_BYTES // max(width * count * dtype.itemsize, 1))
    buffer = np.empty(min(rows, dataset.height) * width * count, dtype=dtype)
    for row in range(0, dataset.height, rows):
        height = min(rows, dataset.height - row)
        out = buffer[: count * height * width].reshape(count, height, width)
        dataset.read(window=RioWindow(0, row, width, height), out=out)


def validate_geotiff(path: Path, expect: TileExpectation, *, decode: bool) -> None:
    """Raise TileValidationError unless ``path`` is a readable GeoTIFF matching ``expect``.

    Blocking (GDAL); run it in a worker thread from async code. With ``decode`` every pixel of
    a compressed file is read, which also catches corrupt data inside an intact-looking file.
    """
    size = path.stat().st_size
    _check_tiff_header(path, size)
    try:
        with rasterio.Env(**_GDAL_OPEN_ENV), rasterio.open(path) as dataset:
            _check_metadata(dataset, expect)
            _check_blocks(path, dataset, size)
            # An uncompressed block holds nothing that could be corrupt but its length (just
            # checked): only compressed data needs decoding to be trusted.
            if decode and dataset.compression is not None:
                _decode_all(dataset)
    except (RasterioError, CPLE_BaseError, UnicodeDecodeError) as exc:
        # UnicodeDecodeError: rasterio decodes the file's text (a CRS name) as UTF-8.
        raise TileValidationError(f"not a readable GeoTIFF: {exc}") from exc


def _check_metadata(dataset: rasterio.io.DatasetReader, expect: TileExpectation) -> None:
    if dataset.driver != "GTiff":
        raise TileValidationError(f"tile is read as {dataset.driver}, not a GeoTIFF")
    if (dataset.width, dataset.height) != (expect.width, expect.height):
        raise TileValidationError(
            f"tile is {dataset.width}x{dataset.height}, expected {expect.width}x{expect.height}"
        )
    if dataset.count != expect.count:
        raise TileValidationError(f"tile has {dataset.count} band(s), expected {expect.count}")
    wrong = sorted({d for d in dataset.dtypes if d != expect.dtype})
    if wrong:
        raise TileValidationError(f"tile data type is {', '.join(wrong)}, expected {expect.dtype}")
    if expect.crs is not None:
        if dataset.crs is None:
            raise TileValidationError(f"tile has no CRS, expected {expect.crs}")
        if not _same_crs(dataset.crs, expect.crs):
            raise TileValidationError(f"tile CRS is {dataset.crs}, expected {expect.crs}")
    if expect.transform is not None:
        actual = tuple(dataset.transform)[:6]
        if not _same_transform(actual, expect.transform):
            raise TileValidationError(
                f"tile transform is {actual}, expected {tuple(expect.transform)}"
            )


class TileStore:
    """One folder of tile files (e.g. ``out.tif.eefetch-tiles/``); one writer per name at a time."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def final_path(self, name: str) -> Path:
        return self.root / check_name(name)

    def part_path(self, name: str) -> Path:
        """A fresh part file name for one attempt at ``name``: two attempts at the same tile
        (a retry racing a late one) never write the same file."""
        return self.root / f"{check_name(name)}.{secrets.token_hex(4)}{PART_SUFFIX}"

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as the state
            fsync_path(self.root.parent)

    async def write_stream(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        expect: TileExpectation,
        expected_length: int | None,
    ) -> StoredTile:
        """Stream a body to ``<name>.part``, check it, fsync it and publish it as ``name``.

        On any failure (including cancellation) the part file is removed and the error
        propagates: TileValidationError for a wrong body, OSError for disk trouble.
        """
        final = self.final_path(name)
        part = self.part_path(name)
        await asyncio.to_thread(self._ensure_root)
        try:
            received, checksum = await self._receive(part, chunks, expected_length)
            await asyncio.to_thread(validate_geotiff, part, expect, decode=True)
            os.replace(part, final)
            await asyncio.to_thread(fsync_path, self.root)
        except BaseException:
            _unlink_quietly(part)
            raise
        return StoredTile(final, received, checksum)

    async def _receive(
        self, part: Path, chunks: AsyncIterator[bytes], expected_length: int | None
    ) -> tuple[int, str]:
        """Write chunks as they come, sniffing on the way; fsync before returning.

        The loop only gathers chunks; writing and hashing happen in a worker thread a batch at
        a time, so a body of tens of MB costs the event loop no CPU beyond receiving it.
        """
        digest = hashlib.sha256()
        head = b""
        sniffed = False
        received = 0
        batch: list[bytes] = []
        batched = 0
        async with aiofiles.open(part, "wb") as handle:
            async for chunk in chunks:
                if not chunk:
                    continue
                if not sniffed:
                    head += bytes(chunk[: _SNIFF_BYTES - len(head)])
                    sniffed = sniff_body(head, complete=False)
                received += len(chunk)
                if expected_length is not None and received > expected_length:
                    raise TileValidationError(
                        f"long body: more than the {expected_length} bytes announced"
                    )
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH:
                    await _write_hashed(handle, digest, b"".join(batch))
                    batch, batched = [], 0
            if batch:
                await _write_hashed(handle, digest, b"".join(batch))
            await handle.flush()
            await asyncio.to_thread(os.fsync, handle.fileno())
        if expected_length is not None and received != expected_length:
            raise TileValidationError(f"short body: {received} of {expected_length} bytes")
        if not sniffed:
            sniff_body(head, complete=True)
        return received, digest.hexdigest()

    def verify(
        self,
        name: str,
        expect: TileExpectation,
        checksum: str | None,
        *,
        fast: bool = False,
        size: int | None = None,
    ) -> str | None:
        """Say why a finished tile cannot be trusted on resume, or None if it can.

        ``fast`` checks only the size (if given), the TIFF structure and the metadata, which
        catches truncation and wrong tiles without reading the pixels. Otherwise the file is
        rehashed against ``checksum`` (a match proves it is the file that passed the full check
        when written); without a checksum every pixel is decoded instead.
        """
        path = self.final_path(name)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size is not None and actual != size:
            if actual < size:
                return f"truncated: {actual} of {size} bytes"
            return f"size mismatch: {actual} bytes, expected {size}"
        try:
            validate_geotiff(path, expect, decode=False)
            if fast:
                return None
            if checksum is not None:
                return None if sha256_file(path) == checksum else "checksum mismatch"
            validate_geotiff(path, expect, decode=True)
        except TileValidationError as exc:
            return str(exc)
        return None

    def describe(self, name: str) -> StoredTile:
        """Size and checksum of a final tile file, e.g. to adopt one written before a crash."""
        path = self.final_path(name)
        return StoredTile(path, path.stat().st_size, sha256_file(path))

    def remove_stale_parts(self) -> int:
        """Delete the ``.part`` files an interrupted run left; return how many."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for part in self.root.glob("*" + PART_SUFFIX):
            if part.is_file():
                _unlink_quietly(part)
                removed += 1
        return removed

    def sizes(self) -> dict[str, int]:
        """Size of every finished tile file, by name, from one scan of the folder.

        One directory scan instead of a stat per tile keeps resuming a job of 100,000
        tiles fast.
        """
        if not self.root.is_dir():
            return {}
        found: dict[str, int] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.endswith(PART_SUFFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                found[entry.name] = entry.stat(follow_symlinks=False).st_size
        return found

    def remove(self, name: str) -> None:
        """Forget one tile's final file (part files are removed by the attempt that wrote
        them, or by ``remove_stale_parts`` at the next start)."""
        _unlink_quietly(self.final_path(name))

    def remove_unless(self, belongs: Callable[[str], bool], is_ours: Callable[[str], bool]) -> int:
        """Delete the files ``is_ours`` recognises as tile files but ``belongs`` does not
        claim (another job's leftovers); returns how many. Other files are never touched."""
        removed = 0
        for name in self.sizes():
            if is_ours(name) and not belongs(name):
                _unlink_quietly(self.root / name)
                removed += 1
        return removed

    def reserve(self, nbytes: int = RESERVE_BYTES) -> None:
        """Keep ``nbytes`` of the disk for the end of a run: ``free_reserve`` gives them back
        when the disk fills up, so that the state can still record how the run ended (the
        claims it gives back, the tiles it finished) instead of failing on the same full disk.
        """
        self._ensure_root()
        path = self.root / RESERVE_NAME
        with contextlib.suppress(OSError):  # a disk too full for it: nothing to give back
            if not path.exists() or path.stat().st_size != nbytes:
                temp = path.with_name(RESERVE_NAME + PART_SUFFIX)
                with temp.open("wb") as handle:
                    handle.write(b"\0" * nbytes)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)

    def free_reserve(self) -> None:
        """Give the reserved bytes back to the disk (the run is ending on an error)."""
        _unlink_quietly(self.root / RESERVE_NAME)

    def remove_all(self) -> None:
        """Delete the tile files (``*.tif``, ``*.tiff``, ``*.part``), the reserve, and the
        folder if now empty."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            ours = entry.suffix in (".tif", ".tiff", PART_SUFFIX) or entry.name == RESERVE_NAME
            if ours and entry.is_file():
                _unlink_quietly(entry)
        with contextlib.suppress(OSError):
            self.root.rmdir()
