"""An eefetch output as an ``xarray.Dataset``, the same way for a GeoTIFF and a Zarr store.

Both come back as one variable ``band_data`` with dimensions (band, y, x) (a collection's
store: (time, band, y, x)), the band names as the ``band`` coordinate, pixel-centre ``x`` and
``y``, the CRS and transform where ``rioxarray`` looks (``ds.rio.crs``,
``ds.rio.transform()``), the nodata value as ``_FillValue`` and the file's metadata (Earth
Engine's image properties) as ``attrs``. Needs the ``zarr`` extra (``pip install
eefetch[zarr]``: xarray, rioxarray, zarr); nothing else in eefetch imports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UserError

if TYPE_CHECKING:
    import xarray


class MissingExtra(UserError):
    """xarray, rioxarray or zarr is not installed."""


def open_dataset(path: str | os.PathLike[str], *, masked: bool = False) -> xarray.Dataset:
    """Open an output of eefetch (GeoTIFF or Zarr) as a lazily read ``xarray.Dataset``.

    ``masked`` turns nodata pixels into NaN (float data); by default values are as stored,
    with ``_FillValue`` saying which one means nodata.
    """
    try:
        import rioxarray
        import xarray as xr
    except ImportError as exc:
        raise MissingExtra(
            f"opening {path} as a dataset needs xarray and rioxarray ({exc.name} is missing); "
            "install them with: pip install 'eefetch[zarr]'"
        ) from exc
    source = Path(path)
    if source.is_dir():
        stored: xr.Dataset = xr.open_zarr(source, decode_coords="all", mask_and_scale=masked)
        return stored
    array = rioxarray.open_rasterio(source, masked=masked)
    assert isinstance(array, xr.DataArray)  # one file of one resolution
    names = array.attrs.pop("long_name", None)
    if isinstance(names, str):
        names = (names,)
    if names is not None and len(names) == array.sizes["band"]:
        array = array.assign_coords(band=list(names))
    properties = {
        key: value
        for key, value in array.attrs.items()
        if key not in ("_FillValue", "scale_factor", "add_offset", "AREA_OR_POINT")
    }
    array.attrs = {k: v for k, v in array.attrs.items() if k not in properties}
    dataset = array.to_dataset(name="band_data")
    dataset.attrs = properties
    return dataset
