"""EE API calls and tile downloads through real proxy processes, proven from the proxy's side.

A run that must take the proxy refuses direct connections to the emulator (see
``peers.GUARDED_CLI``), so if it completes it went through the proxy; the proxy's log then
shows what it carried. Runs that must not take it are checked against that same log.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import ee
import pytest

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import cli_env
from engine.testing.jobs import state_of
from engine.testing.oracle import assert_matches_oracle, served
from engine.testing.peers import MicroSocks, TinyProxy, free_port, guarded_download, host_port


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=11)) as running:
        yield running


def routes(requests: list[tuple[str, str]], base: str) -> Counter[str]:
    """How many requests of each kind the proxy forwarded to the emulator at ``base``."""
    counted: Counter[str] = Counter()
    for method, target in requests:
        assert target.startswith(base), f"proxy forwarded {method} {target}, not to {base}"
        path = target[len(base) :].split("?", 1)[0]
        if path.startswith("/$discovery"):
            counted["discovery"] += 1
        elif path.endswith("/algorithms"):
            counted["algorithms"] += 1
        elif path.endswith("/value:compute"):
            counted["value:compute"] += 1
        elif path.endswith("/thumbnails") and method == "POST":
            counted["thumbnails:create"] += 1
        elif ":getPixels" in path:
            counted["getPixels"] += 1
        else:
            counted[f"{method} {path}"] += 1
    return counted


def download_through(
    emulator: EmulatorThread, output: Path, proxy: str, given: str, environment: dict[str, str]
) -> None:
    """A download that must take ``proxy``, named by ``--proxy`` if ``given`` says so, else by
    ``environment``; it fails if it ended in error."""
    if given == "--proxy":
        # NO_PROXY naming the target must not matter: a proxy given explicitly is always used.
        env, extra = cli_env(NO_PROXY="127.0.0.1,localhost"), ("--proxy", proxy)
    else:
        env, extra = cli_env(**environment), ()
    done = guarded_download(emulator.url, output, env, *extra)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("given", ["--proxy", "HTTP_PROXY"])
def test_an_http_proxy_carries_every_api_call_and_tile(
    tmp_path: Path, emulator: EmulatorThread, tinyproxy: TinyProxy, given: str
) -> None:
    output = tmp_path / "dem.tif"
    environment = {"HTTP_PROXY": tinyproxy.url, "NO_PROXY": "example.org"}
    download_through(emulator, output, tinyproxy.url, given, environment)
    carried = routes(tinyproxy.requests(), emulator.url)
    tiles = served(emulator, "getPixels")
    assert tiles >= 8
    assert carried["getPixels"] == tiles  # every tile download, seen by the proxy
    assert carried["thumbnails:create"] == served(emulator, "thumbnails:create")
    assert carried["value:compute"] == served(emulator, "value:compute") >= 1
    assert carried["discovery"] >= 1 and carried["algorithms"] >= 1  # ee.Initialize too
    assert_matches_oracle(output, state_of(output))


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("given", ["--proxy", "ALL_PROXY"])
def test_a_socks5_proxy_carries_every_connection(
    tmp_path: Path, emulator: EmulatorThread, microsocks: MicroSocks, given: str
) -> None:
    output = tmp_path / "dem.tif"
    download_through(emulator, output, microsocks.url, given, {"all_proxy": microsocks.url})
    opened = microsocks.connections()
    assert opened, "microsocks opened no connection"
    assert set(opened) == {host_port(emulator.url)}
    assert served(emulator, "getPixels") >= 8
    assert_matches_oracle(output, state_of(output))


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.0/8"])
def test_no_proxy_sends_the_environment_proxy_around(
    tmp_path: Path, emulator: EmulatorThread, tinyproxy: TinyProxy, no_proxy: str
) -> None:
    output = tmp_path / "dem.tif"
    env = cli_env(HTTP_PROXY=tinyproxy.url, HTTPS_PROXY=tinyproxy.url, NO_PROXY=no_proxy)
    done = guarded_download(emulator.url, output, env, forbid_direct=False)
    assert done.returncode == 0, done.stderr
    assert served(emulator, "getPixels") >= 8
    assert tinyproxy.requests() == []


@pytest.mark.slow
def test_an_unreachable_proxy_is_reported_not_bypassed(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    output = tmp_path / "dem.tif"
    done = guarded_download(
        emulator.url, output, cli_env(), "--proxy", dead, forbid_direct=False, timeout=60
    )
    # The client's own retries of its first call once took 35 s before saying anything.
    assert time.monotonic() - started < 20
    assert done.returncode != 0
    assert "Unable to connect to proxy" in done.stderr
    assert "Traceback" not in done.stderr
    assert served(emulator, "getPixels") == 0
    assert served(emulator, "value:compute") == 0


@pytest.mark.peers
def test_use_network_routes_a_client_initialised_elsewhere(
    emulator: EmulatorThread, tinyproxy: TinyProxy
) -> None:
    # As in a notebook: the client is initialised first, the proxy is given afterwards.
    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))
    ee_adapter.use_network(tinyproxy.url, None)
    assert ee_adapter.band_info(ee.Image("USGS/SRTMGL1_003"))[0].id == "elevation"
    carried = routes(tinyproxy.requests(), emulator.url)
    assert carried["value:compute"] == 1
    assert carried["discovery"] >= 1  # the client's API objects were rebuilt on the session


@pytest.mark.peers
def test_a_collection_after_the_users_own_initialize_sends_api_calls_through_the_proxy(
    tmp_path: Path, emulator: EmulatorThread, tinyproxy: TinyProxy
) -> None:
    """As download_ee_image does: ee.Initialize() by the user, proxy= given to the call."""
    from engine import download_ee_image_collection

    ee_adapter.initialize(ee_adapter.Connection(url=emulator.url))  # the user's own
    scenes = (
        ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED")
        .filterDate("2022-03-01", "2022-04-01")
        .filterBounds(ee.Geometry.Point(118.73, 32.02))
        .select(["B4"])
        .limit(2)
    )
    result = download_ee_image_collection(
        scenes,
        tmp_path / "scenes",
        region=[118.70, 32.00, 118.74, 32.03],
        crs="EPSG:4326",
        scale=30,
        proxy=tinyproxy.url,
        quiet=True,
    )
    assert result.complete and len(result.outputs) >= 1
    carried = routes(tinyproxy.requests(), emulator.url)
    assert carried["value:compute"] == served(emulator, "value:compute") >= 2  # list, bands
    assert carried["thumbnails:create"] == served(emulator, "thumbnails:create") >= 1
    assert carried["getPixels"] == served(emulator, "getPixels")
