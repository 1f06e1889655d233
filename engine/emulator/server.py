"""The HTTP half of the Earth Engine emulator: the REST routes the official client calls.

The official `earthengine-api` client talks to it unchanged through
`ee.Initialize(credentials=None, project=P, url=EMULATOR_URL)`. The server answers with EE's
shapes, limits and error texts, shapes latency and bandwidth, and injects seeded faults, so the
engine can be tested against everything the real service does to it. Pixels and expressions
come from the model half (`engine.emulator.evaluate`), reached only through `Evaluator`;
tile bodies are rendered and encoded off the event loop (`engine.emulator.workers`), so the
loop only paces answers and the server model, not the emulator's CPU, limits a client.

Where limits apply: size, band and side limits are checked when a download id is created (as
real EE does in `getDownloadURL`) and at `computePixels`; the memory budget is checked when
pixels are computed (`getPixels`, `computePixels`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import importlib
import importlib.resources
import json
import logging
import signal
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from engine import imaging
from engine.emulator import encode
from engine.emulator.config import EmulatorConfig
from engine.emulator.faults import Fault, FaultModel, digest
from engine.emulator.render import (
    ImageFacts,
    PixelGrid,
    TileJob,
    expression_text,
    picture_levels,
)
from engine.emulator.stats import EmulatorStats, tile_key
from engine.emulator.workers import ClientGone, Renderer

log = logging.getLogger(__name__)

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FAULT_MESSAGES = {
    500: "An internal error has occurred.",
    502: "Bad Gateway: the upstream server returned an invalid response.",
    503: "The service is currently unavailable.",
    504: "Deadline exceeded.",
}
QUOTA_MESSAGE = (
    "Too Many Requests: Request was rejected because the request rate or concurrency limit "
    "was exceeded."
)
MEMORY_MESSAGE = "User memory limit exceeded."
UNBOUNDED_MESSAGE = (
    "Unable to compute pixels for an unbounded image. Specify a region, or crs_transform and "
    "dimensions."
)
NOT_FOUND_MESSAGE = "Requested entity was not found."
CAPTIVE_PORTAL_HTML = (
    b"<!DOCTYPE html><html><head><title>Network login</title></head><body>"
    b"<h1>Welcome to the guest network</h1><p>Please sign in to continue.</p>"
    b"<form method='post' action='/login'><input name='user'/><button>Sign in</button></form>"
    b"</body></html>"
)
CONTENT_TYPES = {**encode.CONTENT_TYPES, "PNG": "image/png", "JPEG": "image/jpeg"}
EXTENSIONS = {
    "NPY": "npy",
    "ZIPPED_GEO_TIFF": "zip",
    "ZIPPED_GEO_TIFF_PER_BAND": "zip",
    "PNG": "png",
    "JPEG": "jpg",
}
# API calls that count against the per-project concurrency quota.
QUOTA_ROUTES = frozenset({"value:compute", "thumbnails:create", "getPixels", "computePixels"})
# Facts of evaluated images kept per server (never the images: see engine.emulator.render),
# so a tile asked for again is not evaluated again. Small values, bounded in number.
FACTS_KEPT = 16384
# Set on a request whose connection was dropped before any status line (stats status "0").
NO_RESPONSE = web.RequestKey("eefetch_emulator_no_response", bool)


class ApiError(Exception):
    """An answer in EE's JSON error envelope."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """EE's envelope `{"error": {"code", "message", "status"}}` (never a 401: see module doc)."""
    if code == 401:
        code = 403
    body = {
        "error": {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    }
    return web.json_response(body, status=code, headers=headers)


@dataclass(frozen=True)
class Evaluator:
    """The model half: evaluate an expression, describe a value, and the error it raises."""

    evaluate: Callable[[dict[str, Any]], Any]
    to_info: Callable[[Any], Any]
    error: type[Exception]


def default_evaluator() -> Evaluator:
    """The bundled model (imported late so the server loads without it)."""
    module = importlib.import_module("engine.emulator.evaluate")
    return Evaluator(module.evaluate, module.to_info, module.EvaluationError)


@dataclass
class Download:
    """A download id: what `thumbnails.create` stored for a later `getPixels`."""

    name: str
    expression: str
    work: int | None
    grid: PixelGrid
    file_format: str
    band_ids: list[str]
    dtypes: list[np.dtype]
    prefix: str
    created: float
    identity: str
    expired: bool = False
    visualization: dict[str, Any] | None = None


class Pacer:
    """A bandwidth cap as a virtual clock: each reservation books its transmit time."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._next = 0.0

    def reserve(self, nbytes: int) -> float:
        """Book `nbytes`; return how long to wait before they may be considered sent."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + nbytes / self._rate
        return self._next - now


@dataclass
class EmulatorState:
    """Everything one server instance owns (no module-level state)."""

    config: EmulatorConfig
    given_evaluator: Evaluator | None = None
    stats: EmulatorStats = field(default_factory=EmulatorStats)
    downloads: dict[str, Download] = field(default_factory=dict)
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    clock: Callable[[], float] = time.monotonic
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    renderer: Renderer | None = None
    total_pacer: Pacer | None = None
    discovery: dict[str, Any] | None = None
    algorithms: bytes | None = None
    facts: OrderedDict[tuple[str, PixelGrid | None], ImageFacts] = field(
        default_factory=OrderedDict
    )

    @property
    def evaluator(self) -> Evaluator:
        """The model, loaded on first use so routes that need none work without it."""
        if self.given_evaluator is None:
            self.given_evaluator = default_evaluator()
        return self.given_evaluator

    def next_attempt(self, endpoint: str, identity: str) -> int:
        """0-based attempt number of this identity at this endpoint."""
        key = (endpoint, identity)
        attempt = self.attempts[key]
        self.attempts[key] += 1
        return attempt


STATE_KEY = web.AppKey("eefetch_emulator_state", EmulatorState)


def _state(request: web.Request) -> EmulatorState:
    """This server's state, kept on the app so several servers can share a process."""
    return request.app[STATE_KEY]


