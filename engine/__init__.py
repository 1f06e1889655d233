"""eefetch: resumable, concurrent downloads of Earth Engine images to one GeoTIFF."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DownloadIncomplete", "__version__", "download_ee_image"]


def __getattr__(name: str) -> Any:
    # Imported on first use so that `engine.grid` or the emulator do not pull in the
    # earthengine-api client.
    if name in ("download_ee_image", "DownloadIncomplete"):
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
