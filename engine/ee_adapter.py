"""Everything that calls earthengine-api: initialising it, describing images, making URLs.

Other modules that import ``ee`` only build expressions (``engine.recipes``, the collection
helpers) or take ``ee`` objects as arguments (the Python API); every call that goes to the
service is made here.

The client is synchronous; the scheduler calls the blocking functions here from worker
threads. The client's own retries are turned off (``setMaxRetries(0)``): eefetch's retry
policy in ``engine.retry`` decides instead, with knowledge the client does not have.
"""

from __future__ import annotations

import json
import logging
import random
import re
import runpy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ee
import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from engine.errors import (
    EarthEngineError,
    EarthEngineUnreachable,
    ErrorKind,
    FetchError,
    InvalidJob,
    PreviewError,
    SourceError,
    UserError,
)
from engine.grid import Grid
from engine.retry import Action, classify, retry_delay
from engine.spec import JobSpec
from engine.transport import ca_bundle_from_env, resolve_proxy

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
OFFLINE_PROJECT = "eefetch-offline"

CASTS = {
    "uint8": "toUint8",
    "int8": "toInt8",
    "uint16": "toUint16",
    "int16": "toInt16",
    "uint32": "toUint32",
    "int32": "toInt32",
    "float32": "toFloat",
    "float64": "toDouble",
}


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the EE API is and how to reach it."""

    url: str | None = None  # None: Google's service with the user's credentials
    project: str | None = None
    high_volume: bool = False
    proxy: str | None = None
    ca_bundle: str | None = None
    deadline_seconds: float = 180.0

    @property
    def offline(self) -> bool:
        return self.url is not None

    @property
    def base_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        return HIGH_VOLUME_URL if self.high_volume else "https://earthengine.googleapis.com"


@dataclass(frozen=True, slots=True)
class BandInfo:
    id: str
    dtype: str
    crs: str | None
    transform: tuple[float, ...] | None
    dimensions: tuple[int, int] | None
    # The value range EE declares for the band (its PixelType), when it has one.
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What one ``getInfo`` of an image tells: its bands and its properties."""

    bands: list[BandInfo]
    properties: dict[str, Any]


LOG = logging.getLogger(__name__)

MASK_BAND = "eefetch_mask"
"""The extra band a ``--mask-band`` job fetches: 1 where every data band is valid, else 0."""


class RoutedSession(requests.Session):
    """A requests session that picks its proxy and CA bundle as the tile transport does.

    Left to itself, requests lets HTTPS_PROXY and REQUESTS_CA_BUNDLE override what was set on
    the session (so --proxy and --ca-bundle would lose to the environment) and ignores
    SSL_CERT_FILE. Deciding both in ``engine.transport`` for every request keeps the EE API
    calls and the tile downloads on one route: an explicit proxy for every host, including
    127.0.0.1; otherwise the usual variables, NO_PROXY included.

    A connection the server or a proxy closed while it sat idle in the pool is tried again
    once on a new one, for requests that may be repeated (GET, not POST): the client's own
    retries are off (``configure_client``), and a proxy that drops idle keep-alive
    connections otherwise failed the next API call with "Remote end closed connection".
    """

    def __init__(self, proxy: str | None, ca_bundle: str | None) -> None:
        super().__init__()
        self.trust_env = False
        self.explicit_proxy = proxy
        self.ca_bundle = ca_bundle
        stale_connection = Retry(total=1, connect=1, read=1, status=0, other=0, redirect=0)
        for scheme in ("http://", "https://"):
            self.mount(scheme, HTTPAdapter(max_retries=stale_connection))

    def merge_environment_settings(  # type: ignore[override]  # stubs: a private TypedDict
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: Any,
    ) -> dict[str, Any]:
        chosen = resolve_proxy(url, self.explicit_proxy)
        if chosen:
            proxies = {"http": chosen, "https": chosen}
        if verify is None:
            verify = self.ca_bundle or ca_bundle_from_env() or True
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return dict(settings)


