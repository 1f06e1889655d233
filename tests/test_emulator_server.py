"""The emulator's HTTP half, driven by the official earthengine-api client.

A tiny fake model (defined here) stands in for engine.emulator.evaluate so these tests check
the server alone: routes, encodings, EE's limits and texts, accounting, start/stop.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ee
import numpy as np
import pytest
from rasterio.io import MemoryFile

from engine.emulator.config import EmulatorConfig
from engine.emulator.render import PixelGrid
from engine.emulator.server import EmulatorThread, Evaluator

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

CATALOG: dict[str, list[tuple[str, str]]] = {
    "TEST/IMG": [("B1", "uint16"), ("B2", "int16"), ("B3", "float32")],
    "TEST/MANY": [(f"b{i}", "uint8") for i in range(1030)],
}
UTM = "EPSG:32650"
TRANSFORM = [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]


class FakeError(Exception):
    """The fake model's EvaluationError."""


@dataclass(frozen=True)
class FakeBand:
    id: str
    dtype: str
    crs: str = "EPSG:4326"
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    dimensions: tuple[int, int] | None = None


@dataclass
class FakeRendered:
    band_ids: list[str]
    data: list[np.ndarray]
    valid: list[np.ndarray]


class FakeImage:
    """Pixels that depend only on the lattice index, like the real model's contract."""

    def __init__(
        self,
        bands: list[tuple[str, str]],
        proj: tuple[str, tuple[float, ...]] | None = None,
        grid: PixelGrid | None = None,
    ) -> None:
        self.band_defs = bands
        self.proj = proj
        self.grid = grid

    @property
    def bands(self) -> list[FakeBand]:
        return [FakeBand(name, dtype) for name, dtype in self.band_defs]

    def bounded_grid(self) -> PixelGrid | None:
        return self.grid

    def work(self, width: int, height: int) -> int:
        return width * height * len(self.band_defs)

    def render(
        self,
        crs: str,
        transform: tuple[float, ...],
        width: int,
        height: int,
        band_ids: list[str] | None = None,
    ) -> FakeRendered:
        dtypes = dict(self.band_defs)
        chosen = list(band_ids or dtypes)
        a, _, c, _, e, f = transform
        ix = np.floor(c / a + 0.5).astype(int) + np.arange(width)[None, :]
        iy = np.floor(f / abs(e) + 0.5).astype(int) - np.arange(height)[:, None]
        data, valid = [], []
        for name in chosen:
            k = sum(map(ord, name)) % 7
            values = (ix * 7 + iy * 13 + k * 100) % 250
            data.append(values.astype(dtypes[name]))
            valid.append(((ix + iy + k) % 5) != 0)
        return FakeRendered(chosen, data, valid)


def _call(name: str, args: dict[str, Any]) -> Any:
    if name == "Image.load":
        if args["id"] not in CATALOG:
            raise FakeError(f"Image.load: Image asset '{args['id']}' not found.")
        return FakeImage(CATALOG[args["id"]])
    if name == "Image.select":
        image = args["input"]
        dtypes = dict(image.band_defs)
        missing = [b for b in args["bandSelectors"] if b not in dtypes]
        if missing:
            raise FakeError(f"Image.select: Pattern '{missing[0]}' did not match any bands.")
        picked = [(b, dtypes[b]) for b in args["bandSelectors"]]
        return FakeImage(picked, image.proj, image.grid)
    if name == "Projection":
        return (args["crs"], tuple(args.get("transform") or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)))
    if name == "Image.reproject":
        proj = (args["crs"][0], tuple(float(v) for v in args["crsTransform"]))
        return FakeImage(args["image"].band_defs, proj, None)
    if name == "Image.projection":
        return args["image"].proj
    if name == "GeometryConstructors.Rectangle":
        return ("rect", args["coordinates"], args.get("crs"))
    if name == "Image.clipToBoundsAndScale":
        image = args["input"]
        _, (x0, y0, x1, y1), proj = args["geometry"]
        a, b, c, d, e, f = proj[1]
        transform = (a, b, c + x0 * a, d, e, f + y0 * e)
        grid = PixelGrid(proj[0], transform, int(x1 - x0), int(y1 - y0))
        return FakeImage(image.band_defs, image.proj, grid)
    raise FakeError(f"fake model: unsupported function {name}")


