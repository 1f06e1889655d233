"""The Zarr writer: tiles become chunks of a Zarr v3 store, each tile recorded once durable.

The store is what ``xarray.open_zarr`` and ``rioxarray`` read as a georeferenced dataset: one
variable ``band_data`` with dimensions (band, y, x), or (time, band, y, x) for a collection
written as one store; coordinates ``band`` (the band names), ``x`` and ``y`` (pixel centres)
and ``time``; a ``spatial_ref`` variable holding the CRS (``crs_wkt``) and the transform
(``GeoTransform``) that ``band_data`` names as its ``grid_mapping``; the nodata value as the
array's fill value and its ``_FillValue``; Earth Engine's image properties and the job's
identity as the store's attributes (``engine.metadata``).

Chunks are one band by ``chunk`` x ``chunk`` pixels, the side chosen so that tile edges fall on
chunk edges (``chunk_side``), so each tile writes whole chunks of its own. The store is built
under a temporary name beside the output (``.NAME.zarr.eefetch-merge.tmp``) and renamed when
complete: no merge pass after the fetch, no second copy of the data.

Resuming is per tile, and survives ``kill -9``: zarr writes every chunk to a temporary file and
renames it (a chunk is whole or absent, never torn); after a tile's chunks are written, they
and their folders are fsynced, and only then is the tile appended to the store's journal
(``eefetch-journal.jsonl``, fsynced). The next run keeps the tiles the journal names (with the
same checksum as the state's) and writes every other one again, so a chunk that a killed run
was writing is always rewritten before anything is published. The journal's first line names
the job (uid, fingerprint) and the layout; a store of another job or layout is started anew.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.windows import Window as RioWindow
from zarr.codecs import BloscCodec

from engine.durable import fsync_path
from engine.errors import MergeError, OutputExistsError
from engine.filemodes import PRIVATE_DIR, current_umask
from engine.grid import Grid, TilePlan
from engine.merge import check_tiles_cover
from engine.output_writer import AtomicOutput, output_exists

VARIABLE = "band_data"  # what xarray's rasterio engine calls a GeoTIFF's bands
JOURNAL = "eefetch-journal.jsonl"
JOURNAL_VERSION = 1
CHUNK_SIDE = 512
MIN_CHUNK_SIDE = 64
TIME_UNITS = "milliseconds since 1970-01-01 00:00:00"
STRIP_BYTES = 4 << 20
"""Pixels read from a tile and handed to zarr at once (one band; zarr encodes its chunks
concurrently and holds their copies meanwhile)."""

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ZarrLayout:
    """The shape of a store: grid, bands, an optional time axis, type, fill and chunks."""

    grid: Grid
    bands: tuple[str, ...]
    dtype: str
    nodata: float | int
    compress: str
    chunk: tuple[int, int]
    times: tuple[int | None, ...] | None = None  # system:time_start (ms) per time step
    ids: tuple[str, ...] | None = None  # system:index per time step

    @property
    def shape(self) -> tuple[int, ...]:
        plane = (len(self.bands), self.grid.height, self.grid.width)
        return plane if self.times is None else (len(self.times), *plane)

    @property
    def chunks(self) -> tuple[int, ...]:
        plane = (1, *self.chunk)
        return plane if self.times is None else (1, *plane)

    @property
    def tile_bands(self) -> int:
        """Bands of a tile's grid: bands, or times x bands for a stack (time-major)."""
        return len(self.bands) * (1 if self.times is None else len(self.times))

    def place(self, band: int) -> tuple[int, ...]:
        """The array index of the tiles' band ``band``: (band,) or (time, band)."""
        if self.times is None:
            return (band,)
        return divmod(band, len(self.bands))

    def describe(self) -> dict[str, Any]:
        """What the journal's header holds: a store of another layout is not continued."""
        return {
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "dtype": self.dtype,
            "nodata": repr(self.nodata),
            "compress": self.compress,
            "bands": list(self.bands),
            "times": None if self.times is None else list(self.times),
        }


def chunk_side(starts: Sequence[int], extent: int, cap: int = CHUNK_SIDE) -> int:
    """A chunk side on which every tile edge along one axis falls. Pure.

    ``starts`` are the tiles' offsets along the axis. The side divides all of them (so each
    tile writes whole chunks of its own) and is at most ``cap``; tiles at odd offsets (a
    tiny tile budget) would give tiny chunks, and then ``cap`` is taken anyway: chunks are
    then shared by neighbouring tiles, which is correct (a chunk file is replaced whole), only
    slower.
    """
    common = 0
    for start in starts:
        common = math.gcd(common, int(start))
    if common == 0:
        return max(1, min(cap, extent))
    best = max((d for d in _divisors(common) if d <= cap), default=1)
    return best if best >= MIN_CHUNK_SIDE else max(1, min(cap, extent))


