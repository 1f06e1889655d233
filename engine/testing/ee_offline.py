"""The real earthengine-api client, initialised offline (no server, no network).

The client builds its Image/Collection methods from the algorithm list; the wheel ships that
list as a test fixture, so tests can serialize expressions exactly as the client sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ee
from ee import apitestcase


@contextmanager
def offline_ee() -> Iterator[Any]:
    """Initialise ``ee`` against an unreachable loopback URL, restoring its hooks afterwards."""
    saved = (
        ee.data.getAlgorithms,
        ee.data._install_cloud_api_resource,
        ee.deprecation._FetchDataCatalogStac,
    )
    ee.data.getAlgorithms = apitestcase.GetAlgorithms
    ee.data._install_cloud_api_resource = lambda: None
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        ee.Reset()
        ee.Initialize(credentials=None, url="http://127.0.0.1:1", project="test-proj")
        yield ee
    finally:
        (
            ee.data.getAlgorithms,
            ee.data._install_cloud_api_resource,
            ee.deprecation._FetchDataCatalogStac,
        ) = saved
        ee.Reset()


def wire(obj: Any) -> dict[str, Any]:
    """The expression exactly as the client puts it on the wire (a JSON round trip)."""
    encoded: dict[str, Any] = json.loads(json.dumps(ee.serializer.encode(obj, for_cloud_api=True)))
    return encoded


def download_expression(image: Any, **params: Any) -> dict[str, Any]:
    """The expression getDownloadURL would send for these parameters."""
    params.setdefault("format", "GEO_TIFF")
    return wire(image._build_download_id_image(params))