async def _run(state: EmulatorState, func: Callable[..., Any], *args: Any) -> Any:
    """Run blocking model work off the loop so concurrency and stalls stay real."""
    assert state.renderer is not None, "the app has not started"
    return await state.renderer.run(func, *args)


async def _describe(state: EmulatorState, expression: str, grid: PixelGrid | None) -> ImageFacts:
    """The facts of an expression's image on `grid`, evaluated once per (text, grid)."""
    key = (hashlib.sha256(expression.encode()).hexdigest(), grid)
    facts = state.facts.get(key)
    if facts is not None:
        state.facts.move_to_end(key)
        return facts
    assert state.renderer is not None, "the app has not started"
    facts = await state.renderer.describe(expression, grid)
    state.facts[key] = facts
    while len(state.facts) > FACTS_KEPT:
        state.facts.popitem(last=False)
    return facts


async def _bounded(
    state: EmulatorState, expression: str, grid: PixelGrid | None
) -> tuple[ImageFacts, PixelGrid]:
    """The facts of an image that pixels can be asked of, with its grid; EE's 400 for an
    expression it cannot evaluate or an image without bounds (pass a region)."""
    try:
        facts = await _describe(state, expression, grid)
    except state.evaluator.error as exc:
        raise ApiError(400, str(exc)) from None
    if facts.grid is None:
        raise ApiError(400, UNBOUNDED_MESSAGE)
    return facts, facts.grid