def _divisors(n: int) -> Iterator[int]:
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            yield d
            yield n // d


def compressors(compress: str) -> list[BloscCodec]:
    """Blosc with byte shuffle (what the GeoTIFF's predictor does) and the codec asked for.

    zlib at level 1: on the benchmark's float32 tiles, level 5 compressed 1 % smaller at 60 %
    of the speed (BENCHMARKS.md, "Zarr"); zstd at level 3 is ten times as fast as either.
    """
    if compress == "none":
        return []
    if compress == "deflate":
        return [BloscCodec(cname="zlib", clevel=1, shuffle="shuffle")]
    if compress == "zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
    raise MergeError(f"Zarr has no {compress!r} codec; use zstd, deflate or none")


def temp_for(output: Path) -> Path:
    """Where the store is built (and kept between runs) before it takes the output's name."""
    return output.with_name(f".{output.name}.eefetch-merge.tmp")


class ZarrBuilder(AtomicOutput):
    """A Zarr store written tile by tile, in any order, and published when complete.

    The contract of ``merge.OutputBuilder`` (a context manager; ``add`` in any order;
    ``finish`` checks coverage and publishes; ``suspend`` keeps the unfinished store), plus
    ``record`` (a tile is durable: journal it) and ``kept`` (the tiles an earlier run's
    journal holds, by checksum). Not thread-safe: one thread drives it.
    """

    def __init__(
        self,
        layout: ZarrLayout,
        output: Path,
        *,
        identity: Mapping[str, str],
        attributes: Mapping[str, Any],
        time_properties: Mapping[str, Sequence[Any]] | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
        before_publish: Callable[[Path], None] | None = None,
    ) -> None:
        super().__init__()
        output = Path(output)
        if not output.parent.is_dir():
            raise MergeError(f"cannot write {output}: folder {output.parent} does not exist")
        if output.exists() and not overwrite:
            raise output_exists(output)
        compressors(layout.compress)  # an unknown codec fails before anything is written
        self.layout = layout
        self.output = output
        self.identity = dict(identity)
        self.attributes = dict(attributes)
        self.time_properties = dict(time_properties or {})
        self.overwrite = overwrite
        self.progress = progress
        self.before_publish = before_publish
        self.temp = temp_for(output)
        self.journal_path = self.temp / JOURNAL
        self.done = 0
        self._array: zarr.Array[Any] | None = None
        self._journal: Any = None
        self._kept: dict[int, str] = {}
        self._written: dict[tuple[int, int, int, int, int, int], tuple[TilePlan, Path]] = {}

    # ------------------------------------------------------------------ the builder contract

    @property
    def written_bytes(self) -> int:
        return self.done

    def kept(self) -> dict[int, str]:
        """Tile id -> checksum of the tiles an earlier run wrote and journaled."""
        return dict(self._kept)

    def add(self, plan: TilePlan, path: Path) -> None:
        """Write one tile file into its chunks (all its bands)."""
        assert self._array is not None, "use ZarrBuilder as a context manager"
        try:
            self._write_tile(plan, Path(path))
        except (MergeError, OutputExistsError):
            raise
        except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
            raise self._failure(exc) from exc
        self._written[_key(plan)] = (plan, Path(path))

    def adopt(self, plan: TilePlan, path: Path) -> None:
        """Count a tile as written without writing it: an earlier run did, and journaled it."""
        self._written[_key(plan)] = (plan, Path(path))

    def record(self, tile_id: int, checksum: str | None) -> None:
        """The tile just added is on disk for good: append it to the journal, durably."""
        if checksum is None or self._journal is None:
            return
        self._journal.write(json.dumps({"tile": int(tile_id), "checksum": checksum}) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def suspend(self) -> None:
        """Keep the unfinished store for a later run: every journaled tile is already durable."""
        self._close_journal()
        self._array = None
        self._suspended = True

    def finish(self) -> Path:
        """Check the tiles cover the grid once, then publish the store under its name."""
        assert self._array is not None, "use ZarrBuilder as a context manager"
        grid = self.layout.grid
        names = [str(i) for i in range(self.layout.tile_bands)]
        check_tiles_cover(grid.height, grid.width, names, self._written.values())
        try:
            self._close_journal()
            self._consolidate()
            if self.before_publish is not None:
                self.before_publish(self.temp)
            self.journal_path.unlink(missing_ok=True)
            self._publish()
        except (MergeError, OutputExistsError):
            raise
        except OSError as exc:
            raise self._failure(exc) from exc
        self._published = True
        return self.output

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        header = {
            "version": JOURNAL_VERSION,
            "identity": self.identity,
            "layout": self.layout.describe(),
        }
        kept = self._read_journal(header)
        if kept is None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self._create()
            self._start_journal(header)
        else:
            self._kept = kept
            for partial in self.temp.rglob("*.partial"):  # a killed chunk write's leftovers
                partial.unlink(missing_ok=True)
            self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115
        array = zarr.open_array(store=str(self.temp), path=VARIABLE, mode="r+")
        self._array = array

    def _read_journal(self, header: dict[str, Any]) -> dict[int, str] | None:
        """The tiles of the kept store, or None if there is none for this job and layout."""
        try:
            lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            if not lines or json.loads(lines[0]) != header:
                return None
        except ValueError:
            return None
        kept: dict[int, str] = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                kept[int(entry["tile"])] = str(entry["checksum"])
            except (ValueError, KeyError, TypeError):
                break  # a line cut short by a kill: that tile is written again
        return kept

    def _start_journal(self, header: dict[str, Any]) -> None:
        self._journal = open(self.journal_path, "w", encoding="utf-8")  # noqa: SIM115
        self._journal.write(json.dumps(header) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        fsync_path(self.temp)

    def _close_journal(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
            self._journal = None

    def _create(self) -> None:
        """The store's groups, coordinates and (empty) data array, under the temporary name."""
        layout, grid = self.layout, self.layout.grid
        os.mkdir(self.temp, PRIVATE_DIR)  # the unfinished output is the owner's only
        root = zarr.open_group(
            store=str(self.temp), mode="w-", zarr_format=3, attributes=_json_safe(self.attributes)
        )
        crs = CRS.from_user_input(grid.crs)
        a, b, c, d, e, f = grid.transform
        wkt = crs.to_wkt()
        root.create_array(
            "spatial_ref",
            shape=(),
            dtype="int64",
            fill_value=0,
            attributes={
                "crs_wkt": wkt,
                "spatial_ref": wkt,
                "GeoTransform": " ".join(repr(float(v)) for v in (c, a, b, f, d, e)),
            },
        )
        x = root.create_array("x", shape=(grid.width,), dtype="float64", dimension_names=["x"])
        x[:] = c + a * (np.arange(grid.width) + 0.5)
        y = root.create_array("y", shape=(grid.height,), dtype="float64", dimension_names=["y"])
        y[:] = f + e * (np.arange(grid.height) + 0.5)
        band = root.create_array(
            "band", shape=(len(layout.bands),), dtype=str, dimension_names=["band"]
        )
        band[:] = np.array(layout.bands, dtype=object)
        dims = ["band", "y", "x"]
        if layout.times is not None:
            self._create_time(root)
            dims = ["time", *dims]
        root.create_array(
            VARIABLE,
            shape=layout.shape,
            chunks=layout.chunks,
            dtype=layout.dtype,
            fill_value=layout.nodata,
            compressors=compressors(layout.compress),
            dimension_names=dims,
            attributes={
                "grid_mapping": "spatial_ref",
                "_FillValue": fill_value_attribute(layout.nodata, layout.dtype),
                "coordinates": "spatial_ref",
            },
        )

    def _create_time(self, root: zarr.Group) -> None:
        layout = self.layout
        assert layout.times is not None
        count = len(layout.times)
        dated = all(t is not None for t in layout.times)
        time = root.create_array(
            "time",
            shape=(count,),
            dtype="int64",
            dimension_names=["time"],
            # Without a date for every image, the time coordinate is the images' order.
            attributes={"units": TIME_UNITS, "calendar": "proleptic_gregorian"} if dated else {},
        )
        time[:] = np.array(layout.times if dated else range(count), dtype="int64")
        if layout.ids is not None:
            ids = root.create_array("image_id", shape=(count,), dtype=str, dimension_names=["time"])
            ids[:] = np.array(layout.ids, dtype=object)
        for name, values in self.time_properties.items():
            prop = root.create_array(
                name, shape=(count,), dtype="float64", dimension_names=["time"]
            )
            prop[:] = np.array([np.nan if v is None else float(v) for v in values])

    # ------------------------------------------------------------------ writing

    def _write_tile(self, plan: TilePlan, path: Path) -> None:
        """Copy a tile into the array band by band, strip by strip (whole chunks of one band,
        at most STRIP_BYTES), then make its chunks durable."""
        assert self._array is not None
        w = plan.window
        bands = plan.band_stop - plan.band_start
        itemsize = np.dtype(self.layout.dtype).itemsize
        with rasterio.open(path) as src:
            if (src.width, src.height, src.count) != (w.width, w.height, bands):
                raise MergeError(
                    f"tile {path} is {src.width}x{src.height} with {src.count} band(s); "
                    f"expected {w.width}x{w.height} with {bands}"
                )
            for band in range(plan.band_start, plan.band_stop):
                for top, left, height, width in self._strips(plan, itemsize):
                    window = RioWindow(left - w.col_off, top - w.row_off, width, height)
                    data = src.read(band - plan.band_start + 1, window=window)
                    rows, cols = slice(top, top + height), slice(left, left + width)
                    target: tuple[int | slice, ...] = (*self.layout.place(band), rows, cols)
                    self._array[target] = data
                    self.done += data.nbytes
                    if self.progress is not None:
                        self.progress(self.done, 0)
        self._sync_chunks(plan)

    def _strips(self, plan: TilePlan, itemsize: int) -> Iterator[tuple[int, int, int, int]]:
        """Sub-windows of a tile on chunk lines, each within STRIP_BYTES for one band (but at
        least one chunk): every chunk is written once, whole."""
        w = plan.window
        ch, cw = self.layout.chunk
        rows = _cuts(w.row_off, w.row_off + w.height, ch, 1)
        per_chunk = ch * cw * itemsize
        cols = _cuts(w.col_off, w.col_off + w.width, cw, max(1, STRIP_BYTES // per_chunk))
        for top, bottom in itertools.pairwise(rows):
            for left, right in itertools.pairwise(cols):
                yield top, left, bottom - top, right - left

    def _sync_chunks(self, plan: TilePlan) -> None:
        """fsync the chunk files of a tile and the folders that name them."""
        folders: set[Path] = set()
        for key in self._chunk_keys(plan):
            path = self.temp / VARIABLE / key
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # an all-nodata chunk is not stored: it reads as the fill value
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folders.add(path.parent)
        for folder in sorted(folders):
            fsync_path(folder)

    def _chunk_keys(self, plan: TilePlan) -> Iterator[str]:
        w = plan.window
        ch, cw = self.layout.chunk
        rows = range(w.row_off // ch, -(-(w.row_off + w.height) // ch))
        cols = range(w.col_off // cw, -(-(w.col_off + w.width) // cw))
        for band in range(plan.band_start, plan.band_stop):
            prefix = "/".join(str(i) for i in self.layout.place(band))
            for r in rows:
                for c in cols:
                    yield f"c/{prefix}/{r}/{c}"

    # ------------------------------------------------------------------ publishing

    def _consolidate(self) -> None:
        """Consolidated metadata (one read opens the store) and every metadata file durable."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not part of the Zarr v3 specification" (yet)
            zarr.consolidate_metadata(str(self.temp))
        for meta in self.temp.rglob("zarr.json"):
            fd = os.open(meta, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_path(meta.parent)

    def _publish(self) -> None:
        """Rename the store to the output's name; an existing output only with overwrite."""
        mode = 0o777 & ~current_umask()
        for folder in (self.temp, *(p for p in self.temp.rglob("*") if p.is_dir())):
            os.chmod(folder, mode)
        old = self.output.with_name(f".{self.output.name}.eefetch-old.tmp")
        if self.output.exists() or self.output.is_symlink():
            if not self.overwrite:
                raise output_exists(self.output)
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.output, old)
        os.rename(self.temp, self.output)
        fsync_path(self.output.parent)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)

    def _discard(self) -> None:
        self._close_journal()
        self._array = None
        shutil.rmtree(self.temp, ignore_errors=True)

    def _needed_bytes(self) -> int:
        return int(np.prod(self.layout.shape)) * np.dtype(self.layout.dtype).itemsize


def _key(plan: TilePlan) -> tuple[int, int, int, int, int, int]:
    w = plan.window
    return (w.row_off, w.col_off, w.height, w.width, plan.band_start, plan.band_stop)


def _cuts(start: int, stop: int, chunk: int, per_step: int) -> list[int]:
    """``[start, stop)`` cut on chunk lines, every ``per_step`` chunks."""
    lines = list(range((start // chunk + 1) * chunk, stop, chunk))
    return [start, *lines[per_step - 1 :: per_step], stop]


def fill_value_attribute(value: float | int, dtype: str) -> int | str:
    """``_FillValue`` as xarray writes and reads it in Zarr attributes: an integer for integer
    types, the base64 of the little-endian float64 for float types (so NaN survives JSON)."""
    if np.dtype(dtype).kind == "f":
        return base64.standard_b64encode(struct.pack("<d", float(value))).decode()
    return int(value)


def _json_safe(value: Any) -> Any:
    """Attributes as strict JSON: a non-finite number becomes its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
