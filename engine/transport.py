"""HTTP transport for tile downloads: proxies, TLS, and timeouts that a stall cannot beat.

Only this module builds aiohttp sessions. Policy (what to do with a failure) lives in
``engine.retry``; here failures are only described, as :class:`engine.retry.FetchError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.ee_errors import error_message
from engine.retry import ErrorKind, FetchError, parse_retry_after

CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Network settings of one run. ``proxy`` None means: take it from the environment."""

    proxy: str | None = None
    ca_bundle: str | None = None
    connect_timeout: float = 30.0
    first_byte_timeout: float = 300.0
    idle_timeout: float = 60.0
    connections: int = 16


def resolve_proxy(
    target_url: str, explicit: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The proxy a request to ``target_url`` should use: --proxy first, then the usual variables.

    Honours HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (either case), as curl and
    requests do, so the EE API calls and the tile downloads take the same route.
    """
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    lowered = {key.lower(): value for key, value in env.items() if value}
    parts = urlsplit(target_url)
    scheme = parts.scheme or "https"
    host = (parts.hostname or "").lower()
    no_proxy = lowered.get("no_proxy", "")
    if no_proxy and _bypassed(host, parts.port, no_proxy):
        return None
    return lowered.get(f"{scheme}_proxy") or lowered.get("all_proxy")


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY names the host: a domain suffix, "host:port", an IP network, or *."""
    for entry in (part.strip().lower() for part in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            if _in_network(host, entry):
                return True
            continue
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry) or f"{host}:{port}" == entry:
            return True
    return urllib.request.proxy_bypass_environment(host, {"no": no_proxy}) is True


def _in_network(host: str, network: str) -> bool:
    """CIDR entries such as 10.0.0.0/8, which requests and curl honour too."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def ca_bundle_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("SSL_CERT_FILE") or env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")


def make_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class Transport:
    """One aiohttp session for a run, with the proxy decided once for the EE host."""

    def __init__(self, options: TransportOptions, target_url: str) -> None:
        self.options = options
        self.proxy = resolve_proxy(target_url, options.proxy)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        ca_bundle = self.options.ca_bundle or ca_bundle_from_env()
        # Reading the system's CA store takes tens of milliseconds: not on the event loop.
        context = await asyncio.to_thread(make_ssl_context, ca_bundle)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.options.connect_timeout,
            sock_connect=self.options.connect_timeout,
        )
        connector: aiohttp.BaseConnector
        if self.proxy and self.proxy.lower().startswith("socks"):
            from aiohttp_socks import ProxyConnector

            connector = ProxyConnector.from_url(
                self.proxy, ssl=context, limit=self.options.connections
            )
        else:
            connector = aiohttp.TCPConnector(ssl=context, limit=self.options.connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def http_proxy(self) -> str | None:
        if self.proxy and not self.proxy.lower().startswith("socks"):
            return self.proxy
        return None

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        during_download: bool = True,
    ) -> AsyncIterator[Body]:
        """Open a request and yield its body once a 200 arrived; any failure is a FetchError."""
        assert self._session is not None, "use Transport as an async context manager"
        try:
            async with asyncio.timeout(self.options.first_byte_timeout):
                response = await self._session.request(
                    method, url, json=json, headers=headers, proxy=self.http_proxy
                )
        except TimeoutError as exc:
            raise FetchError(
                ErrorKind.TIMEOUT, f"no answer within {self.options.first_byte_timeout:g} s"
            ) from exc
        except (aiohttp.ClientProxyConnectionError, aiohttp.ClientConnectorError) as exc:
            raise FetchError(ErrorKind.CONNECT, _describe(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(ErrorKind.CONNECT, _describe(exc)) from exc
        try:
            if response.status != 200:
                raise await _http_error(response, during_download, self.options.idle_timeout)
            yield Body(response, self.options.idle_timeout)
        finally:
            response.release()

    async def probe(self, url: str) -> bool:
        """True when ``url`` answers anything at all: the network and proxy are back."""
        try:
            async with self.stream("GET", url, during_download=False):
                return True
        except FetchError as error:
            return error.kind is ErrorKind.HTTP


class Body:
    """A response body read chunk by chunk, each read bounded by the idle timeout."""

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float) -> None:
        self.response = response
        self.idle_timeout = idle_timeout
        self.length = response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        received = 0
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await self.response.content.read(CHUNK_SIZE)
            except TimeoutError as exc:
                raise FetchError(
                    ErrorKind.TIMEOUT,
                    f"download stalled: no data for {self.idle_timeout:g} s after {received} bytes",
                ) from exc
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
                raise FetchError(
                    ErrorKind.BODY, f"connection lost after {received} bytes: {_describe(exc)}"
                ) from exc
            if not chunk:
                return
            received += len(chunk)
            yield chunk


async def _http_error(
    response: aiohttp.ClientResponse, during_download: bool, idle_timeout: float
) -> FetchError:
    try:
        async with asyncio.timeout(idle_timeout):
            raw = await response.content.read(64 * 1024)
    except (TimeoutError, aiohttp.ClientError, OSError):
        raw = b""
    message = error_message(raw, response.status, response.reason)
    return FetchError(
        ErrorKind.HTTP,
        message,
        status=response.status,
        retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()),
        during_download=during_download,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
