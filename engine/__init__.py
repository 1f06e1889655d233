"""eefetch: resumable, concurrent downloads of Earth Engine images to one GeoTIFF."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "CollectionIncomplete",
    "DownloadIncomplete",
    "__version__",
    "download_ee_image",
    "download_ee_image_collection",
    "plan",
    "preview",
]
_LAZY = {
    "download_ee_image": "engine.api",
    "DownloadIncomplete": "engine.api",
    "download_ee_image_collection": "engine.collection",
    "CollectionIncomplete": "engine.collection",
    "plan": "engine.estimate",
    "preview": "engine.quicklook",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `engine.grid` or the emulator do not pull in the
    # earthengine-api client.
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
