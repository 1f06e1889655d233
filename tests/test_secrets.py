"""Security: tokens stay out of everything eefetch writes; EE's names stay inside the output
folder; the emulator listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.testing.cli import REPO, emulator_process
from engine.tilestore import TileStore

TOKEN = "ya29.FAKE-TOKEN-a1b2c3d4e5f6-DO-NOT-LEAK"

DRIVER = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path

    import ee
    import google.auth.credentials

    token, url, output, endpoint, band = sys.argv[1:6]
    logging.basicConfig(
        level=logging.DEBUG, filename=str(Path(output).parent / "debug.log"), force=True
    )


    class FakeCredentials(google.auth.credentials.Credentials):
        '''What `earthengine authenticate` leaves behind, with a token we can look for.'''

        applied = 0
        read_by_eefetch = 0

        def __init__(self):
            super().__init__()
            self._value = token

        @property
        def token(self):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("engine."):
                FakeCredentials.read_by_eefetch += 1
            return self._value

        @token.setter
        def token(self, value):
            self._value = value

        def refresh(self, request):
            self._value = token

        def apply(self, headers, token=None):
            FakeCredentials.applied += 1
            super().apply(headers, token)


    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=FakeCredentials(), project="secret-project", url=url)
    from engine import download_ee_image

    image = ee.Image("USGS/SRTMGL1_003").select(["elevation"], [band])
    result = download_ee_image(
        image, output, region=[118.70, 32.00, 118.80, 32.06], crs="EPSG:32650", scale=30,
        endpoint=endpoint, keep_tiles=True, max_tile_bytes=90000,
    )
    print(json.dumps({"applied": FakeCredentials.applied,
                      "read_by_eefetch": FakeCredentials.read_by_eefetch,
                      "tiles": result.counts["done"]}))
    """
)


def _written_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["urls", "compute"])
def test_the_access_token_reaches_no_file_log_or_message(tmp_path: Path, endpoint: str) -> None:
    """Faults make eefetch record and print errors; none of it may carry the token."""
    config = EmulatorConfig.from_profile(
        "clean",
        seed=10,
        fault_rate=0.25,
        fault_weights={"http_500": 1.0, "short_body": 1.0, "html": 1.0, "expired": 1.0},
        retry_after_s=0,
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "run"
    run.mkdir()
    with EmulatorThread(config) as emulator:
        done = subprocess.run(
            [sys.executable, str(driver), TOKEN, emulator.url, str(run / "out.tif"), endpoint, "b"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=240,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
            check=False,
        )
        faults = sum(emulator.stats()["faults"].values())
    assert done.returncode == 0, done.stderr
    used = json.loads(done.stdout.strip().splitlines()[-1])
    assert used["applied"] > 0, "the client never attached the token: the test proves nothing"
    if endpoint == "compute":  # eefetch sends these requests itself, with the token
        assert used["read_by_eefetch"] >= used["tiles"], "eefetch's requests lacked the token"
    assert faults > 0, "no fault was injected, so no error path was exercised"
    files = _written_files(run)
    names = {p.name for p in files}
    assert {"out.tif", "out.tif.eefetch.db", "debug.log"} <= names
    assert any(p.suffix == ".tif" and p.parent.name.endswith("-tiles") for p in files)
    assert (run / "debug.log").stat().st_size > 0
    needles = [TOKEN.encode(), b"FAKE-TOKEN", TOKEN.encode("utf-16-le")]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path} holds the token"
    for stream in (done.stdout, done.stderr):
        assert "FAKE-TOKEN" not in stream


@pytest.mark.slow
def test_names_from_earth_engine_never_leave_the_output_folder(tmp_path: Path) -> None:
    """A band called '../../escape/evil' must not become a path anywhere."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    work = tmp_path / "work"
    out_dir = work / "out"
    out_dir.mkdir(parents=True)
    repo_before = set(os.listdir(REPO))
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=1)) as emulator:
        done = subprocess.run(
            [
                sys.executable,
                str(driver),
                TOKEN,
                emulator.url,
                str(out_dir / "x.tif"),
                "urls",
                "../../escape/evil",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=240,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["tiles"] >= 2
    outside = [p for p in _written_files(tmp_path) if out_dir not in p.parents and p != driver]
    assert outside == []
    assert not (tmp_path / "escape").exists() and not (work / "escape").exists()
    assert set(os.listdir(REPO)) == repo_before
    with rasterio.open(out_dir / "x.tif") as dataset:
        assert dataset.descriptions == ("../../escape/evil",)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=40) | st.sampled_from(["..", "../x", "a/../../b", "/etc/passwd"]))
def test_a_tile_name_is_either_refused_or_inside_the_tile_folder(name: str) -> None:
    root = Path("/tmp/eefetch-tiles-root")
    store = TileStore(root)
    try:
        final = store.final_path(name)
        part = store.part_path(name)
    except ValueError as exc:
        assert "unsafe tile name" in str(exc)
        return
    for path in (final, part):
        assert path.parent == root
        assert os.path.normpath(path) == str(path)


def _listening_addresses(port: int) -> list[str]:
    """Local addresses with a listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if int(port_hex, 16) == port and fields[3] == "0A":
                    found.append(address)
    return found


def test_the_emulator_listens_on_loopback_only_by_default() -> None:
    with emulator_process() as (_, url):
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, IPv4 only
    with EmulatorThread(EmulatorConfig.from_profile("clean")) as emulator:
        port = int(emulator.url.rsplit(":", 1)[1])
        assert emulator.url.startswith("http://127.0.0.1:")
        assert _listening_addresses(port) == ["0100007F"]
