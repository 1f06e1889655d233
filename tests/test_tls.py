"""HTTPS to the emulator with a certificate authority made at test time.

Earth Engine is only reachable over HTTPS, so a proxy carries it in CONNECT tunnels and the
client must trust the right CA. Both clients (requests for the API calls, aiohttp for the
tiles) must take the CA bundle from --ca-bundle or the usual variables.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from authority import Authority, https_emulator, make_authority

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import cli_env, emulator_process
from engine.testing.jobs import state_of
from engine.testing.oracle import assert_matches_oracle, served
from engine.testing.peers import MicroSocks, TinyProxy, guarded_download, host_port


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "ca")


@pytest.fixture
def emulator(authority: Authority) -> Iterator[EmulatorThread]:
    with https_emulator(EmulatorConfig.from_profile("clean", seed=12), authority) as running:
        yield running


@pytest.mark.slow
def test_ca_bundle_from_ssl_cert_file(
    tmp_path: Path, emulator: EmulatorThread, authority: Authority
) -> None:
    assert emulator.url.startswith("https://127.0.0.1:")
    output = tmp_path / "dem.tif"
    env = cli_env(SSL_CERT_FILE=str(authority.ca_file))
    done = guarded_download(emulator.url, output, env, forbid_direct=False)
    assert done.returncode == 0, done.stderr
    assert served(emulator, "value:compute") >= 1  # requests, through the ee client
    assert served(emulator, "getPixels") >= 8  # aiohttp


@pytest.mark.slow
def test_an_untrusted_certificate_stops_with_one_clear_line(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    done = guarded_download(emulator.url, tmp_path / "dem.tif", cli_env(), forbid_direct=False)
    assert done.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "Traceback" not in done.stderr
    assert served(emulator, "getPixels") == 0


@pytest.mark.slow
@pytest.mark.peers
def test_https_through_tinyproxy_uses_connect_tunnels_only(
    tmp_path: Path, emulator: EmulatorThread, authority: Authority, tinyproxy: TinyProxy
) -> None:
    output = tmp_path / "dem.tif"
    env = cli_env(HTTPS_PROXY=tinyproxy.url, REQUESTS_CA_BUNDLE=str(authority.ca_file))
    done = guarded_download(emulator.url, output, env)
    requests = tinyproxy.requests()
    assert done.returncode == 0, done.stderr
    assert requests, "tinyproxy saw no request"
    assert set(requests) == {("CONNECT", host_port(emulator.url))}
    # Every tunnel carried at least one request (connections are kept alive).
    answered = sum(sum(codes.values()) for codes in emulator.stats()["requests"].values())
    assert len(requests) <= answered
    assert_matches_oracle(output, state_of(output))


@pytest.mark.slow
@pytest.mark.peers
def test_https_through_microsocks(
    tmp_path: Path, emulator: EmulatorThread, authority: Authority, microsocks: MicroSocks
) -> None:
    output = tmp_path / "dem.tif"
    trust = ("--ca-bundle", str(authority.ca_file))
    done = guarded_download(emulator.url, output, cli_env(), "--proxy", microsocks.url, *trust)
    opened = microsocks.connections()
    assert done.returncode == 0, done.stderr
    assert opened and set(opened) == {host_port(emulator.url)}
    assert served(emulator, "getPixels") >= 8
    assert_matches_oracle(output, state_of(output))


def test_the_emulator_command_serves_https_with_a_given_certificate(tmp_path: Path) -> None:
    authority = make_authority(tmp_path / "ca")
    certificate = ("--certfile", str(authority.cert_file), "--keyfile", str(authority.key_file))
    with emulator_process("--profile", "clean", *certificate) as (_, url):
        assert url.startswith("https://127.0.0.1:"), url
        trusted = ssl.create_default_context(cafile=str(authority.ca_file))
        with urllib.request.urlopen(
            f"{url}/_emulator/stats", context=trusted, timeout=10
        ) as answer:
            assert "requests" in json.load(answer)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"{url}/_emulator/stats", context=ssl.create_default_context(), timeout=10
            )
