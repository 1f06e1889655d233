"""The EE client's session survives a server or proxy that drops an idle kept-alive connection.

The server here answers the first request of each connection and closes the connection,
without an answer, when a second request arrives on it: what a proxy whose idle timeout
fires as the client reuses the connection does. A fresh-clone test run failed this way
through tinyproxy (RemoteDisconnected), with the client's own retries off.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from engine.ee_adapter import RoutedSession


class OneRequestPerConnection(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools the connection

    def handle(self) -> None:
        self.handle_one_request()  # answered
        if not self.close_connection:
            self.rfile.readline()  # the next request's first line arrives ...
            self.connection.shutdown(socket.SHUT_RDWR)  # ... and is dropped unanswered

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OneRequestPerConnection)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/x"
    finally:
        server.shutdown()
        server.server_close()


def test_a_get_on_a_dropped_kept_alive_connection_is_sent_again(server_url: str) -> None:
    with RoutedSession(None, None) as session:
        assert session.get(server_url, timeout=10).text == "ok"
        assert session.get(server_url, timeout=10).text == "ok"


def test_a_plain_session_fails_there_so_the_server_does_drop_it(server_url: str) -> None:
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(server_url, timeout=10).text == "ok"
        with pytest.raises(requests.ConnectionError):
            session.get(server_url, timeout=10)


def test_a_post_is_not_sent_twice(server_url: str) -> None:
    with RoutedSession(None, None) as session:
        assert session.post(server_url, data=b"a", timeout=10).text == "ok"
        with pytest.raises(requests.ConnectionError):
            session.post(server_url, data=b"b", timeout=10)
