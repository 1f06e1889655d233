"""Quick-look pictures: EE's visualisation stretch and PNG/JPEG encoding, numpy + rasterio only.

Shared by the emulator (``Image.visualize`` and thumbnail answers) and by ``eefetch preview``
of a downloaded GeoTIFF, so a preview from Earth Engine and one from the file on disk follow
the same arithmetic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PICTURE_FORMATS = ("PNG", "JPEG")


def stretch(values: np.ndarray, low: float, high: float, gamma: float | None = None) -> np.ndarray:
    """Earth Engine's visualisation of one band, as uint8 levels.

    ``255 * clip((v - min) / (max - min), 0, 1) ** (1 / gamma)``: values at or below ``low``
    become 0, at or above ``high`` 255, so a preview shows what EE's Map would.
    """
    if not high > low:
        raise ValueError(f"max ({high}) must be greater than min ({low})")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0)
    if gamma is not None and gamma != 1:
        scaled = scaled ** (1.0 / gamma)
    return np.rint(scaled * 255.0).astype(np.uint8)


def per_band(values: Sequence[float] | float | None, count: int, default: float) -> list[float]:
    """One number per band from EE-style parameters (one number for all, or one each)."""
    if values is None:
        return [default] * count
    if isinstance(values, int | float):
        return [float(values)] * count
    numbers = [float(v) for v in values]
    if len(numbers) == 1:
        return numbers * count
    if len(numbers) != count:
        raise ValueError(f"expected 1 or {count} values, got {len(numbers)}")
    return numbers


def palette_colours(palette: Sequence[str]) -> np.ndarray:
    """CSS-style colours ('ff0000', '#00ff00', 'blue' is not supported) as an (n, 3) uint8."""
    named = {"black": "000000", "white": "ffffff", "red": "ff0000", "green": "008000"}
    out = []
    for colour in palette:
        text = named.get(str(colour).lower(), str(colour).lstrip("#"))
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        if len(text) != 6:
            raise ValueError(f"palette colour {colour!r} is not a hex colour like 'ff8800'")
        out.append([int(text[i : i + 2], 16) for i in (0, 2, 4)])
    return np.array(out, dtype=np.uint8)


def apply_palette(level: np.ndarray, palette: Sequence[str]) -> list[np.ndarray]:
    """Map 0..255 levels onto a palette by linear interpolation, as EE does; three planes."""
    colours = palette_colours(palette).astype(np.float64)
    if len(colours) == 1:
        return [np.full(level.shape, colours[0][i], dtype=np.uint8) for i in range(3)]
    position = level.astype(np.float64) / 255.0 * (len(colours) - 1)
    below = np.clip(np.floor(position).astype(int), 0, len(colours) - 2)
    weight = position - below
    planes = []
    for i in range(3):
        mixed = colours[below, i] * (1 - weight) + colours[below + 1, i] * weight
        planes.append(np.rint(mixed).astype(np.uint8))
    return planes


def encode_picture(
    planes: Sequence[np.ndarray], valid: np.ndarray | None, file_format: str = "PNG"
) -> bytes:
    """A PNG (grey or RGB, with an alpha channel where pixels are masked) or a JPEG.

    JPEG has no transparency: masked pixels are black there.
    """
    if file_format not in PICTURE_FORMATS:
        raise ValueError(f"unsupported picture format {file_format!r}")
    bands = [np.asarray(p, dtype=np.uint8) for p in planes]
    if len(bands) not in (1, 3):
        raise ValueError(f"a picture has 1 or 3 bands, got {len(bands)}")
    height, width = bands[0].shape
    if file_format == "PNG" and valid is not None and not bool(np.all(valid)):
        bands.append(np.where(valid, 255, 0).astype(np.uint8))
    elif valid is not None:
        bands = [np.where(valid, b, 0).astype(np.uint8) for b in bands]
    profile = {
        "driver": file_format,
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": "uint8",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(**profile) as dst:
                dst.write(np.stack(bands))
            return bytes(memfile.read())


def picture_format(body: bytes) -> str | None:
    """'PNG' or 'JPEG' when the bytes start like one, else None (an error page, a proxy's)."""
    if body.startswith(PNG_SIGNATURE):
        return "PNG"
    if body.startswith(JPEG_SIGNATURE):
        return "JPEG"
    return None


def fit_dimensions(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``longest`` pixels (never upscaled)."""
    if longest <= 0:
        raise ValueError(f"dimensions must be positive, got {longest}")
    factor = min(1.0, longest / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))
