"""The guard in conftest.py must stop a test that reaches off this machine."""

import socket

import pytest


def test_connect_to_public_address_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"tests must stay on 127\.0\.0\.1"):
        socket.create_connection(("8.8.8.8", 53), timeout=1)


def test_resolving_a_google_host_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"tests must stay on 127\.0\.0\.1"):
        socket.getaddrinfo("earthengine.googleapis.com", 443)


def test_loopback_is_allowed() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    finally:
        server.close()
