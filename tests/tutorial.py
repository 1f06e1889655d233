"""The Sentinel-2 tutorial's composite as a recipe, for every test that builds or downloads it.

``test_recipes`` proves the recipe builds the tutorial's expression byte for byte
(examples/tutorial_composite.py), so other tests can take the recipe for the tutorial.
"""

from __future__ import annotations

from typing import Any

from engine.recipes import Composite


def tutorial_recipe(region: dict[str, Any], **changes: Any) -> Composite:
    """The tutorial's composite over ``region``, with ``changes`` to its options."""
    values: dict[str, Any] = {
        "collection": "COPERNICUS/S2_SR_HARMONIZED",
        "start": "2022-01-01",
        "end": "2022-12-31",
        "region": region,
        "max_cloud": 10,
        "cloud_mask": "qa60",
        "bands": ("B[1-8]",),
        "reducer": "median",
    }
    values.update(changes)
    return Composite(**values)
