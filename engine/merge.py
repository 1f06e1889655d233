"""The streaming merge: many tile files become one GeoTIFF (or COG) in flat memory.

Memory stays bounded whatever the output size: tiles are read window by window in strips no
larger than ``CHUNK_BYTES`` and GDAL's block cache is capped. Windows are visited in row-major
order and all band groups of a window are written by the same call, so with block-aligned
tiles every output block is compressed and written exactly once. The output only appears
under its final name once complete and fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, Unpack

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from engine.durable import fsync_path
from engine.errors import MergeError, OutputExistsError
from engine.filemodes import create_private, public_mode
from engine.output_writer import AtomicOutput, output_exists
from engine.tilestore import TileValidationError, block_ends, block_position

if TYPE_CHECKING:
    from engine.grid import Grid, TilePlan

CHUNK_BYTES = 16 << 20
"""Largest buffer of pixels held at once (one strip of one window, all its bands)."""
GDAL_CACHE_BYTES = 64 << 20
"""GDAL's block cache for the COG step; its default (5% of RAM) would dominate peak RSS."""
MIN_WRITE_CACHE_BYTES = 16 << 20
"""GDAL's block cache while writing: whole blocks are written once, so two blocks' worth is
enough (1 GB merges took as long with 16 MB as with 64 MB), and the cache is shared with the
tile checks of a running fetch, where each MB of it cost two of peak RSS (BENCHMARKS.md)."""
MAX_PIXEL_BLOCK_BYTES = 16 << 20
"""Above this many bytes per all-band block the output is band-interleaved instead."""
COMPRESSIONS = ("deflate", "lzw", "zstd", "none")
_TIFF_LIMIT = 1 << 32
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Piece:
    """One tile file placed on the output: a window and a band range."""

    row_off: int
    col_off: int
    height: int
    width: int
    band_start: int
    band_stop: int
    path: Path

    @property
    def window(self) -> tuple[int, int, int, int]:
        return (self.row_off, self.col_off, self.height, self.width)

    @property
    def bands(self) -> int:
        return self.band_stop - self.band_start


def uncompressed_bytes(width: int, height: int, count: int, dtype: str) -> int:
    """Size of the pixel data alone, before compression."""
    return width * height * count * np.dtype(dtype).itemsize