def use_network(proxy: str | None, ca_bundle: str | None) -> None:
    """Route the client's calls through ``proxy`` and check certificates against ``ca_bundle``.

    For a client somebody else initialised (the Python API without ``ee_url``): the client's
    API objects hold their session, so they are rebuilt around the new one.
    """
    _install_session(proxy, ca_bundle)
    if ee.data.is_initialized():
        ee.data._install_cloud_api_resource()


def _install_session(proxy: str | None, ca_bundle: str | None) -> None:
    state = ee.data._get_state()
    previous = state.requests_session
    state.requests_session = RoutedSession(proxy, ca_bundle)
    if previous is not None:
        previous.close()


def initialize(connection: Connection) -> None:
    """Initialise the client once per process, against an emulator or the real service.

    The session is in place before ``ee.Initialize``, whose discovery and algorithm calls must
    take the proxy too: behind a firewall that only lets the proxy out, nothing else works.
    """
    _install_session(connection.proxy, connection.ca_bundle)
    # One retry and a deadline from the first call on: the client's default five retries of
    # the discovery call, with backoff, spent half a minute before saying that the network or
    # the proxy is down, and without a deadline a silent proxy hung ee.Initialize for good.
    ee.data.setMaxRetries(1)
    ee.data._get_state().deadline_ms = int(connection.deadline_seconds * 1000)
    try:
        if connection.offline:
            # The client reads a catalog from a Google storage host at init, with no timeout;
            # an offline run must not try.
            ee.deprecation._FetchDataCatalogStac = lambda: {}
            ee.Initialize(
                credentials=None,
                project=connection.project or OFFLINE_PROJECT,
                url=connection.base_url,
            )
        else:
            url = HIGH_VOLUME_URL if connection.high_volume else None
            ee.Initialize(project=connection.project, url=url)
    except ee.EEException as exc:
        raise EarthEngineError(
            f"could not initialise Earth Engine: {exc}. Run `earthengine authenticate` and "
            "pass --project (or set EE_PROJECT), or point --ee-url at an emulator"
        ) from exc
    except (OSError, ConnectionError) as exc:
        raise EarthEngineUnreachable(
            f"could not reach Earth Engine at {connection.base_url}: {exc}. Check the network, "
            "the proxy (--proxy or HTTPS_PROXY) and --ee-url"
        ) from exc
    configure_client(connection.deadline_seconds)


def connect(connection: Connection) -> None:
    """Get the client ready for a download, as geemap would, on the route the tiles take.

    With no emulator URL and no ``ee.Initialize()`` yet, the user's own credentials and
    project are used. If the user initialised the client, it is kept, but a proxy or CA
    bundle given to the download applies to its API calls too: the tiles take that route, and
    behind a firewall that only lets the proxy out nothing else would work.
    """
    if connection.url is not None or not is_initialized():
        initialize(connection)
    elif connection.proxy or connection.ca_bundle:
        use_network(connection.proxy, connection.ca_bundle)


def geometry_geojson(region: Any) -> dict[str, Any] | None:
    """The GeoJSON of an ``ee.Geometry``, ``ee.Feature`` or ``ee.FeatureCollection`` (one
    ``getInfo`` call); None for anything else."""
    if isinstance(region, ee.Geometry):
        return dict(region.getInfo())
    if isinstance(region, ee.Feature | ee.FeatureCollection):
        return dict(region.geometry().getInfo())
    return None


def configure_client(deadline_seconds: float = 180.0) -> None:
    """Turn the client's own retries off and bound every API call.

    eefetch retries with knowledge the client lacks (split, new URL, outage); the client's
    retries would multiply with ours and hide a stalled network for minutes.
    """
    ee.data.setMaxRetries(0)
    ee.data.setDeadline(int(deadline_seconds * 1000))


@contextmanager
def client_settings(
    deadline_seconds: float = 180.0, workload_tag: str | None = None
) -> Iterator[None]:
    """configure_client() (and ``workload_tag``, if given) for the duration of a job, then the
    caller's settings again."""
    state = ee.data._get_state()
    saved = (state.max_retries, state.deadline_ms, workload_tag_now())
    configure_client(deadline_seconds)
    if workload_tag:
        set_workload_tag(workload_tag)
    try:
        yield
    finally:
        try:
            ee.data.setMaxRetries(saved[0])
            ee.data.setDeadline(saved[1])  # rebuilds the client's API objects: a network call
            if workload_tag:
                set_workload_tag(saved[2])
        except Exception as exc:  # the job's outcome stands; the next EE call rebuilds them
            LOG.warning("could not restore the Earth Engine client's settings: %s", exc)


