"""A grid taken from an existing raster (``--like FILE``), so a download lines up with it.

Any raster GDAL opens will do (a GeoTIFF from QGIS or ``gdal_translate``, a VRT, a JPEG 2000
with georeferencing): its CRS, its transform and its shape become the download's
``crs``, ``crs_transform`` and ``shape``, so every pixel of the download falls on a pixel of
the file. Only the header is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import InvalidJob


@dataclass(frozen=True, slots=True)
class LikeGrid:
    """What a template raster fixes: the CRS (an EPSG code when it is one), the transform in
    Earth Engine order, and (height, width)."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]


def grid_of(path: str | os.PathLike[str]) -> LikeGrid:
    """The grid of the raster at ``path``; InvalidJob (one line) if it has none to give."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.Env(), rasterio.open(path) as dataset:
            crs, transform = dataset.crs, dataset.transform
            height, width = dataset.height, dataset.width
            only_gcps = bool(dataset.gcps[0])
    except (RasterioError, OSError) as exc:
        detail = " ".join(str(exc).split())
        raise InvalidJob(
            f"--like {path}: cannot read it as a raster ({detail}); give a GeoTIFF or another "
            "file GDAL opens"
        ) from exc
    if crs is None:
        raise InvalidJob(
            f"--like {path} has no coordinate reference system; give a georeferenced raster, "
            "or --crs, --crs-transform and --shape"
        )
    if transform.is_identity or only_gcps:
        raise InvalidJob(
            f"--like {path} has no geotransform (or only ground control points); warp it to a "
            "grid first (gdalwarp), or give --crs-transform and --shape"
        )
    if transform.b != 0 or transform.d != 0:
        raise InvalidJob(
            f"--like {path} is rotated or sheared, which eefetch does not support; warp it "
            "north-up first (gdalwarp)"
        )
    return LikeGrid(
        crs=crs_text(crs),
        transform=(
            float(transform.a),
            0.0,
            float(transform.c),
            0.0,
            float(transform.e),
            float(transform.f),
        ),
        shape=(int(height), int(width)),
    )


def crs_text(crs: object) -> str:
    """``EPSG:n`` when the CRS is exactly that code (Earth Engine knows it by name), else WKT."""
    from rasterio.crs import CRS

    assert isinstance(crs, CRS)
    epsg = crs.to_epsg(confidence_threshold=100)
    if epsg is not None and CRS.from_epsg(epsg) == crs:
        return f"EPSG:{epsg}"
    return str(crs.to_wkt())