def bigtiff_option(
    width: int, height: int, count: int, dtype: str, *, blocksize: int, overviews: bool = False
) -> str:
    """``YES`` when the file may pass the 4 GiB classic-TIFF limit, else ``IF_SAFER``.

    Decided from the uncompressed size (plus overviews, block tables and a margin for data
    that does not compress), because compressed sizes are unknown until the end and a classic
    TIFF that overflows fails only after hours of writing.
    """
    data = uncompressed_bytes(width, height, count, dtype)
    if overviews:
        data = data * 4 // 3
    blocks = -(-width // blocksize) * -(-height // blocksize) * count
    estimate = data + data // 50 + blocks * 16 + (1 << 20)
    return "YES" if estimate >= _TIFF_LIMIT else "IF_SAFER"


def choose_interleave(
    count: int, dtype: str, blocksize: int, *, windows_have_all_bands: bool = True
) -> str:
    """``PIXEL`` (GDAL's usual layout) unless one all-band block would be large, or band groups
    lie on different windows, where band interleave keeps each band's blocks independent."""
    block = blocksize * blocksize * count * np.dtype(dtype).itemsize
    if windows_have_all_bands and block <= MAX_PIXEL_BLOCK_BYTES:
        return "PIXEL"
    return "BAND"


def creation_options(
    dtype: str, compress: str, blocksize: int, bigtiff: str, interleave: str
) -> dict[str, object]:
    """GTiff creation options: tiled, compressed with the right predictor, multithreaded."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, not {compress!r}")
    if blocksize <= 0 or blocksize % 16:
        raise ValueError(f"blocksize must be a positive multiple of 16, not {blocksize}")
    options: dict[str, object] = {
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "interleave": interleave,
        "BIGTIFF": bigtiff,
        "NUM_THREADS": "ALL_CPUS",
    }
    if compress != "none":
        options["compress"] = compress
        options["predictor"] = 3 if np.dtype(dtype).kind == "f" else 2
        # The fastest level of each: GDAL's defaults (6, 9) cost 1.4-4x the CPU for files
        # about 1 % smaller, and the merge is most of a job's CPU (BENCHMARKS.md, compression).
        if compress == "deflate":
            options["zlevel"] = 1
        elif compress == "zstd":
            options["zstd_level"] = 1
    return options


def _pieces(tiles: Iterable[tuple[TilePlan, Path]]) -> list[_Piece]:
    pieces = []
    for plan, path in tiles:
        w = plan.window
        pieces.append(
            _Piece(
                int(w.row_off),
                int(w.col_off),
                int(w.height),
                int(w.width),
                int(plan.band_start),
                int(plan.band_stop),
                Path(path),
            )
        )
    pieces.sort(key=lambda p: (p.row_off, p.col_off, p.band_start))
    return pieces


def _describe(row: int, col: int, height: int, width: int) -> str:
    return f"window (row_off={row}, col_off={col}, height={height}, width={width})"


def _check_coverage(
    height: int, width: int, band_names: Sequence[str], pieces: Sequence[_Piece]
) -> None:
    """Raise MergeError unless the pieces cover every pixel of every band exactly once.

    Sweeps row segments per band segment, so the cost follows the number of tiles, not pixels.
    """
    count = len(band_names)
    for p in pieces:
        if (
            p.height <= 0
            or p.width <= 0
            or p.row_off < 0
            or p.col_off < 0
            or p.row_off + p.height > height
            or p.col_off + p.width > width
            or not 0 <= p.band_start < p.band_stop <= count
        ):
            raise MergeError(
                f"tile {p.path} lies outside the {width}x{height} grid with {count} band(s): "
                f"{_describe(*p.window)}, bands {p.band_start}:{p.band_stop}"
            )
    band_edges = sorted({0, count, *(p.band_start for p in pieces), *(p.band_stop for p in pieces)})
    for band in band_edges[:-1]:
        layer = sorted(
            (p for p in pieces if p.band_start <= band < p.band_stop), key=lambda p: p.row_off
        )
        _check_layer(height, width, band_names[band], layer)


def _check_layer(height: int, width: int, band_name: str, layer: list[_Piece]) -> None:
    edges = sorted({0, height, *(p.row_off for p in layer), *(p.row_off + p.height for p in layer)})
    active: list[_Piece] = []
    nxt = 0
    for top, bottom in itertools.pairwise(edges):
        while nxt < len(layer) and layer[nxt].row_off <= top:
            active.append(layer[nxt])
            nxt += 1
        active = [p for p in active if p.row_off + p.height > top]
        col = 0
        for p in sorted(active, key=lambda p: p.col_off):
            if p.col_off > col:
                break
            if p.col_off < col:
                raise MergeError(
                    f"tiles overlap at {_describe(top, p.col_off, bottom - top, col - p.col_off)}"
                    f", band {band_name!r}: {p.path}"
                )
            col = p.col_off + p.width
        if col < width:
            gap_end = min([p.col_off for p in active if p.col_off > col], default=width)
            raise MergeError(
                f"no tile covers {_describe(top, col, bottom - top, gap_end - col)}"
                f", band {band_name!r}"
            )


def check_tiles_cover(
    height: int, width: int, band_names: Sequence[str], tiles: Iterable[tuple[TilePlan, Path]]
) -> None:
    """Raise MergeError unless the tiles cover every pixel of every band exactly once (any
    output format's ``finish`` checks this before publishing)."""
    _check_coverage(height, width, band_names, _pieces(tiles))


def _group_by_window(pieces: list[_Piece]) -> list[list[_Piece]]:
    groups: dict[tuple[int, int, int, int], list[_Piece]] = {}
    for p in pieces:
        groups.setdefault(p.window, []).append(p)
    return list(groups.values())


def _strip_edges(start: int, stop: int, block: int, blocks_per_step: int) -> list[int]:
    """Cut ``[start, stop)`` on output block lines, every ``blocks_per_step`` blocks."""
    lines = list(range((start // block + 1) * block, stop, block))
    return [start, *lines[blocks_per_step - 1 :: blocks_per_step], stop]


def _chunks(
    row: int, col: int, height: int, width: int, pixel_bytes: int, block: int
) -> Iterator[tuple[int, int, int, int]]:
    """Sub-windows of a window, each within CHUNK_BYTES (but never below one block)."""
    strip = width * block * pixel_bytes
    if strip <= CHUNK_BYTES:
        rows = _strip_edges(row, row + height, block, max(1, CHUNK_BYTES // strip))
        cols = [col, col + width]
    else:
        rows = _strip_edges(row, row + height, block, 1)
        per_block = block * block * pixel_bytes
        cols = _strip_edges(col, col + width, block, max(1, CHUNK_BYTES // per_block))
    for top, bottom in itertools.pairwise(rows):
        for left, right in itertools.pairwise(cols):
            yield top, left, bottom - top, right - left


def _band_batches(piece: _Piece, itemsize: int, block: int) -> list[tuple[int, int]]:
    """Band ranges of one piece small enough that one block of them fits CHUNK_BYTES."""
    per_band = block * block * itemsize
    size = max(1, CHUNK_BYTES // per_band)
    return [
        (start, min(start + size, piece.band_stop))
        for start in range(piece.band_start, piece.band_stop, size)
    ]


class _Writer:
    """Copies pieces into an open output dataset through one reusable buffer."""

    def __init__(
        self,
        dst: rasterio.io.DatasetWriter,
        dtype: str,
        block: int,
        total: int,
        progress: Progress | None,
        mask_index: int | None = None,
    ) -> None:
        self.dst = dst
        self.mask_index = mask_index  # the tiles' band (1-based) that is the dataset's mask
        self.dtype = np.dtype(dtype)
        self.block = block
        self.total = total
        self.done = 0
        self.progress = progress
        self.buffer = np.empty(0, dtype=self.dtype)

    def _view(self, bands: int, height: int, width: int) -> np.ndarray:
        """A C-contiguous (bands, height, width) view of the shared buffer."""
        size = bands * height * width
        if self.buffer.size < size:
            self.buffer = np.empty(size, dtype=self.dtype)
        return self.buffer[:size].reshape(bands, height, width)

    def copy(self, parts: list[tuple[_Piece, rasterio.io.DatasetReader, int, int]]) -> None:
        """Write the given band ranges ``[lo, hi)`` of pieces sharing one window."""
        first = parts[0][0]
        bands = sum(hi - lo for _, _, lo, hi in parts)
        pixel_bytes = bands * self.dtype.itemsize
        indexes = [b + 1 for _, _, lo, hi in parts for b in range(lo, hi)]
        for top, left, height, width in _chunks(
            first.row_off, first.col_off, first.height, first.width, pixel_bytes, self.block
        ):
            data = self._view(bands, height, width)
            source = RioWindow(left - first.col_off, top - first.row_off, width, height)
            at = 0
            for piece, src, lo, hi in parts:
                src_bands = list(range(lo - piece.band_start + 1, hi - piece.band_start + 1))
                src.read(src_bands, window=source, out=data[at : at + hi - lo])
                at += hi - lo
            self._put(data, indexes, RioWindow(left, top, width, height))
            self.done += data.nbytes
            if self.progress is not None:
                self.progress(self.done, self.total)

    def _put(self, data: np.ndarray, indexes: list[int], window: RioWindow) -> None:
        """Write bands to their indexes; the mask band, if among them, to the dataset's mask."""
        if self.mask_index not in indexes:
            self.dst.write(data, indexes=indexes, window=window)
            return
        at = indexes.index(self.mask_index)
        others = [i for i in range(len(indexes)) if i != at]
        if others:
            self.dst.write(data[others], indexes=[indexes[i] for i in others], window=window)
        self.dst.write_mask(np.where(data[at] > 0, 255, 0).astype(np.uint8), window=window)


def _open_piece(piece: _Piece, dtype: str) -> rasterio.io.DatasetReader:
    """Open a tile and check it is what its plan says, so a wrong file fails loudly."""
    try:
        src = rasterio.open(piece.path)
    except (RasterioError, CPLE_BaseError) as exc:
        raise MergeError(f"cannot read tile {piece.path}: {exc}") from exc
    if (src.width, src.height, src.count) != (piece.width, piece.height, piece.bands) or any(
        d != dtype for d in src.dtypes
    ):
        found = f"{src.width}x{src.height} with {src.count} band(s) of {src.dtypes[0]}"
        src.close()
        raise MergeError(
            f"tile {piece.path} is {found}; expected {piece.width}x{piece.height} with "
            f"{piece.bands} band(s) of {dtype}"
        )
    return src


def _write_window(writer: _Writer, group: list[_Piece], dtype: str, interleave: str) -> None:
    with contextlib.ExitStack() as stack:
        opened = [(p, stack.enter_context(_open_piece(p, dtype))) for p in group]
        if interleave == "PIXEL":
            writer.copy([(p, src, p.band_start, p.band_stop) for p, src in opened])
            return
        itemsize = np.dtype(dtype).itemsize
        for p, src in opened:
            for lo, hi in _band_batches(p, itemsize, writer.block):
                writer.copy([(p, src, lo, hi)])


def _temp_path(output: Path, tag: str) -> Path:
    return output.with_name(f".{output.name}.eefetch-{tag}.tmp")


def _publish(temp: Path, output: Path, overwrite: bool) -> None:
    """Give ``temp`` the output's name, durably; without overwrite never clobber a file that
    appeared meanwhile (a hard link fails if the name exists)."""
    os.chmod(temp, public_mode())  # built private; published as any new file of the user
    fsync_path(temp)
    if overwrite:
        os.replace(temp, output)
    else:
        try:
            os.link(temp, output)
        except FileExistsError:
            raise output_exists(output) from None
        except OSError:
            if output.exists():
                raise output_exists(output) from None
            os.replace(temp, output)
        else:
            temp.unlink()
    fsync_path(output.parent)


BLOCK_SIDE = 512  # the output's internal tiles, pixels a side


class OutputLayout(TypedDict, total=False):
    """What ``merge_tiles`` passes on to :class:`OutputBuilder` (same meanings)."""

    nodata: Required[float | int | None]
    compress: str
    cog: bool
    overwrite: bool
    blocksize: int
    progress: Progress | None
    overview_resampling: str | None
    before_publish: Callable[[Path], None] | None
    tags: Mapping[str, str] | None
    mask_band: bool


def merge_tiles(
    grid: Grid,
    band_names: Sequence[str],
    dtype: str,
    tiles: Iterable[tuple[TilePlan, Path]],
    output: Path,
    **layout: Unpack[OutputLayout],
) -> Path:
    """Merge tile files into one GeoTIFF (a COG with ``cog``) at ``output``; return its path.

    The keywords are :class:`OutputBuilder`'s; the interleave is chosen from the tiles.
    ``progress(done, total)`` counts uncompressed bytes written. Overviews of a COG use
    ``overview_resampling`` (default: nearest for integers, which may be classes; average
    for floats). ``tags`` become the file's metadata; with ``mask_band`` the last band of
    the tiles is written as the dataset's internal mask (not as a band).
    """
    tiles = sorted(tiles, key=lambda t: (t[0].window.row_off, t[0].window.col_off, t[0].band_start))
    pieces = _pieces(tiles)
    count = len(band_names)
    groups = _group_by_window(pieces)
    all_bands = all(sum(p.bands for p in g) == count for g in groups)
    blocksize = layout.get("blocksize", BLOCK_SIDE)
    interleave = choose_interleave(count, dtype, blocksize, windows_have_all_bands=all_bands)
    builder = OutputBuilder(grid, band_names, dtype, output, interleave=interleave, **layout)
    _check_coverage(grid.height, grid.width, band_names, pieces)
    with builder:
        for plan, path in tiles:
            builder.add(plan, path)
        return builder.finish()


class OutputBuilder(AtomicOutput):
    """One output GeoTIFF written tile by tile, in any order, and published only when complete.

    What lets the merge run while tiles are still arriving: ``add`` writes a tile's window as
    soon as every band of it is there (block-aligned tiles make each output block written once
    whatever the order), ``finish`` checks that the tiles added cover every pixel exactly once,
    then closes, checks, optionally converts to a COG, and publishes under the output's name.
    Adding a tile again (fetched anew) rewrites its window. Not thread-safe: one thread drives it.
    Use it as a context manager: leaving it without ``finish`` removes every temporary file.
    """

    write_errors = (RasterioError, CPLE_BaseError, OSError)

    def __init__(
        self,
        grid: Grid,
        band_names: Sequence[str],
        dtype: str,
        output: Path,
        *,
        nodata: float | int | None,
        compress: str = "deflate",
        cog: bool = False,
        overwrite: bool = False,
        blocksize: int = BLOCK_SIDE,
        progress: Progress | None = None,
        overview_resampling: str | None = None,
        interleave: str | None = None,
        reopen: bool = False,
        before_publish: Callable[[Path], None] | None = None,
        tags: Mapping[str, str] | None = None,
        mask_band: bool = False,
    ) -> None:
        """``reopen`` continues the temporary file a suspended builder kept (``suspend``).
        ``before_publish(path)`` is called with the finished, checked file just before it
        takes the output's name, so a caller can record what it is about to publish.
        ``tags`` are written as the file's metadata. With ``mask_band`` the last of
        ``band_names`` is not a band of the output: tiles carry EE's mask there (non-zero:
        valid), and it is written as the GeoTIFF's internal (per-dataset) mask."""
        super().__init__()
        output = Path(output)
        self.count = len(band_names)  # bands of the tiles
        self.mask_band = mask_band
        self.data_count = self.count - 1 if mask_band else self.count  # bands of the output
        if self.data_count <= 0:
            raise MergeError("no bands to merge")
        if dtype not in _GDAL_TYPES:
            raise MergeError(f"unsupported data type {dtype!r}")
        if output.is_dir():
            raise MergeError(f"{output} is a folder, not a file name")
        if not output.parent.is_dir():
            raise MergeError(f"cannot write {output}: folder {output.parent} does not exist")
        if output.exists() and not overwrite:
            raise output_exists(output)
        self.grid = grid
        self.band_names = list(band_names)
        self.dtype = dtype
        self.output = output
        self.nodata = nodata
        self.compress = compress
        self.cog = cog
        self.overwrite = overwrite
        self.blocksize = blocksize
        self.progress = progress
        self.overview_resampling = overview_resampling
        self.interleave = interleave or choose_interleave(self.data_count, dtype, blocksize)
        bigtiff = bigtiff_option(
            grid.width, grid.height, self.data_count, dtype, blocksize=blocksize
        )
        self.options = creation_options(dtype, compress, blocksize, bigtiff, self.interleave)
        self.tags = dict(tags or {})
        bands_per_block = self.data_count if self.interleave == "PIXEL" else 1
        block_bytes = blocksize * blocksize * bands_per_block * np.dtype(dtype).itemsize
        self.cache_bytes = max(MIN_WRITE_CACHE_BYTES, 2 * block_bytes)
        self.plain = _temp_path(output, "merge")
        self.final_temp = _temp_path(output, "cog") if cog else self.plain
        # GDAL's COG driver builds overviews in a side file it only removes when it finishes.
        self.temps = {
            self.plain,
            self.final_temp,
            self.final_temp.with_name(self.final_temp.name + ".ovr.tmp"),
        }
        self._stack = contextlib.ExitStack()
        self._dst: rasterio.io.DatasetWriter | None = None
        self._writer: _Writer | None = None
        self._written: dict[tuple[int, int, int, int, int, int], _Piece] = {}
        self._waiting: dict[tuple[int, int, int, int], dict[tuple[int, int], _Piece]] = {}
        self.reopen = reopen
        self.before_publish = before_publish

    @staticmethod
    def temp_for(output: Path) -> Path:
        """The temporary file an output is built in (and kept in by ``suspend``)."""
        return _temp_path(Path(output), "merge")

    def suspend(self) -> tuple[int, int]:
        """Close the unfinished output durably and keep it for a later run (``reopen=True``).

        Returns the temporary file's (size, mtime_ns): a later run trusts the file only if
        both are unchanged, since any write after this (a run killed mid-way) changes them.
        """
        self._stack.close()
        self._dst = self._writer = None
        fsync_path(self.plain)
        self._suspended = True
        stat = self.plain.stat()
        return stat.st_size, stat.st_mtime_ns

    def record(self, tile_id: int, checksum: str | None) -> None:
        """Nothing: GDAL's block cache makes no tile durable on its own, so a GeoTIFF's tiles
        are recorded when the output is suspended (``live_merge``'s checkpoint)."""

    def adopt(self, plan: TilePlan, path: Path) -> None:
        """Count a tile as written without writing it: a suspended run already did."""
        (p,) = _pieces([(plan, path)])
        self._written[(*p.window, p.band_start, p.band_stop)] = p

    @property
    def written_bytes(self) -> int:
        """Uncompressed bytes written so far (a window written twice counts twice)."""
        return self._writer.done if self._writer is not None else 0

    def _open(self) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(
            rasterio.Env(
                GDAL_CACHEMAX=self.cache_bytes,
                GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
                GDAL_TIFF_INTERNAL_MASK=True,
            )
        )
        grid = self.grid
        if self.reopen:
            self._dst = self._stack.enter_context(
                rasterio.open(self.plain, "r+", NUM_THREADS=self.options["NUM_THREADS"])
            )
            self._check_reopened(self._dst)
        else:
            for temp in self.temps:
                temp.unlink(missing_ok=True)
            create_private(self.plain)  # kept unfinished between runs: the owner's only
            self._dst = self._stack.enter_context(
                rasterio.open(
                    self.plain,
                    "w",
                    driver="GTiff",
                    width=grid.width,
                    height=grid.height,
                    count=self.data_count,
                    dtype=self.dtype,
                    crs=CRS.from_user_input(grid.crs),
                    transform=Affine(*grid.transform),
                    nodata=None if self.mask_band else self.nodata,
                    **self.options,
                )
            )
            self._dst.descriptions = tuple(self.band_names[: self.data_count])
            if self.tags:
                self._dst.update_tags(**self.tags)
        total = uncompressed_bytes(grid.width, grid.height, self.count, self.dtype)
        self._writer = _Writer(
            self._dst,
            self.dtype,
            self._dst.block_shapes[0][0],
            total,
            self.progress,
            mask_index=self.count if self.mask_band else None,
        )

    def _check_reopened(self, dst: rasterio.io.DatasetWriter) -> None:
        """A suspended output must be this very output, or it is not resumed."""
        structure = dst.tags(ns="IMAGE_STRUCTURE")
        same = (
            (dst.width, dst.height, dst.count)
            == (self.grid.width, self.grid.height, self.data_count)
            and all(d == self.dtype for d in dst.dtypes)
            and structure.get("INTERLEAVE", "PIXEL") == self.interleave
            and dst.block_shapes[0] == (self.blocksize, self.blocksize)
        )
        if not same:
            raise MergeError(f"{self.plain} is not the output being merged; it is written anew")

    def add(self, plan: TilePlan, path: Path) -> None:
        """Write one tile file into its window (at once, or when its window's bands are all in)."""
        (piece,) = _pieces([(plan, path)])
        if self.interleave == "BAND" or piece.bands == self.count:
            self._write([piece])
            return
        waiting = self._waiting.setdefault(piece.window, {})
        waiting[(piece.band_start, piece.band_stop)] = piece
        if sum(p.bands for p in waiting.values()) == self.count:
            del self._waiting[piece.window]
            self._write(sorted(waiting.values(), key=lambda p: p.band_start))

    def _write(self, group: list[_Piece]) -> None:
        assert self._writer is not None, "use OutputBuilder as a context manager"
        try:
            _write_window(self._writer, group, self.dtype, self.interleave)
        except (MergeError, OutputExistsError):
            raise
        except (RasterioError, CPLE_BaseError, OSError) as exc:
            raise self._failure(exc) from exc
        for p in group:
            self._written[(*p.window, p.band_start, p.band_stop)] = p

    def finish(self) -> Path:
        """Check the tiles added cover the grid once, then close, check, convert, publish."""
        assert self._dst is not None, "use OutputBuilder as a context manager"
        for waiting in list(self._waiting.values()):
            self._write(sorted(waiting.values(), key=lambda p: p.band_start))
        self._waiting.clear()
        _check_coverage(
            self.grid.height, self.grid.width, self.band_names, list(self._written.values())
        )
        try:
            self._stack.close()
            with rasterio.Env(
                GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"
            ):
                _check_written(self.plain)
                if self.cog:
                    _write_cog(
                        self.plain,
                        self.final_temp,
                        self.grid,
                        self.data_count,
                        self.dtype,
                        self.compress,
                        self.blocksize,
                        self.overview_resampling,
                    )
                    _check_written(self.final_temp)
                    self.plain.unlink()
            if self.before_publish is not None:
                self.before_publish(self.final_temp)
            _publish(self.final_temp, self.output, self.overwrite)
        except (MergeError, OutputExistsError):
            raise
        except (RasterioError, CPLE_BaseError, OSError) as exc:
            raise self._failure(exc) from exc
        self._published = True
        return self.output

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        for temp in self.temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)

    def _needed_bytes(self) -> int:
        return uncompressed_bytes(self.grid.width, self.grid.height, self.count, self.dtype)


def _check_written(path: Path) -> None:
    """Raise OSError (EIO) unless every block of ``path`` lies inside the file.

    GDAL's multithreaded writer reports a failed write (a full disk) only on stderr, never to
    the caller, and leaves blocks pointing past the end of the file; without this check such
    a file would be published as the output.
    """
    size = path.stat().st_size
    try:
        ends = block_ends(path)
    except TileValidationError as exc:
        raise OSError(errno.EIO, f"the written file's block table is damaged: {exc}") from exc
    bad = np.flatnonzero((ends == 0) | (ends > size))
    if bad.size:
        with rasterio.open(path) as dataset:
            band, row, col = block_position(dataset, int(bad[0]))
        raise OSError(errno.EIO, f"block ({row}, {col}) of band {band} was not written completely")


def _write_cog(
    plain: Path,
    target: Path,
    grid: Grid,
    count: int,
    dtype: str,
    compress: str,
    blocksize: int,
    resampling: str | None,
) -> None:
    """Copy the plain GeoTIFF to a COG (GDAL builds the overviews and orders the blocks)."""
    floating = np.dtype(dtype).kind == "f"
    options: dict[str, object] = {
        "COMPRESS": "NONE" if compress == "none" else compress.upper(),
        "BLOCKSIZE": blocksize,
        "OVERVIEWS": "AUTO",
        "RESAMPLING": resampling or ("AVERAGE" if floating else "NEAREST"),
        "NUM_THREADS": "ALL_CPUS",
        "BIGTIFF": bigtiff_option(
            grid.width, grid.height, count, dtype, blocksize=blocksize, overviews=True
        ),
    }
    if compress != "none":
        options["PREDICTOR"] = "FLOATING_POINT" if floating else "STANDARD"
    rasterio.shutil.copy(plain, target, driver="COG", **options)


def write_vrt(
    grid: Grid,
    band_names: Sequence[str],
    dtype: str,
    tiles: Iterable[tuple[TilePlan, Path]],
    vrt_path: Path,
    nodata: float | int | None,
) -> Path:
    """Write a GDAL VRT mosaicking the tile files (e.g. to compare with ``gdal_translate``)."""
    pieces = _pieces(tiles)
    _check_coverage(grid.height, grid.width, band_names, pieces)
    a, b, c, d, e, f = grid.transform
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = CRS.from_user_input(grid.crs).to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (c, a, b, f, d, e))
    for index, name in enumerate(band_names):
        band = ET.SubElement(
            root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band=str(index + 1)
        )
        ET.SubElement(band, "Description").text = name
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(nodata)
        for p in pieces:
            if not p.band_start <= index < p.band_stop:
                continue
            source = ET.SubElement(band, "SimpleSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(p.path.resolve())
            ET.SubElement(source, "SourceBand").text = str(index - p.band_start + 1)
            size = {"xSize": str(p.width), "ySize": str(p.height)}
            ET.SubElement(source, "SrcRect", {"xOff": "0", "yOff": "0", **size})
            ET.SubElement(
                source, "DstRect", {"xOff": str(p.col_off), "yOff": str(p.row_off), **size}
            )
    vrt_path = Path(vrt_path)
    ET.ElementTree(root).write(vrt_path, encoding="utf-8", xml_declaration=False)
    return vrt_path


__all__ = [
    "CHUNK_BYTES",
    "COMPRESSIONS",
    "MergeError",
    "OutputBuilder",
    "OutputExistsError",
    "bigtiff_option",
    "check_tiles_cover",
    "choose_interleave",
    "creation_options",
    "merge_tiles",
    "uncompressed_bytes",
    "write_vrt",
]
