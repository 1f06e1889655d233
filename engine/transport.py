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
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.defaults import (
    CONNECT_TIMEOUT_S,
    EE_MAX_CONCURRENCY,
    FIRST_BYTE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
)
from engine.ee_errors import error_message
from engine.errors import ErrorKind, FetchError
from engine.retry import parse_retry_after

CHUNK_SIZE = 256 * 1024
# A compressed body may not expand past this: no tile Earth Engine serves comes near it, and a
# misbehaving server's "zip bomb" must not fill the disk.
MAX_DECODED_BYTES = 1 << 30
ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Network settings of one run. ``proxy`` None means: take it from the environment."""

    proxy: str | None = None
    ca_bundle: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT_S
    first_byte_timeout: float = FIRST_BYTE_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    connections: int = EE_MAX_CONCURRENCY  # the scheduler's limiter is what binds


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
    # Not in typeshed's stubs, but public since Python 3.x: NO_PROXY parsed as curl does.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return bypass(host, {"no": no_proxy}) is True


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
        # The session does not decompress (a tile's bytes are hashed as they arrive), so ask
        # for none; Body still decodes a server that compresses anyway.
        sent = {"Accept-Encoding": "identity", **(headers or {})}
        try:
            async with asyncio.timeout(self.options.first_byte_timeout):
                response = await self._session.request(
                    method, url, json=json, headers=sent, proxy=self.http_proxy
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
    """A response body read chunk by chunk, each read bounded by the idle timeout.

    A gzip or deflate body is decoded on the way: ``chunks`` yields the decoded bytes, and
    ``length`` (the decoded length the caller may check) is then unknown, while the
    ``Content-Length`` of the compressed bytes is checked here.
    """

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float) -> None:
        self.response = response
        self.idle_timeout = idle_timeout
        self.encoding = content_encoding(response.headers.get("Content-Encoding"))
        self.length = response.content_length if self.encoding is None else None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.encoding is None:
            async for chunk in self._raw():
                yield chunk
            return
        decoder = Decoder(self.encoding, MAX_DECODED_BYTES)
        received = 0
        async for chunk in self._raw():
            received += len(chunk)
            decoded = decoder.feed(chunk)
            if decoded:
                yield decoded
        announced = self.response.content_length
        if announced is not None and received != announced:
            raise FetchError(
                ErrorKind.BODY, f"short body: {received} of {announced} compressed bytes"
            )
        yield decoder.finish()

    async def _raw(self) -> AsyncIterator[bytes]:
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


def content_encoding(header: str | None) -> str | None:
    """The compression of a body from its Content-Encoding: None (plain), gzip, deflate, or
    the unknown coding itself (which Decoder refuses)."""
    coding = (header or "").strip().lower()
    if coding in ("", "identity"):
        return None
    return "gzip" if coding == "x-gzip" else coding


class Decoder:
    """Incremental gzip/deflate decoding with a cap on the decoded size.

    ``deflate`` is zlib-wrapped per HTTP, but some servers send it raw: the first bytes
    decide. Every failure is a FetchError(BODY): a body that cannot be decoded is a bad body.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        if encoding not in ("gzip", "deflate"):
            raise FetchError(
                ErrorKind.BODY,
                f"the server compressed the body with {encoding!r}, which eefetch cannot decode",
            )
        self.encoding = encoding
        self.limit = limit
        self.decoded = 0
        self._zlib: zlib._Decompress | None = None
        self._head = b""

    def _start(self, data: bytes) -> None:
        if self.encoding == "gzip":
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return
        wrapped = len(data) >= 2 and (data[0] & 0x0F) == 8 and int.from_bytes(data[:2]) % 31 == 0
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            self._start(data)
        return self._decode(data)

    def finish(self) -> bytes:
        if self._zlib is None:
            if not self._head:
                return b""
            self._start(self._head)
            tail = self._decode(self._head)
        else:
            tail = b""
        assert self._zlib is not None  # _start made it
        if not self._zlib.eof:
            raise FetchError(ErrorKind.BODY, f"truncated {self.encoding} body")
        return tail

    def _decode(self, data: bytes) -> bytes:
        assert self._zlib is not None  # _start made it
        try:
            out = self._zlib.decompress(data, self.limit - self.decoded + 1)
        except zlib.error as exc:
            raise FetchError(ErrorKind.BODY, f"bad {self.encoding} body: {exc}") from exc
        self.decoded += len(out)
        if self.decoded > self.limit or self._zlib.unconsumed_tail:
            raise FetchError(
                ErrorKind.BODY, f"the {self.encoding} body expands past {self.limit} bytes"
            )
        return out


def decode_error_body(raw: bytes, encoding: str | None) -> bytes:
    """At most ERROR_BODY_BYTES of an error body, decoded if compressed (best effort: the
    body only explains the status)."""
    if encoding is None:
        return raw
    try:
        decoder = Decoder(encoding, ERROR_BODY_BYTES)
        return decoder.feed(raw)
    except FetchError:
        return b""


async def _http_error(
    response: aiohttp.ClientResponse, during_download: bool, idle_timeout: float
) -> FetchError:
    try:
        async with asyncio.timeout(idle_timeout):
            raw = await response.content.read(ERROR_BODY_BYTES)
    except (TimeoutError, aiohttp.ClientError, OSError):
        raw = b""
    encoding = content_encoding(response.headers.get("Content-Encoding"))
    raw = decode_error_body(raw, encoding)
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