def fake_evaluate(expression: dict[str, Any]) -> Any:
    values = expression.get("values", {})

    def ev(node: dict[str, Any]) -> Any:
        if "constantValue" in node:
            return node["constantValue"]
        if "integerValue" in node:
            return int(node["integerValue"])
        if "valueReference" in node:
            return ev(values[node["valueReference"]])
        if "arrayValue" in node:
            return [ev(v) for v in node["arrayValue"]["values"]]
        if "dictionaryValue" in node:
            return {k: ev(v) for k, v in node["dictionaryValue"]["values"].items()}
        if "functionInvocationValue" in node:
            call = node["functionInvocationValue"]
            args = {k: ev(v) for k, v in call.get("arguments", {}).items()}
            return _call(call["functionName"], args)
        raise FakeError(f"fake model: unsupported node {sorted(node)}")

    return ev(values[expression["result"]])


def fake_to_info(value: Any) -> Any:
    if isinstance(value, FakeImage):
        return {
            "type": "Image",
            "bands": [
                {"id": b.id, "data_type": {"type": "PixelType", "precision": b.dtype}}
                for b in value.bands
            ],
        }
    return value


FAKE = Evaluator(fake_evaluate, fake_to_info, FakeError)


def init_client(url: str) -> None:
    """Point the official client at the emulator, with no retries of its own."""
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, project="test-proj", url=url)
    ee.data.setMaxRetries(0)


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorThread]:
    """A clean-profile emulator (override knobs with `@pytest.mark.parametrize` indirect)."""
    overrides = getattr(request, "param", {})
    with EmulatorThread(EmulatorConfig.from_profile("clean", **overrides), evaluator=FAKE) as emu:
        init_client(emu.url)
        yield emu


def download_url(
    bands: list[str], width: int, height: int, fmt: str = "GEO_TIFF", **extra: Any
) -> str:
    image = ee.Image("TEST/IMG" if "b0" not in bands else "TEST/MANY").select(bands)
    params = {"crs": UTM, "crs_transform": TRANSFORM, "dimensions": [width, height]}
    return image.getDownloadURL({**params, "format": fmt, **extra})