async def _expression_body(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body of a call that computes an image, and its expression (EE's 400 without)."""
    body = await _json_body(request)
    expression = body.get("expression")
    if not isinstance(expression, dict):
        raise ApiError(400, "Invalid argument: 'expression' is required.")
    return body, expression


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request body as an object, or EE's 400 for a malformed payload."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.")
    return body


# ----------------------------------------------------------------------------- limits


def check_size(
    config: EmulatorConfig, width: int, height: int, dtypes: Sequence[np.dtype], max_side: int
) -> None:
    """EE's grid, band and byte limits, with EE's texts."""
    if width <= 0 or height <= 0:
        raise ApiError(400, f"Pixel grid dimensions ({width}x{height}) must be positive.")
    if not config.limits_on:
        return
    if width > max_side or height > max_side:
        raise ApiError(
            400,
            f"Pixel grid dimensions ({width}x{height}) must be less than or equal to {max_side}.",
        )
    if len(dtypes) > config.max_bands:
        raise ApiError(
            400,
            f"Number of bands ({len(dtypes)}) must be less than or equal to {config.max_bands}.",
        )
    size = width * height * sum(np.dtype(d).itemsize + 1 for d in dtypes)
    if size > config.max_request_bytes:
        raise ApiError(
            400,
            f"Total request size ({size} bytes) must be less than or equal to "
            f"{config.max_request_bytes} bytes.",
        )


def check_memory(config: EmulatorConfig, work: int | None) -> None:
    """EE's memory error for a computation too heavy for the configured budget."""
    budget = config.memory_budget
    if config.limits_on and budget is not None and work is not None and work > budget:
        raise ApiError(400, MEMORY_MESSAGE)


def select_bands(
    facts: ImageFacts, band_ids: Sequence[str] | None
) -> tuple[list[str], list[np.dtype]]:
    """The requested bands (all when none are named) and their types."""
    bands = {band_id: np.dtype(dtype) for band_id, dtype in facts.bands}
    if not band_ids:
        return list(bands), list(bands.values())
    for band_id in band_ids:
        if band_id not in bands:
            raise ApiError(400, f"Image.select: Pattern '{band_id}' did not match any bands.")
    return list(band_ids), [bands[b] for b in band_ids]


# ----------------------------------------------------------------------------- faults


async def _shape_latency(state: EmulatorState, started: float, grid: PixelGrid) -> None:
    """Hold the answer until the modelled compute time (real compute time included)."""
    config = state.config
    if not config.shaping_on:
        return
    target = config.latency_fixed_s + config.latency_per_mpix_s * grid.width * grid.height / 1e6
    await _sleep(state, target - (state.clock() - started))


async def _sleep(state: EmulatorState, seconds: float) -> None:
    """Sleep, waking early when the server is closing."""
    if seconds <= 0:
        return
    if seconds < 0.5:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.closing.wait(), timeout=seconds)


def _status_fault(fault: Fault, config: EmulatorConfig) -> ApiError | None:
    """The envelope for faults that are plain error answers, else None."""
    if fault.kind == "rate_limit_retry_after":
        return ApiError(429, QUOTA_MESSAGE, {"Retry-After": str(config.retry_after_s)})
    if fault.kind == "rate_limit":
        return ApiError(429, QUOTA_MESSAGE)
    if fault.kind.startswith("http_"):
        code = int(fault.kind[5:])
        return ApiError(code, FAULT_MESSAGES[code])
    return None


async def _api_fault(state: EmulatorState, endpoint: str, identity: str) -> None:
    """The small rate of 429/5xx on value:compute and thumbnails create."""
    attempt = state.next_attempt(endpoint, identity)
    fault = FaultModel(state.config).decide(endpoint, identity, attempt, tile=False)
    if fault is not None:
        error = _status_fault(fault, state.config)
        if error is not None:
            state.stats.record_fault(fault.kind)
            raise error


def _reset_connection(request: web.Request) -> None:
    """Abort with a TCP RST (linger 0) rather than a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _client_gone(request: web.Request) -> bool:
    """Whether the client hung up (a stalled answer then frees its quota slot)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def send_tile(
    request: web.Request,
    state: EmulatorState,
    body: bytes,
    content_type: str,
    *,
    fault: Fault | None,
    key: str,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Stream a tile body in chunks through the bandwidth caps, applying a body fault."""
    config = state.config
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type
    response.content_length = len(body)
    try:
        await response.prepare(request)
    except (ConnectionResetError, ClientConnectionResetError):
        # The client hung up while the answer was being computed (a timeout, Ctrl-C).
        state.stats.client_aborts += 1
        return response

    kind = fault.kind if fault is not None else None
    fraction = fault.fraction if fault is not None else 0.0
    limit = len(body)
    if kind in ("reset", "short_body"):
        limit = int(len(body) * (0.1 + 0.8 * fraction))
    elif kind == "stall":
        limit = 0 if fraction < 0.5 else int(len(body) * (fraction - 0.5) * 1.8)
    conn_rate = config.conn_bandwidth if config.shaping_on else None
    if kind == "trickle":
        conn_rate = min(conn_rate or config.trickle_bandwidth, config.trickle_bandwidth)
    conn_pacer = Pacer(conn_rate, state.clock) if conn_rate else None
    total_pacer = state.total_pacer if config.shaping_on else None

    paced = conn_pacer is not None or total_pacer is not None
    chunk_size = config.chunk_size if paced or kind else max(config.chunk_size, 1 << 20)
    if kind == "trickle":
        # Several small writes a second: slow, yet never silent long enough to look stalled.
        chunk_size = max(256, min(chunk_size, int(config.trickle_bandwidth / 4)))
    view = memoryview(body)
    sent = 0
    try:
        while sent < limit:
            chunk = view[sent : min(sent + chunk_size, limit)]
            wait = 0.0
            for pacer in (conn_pacer, total_pacer):
                if pacer is not None:
                    wait = max(wait, pacer.reserve(len(chunk)))
            await _sleep(state, wait)
            if state.closing.is_set():
                _reset_connection(request)
                return response
            await response.write(chunk)
            sent += len(chunk)
            state.stats.record_bytes(len(chunk))
        if kind in (None, "trickle"):
            await response.write_eof()
            state.stats.record_tile(key)
            return response
        if kind == "reset":
            await asyncio.sleep(0.05)
            _reset_connection(request)
        elif kind == "short_body":
            if request.transport is not None:
                request.transport.close()
        elif kind == "stall":
            deadline = state.clock() + config.stall_s
            while state.clock() < deadline and not _client_gone(request):
                await _sleep(state, min(0.1, deadline - state.clock()))
                if state.closing.is_set():
                    break
            _reset_connection(request)
    except ConnectionError:
        state.stats.client_aborts += 1
    return response


# ----------------------------------------------------------------------------- routes


def _client_file(name: str) -> bytes:
    """A file the earthengine-api package ships (importing `ee` takes a while: off the loop)."""
    return importlib.resources.files("ee").joinpath("tests", name).read_bytes()


async def discovery(request: web.Request) -> web.Response:
    """The client's discovery document, pointed back at this server."""
    state = _state(request)
    if state.discovery is None:
        raw = await _run(state, _client_file, "cloud_api_discovery_document.json")
        state.discovery = _with_workload_tags(
            json.loads(raw.decode("utf-8").replace("v1alpha", "v1"))
        )
    root = f"{request.scheme}://{request.host}/"
    document = {**state.discovery, "rootUrl": root, "baseUrl": root, "servicePath": ""}
    document.pop("mtlsRootUrl", None)
    return web.json_response(document)


WORKLOAD_TAG_PARAMETER = {
    "type": "string",
    "location": "query",
    "description": "User supplied tag to track this computation (the client's workload tag).",
}


def _with_workload_tags(document: dict[str, Any]) -> dict[str, Any]:
    """The client's bundled discovery document predates ``workloadTag``; the service
    declares it on the calls that create work, and the client sends it as a query
    parameter of ``thumbnails.create`` (an undeclared one fails in the client)."""

    def walk(resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for name, method in resource.get("methods", {}).items():
                if name in ("create", "compute", "computePixels"):
                    method.setdefault("parameters", {})["workloadTag"] = WORKLOAD_TAG_PARAMETER
            walk(resource.get("resources", {}))

    walk(document.get("resources", {}))
    return document


async def algorithms(request: web.Request) -> web.Response:
    """The algorithm list the client generates its Image/Collection methods from."""
    state = _state(request)
    if state.algorithms is None:
        state.algorithms = await _run(state, _client_file, "algorithms.json")
    return web.Response(body=state.algorithms, content_type="application/json")


async def value_compute(request: web.Request) -> web.Response:
    """`getInfo`: evaluate and describe."""
    state = _state(request)
    body, expression = await _expression_body(request)
    state.stats.record_workload_tag("value:compute", body.get("workloadTag"))
    await _api_fault(state, "value:compute", digest(expression))
    started = state.clock()

    def compute() -> Any:
        return state.evaluator.to_info(state.evaluator.evaluate(expression))

    try:
        result = await _run(state, compute)
    except state.evaluator.error as exc:
        raise ApiError(400, str(exc)) from None
    if state.config.shaping_on:
        await _sleep(state, state.config.api_latency_s - (state.clock() - started))
    return web.json_response({"result": result})


async def thumbnails_create(request: web.Request) -> web.Response:
    """Create a download id; the grid and limits are fixed now, the pixels at `getPixels`."""
    state = _state(request)
    project = request.match_info["project"]
    body, expression = await _expression_body(request)
    file_format = str(body.get("fileFormat") or "ZIPPED_GEO_TIFF_PER_BAND")
    if file_format == "AUTO_JPEG_PNG":
        file_format = "PNG"
    if file_format not in (*encode.FORMATS_DOWNLOAD, *imaging.PICTURE_FORMATS):
        raise ApiError(400, f"Unsupported fileFormat for this emulator: {file_format}.")
    visualization = body.get("visualizationOptions") or None
    if visualization is not None and not isinstance(visualization, dict):
        raise ApiError(400, "Invalid argument: 'visualizationOptions' must be an object.")
    requested = body.get("bandIds") or None
    state.stats.record_workload_tag("thumbnails:create", request.query.get("workloadTag"))
    await _api_fault(state, "thumbnails:create", digest(body))
    started = state.clock()
    text = expression_text(expression)
    facts, grid = await _bounded(state, text, None)
    band_ids, dtypes = select_bands(facts, requested)
    if file_format in imaging.PICTURE_FORMATS:
        check_picture(band_ids, dtypes, visualization)
    check_size(state.config, grid.width, grid.height, dtypes, state.config.max_download_side)
    _prune_downloads(state)
    name = f"projects/{project}/thumbnails/{uuid.uuid4().hex}"
    identity = digest([expression, file_format, band_ids, grid])
    state.downloads[name] = Download(
        name=name,
        expression=text,
        work=facts.work,
        grid=grid,
        file_format=file_format,
        band_ids=band_ids,
        dtypes=dtypes,
        prefix=str(body.get("filenamePrefix") or "download"),
        created=state.clock(),
        identity=identity,
        visualization=visualization,
    )
    if state.config.shaping_on:
        await _sleep(state, state.config.api_latency_s - (state.clock() - started))
    return web.json_response({"name": name})


def _prune_downloads(state: EmulatorState) -> None:
    """Forget ids past their TTL (they answer the same 404 either way) to bound memory."""
    ttl = state.config.download_ttl_s
    if not state.config.limits_on or ttl is None or len(state.downloads) % 256:
        return
    now = state.clock()
    for name in [n for n, d in state.downloads.items() if now - d.created > ttl]:
        del state.downloads[name]


def check_picture(
    band_ids: Sequence[str], dtypes: Sequence[np.dtype], visualization: dict[str, Any] | None
) -> None:
    """A PNG or JPEG thumbnail shows 1 or 3 bands of bytes, or bands stretched by ranges."""
    if len(band_ids) not in (1, 3):
        raise ApiError(
            400,
            f"Thumbnails show 1 or 3 bands, the image has {len(band_ids)}. "
            "Pass visualization parameters (bands, min, max) to getThumbURL.",
        )
    if visualization is None and any(np.dtype(d) != np.uint8 for d in dtypes):
        raise ApiError(
            400,
            "Thumbnails of bands that are not 8-bit need visualization parameters "
            "(min and max, or a palette).",
        )
    try:
        picture_levels([np.zeros((1, 1))] * len(band_ids), visualization)
    except ValueError as exc:
        raise ApiError(400, f"Invalid visualizationOptions: {exc}.") from None


async def _serve_pixels(
    request: web.Request,
    state: EmulatorState,
    endpoint: str,
    identity: str,
    job: TileJob,
    work: int | None,
    *,
    on_expired: Callable[[], None] | None = None,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Fault decision, memory check, render (off the loop), latency, then the streamed body."""
    grid = job.grid
    started = state.clock()
    attempt = state.next_attempt(endpoint, identity)
    fault = FaultModel(state.config).decide(endpoint, identity, attempt, tile=True)
    if fault is not None:
        state.stats.record_fault(fault.kind)
        error = _status_fault(fault, state.config)
        if error is not None:
            await _sleep(state, state.config.api_latency_s if state.config.shaping_on else 0)
            raise error
        if fault.kind == "expired" and on_expired is not None:
            on_expired()
            raise ApiError(404, NOT_FOUND_MESSAGE)
        if fault.kind == "reset" and fault.fraction < 0.25:
            # A quarter of resets hit before any response: the client sees a dropped connection.
            await _shape_latency(state, started, grid)
            request[NO_RESPONSE] = True
            _reset_connection(request)
            return web.Response(status=200)
        if fault.kind == "html":
            await _shape_latency(state, started, grid)
            return web.Response(body=CAPTIVE_PORTAL_HTML, content_type="text/html")
    try:
        check_memory(state.config, work)
        assert state.renderer is not None, "the app has not started"
        body = await state.renderer.tile(job, wanted=lambda: not _client_gone(request))
    except state.evaluator.error as exc:
        raise ApiError(400, str(exc)) from None
    except ClientGone:
        state.stats.client_aborts += 1
        request[NO_RESPONSE] = True
        return web.Response(status=200)
    await _shape_latency(state, started, grid)
    key = tile_key(grid.crs, grid.transform, grid.width, grid.height, list(job.band_ids))
    return await send_tile(
        request,
        state,
        body,
        CONTENT_TYPES[job.file_format],
        fault=fault,
        key=key,
        headers=headers,
    )


async def get_pixels(request: web.Request) -> web.StreamResponse:
    """The download URL: the stored expression rendered on its bounded grid."""
    state = _state(request)
    name = f"projects/{request.match_info['project']}/thumbnails/{request.match_info['tid']}"
    download = state.downloads.get(name)
    if download is None:
        raise ApiError(404, NOT_FOUND_MESSAGE)
    ttl = state.config.download_ttl_s
    if state.config.limits_on and ttl is not None and state.clock() - download.created > ttl:
        download.expired = True
    if download.expired:
        raise ApiError(404, NOT_FOUND_MESSAGE)

    def expire() -> None:
        download.expired = True

    extension = EXTENSIONS.get(download.file_format, "tif")
    job = TileJob(
        download.expression,
        download.grid,
        tuple(download.band_ids),
        download.file_format,
        download.prefix,
        download.visualization,
        state.config.tiff_compress,
    )
    return await _serve_pixels(
        request,
        state,
        "getPixels",
        download.identity,
        job,
        download.work,
        on_expired=expire,
        headers={"Content-Disposition": f"attachment; filename={download.prefix}.{extension}"},
    )


def _grid_from_body(grid: Any) -> PixelGrid:
    """A `PixelGrid` message of the REST API (dimensions, affineTransform, crsCode)."""
    if not isinstance(grid, dict):
        raise ApiError(400, "Invalid argument: 'grid' must be an object.")
    dims = grid.get("dimensions") or {}
    affine = grid.get("affineTransform") or {}
    crs = grid.get("crsCode")
    if not crs:
        raise ApiError(400, "Invalid argument: grid.crsCode is required by this emulator.")
    try:
        transform = tuple(
            float(affine.get(k, 0.0))
            for k in ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
        )
        return PixelGrid(str(crs), transform, int(dims.get("width", 0)), int(dims.get("height", 0)))
    except (TypeError, ValueError, AttributeError):
        raise ApiError(400, "Invalid argument: malformed grid.") from None


async def compute_pixels(request: web.Request) -> web.StreamResponse:
    """`image:computePixels`: an expression on an explicit grid, answered as raw bytes."""
    state = _state(request)
    body, expression = await _expression_body(request)
    file_format = str(body.get("fileFormat") or "GEO_TIFF")
    state.stats.record_workload_tag("computePixels", body.get("workloadTag"))
    if file_format not in encode.FORMATS_COMPUTE:
        raise ApiError(400, f"Unsupported fileFormat for this emulator: {file_format}.")
    given = _grid_from_body(body["grid"]) if "grid" in body else None
    text = expression_text(expression)
    facts, grid = await _bounded(state, text, given)
    band_ids, dtypes = select_bands(facts, body.get("bandIds") or None)
    check_size(state.config, grid.width, grid.height, dtypes, state.config.max_compute_side)
    identity = digest([expression, file_format, band_ids, grid])
    job = TileJob(text, grid, tuple(band_ids), file_format, compress=state.config.tiff_compress)
    return await _serve_pixels(request, state, "computePixels", identity, job, facts.work)


async def stats_route(request: web.Request) -> web.Response:
    """The counters as JSON, for tests and benchmarks that only have the URL."""
    return web.json_response(_state(request).stats.snapshot())


async def reset_route(request: web.Request) -> web.Response:
    """Zero the counters and the fault attempt counts: a test starts from a known state."""
    state = _state(request)
    state.stats.reset()
    state.attempts.clear()
    return web.json_response({})


# ----------------------------------------------------------------------------- app


@web.middleware
async def envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Quota, accounting, and EE's error envelope for every failure (unknown paths too)."""
    state = _state(request)
    route = request.match_info.route.name or "unknown"
    project = request.match_info.get("project", "")
    counted = route in QUOTA_ROUTES
    try:
        quota = state.config.max_concurrent if state.config.limits_on else None
        if counted and not state.stats.admit(project, quota):
            raise ApiError(429, QUOTA_MESSAGE)
        try:
            response = await handler(request)
        finally:
            if counted:
                state.stats.leave(project)
    except ApiError as exc:
        response = error_response(exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        message = NOT_FOUND_MESSAGE if exc.status == 404 else exc.reason
        response = error_response(exc.status, message)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("emulator route %s failed", route)
        response = error_response(500, FAULT_MESSAGES[500])
    if not route.startswith("_emulator"):
        state.stats.record_request(route, 0 if request.get(NO_RESPONSE, False) else response.status)
    return response


async def watch_loop_lag(state: EmulatorState, period: float = 0.02) -> None:
    """Measure how late the loop wakes a short timer, for as long as the server runs."""
    while not state.closing.is_set():
        before = state.clock()
        await asyncio.sleep(period)
        state.stats.record_loop_lag(max(0.0, state.clock() - before - period))


def create_app(
    config: EmulatorConfig | None = None, *, evaluator: Evaluator | None = None
) -> web.Application:
    """The aiohttp application; `evaluator` defaults to the bundled model."""
    config = config or EmulatorConfig()
    state = EmulatorState(config=config, given_evaluator=evaluator)
    if config.total_bandwidth:
        state.total_pacer = Pacer(config.total_bandwidth, state.clock)
    app = web.Application(middlewares=[envelope_middleware], client_max_size=256 * 1024 * 1024)
    app[STATE_KEY] = state
    p = "/v1/projects/{project}"
    app.router.add_get("/$discovery/rest", discovery, name="discovery")
    app.router.add_get(p + "/algorithms", algorithms, name="algorithms")
    app.router.add_post(p + "/value:compute", value_compute, name="value:compute")
    app.router.add_post(p + "/thumbnails", thumbnails_create, name="thumbnails:create")
    app.router.add_get(p + "/thumbnails/{tid:[^/:]+}:getPixels", get_pixels, name="getPixels")
    app.router.add_post(p + "/image:computePixels", compute_pixels, name="computePixels")
    app.router.add_get("/_emulator/stats", stats_route, name="_emulator_stats")
    app.router.add_post("/_emulator/reset", reset_route, name="_emulator_reset")

    renderer = Renderer(
        config,
        state.stats,
        lambda expression: state.evaluator.evaluate(expression),
        bundled_model=evaluator is None,
    )
    watchers: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        renderer.start()
        state.renderer = renderer
        watchers.append(asyncio.create_task(watch_loop_lag(state)))

    async def on_cleanup(app: web.Application) -> None:
        for task in watchers:
            task.cancel()
        renderer.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


# ----------------------------------------------------------------------------- running


@dataclass
class RunningEmulator:
    """A started server on the current loop; `url` has no trailing slash."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    async def close(self) -> None:
        """Wake stalled answers, then stop serving."""
        self.state.closing.set()
        await self.runner.cleanup()


async def start_emulator(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    evaluator: Evaluator | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningEmulator:
    """Start serving on host:port (0 picks a free port) on the running loop.

    With `ssl_context` it serves HTTPS, as Earth Engine does, so clients and proxies take the
    path they take in production (certificate checks, CONNECT tunnels).
    """
    app = create_app(config, evaluator=evaluator)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    scheme = "https" if ssl_context is not None else "http"
    return RunningEmulator(url=f"{scheme}://{shown}:{bound[1]}", app=app, runner=runner)


class EmulatorThread:
    """The emulator on its own loop in a daemon thread, for synchronous tests and scripts."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        evaluator: Evaluator | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._config = config or EmulatorConfig()
        self._host = host
        self._port = port
        self._evaluator = evaluator
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: RunningEmulator | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self._running is None:
            raise RuntimeError("emulator not started")
        return self._running.url

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def start(self) -> EmulatorThread:
        """Start the thread and wait until the server listens."""
        self._thread = threading.Thread(target=self._main, name="ee-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("emulator failed to start") from self._error
        if self._running is None:
            raise RuntimeError("emulator did not start in time")
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._running = loop.run_until_complete(
                start_emulator(
                    self._config,
                    self._host,
                    self._port,
                    evaluator=self._evaluator,
                    ssl_context=self._ssl_context,
                )
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._running.close())
            loop.close()

    def _call(self, func: Callable[[], Any]) -> Any:
        """Run `func` on the server's loop and wait for its result."""
        if self._loop is None:
            raise RuntimeError("emulator not started")

        async def wrapper() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the server's counters."""
        assert self._running is not None
        running = self._running
        return self._call(running.state.stats.snapshot)

    def reset_stats(self) -> None:
        """Zero the counters and the fault attempt counts."""
        assert self._running is not None
        state = self._running.state

        def reset() -> None:
            state.stats.reset()
            state.attempts.clear()

        self._call(reset)

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self._loop is None or self._thread is None:
            return
        if self._running is not None:
            self._loop.call_soon_threadsafe(self._running.state.closing.set)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._loop = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settle_heap(state: EmulatorState) -> None:
    """In a process that only serves: load the model now, then freeze every object alive (the
    modules, the catalog) out of the garbage collector's reach. A full collection stops the
    event loop for as long as it walks the heap; these objects live for good anyway."""
    if state.given_evaluator is None:
        state.given_evaluator = default_evaluator()
    gc.collect()
    gc.freeze()


def serve_forever(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; the base URL is the first line on stdout."""

    async def main() -> None:
        running = await start_emulator(config, host, port, ssl_context=ssl_context)
        settle_heap(running.state)
        print(running.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await running.close()

    asyncio.run(main())