def is_initialized() -> bool:
    return bool(ee.data.is_initialized())


def current_base_url() -> str:
    """The base URL the client was initialised with (where computePixels and probes go)."""
    url = ee.data._get_state().cloud_api_base_url
    return (url or Connection().base_url).rstrip("/")


def current_project() -> str:
    """The Cloud project the client bills and sends its requests to (the one in the request
    paths, whose concurrency quota Earth Engine counts)."""
    return str(ee.data._get_state().cloud_api_user_project or OFFLINE_PROJECT)


def image_from_asset(asset_id: str) -> ee.Image:
    image: ee.Image = ee.Image(asset_id)
    return image


def image_from_expression(text: str) -> ee.Image:
    """An image from a serialized expression (``ee.Image.serialize()`` output)."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise SourceError(
            f"the expression is not JSON ({exc}); give the output of image.serialize()"
        ) from exc
    if not isinstance(parsed, dict):
        raise SourceError(
            "the expression is JSON but not an object; give the output of image.serialize()"
        )
    try:
        image: ee.Image = ee.Image(ee.deserializer.fromJSON(text))
    except Exception as exc:
        raise SourceError(
            f"the expression could not be read as an Earth Engine image: {exc}"
        ) from exc
    return image


def image_from_script(path: Path) -> ee.Image:
    """Run a user's Python file and take the ``image`` it defines."""
    image: ee.Image = _from_script(path, "image", ee.Image, "ee.Image")
    return image


def collection_from_script(path: Path) -> ee.ImageCollection:
    """Run a user's Python file and take the ``collection`` it defines."""
    collection: ee.ImageCollection = _from_script(
        path, "collection", ee.ImageCollection, "ee.ImageCollection"
    )
    return collection


def _from_script(path: Path, name: str, kind: type, kind_name: str) -> Any:
    try:
        namespace = runpy.run_path(str(path), run_name="__eefetch_script__")
    except FileNotFoundError as exc:
        raise SourceError(f"script {path} does not exist") from exc
    except Exception as exc:
        raise SourceError(
            f"script {path} raised {type(exc).__name__}: {exc}; fix the script and run again"
        ) from exc
    found = namespace.get(name)
    if found is None:
        raise SourceError(
            f"script {path} defines no variable named `{name}`; assign the "
            f"{kind_name} to download to `{name}`"
        )
    if not isinstance(found, kind):
        raise SourceError(f"`{name}` in {path} is a {type(found).__name__}, not an {kind_name}")
    return found


def serialize(image: ee.Image) -> str:
    return str(image.serialize())


def deserialize(text: str) -> ee.Image:
    image: ee.Image = ee.Image(ee.deserializer.fromJSON(text))
    return image


def dtype_from_ee(data_type: dict[str, Any]) -> str:
    """The numpy dtype that holds an EE PixelType exactly."""
    precision = data_type.get("precision")
    if precision == "float":
        return "float32"
    if precision == "double":
        return "float64"
    low, high = data_type.get("min"), data_type.get("max")
    if low is None or high is None:
        return "float64"
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
        info = np.iinfo(name)
        if info.min <= low and high <= info.max:
            return name
    return "float64"


def band_info(
    image: ee.Image, *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep
) -> list[BandInfo]:
    """The bands of an image (one getInfo round trip)."""
    return describe_image(image, attempts=attempts, sleep=sleep).bands