def http_get(url: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """GET without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def expected(bands: list[str], width: int, height: int) -> FakeRendered:
    image = FakeImage([(b, dict(CATALOG["TEST/IMG"])[b]) for b in bands])
    return image.render(UTM, tuple(TRANSFORM), width, height, bands)


def envelope(body: bytes) -> dict[str, Any]:
    return json.loads(body)["error"]


# ----------------------------------------------------------------------------- routes


def test_discovery_points_back_at_the_server(emulator: EmulatorThread) -> None:
    status, _, body = http_get(emulator.url + "/$discovery/rest?version=v1&prettyPrint=false")
    doc = json.loads(body)
    assert status == 200
    assert doc["rootUrl"] == emulator.url + "/"
    assert "v1alpha" not in json.dumps(doc)
    status, _, body = http_get(emulator.url + "/v1/projects/test-proj/algorithms")
    assert status == 200 and len(json.loads(body)["algorithms"]) > 100


def test_getinfo_through_the_client(emulator: EmulatorThread) -> None:
    info = ee.Image("TEST/IMG").select(["B1", "B3"]).getInfo()
    assert [b["id"] for b in info["bands"]] == ["B1", "B3"]
    with pytest.raises(ee.EEException, match="Image asset 'NOPE' not found"):
        ee.Image("NOPE").getInfo()


def test_geotiff_download_matches_render(emulator: EmulatorThread) -> None:
    bands = ["B1", "B2", "B3"]
    status, headers, body = http_get(download_url(bands, 37, 23))
    assert status == 200 and headers["Content-Type"] == "image/tiff"
    want = expected(bands, 37, 23)
    with MemoryFile(body) as mem, mem.open() as src:
        assert src.crs.to_string() == UTM
        assert tuple(src.transform)[:6] == tuple(TRANSFORM)
        assert (src.width, src.height, src.count) == (37, 23, 3)
        assert src.descriptions == tuple(bands)
        assert src.dtypes[0] == "float32"  # common type of uint16, int16, float32
        assert np.isnan(src.nodata)
        data = src.read()
    for k in range(3):
        ref = want.data[k].astype("float32")
        ref[~want.valid[k]] = np.nan
        np.testing.assert_array_equal(data[k], ref)


def test_integer_download_uses_zero_nodata(emulator: EmulatorThread) -> None:
    status, _, body = http_get(download_url(["B1"], 16, 9))
    assert status == 200
    want = expected(["B1"], 16, 9)
    with MemoryFile(body) as mem, mem.open() as src:
        assert src.dtypes == ("uint16",) and src.nodata == 0
        np.testing.assert_array_equal(src.read(1), np.where(want.valid[0], want.data[0], 0))


def test_zipped_and_npy_formats(emulator: EmulatorThread) -> None:
    bands = ["B1", "B2"]
    want = expected(bands, 8, 5)
    _, _, body = http_get(download_url(bands, 8, 5, "ZIPPED_GEO_TIFF", name="tile"))
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["tile.tif"]
    _, _, body = http_get(download_url(bands, 8, 5, "ZIPPED_GEO_TIFF_PER_BAND", name="tile"))
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.namelist() == ["tile.B1.tif", "tile.B2.tif"]
    with MemoryFile(archive.read("tile.B2.tif")) as mem, mem.open() as src:
        assert src.dtypes == ("int16",)
        np.testing.assert_array_equal(src.read(1), np.where(want.valid[1], want.data[1], 0))
    _, _, body = http_get(download_url(bands, 8, 5, "NPY"))
    array = np.load(io.BytesIO(body))
    assert array.shape == (5, 8) and array.dtype.names == ("B1", "B2")
    assert array.dtype["B2"] == np.int16
    np.testing.assert_array_equal(array["B1"], np.where(want.valid[0], want.data[0], 0))


def grid_body(width: int, height: int) -> dict[str, Any]:
    keys = ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
    return {
        "dimensions": {"width": width, "height": height},
        "affineTransform": dict(zip(keys, TRANSFORM, strict=True)),
        "crsCode": UTM,
    }


def test_compute_pixels_geotiff_and_npy(emulator: EmulatorThread) -> None:
    image = ee.Image("TEST/IMG")
    want = expected(["B1", "B2", "B3"], 12, 7)
    body = ee.data.computePixels(
        {"expression": image, "fileFormat": "GEO_TIFF", "grid": grid_body(12, 7)}
    )
    with MemoryFile(body) as mem, mem.open() as src:
        assert src.crs.to_string() == UTM and (src.width, src.height) == (12, 7)
        assert tuple(src.transform)[:6] == tuple(TRANSFORM)
        np.testing.assert_array_equal(
            src.read(2), np.where(want.valid[1], want.data[1], np.nan).astype("float32")
        )
    array = ee.data.computePixels(
        {
            "expression": image,
            "fileFormat": "NUMPY_NDARRAY",
            "grid": grid_body(12, 7),
            "bandIds": ["B3"],
        }
    )
    assert array.shape == (7, 12) and array.dtype.names == ("B3",)
    np.testing.assert_array_equal(
        array["B3"], np.where(want.valid[2], want.data[2], np.nan).astype("float32")
    )


def test_unknown_path_and_method_answer_the_envelope(emulator: EmulatorThread) -> None:
    status, _, body = http_get(emulator.url + "/v1/nothing/here")
    assert status == 404
    assert envelope(body) == {
        "code": 404,
        "message": "Requested entity was not found.",
        "status": "NOT_FOUND",
    }
    status, _, body = http_get(emulator.url + "/v1/projects/test-proj/thumbnails/zzz:getPixels")
    assert status == 404 and envelope(body)["status"] == "NOT_FOUND"
    status, _, body = http_get(emulator.url + "/v1/projects/test-proj/value:compute")
    assert status == 405 and envelope(body)["code"] == 405


# ----------------------------------------------------------------------------- limits


def test_request_size_limit(emulator: EmulatorThread) -> None:
    # 4100 x 4100 x (2+1 + 2+1) = 100860000 bytes.
    with pytest.raises(ee.EEException) as info:
        download_url(["B1", "B2"], 4100, 4100)
    assert str(info.value) == (
        "Total request size (100860000 bytes) must be less than or equal to 50331648 bytes."
    )


def test_side_limits(emulator: EmulatorThread) -> None:
    with pytest.raises(ee.EEException) as info:
        download_url(["B1"], 10001, 10)
    assert str(info.value) == (
        "Pixel grid dimensions (10001x10) must be less than or equal to 10000."
    )
    with pytest.raises(ee.EEException) as info:
        ee.data.computePixels(
            {
                "expression": ee.Image("TEST/IMG").select(["B1"]),
                "fileFormat": "GEO_TIFF",
                "grid": grid_body(32769, 2),
            }
        )
    assert str(info.value) == (
        "Pixel grid dimensions (32769x2) must be less than or equal to 32768."
    )
    # 20000 wide is fine for computePixels (and small in bytes).
    body = ee.data.computePixels(
        {
            "expression": ee.Image("TEST/IMG").select(["B1"]),
            "fileFormat": "GEO_TIFF",
            "grid": grid_body(20000, 1),
        }
    )
    assert body[:2] in (b"II", b"MM")


def test_band_limit(emulator: EmulatorThread) -> None:
    bands = [f"b{i}" for i in range(1025)]
    with pytest.raises(ee.EEException, match=r"Number of bands \(1025\) must be less than"):
        download_url(bands, 2, 2)


@pytest.mark.parametrize("emulator", [{"memory_budget": 1000}], indirect=True)
def test_memory_limit(emulator: EmulatorThread) -> None:
    url = download_url(["B1", "B2"], 30, 30)  # work 1800 > 1000, checked at getPixels
    status, _, body = http_get(url)
    assert status == 400
    assert envelope(body) == {
        "code": 400,
        "message": "User memory limit exceeded.",
        "status": "INVALID_ARGUMENT",
    }
    assert http_get(download_url(["B1"], 30, 30))[0] == 200  # work 900


def test_unbounded_image_is_refused(emulator: EmulatorThread) -> None:
    with pytest.raises(ee.EEException, match="unbounded"):
        ee.Image("TEST/IMG").getDownloadURL({"format": "GEO_TIFF"})


@pytest.mark.parametrize("emulator", [{"download_ttl_s": 0.3}], indirect=True)
def test_download_ids_expire(emulator: EmulatorThread) -> None:
    url = download_url(["B1"], 4, 4)
    assert http_get(url)[0] == 200
    threading.Event().wait(0.5)
    status, _, body = http_get(url)
    assert status == 404 and envelope(body)["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "emulator",
    [{"no_limits": True, "max_concurrent": 1, "latency_fixed_s": 5.0, "memory_budget": 1}],
    indirect=True,
)
def test_no_limits_is_the_oracle(emulator: EmulatorThread) -> None:
    url = download_url(["B1", "B2"], 4100, 30)
    status, _, body = http_get(url)
    assert status == 200
    with MemoryFile(body) as mem, mem.open() as src:
        assert (src.width, src.height) == (4100, 30)


# ----------------------------------------------------------------------------- accounting


def test_stats_count_requests_and_tiles(emulator: EmulatorThread) -> None:
    emulator.reset_stats()
    url = download_url(["B1"], 6, 4)
    http_get(url)
    http_get(url)
    url2 = download_url(["B1"], 6, 4)  # a new id for the same grid: same tile key
    http_get(url2)
    http_get(emulator.url + "/nope")
    stats = emulator.stats()
    assert stats["requests"]["thumbnails:create"] == {"200": 2}
    assert stats["requests"]["getPixels"] == {"200": 3}
    assert stats["requests"]["unknown"] == {"404": 1}
    assert len(stats["tiles_served"]) == 1 and stats["tiles_served"][0]["count"] == 3
    key = json.loads(stats["tiles_served"][0]["key"])
    assert key == {"bands": ["B1"], "crs": UTM, "height": 4, "transform": TRANSFORM, "width": 6}
    assert stats["bytes_served"] > 0 and stats["max_in_flight"] >= 1
    _, _, body = http_get(emulator.url + "/_emulator/stats")
    assert json.loads(body)["requests"]["getPixels"] == {"200": 3}
    req = urllib.request.Request(emulator.url + "/_emulator/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert emulator.stats()["requests"] == {}


def test_serve_forever_prints_url_first(tmp_path: Any) -> None:
    code = (
        "from engine.emulator.server import serve_forever\n"
        "from engine.emulator.config import EmulatorConfig\n"
        "serve_forever(EmulatorConfig.from_profile('clean'), '127.0.0.1', 0)\n"
    )
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, _ = http_get(url + "/$discovery/rest?version=v1")
        assert status == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_real_model_renders_through_the_server(ee_emulator: Any) -> None:
    """With the bundled model: what the wire carries equals image.render() of the grid."""
    evaluate = pytest.importorskip("engine.emulator.evaluate")
    emu = ee_emulator("clean")
    init_client(emu.url)
    image = ee.Image("USGS/SRTMGL1_003")
    transform = (0.001, 0.0, 118.7, 0.0, -0.001, 32.1)
    url = image.getDownloadURL(
        {
            "crs": "EPSG:4326",
            "crs_transform": list(transform),
            "dimensions": [64, 32],
            "format": "GEO_TIFF",
        }
    )
    status, _, body = http_get(url)
    assert status == 200
    ref = evaluate.evaluate(json.loads(image.serialize())).render("EPSG:4326", transform, 64, 32)
    with MemoryFile(body) as mem, mem.open() as src:
        assert src.crs.to_string() == "EPSG:4326"
        assert tuple(src.transform)[:6] == transform
        assert src.descriptions == tuple(ref.band_ids)
        assert src.dtypes[0] == ref.data[0].dtype.name
        np.testing.assert_array_equal(
            src.read(1), np.where(ref.valid[0], ref.data[0], np.nan).astype(src.dtypes[0])
        )
