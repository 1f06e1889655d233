"""Quick looks: a true-colour PNG of an Earth Engine image before downloading it, or of a
downloaded GeoTIFF afterwards, so a person can look at the data instead of reading numbers.

Before the download the picture comes from Earth Engine's thumbnail endpoint
(``getThumbURL``: EE renders, stretches and encodes it, one small request). After the download
it is read from a decimated overview of the GeoTIFF and stretched with the same arithmetic
(``engine.imaging``).
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import imaging
from engine.errors import ErrorKind, FetchError, PreviewError
from engine.retry import Action, classify, parse_retry_after, retry_delay

TRUE_COLOUR = ("B4", "B3", "B2")
DEFAULT_DIMENSIONS = 800
SAMPLE_DIMENSIONS = 128
AUTO_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True, slots=True)
class Stretch:
    """EE-style visualisation parameters: one number for all bands or one per band."""

    bands: tuple[str, ...] | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None
    gamma: float | None = None
    palette: tuple[str, ...] | None = None

    def resolved(self, count: int, auto: tuple[list[float], list[float]] | None) -> Stretch:
        """Min and max for every band, taken from ``auto`` (percentiles) where not given."""
        lows = list(self.min) if self.min else (auto[0] if auto else [0.0])
        highs = list(self.max) if self.max else (auto[1] if auto else [1.0])
        try:
            lows = imaging.per_band(lows, count, 0.0)
            highs = imaging.per_band(highs, count, 1.0)
        except ValueError as exc:
            raise PreviewError(f"--min/--max: {exc}; give one number or one per band") from exc
        highs = [h if h > lo else lo + 1 for lo, h in zip(lows, highs, strict=True)]
        return Stretch(self.bands, tuple(lows), tuple(highs), self.gamma, self.palette)

    def thumb_params(self) -> dict[str, Any]:
        """The visualisation part of ``getThumbURL``'s parameters."""
        params: dict[str, Any] = {}
        if self.bands:
            params["bands"] = list(self.bands)
        if self.min is not None:
            params["min"] = list(self.min)
        if self.max is not None:
            params["max"] = list(self.max)
        if self.gamma is not None:
            params["gamma"] = self.gamma
        if self.palette:
            params["palette"] = list(self.palette)
        return params


@dataclass(frozen=True, slots=True)
class PreviewResult:
    path: Path
    width: int
    height: int
    bands: tuple[str, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]

    def _repr_png_(self) -> bytes | None:
        """Jupyter shows the picture itself when a cell returns the result."""
        body = self.path.read_bytes()
        return body if imaging.picture_format(body) == "PNG" else None


def preview(
    source: Any,
    filename: str | os.PathLike[str] | None = None,
    region: Any = None,
    *,
    bands: Sequence[str] | str | None = None,
    min: Sequence[float] | float | None = None,
    max: Sequence[float] | float | None = None,
    gamma: float | None = None,
    palette: Sequence[str] | None = None,
    dimensions: int = DEFAULT_DIMENSIONS,
    crs: str | None = None,
    file_format: str = "PNG",
    ee_url: str | None = None,
    project: str | None = None,
    proxy: str | None = None,
    ca_bundle: str | None = None,
) -> PreviewResult:
    """A quick-look picture of an ``ee.Image`` (before downloading) or of a GeoTIFF path.

    ``bands``, ``min``, ``max``, ``gamma`` and ``palette`` mean what they mean in EE's
    visualisation parameters; without ``min``/``max`` the stretch is the 2-98 % range.
    In Jupyter the returned object displays as the picture.
    """
    file_format = file_format.upper().replace("JPG", "JPEG")
    if file_format not in imaging.PICTURE_FORMATS:
        raise PreviewError(f"unknown picture format {file_format!r}; use PNG or JPEG")
    stretch = Stretch(
        bands=_names(bands),
        min=_floats(min),
        max=_floats(max),
        gamma=gamma,
        palette=tuple(palette) if palette else None,
    )
    if isinstance(source, str | os.PathLike):
        return preview_file(
            source, filename, stretch=stretch, dimensions=dimensions, file_format=file_format
        )
    from engine import ee_adapter

    ee_adapter.connect(
        ee_adapter.Connection(url=ee_url, project=project, proxy=proxy, ca_bundle=ca_bundle)
    )
    suffix = ".png" if file_format == "PNG" else ".jpg"
    return preview_image(
        source,
        filename or f"preview{suffix}",
        region=region,
        crs=crs,
        stretch=stretch,
        dimensions=dimensions,
        file_format=file_format,
        proxy=proxy,
        ca_bundle=ca_bundle,
    )