def describe_image(
    image: ee.Image, *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep
) -> ImageInfo:
    """The bands and properties of an image (one getInfo round trip)."""
    info = _describe(image, attempts, sleep)
    if not isinstance(info, dict) or info.get("type") != "Image":
        raise SourceError("the object given is not an Earth Engine image")
    bands = []
    for band in info.get("bands", []):
        dims = band.get("dimensions")
        transform = band.get("crs_transform")
        data_type = band.get("data_type", {})
        bands.append(
            BandInfo(
                id=band["id"],
                dtype=dtype_from_ee(data_type),
                crs=band.get("crs"),
                transform=tuple(transform) if transform else None,
                dimensions=(int(dims[0]), int(dims[1])) if dims else None,
                low=_number(data_type.get("min")),
                high=_number(data_type.get("max")),
            )
        )
    if not bands:
        raise EarthEngineError("the image has no bands; check the collection filters and selectors")
    properties = dict(info.get("properties") or {})
    if isinstance(info.get("id"), str):  # EE gives an asset's id beside its properties
        properties.setdefault("system:id", info["id"])
    return ImageInfo(bands, properties)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _describe(image: ee.Image, attempts: int, sleep: Callable[[float], None]) -> Any:
    """``image.getInfo()``, tried again after a 429, a 5xx or a dropped connection.

    The client's own retries are off (see ``configure_client``), and a job must not end at
    its first call over a 503 that the next second would not have given.
    """
    rng = random.Random()
    for attempt in range(attempts):
        try:
            return image.getInfo()
        except ee.EEException as exc:
            cause: Exception = exc
            error = FetchError(ErrorKind.EE, str(exc), status=_status_of(exc))
            problem: UserError = EarthEngineError(
                f"Earth Engine could not describe the image: {exc}"
            )
        except (ConnectionError, OSError) as exc:
            cause = exc
            error = FetchError(ErrorKind.CONNECT, str(exc))
            problem = EarthEngineUnreachable(
                f"could not reach Earth Engine to describe the image: {exc}. Check the "
                "network and the proxy (--proxy or HTTPS_PROXY)"
            )
        verdict = classify(error)
        if verdict.action is not Action.RETRY or attempt + 1 >= attempts:
            raise problem from cause
        sleep(retry_delay(verdict, attempt, rng, base=1.0, cap=16.0))
    raise AssertionError("unreachable: the last attempt returns or raises")


