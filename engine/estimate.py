"""What a download will cost, before anything is fetched: grid, tiles, requests, bytes on disk.

A city at 10 m in 8 float32 bands is a few GB; a province is hundreds. The report says which
one the user asked for, and when it is unreasonable it says what would shrink it and by how
much (fewer bands, a coarser scale, a smaller type, a smaller region).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.progress import format_bytes
from engine.spec import JobSpec

if TYPE_CHECKING:
    from engine.sample import CompressionSample

UNREASONABLE_BYTES = 100 * 10**9
LARGE_BYTES = 20 * 10**9
# A GeoTIFF tile from EE is uncompressed; the output (GeoTIFF or Zarr) is compressed. The tiles
# are kept until the output is complete, so a job needs up to about twice the raw size.
PEAK_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class PlanReport:
    """The numbers to decide whether to start: ``text()`` for people, ``to_dict()`` for scripts."""

    output: str
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    bands: tuple[str, ...]
    dtype: str
    endpoint: str
    tiles: int
    requests: int
    largest_request_bytes: int
    raw_bytes: int
    peak_disk_bytes: int
    free_disk_bytes: int | None
    warnings: tuple[str, ...] = ()
    advice: tuple[str, ...] = field(default=())
    output_format: str = "geotiff"
    compress: str = "deflate"
    nodata: float | int | None = None
    nodata_note: str = ""
    # Estimated from a sample tile's compression (engine.sample); None: not sampled.
    compressed_bytes: int | None = None
    compression_note: str = "not sampled"

    @property
    def unreasonable(self) -> bool:
        return self.raw_bytes >= UNREASONABLE_BYTES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["transform"] = list(self.transform)
        data["bands"] = list(self.bands)
        data["warnings"] = list(self.warnings)
        data["advice"] = list(self.advice)
        data["unreasonable"] = self.unreasonable
        return data

    def headline(self) -> str:
        """'4.1 GB, 96 tiles': the line to read before committing a night to it."""
        return f"{format_bytes(self.raw_bytes)}, {self.tiles} tiles"

    def _nodata_text(self) -> str:
        if self.nodata is None:
            value = "none"
        elif isinstance(self.nodata, float):
            value = f"{self.nodata:.9g}"
        else:
            value = str(self.nodata)
        return f"{value} ({self.nodata_note})" if self.nodata_note else value

    def _compressed_text(self) -> str:
        what = "Zarr store" if self.output_format == "zarr" else "GeoTIFF"
        if self.compressed_bytes is None:
            return f"the {what} is compressed ({self.compress}), usually smaller"
        return (
            f"about {format_bytes(self.compressed_bytes)} as a {self.compress} {what} "
            f"({self.compression_note})"
        )

    def text(self) -> str:
        lines = [
            f"output:   {self.output}",
            f"grid:     {self.width} x {self.height} pixels in {self.crs} "
            f"({_pixel_text(self.crs, self.transform)})",
            f"bands:    {len(self.bands)} x {self.dtype} ({', '.join(self.bands)})",
            f"tiles:    {self.tiles} (largest request {format_bytes(self.largest_request_bytes)})",
            f"requests: about {self.requests} to Earth Engine ({self.endpoint} endpoint), "
            "plus retries",
            f"nodata:   {self._nodata_text()}",
            f"size:     {format_bytes(self.raw_bytes)} uncompressed; {self._compressed_text()}",
            f"disk:     up to {format_bytes(self.peak_disk_bytes)}, tiles and output together"
            + (
                f" ({format_bytes(self.free_disk_bytes)} free)"
                if self.free_disk_bytes is not None
                else ""
            ),
            f"total:    {self.headline()}",
        ]
        lines.extend(f"warning:  {w}" for w in self.warnings)
        lines.extend(f"shrink:   {a}" for a in self.advice)
        return "\n".join(lines)


def plan_spec(spec: JobSpec, sample: CompressionSample | None = None) -> PlanReport:
    """The report for a job spec (pure apart from asking the disk how much room is left);
    ``sample`` (``engine.sample.measure``) gives the compressed size estimate."""
    from engine.job import plan

    tiles = plan(spec)
    itemsize = np.dtype(spec.dtype).itemsize
    band_count = len(spec.band_ids)
    pixels = spec.grid.width * spec.grid.height
    raw = pixels * band_count * itemsize
    largest = max(
        (t.window.width * t.window.height * (t.band_stop - t.band_start) * (itemsize + 1))
        for t in tiles
    )
    per_tile = 1 if spec.endpoint == "compute" else 2
    peak = int(raw * PEAK_FACTOR)
    free = _free_bytes(Path(spec.output).parent)
    warnings: list[str] = []
    if raw >= UNREASONABLE_BYTES:
        warnings.append(
            f"{format_bytes(raw)} is a very large download (days on a typical connection, "
            "and Earth Engine may throttle it); consider shrinking it"
        )
    elif raw >= LARGE_BYTES:
        warnings.append(f"{format_bytes(raw)} will take hours; make sure that is intended")
    if free is not None and peak > free:
        warnings.append(
            f"the output folder has {format_bytes(free)} free but the job needs up to "
            f"{format_bytes(peak)}; free space or write elsewhere (-o)"
        )
    advice = shrink_advice(spec, raw) if warnings else []
    return PlanReport(
        output=spec.output,
        crs=spec.grid.crs,
        transform=tuple(spec.grid.transform),
        width=spec.grid.width,
        height=spec.grid.height,
        bands=tuple(spec.band_ids),
        dtype=spec.dtype,
        endpoint=spec.endpoint,
        tiles=len(tiles),
        requests=len(tiles) * per_tile + 1,
        largest_request_bytes=largest,
        raw_bytes=raw,
        peak_disk_bytes=peak,
        free_disk_bytes=free,
        warnings=tuple(warnings),
        advice=tuple(advice),
        output_format=spec.output_format,
        compress=spec.compress,
        nodata=None if spec.mask_band else spec.nodata,
        nodata_note=str(spec.extra.get("nodata_note") or ""),
        **_compressed(pixels * len(spec.data_bands) * itemsize, sample),
    )


def _compressed(raw: int, sample: CompressionSample | None) -> dict[str, Any]:
    """The estimate's fields: raw size times the sample's ratio, and where that comes from."""
    if sample is None:
        return {}
    ratio = sample.ratio
    if ratio is None:
        return {"compression_note": f"no estimate: the sample failed ({sample.problem})"}
    return {
        "compressed_bytes": int(raw * ratio),
        "compression_note": (
            f"a {sample.width} x {sample.height} sample tile compressed to {ratio:.0%}"
        ),
    }


def shrink_advice(spec: JobSpec, raw: int) -> list[str]:
    """Concrete ways to make the download smaller, each with the size it would have."""
    advice = []
    count = len(spec.band_ids)
    if count > 3:
        three = raw * 3 // count
        advice.append(
            f"fewer bands: {count} now; 3 (e.g. --bands B4,B3,B2) would be {format_bytes(three)}"
        )
    advice.append(f"a coarser scale: twice the pixel size (--scale) is {format_bytes(raw // 4)}")
    itemsize = np.dtype(spec.dtype).itemsize
    if itemsize > 2:
        smaller = raw * 2 // itemsize
        advice.append(
            f"a smaller type: {spec.dtype} now; --dtype uint16/int16 (values scaled to fit, "
            f"e.g. reflectance x 10000) would be {format_bytes(smaller)}"
        )
    advice.append(
        f"a smaller region: the grid is {spec.grid.width} x {spec.grid.height} pixels; "
        "the size falls with the area of --region"
    )
    return advice


def _free_bytes(folder: Path) -> int | None:
    """Free space where the output goes (its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _pixel_text(crs: str, transform: Sequence[float]) -> str:
    """'pixel 8.98e-05 deg, about 10 m' for geographic grids, 'pixel 10 m' for projected."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    from engine.grid import METRES_PER_DEGREE

    size = abs(transform[0])
    try:
        geographic = CRS.from_user_input(crs).is_geographic
    except CRSError:
        return f"pixel {size:.6g} CRS units"
    if geographic:
        return f"pixel {size:.6g} deg, about {size * METRES_PER_DEGREE:.4g} m"
    return f"pixel {size:.6g} m"