def _names(bands: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = bands.split(",")
    names = tuple(b.strip() for b in bands if b.strip())
    return names or None


def _floats(values: Sequence[float] | float | str | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [float(v) for v in values.split(",") if v.strip()]
    if isinstance(values, int | float):
        return (float(values),)
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise PreviewError(f"min/max must be numbers, got {values!r}") from exc


def choose_bands(available: Sequence[str], wanted: Sequence[str] | None) -> tuple[str, ...]:
    """The bands to show: as asked, else true colour (B4, B3, B2) when present, else 3 or 1."""
    if wanted:
        missing = [b for b in wanted if b not in available]
        if missing:
            raise PreviewError(
                f"band {missing[0]!r} is not in the image; it has {', '.join(available)}"
            )
        if len(wanted) not in (1, 3):
            raise PreviewError(f"a preview shows 1 or 3 bands, not {len(wanted)}; e.g. B4,B3,B2")
        return tuple(wanted)
    if all(b in available for b in TRUE_COLOUR):
        return TRUE_COLOUR
    return tuple(available[:3]) if len(available) >= 3 else tuple(available[:1])


def auto_range(planes: Sequence[np.ndarray], valid: np.ndarray) -> tuple[list[float], list[float]]:
    """2nd and 98th percentiles of the valid pixels, per band: a stretch that shows contrast."""
    lows, highs = [], []
    for plane in planes:
        values = np.asarray(plane, dtype=np.float64)[valid]
        values = values[np.isfinite(values)]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        low, high = np.percentile(values, AUTO_PERCENTILES)
        lows.append(float(low))
        highs.append(float(high) if high > low else float(low) + 1.0)
    return lows, highs


# --------------------------------------------------------------------------- a GeoTIFF


def preview_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    stretch: Stretch | None = None,
    dimensions: int = DEFAULT_DIMENSIONS,
    file_format: str = "PNG",
) -> PreviewResult:
    """A PNG of a GeoTIFF, read at reduced resolution (overviews when the file has them)."""
    import rasterio
    from rasterio.enums import Resampling

    stretch = stretch or Stretch()
    source = Path(source)
    target = Path(output) if output else source.with_suffix(".png")
    try:
        dataset = rasterio.open(source)
    except rasterio.errors.RasterioIOError as exc:
        raise PreviewError(f"cannot read {source} as a GeoTIFF: {exc}") from exc
    with dataset:
        names = [d or str(i) for i, d in enumerate(dataset.descriptions or (), start=1)] or [
            str(i) for i in range(1, dataset.count + 1)
        ]
        wanted = stretch.bands
        if wanted and all(w.isdigit() for w in wanted) and not any(w in names for w in wanted):
            wanted = tuple(names[int(w) - 1] for w in wanted if 0 < int(w) <= len(names))
        bands = choose_bands(names, wanted)
        width, height = imaging.fit_dimensions(dataset.width, dataset.height, dimensions)
        indexes = [names.index(b) + 1 for b in bands]
        data = dataset.read(
            indexes,
            out_shape=(len(indexes), height, width),
            resampling=Resampling.nearest,
            masked=True,
        )
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    planes = [np.ma.getdata(data[i]) for i in range(len(indexes))]
    valid &= np.logical_and.reduce([np.isfinite(p) for p in planes])
    auto = auto_range(planes, valid) if not (stretch.min and stretch.max) else None
    final = stretch.resolved(len(bands), auto)
    levels = [
        imaging.stretch(p, lo, hi, final.gamma)
        for p, lo, hi in zip(planes, final.min or (), final.max or (), strict=True)
    ]
    if final.palette and len(levels) == 1:
        levels = imaging.apply_palette(levels[0], final.palette)
    _write(target, imaging.encode_picture(levels, valid, file_format))
    return PreviewResult(target, width, height, bands, final.min or (), final.max or ())


# --------------------------------------------------------------------------- an EE image


def preview_image(
    image: Any,
    output: str | os.PathLike[str],
    *,
    region: Any = None,
    crs: str | None = None,
    stretch: Stretch | None = None,
    dimensions: int = DEFAULT_DIMENSIONS,
    file_format: str = "PNG",
    proxy: str | None = None,
    ca_bundle: str | None = None,
    timeout: float = 300.0,
) -> PreviewResult:
    """A PNG of an ``ee.Image`` from Earth Engine's thumbnail endpoint, before any download.

    ``region`` (GeoJSON, a file, or west,south,east,north) is shown as its bounding box. Without
    ``min``/``max`` the stretch is the 2-98 % range of a small sample (one extra request).
    """
    from engine import ee_adapter
    from engine.request import region_geojson

    stretch = stretch or Stretch()
    if dimensions <= 0:
        raise PreviewError(f"--dimensions must be positive, got {dimensions}")
    info = ee_adapter.band_info(image)
    bands = choose_bands([b.id for b in info], stretch.bands)
    spatial: dict[str, Any] = {}
    if region is not None:
        geometry = region_geojson(region)
        assert geometry is not None  # region is not None here
        spatial["region"] = _bounds_polygon(geometry)
    if crs:
        spatial["crs"] = crs
    auto = None
    if not (stretch.min and stretch.max):
        auto = _sample_range(image.select(list(bands)), spatial, proxy, ca_bundle, timeout)
    final = stretch.resolved(len(bands), auto)
    final = Stretch(bands, final.min, final.max, final.gamma, final.palette)
    params = {**spatial, **final.thumb_params(), "dimensions": int(dimensions)}
    params["format"] = "jpg" if file_format == "JPEG" else "png"
    url = ee_adapter.thumbnail_url(image, params)
    body = http_get(url, proxy, ca_bundle, timeout)
    if imaging.picture_format(body) != file_format:
        raise PreviewError(
            f"Earth Engine answered the preview with something other than a {file_format} "
            f"({body[:60]!r}...); a proxy or captive portal may be in the way"
        )
    target = Path(output)
    _write(target, body)
    width, height = _picture_size(body)
    return PreviewResult(target, width, height, bands, final.min or (), final.max or ())


def _sample_range(
    image: Any, spatial: dict[str, Any], proxy: str | None, ca_bundle: str | None, timeout: float
) -> tuple[list[float], list[float]]:
    """Percentiles from a small NPY sample of the bands (a 128-pixel download)."""
    from engine import ee_adapter

    params = {**spatial, "dimensions": SAMPLE_DIMENSIONS, "format": "NPY"}
    url = ee_adapter.sample_url(image, params)
    body = http_get(url, proxy, ca_bundle, timeout)
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        raise PreviewError(
            f"the sample for the stretch is not a NumPy array ({exc}); pass --min and --max"
        ) from exc
    planes = [np.asarray(array[name], dtype=np.float64) for name in array.dtype.names or ()]
    valid = np.logical_and.reduce([np.isfinite(p) for p in planes])
    return auto_range(planes, valid)


def http_get(
    url: str,
    proxy: str | None,
    ca_bundle: str | None,
    timeout: float,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """One small GET, retried as ``engine.retry`` decides (429s, 5xx, dropped connections).

    It takes the same route as the tile downloads (``ee_adapter.RoutedSession``): --proxy or
    the proxy variables, --ca-bundle or the CA variables.
    """
    import requests

    from engine.ee_adapter import RoutedSession

    rng = random.Random()
    with RoutedSession(proxy, ca_bundle) as session:
        for attempt in range(attempts):
            try:
                answer = session.get(url, timeout=timeout)
            except requests.RequestException as exc:
                error = FetchError(ErrorKind.CONNECT, f"{type(exc).__name__}: {exc}")
            else:
                if answer.status_code == 200:
                    return answer.content
                error = FetchError(
                    ErrorKind.HTTP,
                    _error_text(answer),
                    status=answer.status_code,
                    retry_after=parse_retry_after(answer.headers.get("Retry-After"), time.time()),
                )
            verdict = classify(error)
            if verdict.action is not Action.RETRY or attempt + 1 >= attempts:
                break
            sleep(retry_delay(verdict, attempt, rng, base=0.5, cap=8.0))
    raise PreviewError(f"the preview request failed ({error}); check the network and try again")


def _error_text(answer: Any) -> str:
    try:
        return str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return " ".join(answer.text[:200].split())


def _bounds_polygon(geometry: dict[str, Any]) -> dict[str, Any]:
    """The bounding box of a geometry as a GeoJSON polygon (the tutorial's ``bounds()``)."""
    import shapely.geometry

    west, south, east, north = shapely.geometry.shape(geometry).bounds
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def _picture_size(body: bytes) -> tuple[int, int]:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(body) as memfile, memfile.open() as picture:
            return picture.width, picture.height


def _write(target: Path, body: bytes) -> None:
    """Write through a temporary name so a viewer never sees half a picture."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(body)
    partial.replace(target)
