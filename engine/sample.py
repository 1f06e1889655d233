"""How well a job's pixels compress, from one small tile fetched before the download.

The plan knows the raw size exactly, but the file's size depends on the data: a masked sea
compresses to nothing, noisy reflectance to two thirds. One block (512 x 512 pixels, or the
whole grid if smaller) from the middle of the grid is fetched through the same image and
compressed the way the output will be (GeoTIFF blocks with its predictor, or Zarr chunks
with its codec); the plan scales the raw size by that ratio. One request to Earth Engine; a
failure only leaves the estimate out.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import ee_adapter
from engine.ee_adapter import Connection
from engine.errors import EefetchError, FetchError
from engine.grid import Window
from engine.spec import JobSpec

SAMPLE_SIDE = 512


@dataclass(frozen=True, slots=True)
class CompressionSample:
    """The sample's size before and after compression, or why there is none."""

    raw_bytes: int
    compressed_bytes: int
    width: int
    height: int
    problem: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.problem is not None or self.raw_bytes <= 0:
            return None
        return self.compressed_bytes / self.raw_bytes


def sample_window(spec: JobSpec, side: int = SAMPLE_SIDE) -> Window:
    """The block at the middle of the grid (the whole grid if it is smaller). Pure."""
    grid = spec.grid
    height, width = min(side, grid.height), min(side, grid.width)
    return Window((grid.height - height) // 2, (grid.width - width) // 2, height, width)


def measure(spec: JobSpec, connection: Connection, timeout: float = 120.0) -> CompressionSample:
    """Fetch the sample tile and compress it as the output would be (blocking)."""
    from engine.quicklook import http_get

    window = sample_window(spec)
    try:
        image = ee_adapter.prepared_image(spec)
        url = ee_adapter.download_url(image, spec.grid.window_grid(window))
        body = http_get(url, connection.proxy, connection.ca_bundle, timeout)
        data = _decode(body)[: len(spec.data_bands)]
        zarr = spec.output_format == "zarr"
        compressed = _zarr_bytes(spec, data) if zarr else _tiff_bytes(spec, data)
    except (EefetchError, FetchError, OSError, ValueError) as exc:
        return CompressionSample(0, 0, window.width, window.height, " ".join(str(exc).split()))
    return CompressionSample(int(data.nbytes), compressed, window.width, window.height)


def _decode(body: bytes) -> np.ndarray:
    from rasterio.io import MemoryFile

    with MemoryFile(body) as memfile, memfile.open() as dataset:
        return np.asarray(dataset.read())


def _tiff_bytes(spec: JobSpec, data: np.ndarray) -> int:
    """The sample as one tiled GeoTIFF of the output's compression and predictor."""
    from affine import Affine
    from rasterio.io import MemoryFile

    from engine.merge import choose_interleave, creation_options

    count, height, width = data.shape
    block = max(16, min(512, -(-max(height, width) // 16) * 16))
    options = creation_options(
        spec.dtype,
        spec.compress,
        block,
        "IF_SAFER",
        choose_interleave(count, spec.dtype, block),
    )
    grid = spec.grid.window_grid(sample_window(spec))
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=spec.dtype,
            crs=grid.crs,
            transform=Affine(*grid.transform),
            **options,
        ) as dataset:
            dataset.write(data)
        return len(memfile.getbuffer())


def _zarr_bytes(spec: JobSpec, data: np.ndarray) -> int:
    """The sample as chunks of the output's codec (zarr imported only for a Zarr job)."""
    import zarr

    from engine.zarr_output import compressors

    with tempfile.TemporaryDirectory(prefix="eefetch-sample-") as folder:
        array = zarr.create_array(
            store=folder,
            shape=data.shape,
            chunks=(1, *data.shape[1:]),
            dtype=spec.dtype,
            fill_value=spec.nodata,
            compressors=compressors(spec.compress),
        )
        array[...] = data
        return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.name != "zarr.json")
