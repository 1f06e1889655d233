"""Every user-facing default and choice, in one place that imports nothing.

The engine's modules take their defaults from here, and so do the command line's options
(``engine/cli_options.py``) and the Python API's signatures, so the three cannot drift apart,
and the command line can declare its options without loading the engine (``eefetch status``
starts in a fraction of a second). Earth Engine's own limits are here too, with where they
come from.
"""

from __future__ import annotations

from typing import Final

# Earth Engine's limits (docs and the service's own error texts; see docs/CONTRACTS.md).
EE_MAX_REQUEST_BYTES: Final = 50_331_648  # 48 MiB, counting one mask byte per band and pixel
EE_MAX_SIDE_URLS: Final = 10_000  # pixels per side of a getDownloadURL request
EE_MAX_SIDE_COMPUTE: Final = 32_768  # pixels per side of a computePixels request
EE_MAX_CONCURRENCY: Final = 40  # concurrent requests per Cloud project (the default quota)

# What to fetch and how to write it.
DTYPES: Final = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
ENDPOINTS: Final = ("urls", "compute")
COMPRESSIONS: Final = ("deflate", "lzw", "zstd", "none")
DEFAULT_COMPRESSION: Final = "deflate"  # a GeoTIFF's (libdeflate: fast and read everywhere)
DEFAULT_ZARR_COMPRESSION: Final = "zstd"  # a Zarr store's (blosc zstd is 10x blosc zlib's speed)
RESAMPLINGS: Final = ("near", "bilinear", "bicubic")
OUTPUT_FORMATS: Final = ("geotiff", "zarr")  # the default: zarr for a name ending .zarr
ZARR_SUFFIX: Final = ".zarr"

# How a run goes.
DEFAULT_CONCURRENCY: Final = 16  # 8 left a realistic link half used (BENCHMARKS.md)
CONNECT_TIMEOUT_S: Final = 30.0
FIRST_BYTE_TIMEOUT_S: Final = 300.0
IDLE_TIMEOUT_S: Final = 60.0
MAX_ATTEMPTS: Final = 8
BACKOFF_BASE_S: Final = 2.0
MAX_BACKOFF_S: Final = 120.0
DEFAULT_PARALLEL_IMAGES: Final = 4
# Several processes on one job or one project (docs/CONTRACTS.md, "state/").
WORKER_LEASE_S: Final = 60.0  # claims and quota slots last this long unless renewed (every third)
MIN_LEASE_S: Final = 3.0  # shorter leases would be renewed too often to be worth it
PROJECT_QUOTA: Final = EE_MAX_CONCURRENCY  # requests in flight per project over all processes
MAX_PROJECT_QUOTA: Final = 10_000  # what the quota table accepts (state/quota.py)
TAIL_PART_BYTES: Final = 4 << 20  # the smallest part a tile is cut into at a job's end
OUTPUT_BLOCK: Final = 512  # pixels per side of the output's blocks (and of tile alignment)

# The tutorial's recipe.
DEFAULT_COLLECTION: Final = "COPERNICUS/S2_SR_HARMONIZED"
REDUCERS: Final = ("median", "mean", "min", "max", "mosaic")
CLOUD_MASKS: Final = ("qa60", "none")
CLIPS: Final = ("bounds", "outline", "none")
SENTINEL2_SCALE: Final = 10_000
