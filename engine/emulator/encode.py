"""Encoding of rendered pixels into the bodies Earth Engine serves: GeoTIFF, zips, NPY.

Masked pixels become the nodata value of their type (NaN for floats, 0 for integers), which is
also written as the GeoTIFF's nodata, so a reader can tell them apart where the type allows.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

FORMATS_DOWNLOAD = ("GEO_TIFF", "ZIPPED_GEO_TIFF", "ZIPPED_GEO_TIFF_PER_BAND", "NPY")
FORMATS_COMPUTE = ("GEO_TIFF", "NPY")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
CONTENT_TYPES = {
    "GEO_TIFF": "image/tiff",
    "ZIPPED_GEO_TIFF": "application/zip",
    "ZIPPED_GEO_TIFF_PER_BAND": "application/zip",
    "NPY": "application/octet-stream",
}


def nodata_for(dtype: np.dtype) -> float | int:
    """The value masked pixels take in a band of this type."""
    return float("nan") if np.issubdtype(dtype, np.floating) else 0


def common_dtype(dtypes: Sequence[np.dtype | str]) -> np.dtype:
    """The type a multi-band file of mixed band types is written in (numpy's result type)."""
    return np.result_type(*[np.dtype(d) for d in dtypes])


def filled(data: np.ndarray, valid: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One band in `dtype` with its masked pixels set to the nodata value."""
    out = np.asarray(data).astype(dtype, copy=True)
    out[~np.asarray(valid, dtype=bool)] = nodata_for(dtype)
    return out


def geotiff(
    crs: str,
    transform: Sequence[float],
    band_ids: Sequence[str],
    data: Sequence[np.ndarray],
    valid: Sequence[np.ndarray],
    *,
    compress: str | None = None,
) -> bytes:
    """A striped GeoTIFF with the grid's exact crs and transform; descriptions are band ids."""
    dtype = common_dtype([d.dtype for d in data])
    height, width = data[0].shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(data),
        "dtype": dtype.name,
        "crs": CRS.from_user_input(crs),
        "transform": Affine(*[float(v) for v in transform[:6]]),
        "nodata": nodata_for(dtype),
        "interleave": "band",
    }
    if compress:
        profile["compress"] = compress
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            for index, (band, mask) in enumerate(zip(data, valid, strict=True), start=1):
                dst.write(filled(band, mask, dtype), index)
                dst.set_band_description(index, band_ids[index - 1])
        return memfile.read()


def npy(band_ids: Sequence[str], data: Sequence[np.ndarray], valid: Sequence[np.ndarray]) -> bytes:
    """A structured array, one field per band in its own type, shape (H, W)."""
    height, width = data[0].shape
    dtype = np.dtype([(band_id, d.dtype) for band_id, d in zip(band_ids, data, strict=True)])
    out = np.empty((height, width), dtype=dtype)
    for band_id, band, mask in zip(band_ids, data, valid, strict=True):
        out[band_id] = filled(band, mask, band.dtype)
    buffer = io.BytesIO()
    np.save(buffer, out, allow_pickle=False)
    return buffer.getvalue()


def _member(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed date: the same pixels give the same bytes at any time."""
    return zipfile.ZipInfo(name, date_time=ZIP_DATE)


def encode(
    file_format: str,
    crs: str,
    transform: Sequence[float],
    band_ids: Sequence[str],
    data: Sequence[np.ndarray],
    valid: Sequence[np.ndarray],
    *,
    prefix: str = "download",
    compress: str | None = None,
) -> bytes:
    """The body for one of EE's file formats (names as in the REST API's ImageFileFormat)."""
    if file_format == "GEO_TIFF":
        return geotiff(crs, transform, band_ids, data, valid, compress=compress)
    if file_format == "NPY":
        return npy(band_ids, data, valid)
    if file_format in ("ZIPPED_GEO_TIFF", "ZIPPED_GEO_TIFF_PER_BAND"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            if file_format == "ZIPPED_GEO_TIFF":
                body = geotiff(crs, transform, band_ids, data, valid, compress=compress)
                archive.writestr(_member(f"{prefix}.tif"), body)
            else:
                for band_id, band, mask in zip(band_ids, data, valid, strict=True):
                    body = geotiff(crs, transform, [band_id], [band], [mask], compress=compress)
                    archive.writestr(_member(f"{prefix}.{band_id}.tif"), body)
        return buffer.getvalue()
    raise ValueError(f"unsupported file format {file_format!r}")


def read_geotiff(body: bytes) -> tuple[str, tuple[float, ...], list[str], np.ndarray]:
    """Read back (crs, EE-order transform, band descriptions, data) — for tests and checks."""
    with MemoryFile(body) as memfile, memfile.open() as src:
        crs = src.crs.to_string() if src.crs else ""
        t = src.transform
        return crs, (t.a, t.b, t.c, t.d, t.e, t.f), list(src.descriptions), src.read()


__all__ = [
    "CONTENT_TYPES",
    "FORMATS_COMPUTE",
    "FORMATS_DOWNLOAD",
    "common_dtype",
    "encode",
    "filled",
    "geotiff",
    "nodata_for",
    "npy",
    "read_geotiff",
]
