"""Which Earth Engine service a job talks to, and whether a stored URL belongs to it.

A job's tiles must all come from one service: Google's Earth Engine renders real pixels, an
emulator synthetic ones, and a resumed job that switched between them would merge both into
one file without a word. The service identity goes into the job's fingerprint (engine/spec.py).

Rule (docs/CONTRACTS.md, "The job fingerprint"):
- Google's service is one service whatever the endpoint: ``earthengine.googleapis.com``,
  ``earthengine-highvolume.googleapis.com`` and no URL at all (the client's default) render
  the same pixels from the same catalog.
- Any other URL is a service of its own, named by scheme, host and port. An emulator restarted
  on another port is another service: eefetch cannot tell that the program now answering there
  is the same emulator with the same model and catalog, and being wrong would mix pixels
  silently, whereas being strict only costs restarting it on its old port (``--port``).
  ``localhost`` and ``127.0.0.1`` name the same socket and count as one host.
"""

from __future__ import annotations

from urllib.parse import urlsplit

GOOGLE = "earthengine.googleapis.com"
GOOGLE_HOSTS = frozenset({GOOGLE, "earthengine-highvolume.googleapis.com"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_NAMES = {"localhost": "127.0.0.1"}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, lowercased, with the scheme's default port filled in."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, _LOOPBACK_NAMES.get(host, host), port or _DEFAULT_PORTS.get(scheme)


def service_identity(base_url: str | None) -> str:
    """The name of the service at ``base_url`` (None: the client's default, Google's)."""
    if not base_url:
        return GOOGLE
    scheme, host, port = origin(base_url)
    if host in GOOGLE_HOSTS and scheme == "https" and port == 443:
        return GOOGLE
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def url_is_for(url: str, base_url: str) -> bool:
    """Whether a download URL was made by the service at ``base_url`` (same scheme, host, port).

    A URL from anywhere else (an emulator that has moved to another port, the high-volume host
    after a switch to the standard one) is remade rather than fetched: it would fail like an
    outage, or fetch from a service the job no longer uses.
    """
    return origin(url) == origin(base_url)


def quota_key(project: str, base_url: str | None) -> str:
    """The name under which a project's concurrency quota is shared (state/quota.py).

    Earth Engine counts requests per Cloud project of its own service; an emulator is another
    service, whose projects are not Google's, so its quota is kept apart (``project@service``).
    """
    service = service_identity(base_url)
    return project if service == GOOGLE else f"{project}@{service}"
