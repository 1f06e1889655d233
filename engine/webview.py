"""``eefetch serve``: a live, read-only web page of one job or of the jobs under a folder.

An aiohttp server with three JSON/PNG endpoints and static files (plain HTML, CSS and a little
JS from ``engine/web``, no build step). Every request reads the state files afresh through
``engine.snapshot`` (read-only, one short transaction, never the job's lock), so the page
works while jobs run and never slows them. Nothing it sends holds a download URL or a token
(errors are passed through ``jobstats.redact``). It only answers GET, and only to requests
addressed to the host it listens on (a web page elsewhere cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from engine import inventory, jobmap, jobstats
from engine.snapshot import EmptyState, read_facts, read_snapshot
from state import TILE_STATUSES, StateError
from state.errors import UserError

READ_TIMEOUT_S = 30.0
MAP_SIDE = 900
MAP_CACHE_SIZE = 16
STATIC_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class ServeError(UserError):
    """The page cannot be served; str() is one line: what is wrong, what to do."""


@dataclass(frozen=True, slots=True)
class Jobs:
    """The state files a page shows: one file, or every ``*.eefetch.db`` under a folder.

    A folder is searched again on every request, so jobs started later appear. A job's id is
    its path relative to the folder: only ids found there are ever opened.
    """

    root: Path

    @property
    def is_folder(self) -> bool:
        return self.root.is_dir()

    def paths(self) -> dict[str, Path]:
        if not self.is_folder:
            return {self.root.name: self.root}
        return {
            p.relative_to(self.root).as_posix(): p for p in inventory.find_state_files(self.root)
        }


@dataclass
class MapCache:
    """Recent map pictures by state file, kept while the file (and its WAL) is unchanged."""

    size: int = MAP_CACHE_SIZE
    entries: OrderedDict[Path, tuple[str, bytes]] = field(default_factory=OrderedDict)

    def get(self, path: Path, version: str) -> bytes | None:
        found = self.entries.get(path)
        if found is None or found[0] != version:
            return None
        self.entries.move_to_end(path)
        return found[1]

    def put(self, path: Path, version: str, png: bytes) -> None:
        self.entries[path] = (version, png)
        self.entries.move_to_end(path)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def state_version(path: Path) -> str:
    """Changes whenever the state file or its WAL is written, or its job starts or stops."""
    parts = [str(inventory.is_running(path))]
    for each in (path, Path(f"{path}-wal"), Path(f"{path}.lock")):
        try:
            info = each.stat()
            parts.append(f"{info.st_mtime_ns}:{info.st_size}")
        except OSError:
            parts.append("-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def make_app(root: Path, allowed_hosts: Collection[str] | None = None) -> web.Application:
    """The page's application. With ``allowed_hosts`` (host:port values), a request whose
    Host header is not one of them is refused; the caller may fill it once it knows its port."""
    jobs = Jobs(root)
    maps = MapCache()

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if allowed_hosts is not None and request.host not in allowed_hosts:
            raise web.HTTPMisdirectedRequest(text="this page answers only its own address")
        response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    async def static(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in STATIC_TYPES:
            raise web.HTTPNotFound()
        body = resources.files("engine").joinpath("web", name).read_bytes()
        return web.Response(body=body, content_type=STATIC_TYPES[name], charset="utf-8")

    async def job_list(request: web.Request) -> web.Response:
        found = jobs.paths()
        rows = await asyncio.gather(
            *(_read(_summary, ident, path) for ident, path in found.items())
        )
        return web.json_response(
            {
                "root": str(root.resolve()),
                "folder": jobs.is_folder,
                "jobs": rows,
                "states": list(TILE_STATUSES),
                "colours": {s: _hex(c) for s, c in jobmap.STATE_COLOURS.items()},
                "region_colour": _hex(jobmap.REGION_COLOUR),
            }
        )

    async def job_details(request: web.Request) -> web.Response:
        ident, path = _chosen(request, jobs)
        return web.json_response(await _read(_details, ident, path))

    async def job_map(request: web.Request) -> web.Response:
        _, path = _chosen(request, jobs)
        version = state_version(path)
        png = maps.get(path, version)
        if png is None:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    png = await asyncio.to_thread(_map_png, path)
            except EmptyState:
                raise web.HTTPNotFound(text="this state file holds no job yet") from None
            except (StateError, TimeoutError) as exc:
                raise web.HTTPServiceUnavailable(text=str(exc) or "reading took too long") from None
            maps.put(path, version, png)
        return web.Response(body=png, content_type="image/png")

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", static)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/jobs", job_list)
    app.router.add_get("/api/job", job_details)
    app.router.add_get("/api/map.png", job_map)
    return app


def loopback_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values a page on a loopback address answers; None (any) otherwise."""
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host != "localhost":
            return None
    names = ("127.0.0.1", "localhost", "[::1]")
    return frozenset(f"{name}:{port}" for name in names)


async def serve_forever(
    root: Path, host: str, port: int, ready: Callable[[str], None] | None = None
) -> None:
    """Serve the page until cancelled; ``ready`` hears its URL once it listens."""
    if not root.is_dir():
        await asyncio.to_thread(_check_state_file, root)
    guarded = loopback_hosts(host, port) is not None
    allowed: set[str] = set()
    runner = web.AppRunner(make_app(root, allowed if guarded else None), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                "--port, or --port 0 for a free one"
            ) from exc
        bound = runner.addresses[0][1]
        allowed.update(loopback_hosts(host, bound) or ())
        shown = f"[{host}]" if ":" in host else host
        if ready is not None:
            ready(f"http://{shown}:{bound}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _chosen(request: web.Request, jobs: Jobs) -> tuple[str, Path]:
    ident = request.query.get("id", "")
    path = jobs.paths().get(ident)
    if path is None:
        raise web.HTTPNotFound(text=f"no job {ident!r} here; /api/jobs lists them")
    return ident, path


async def _read(what: Callable[[Path], dict[str, Any]], ident: str, path: Path) -> dict[str, Any]:
    """``what(path)`` in a thread, or the one-line reason it failed, as the page shows it."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return {"id": ident, **await asyncio.to_thread(what, path)}
    except EmptyState:
        return {"id": ident, "name": _job_name(path), "status": "empty", "error": "no job yet"}
    except (StateError, TimeoutError) as exc:
        return {"id": ident, "name": _job_name(path), "status": "unreadable", "error": str(exc)}
    except (ValueError, KeyError, TypeError) as exc:  # a job spec this eefetch cannot read
        problem = f"its job cannot be read ({type(exc).__name__}: {exc})"
        return {"id": ident, "name": _job_name(path), "status": "unreadable", "error": problem}


def _summary(path: Path) -> dict[str, Any]:
    return jobstats.summary(read_facts(path))


def _details(path: Path) -> dict[str, Any]:
    return {**jobstats.details(read_snapshot(path)), "map_version": state_version(path)}


def _map_png(path: Path) -> bytes:
    return jobmap.render(read_snapshot(path, recent_errors=0), MAP_SIDE, legend=False).png


def _check_state_file(path: Path) -> None:
    """Refuse at start a file that is not an eefetch state file (an empty job is fine)."""
    try:
        read_facts(path)
    except EmptyState:
        pass
    except StateError as exc:
        raise ServeError(str(exc)) from exc


def _job_name(path: Path) -> str:
    return path.name.removesuffix(inventory.STATE_SUFFIX)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in colour)


__all__ = ["Jobs", "MapCache", "ServeError", "make_app", "serve_forever", "state_version"]
