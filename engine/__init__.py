"""eefetch: resumable, concurrent downloads of Earth Engine images to one GeoTIFF."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and type checkers see; at run time these load on first use
    from engine.api import (
        download_ee_image,
        download_ee_image_collection,
        plan,
    )
    from engine.datasets import open_dataset
    from engine.errors import (
        CollectionIncomplete,
        DownloadIncomplete,
        EefetchError,
        IncompleteError,
        UserError,
    )
    from engine.quicklook import preview

__version__ = "0.1.0"
__all__ = [
    "CollectionIncomplete",
    "DownloadIncomplete",
    "EefetchError",
    "IncompleteError",
    "UserError",
    "__version__",
    "download_ee_image",
    "download_ee_image_collection",
    "open_dataset",
    "plan",
    "preview",
]
_LAZY = {
    "download_ee_image": "engine.api",
    "download_ee_image_collection": "engine.api",
    "plan": "engine.api",
    "preview": "engine.quicklook",
    "open_dataset": "engine.datasets",
    "CollectionIncomplete": "engine.errors",
    "DownloadIncomplete": "engine.errors",
    "EefetchError": "engine.errors",
    "IncompleteError": "engine.errors",
    "UserError": "engine.errors",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `engine.grid` or the emulator do not pull in the
    # earthengine-api client.
    module = _LAZY.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