def select_bands(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Band names chosen by names or regular expressions, EE-style (whole-name matches)."""
    if not wanted:
        return list(available)
    chosen: list[str] = []
    for selector in wanted:
        if selector in available:
            matches = [selector]
        else:
            try:
                pattern = re.compile(selector)
            except re.error:
                matches = []
            else:
                matches = [name for name in available if pattern.fullmatch(name)]
        if not matches:
            raise InvalidJob(
                f"band {selector!r} is not in the image; it has {', '.join(available)}"
            )
        chosen.extend(name for name in matches if name not in chosen)
    return chosen


def prepare_image(
    image: ee.Image,
    band_ids: Sequence[str],
    dtype: str,
    nodata: float | int,
    *,
    mask_band: bool = False,
) -> ee.Image:
    """The image a tile is cut from: chosen bands, masked pixels filled with nodata, one type.

    Filling masked pixels here (not trusting whatever EE writes there) is what lets the merged
    GeoTIFF carry a nodata value that means exactly "masked in Earth Engine". With
    ``mask_band`` the last of ``band_ids`` is :data:`MASK_BAND`: EE's mask itself, fetched as
    one more band (EE's GeoTIFFs carry no mask), 1 where every band is valid (a GDAL mask is
    one per dataset), 0 where any is masked (a mask of exactly 0, as ``unmask`` fills).
    """
    data_ids = list(band_ids[:-1] if mask_band else band_ids)
    selected = image.select(data_ids)
    filled = selected.unmask(nodata, False)
    if mask_band:
        valid = selected.mask().reduce(ee.Reducer.min()).gt(0).rename(MASK_BAND)
        filled = filled.addBands(valid)
    cast: ee.Image = getattr(filled, CASTS[dtype])()
    return cast


def prepared_image(spec: JobSpec) -> ee.Image:
    """The image a job's tiles are cut from, read back from its stored expression."""
    return prepare_image(
        deserialize(spec.expression),
        spec.band_ids,
        spec.dtype,
        spec.nodata,
        mask_band=bool(spec.extra.get("mask_band")),
    )


def set_workload_tag(tag: str | None) -> None:
    """Label the client's requests with ``tag`` (Cloud Monitoring shows EE's cost per tag);
    None clears it."""
    ee.data.setWorkloadTag(tag or "")


def workload_tag_now() -> str:
    """The tag the client's requests carry now ('' for none)."""
    return str(ee.data.getWorkloadTag() or "")


def download_url(image: ee.Image, grid: Grid) -> str:
    """Make a download URL for one tile's exact grid (blocking: run in a thread)."""
    params = {
        "crs": grid.crs,
        "crs_transform": list(grid.transform),
        "dimensions": [grid.width, grid.height],
        "format": "GEO_TIFF",
    }
    try:
        return image.getDownloadURL(params)
    except ee.EEException as exc:
        raise FetchError(ErrorKind.EE, str(exc), status=_status_of(exc)) from exc
    except TimeoutError as exc:
        raise FetchError(ErrorKind.TIMEOUT, f"Earth Engine API call timed out: {exc}") from exc
    except (ConnectionError, OSError) as exc:
        raise FetchError(ErrorKind.CONNECT, f"Earth Engine API unreachable: {exc}") from exc


def collection_features(collection: ee.ImageCollection) -> list[dict[str, Any]]:
    """The images of a collection as EE describes them (one getInfo call)."""
    with _user_call(EarthEngineError, "could not list the collection", "to list the collection"):
        info = collection.getInfo()
    return list((info or {}).get("features") or [])


def sample_url(image: ee.Image, params: dict[str, Any]) -> str:
    """A download URL for a small sample of an image (a preview's stretch), blocking."""
    refused = "could not sample the image for the stretch"
    with _user_call(PreviewError, refused, "for the preview", advice="; pass --min and --max"):
        return str(image.getDownloadURL(params))


def thumbnail_url(image: ee.Image, params: dict[str, Any]) -> str:
    """A PNG/JPEG thumbnail URL (``getThumbURL``: thumbnails create, blocking)."""
    with _user_call(PreviewError, "could not make the preview", "for the preview"):
        return str(image.getThumbURL(params))


@contextmanager
def _user_call(
    refusal: Callable[[str], UserError], refused: str, purpose: str, *, advice: str = ""
) -> Iterator[None]:
    """One line for an EE call a user waits on: EE's refusal as ``refusal`` ("Earth Engine
    <refused>: <why><advice>"), an unreachable EE with what to check."""
    try:
        yield
    except ee.EEException as exc:
        raise refusal(f"Earth Engine {refused}: {exc}{advice}") from exc
    except (ConnectionError, OSError) as exc:
        raise EarthEngineUnreachable(
            f"could not reach Earth Engine {purpose}: {exc}. Check the network and "
            "the proxy (--proxy or HTTPS_PROXY)"
        ) from exc


def compute_pixels_request(
    image: ee.Image, grid: Grid, project: str | None, base_url: str
) -> tuple[str, dict[str, Any]]:
    """URL and JSON body of an image:computePixels call for one tile's exact grid."""
    a, b, c, d, e, f = grid.transform
    body = {
        "expression": ee.serializer.encode(image, for_cloud_api=True),
        "fileFormat": "GEO_TIFF",
        "grid": {
            "dimensions": {"width": grid.width, "height": grid.height},
            "affineTransform": {
                "scaleX": a,
                "shearX": b,
                "translateX": c,
                "shearY": d,
                "scaleY": e,
                "translateY": f,
            },
            "crsCode": grid.crs,
        },
    }
    tag = workload_tag_now()
    if tag:  # the client adds it to its own calls; this body is eefetch's
        body["workloadTag"] = tag
    name = project or ee.data._get_state().cloud_api_user_project
    return f"{base_url.rstrip('/')}/v1/projects/{name}/image:computePixels", body


def auth_headers() -> dict[str, str]:
    """Authorization for calls eefetch makes itself (blocking: may refresh a token)."""
    credentials = ee.data._get_state().credentials
    if credentials is None:
        return {}
    import google.auth.transport.requests

    if not credentials.valid:
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]  # google-auth is untyped
    return {"Authorization": f"Bearer {credentials.token}"}


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an EEException (the client drops it; the context keeps it)."""
    cause = exc.__cause__ or exc.__context__
    resp = getattr(cause, "resp", None)
    status = getattr(resp, "status", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None
