"""Fuzzing the parsers of untrusted data: EE error bodies, tile bodies, region files.

Each must answer with its documented error type (or a result), never crash otherwise and
never hang: hypothesis' deadline fails any example slower than it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.ee_errors import MAX_MESSAGE, error_message
from engine.grid import GridError, grid_from_region
from engine.region_input import geometry_from_file, load_region
from engine.tilestore import (
    TileExpectation,
    TileStore,
    TileValidationError,
    sniff_body,
    validate_geotiff,
)

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(milliseconds=1500),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TILE = TileExpectation(48, 40, 2, "int16", transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 3.5e6))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
geojson_types = st.sampled_from(
    [
        "Point",
        "Polygon",
        "MultiPolygon",
        "LineString",
        "GeometryCollection",
        "Feature",
        "FeatureCollection",
        "Topology",
        None,
    ]
)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12)
rings = st.lists(st.lists(st.lists(numbers, max_size=3), max_size=6), max_size=3)
geojson_like = st.recursive(
    st.fixed_dictionaries(
        {"type": geojson_types},
        optional={"coordinates": rings | json_values, "crs": json_values},
    ),
    lambda inner: st.fixed_dictionaries(
        {"type": geojson_types},
        optional={
            "geometry": inner | json_values,
            "features": st.lists(inner, max_size=3) | json_values,
            "geometries": st.lists(inner, max_size=3),
        },
    ),
    max_leaves=8,
)


def _nested(depth: int) -> bytes:
    return b'{"error":' * depth + b"1" + b"}" * depth


# ---------------------------------------------------------------- EE error bodies


def _check_message(message: str) -> None:
    assert isinstance(message, str) and message
    assert "\n" not in message and "\r" not in message
    assert message.isprintable()
    assert len(message) <= 2 * MAX_MESSAGE


@FUZZ
@given(body=st.binary(max_size=4096), status=st.integers(0, 999), reason=st.none() | st.text())
@example(body=_nested(100_000), status=500, reason=None)
@example(body=b"<html><title>" * 6000, status=502, reason=None)
@example(body=b"<!DOCTYPE html><title>\n\n</title>", status=403, reason=None)
@example(body=b"", status=503, reason=None)
def test_error_message_of_any_body_is_one_printable_line(
    body: bytes, status: int, reason: str | None
) -> None:
    _check_message(error_message(body, status, reason))


@FUZZ
@given(payload=json_values, status=st.integers(400, 599))
def test_error_message_of_any_json_envelope_is_one_printable_line(
    payload: Any, status: int
) -> None:
    body = json.dumps({"error": payload}).encode()
    message = error_message(body, status)
    _check_message(message)
    text = payload.get("message") if isinstance(payload, dict) else None
    if isinstance(text, str) and text.strip() and text.isprintable():
        assert message.startswith(" ".join(text.split())[:50])


# ---------------------------------------------------------------- tile bodies


@pytest.fixture(scope="module")
def real_tile(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A GeoTIFF like the ones EE sends: tiled, deflate, two int16 bands."""
    path = tmp_path_factory.mktemp("tile") / "tile.tif"
    data = np.arange(2 * 40 * 48, dtype=np.int16).reshape(2, 40, 48)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=48,
        height=40,
        count=2,
        dtype="int16",
        crs="EPSG:32650",
        transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 3.5e6),
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
    ) as dst:
        dst.write(data)
    return path.read_bytes()


def test_the_real_tile_passes(tmp_path: Path, real_tile: bytes) -> None:
    path = tmp_path / "t.tif"
    path.write_bytes(real_tile)
    validate_geotiff(path, TILE, decode=True)


@FUZZ
@given(head=st.binary(max_size=64), complete=st.booleans())
def test_sniffing_any_head_answers_or_raises_the_documented_error(
    head: bytes, complete: bool
) -> None:
    try:
        verdict = sniff_body(head, complete=complete)
    except TileValidationError as exc:
        assert str(exc)
    else:
        assert verdict is True or (verdict is False and not complete and len(head) < 4)


@FUZZ
@given(body=st.binary(max_size=2048), magic=st.sampled_from([b"", b"II*\x00", b"MM\x00*"]))
def test_random_bodies_are_rejected_with_the_documented_error(
    tmp_path: Path, body: bytes, magic: bytes
) -> None:
    path = tmp_path / "random.tif"
    path.write_bytes(magic + body)
    with pytest.raises(TileValidationError):
        validate_geotiff(path, TILE, decode=True)


@FUZZ
@given(data=st.data())
def test_any_truncation_of_a_real_tile_is_rejected(
    tmp_path: Path, real_tile: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(real_tile) - 1), label="cut")
    path = tmp_path / "cut.tif"
    path.write_bytes(real_tile[:cut])
    with pytest.raises(TileValidationError):
        validate_geotiff(path, TILE, decode=True)
    store = TileStore(tmp_path)
    assert store.verify("cut.tif", TILE, None) is not None


@FUZZ
@given(data=st.data())
def test_corrupted_real_tiles_pass_or_raise_only_the_documented_error(
    tmp_path: Path, real_tile: bytes, data: st.DataObject
) -> None:
    body = bytearray(real_tile)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        at = data.draw(st.integers(0, len(body) - 1), label="at")
        body[at] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "flipped.tif"
    path.write_bytes(bytes(body))
    with contextlib.suppress(TileValidationError):
        validate_geotiff(path, TILE, decode=True)
    assert isinstance(TileStore(tmp_path).verify("flipped.tif", TILE, None), str | None)


def test_a_tile_whose_crs_text_is_not_utf8_is_rejected_not_a_crash(
    tmp_path: Path, real_tile: bytes
) -> None:
    """Found by the search above: a byte of the GeoTIFF's ASCII parameters (the CRS's name)
    changed to 0x80 made rasterio raise UnicodeDecodeError instead of a GDAL error."""
    body = bytearray(real_tile)
    body[420], body[404] = 0x80, 0x01
    path = tmp_path / "flipped.tif"
    path.write_bytes(bytes(body))
    with pytest.raises(TileValidationError):
        validate_geotiff(path, TILE, decode=True)


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_a_streamed_body_is_published_whole_or_not_at_all(
    tmp_path: Path, real_tile: bytes, data: st.DataObject
) -> None:
    if data.draw(st.booleans(), label="real"):
        cut = data.draw(st.integers(0, len(real_tile)), label="cut")
        body = real_tile[:cut]
    else:
        body = data.draw(st.binary(max_size=1024), label="body")
    sizes = data.draw(st.lists(st.integers(1, 700), min_size=1, max_size=8), label="sizes")
    parts, at = [], 0
    while at < len(body):
        step = sizes[len(parts) % len(sizes)]
        parts.append(body[at : at + step])
        at += step
    announced = data.draw(st.sampled_from([None, len(body), len(real_tile)]), label="length")
    store = TileStore(tmp_path / "tiles")
    try:
        stored = asyncio.run(store.write_stream("t.tif", _chunks(parts), TILE, announced))
    except TileValidationError:
        assert not (tmp_path / "tiles" / "t.tif").exists()
    else:
        assert body == real_tile and stored.bytes == len(real_tile)
    assert not list((tmp_path / "tiles").glob("*.part"))
    store.remove_all()


# ---------------------------------------------------------------- region files


@FUZZ
@given(region=geojson_like | json_values)
@example(region="0\n0")  # a path with a newline: the message quotes it, on one line
def test_any_region_object_gives_a_grid_or_a_grid_error(region: Any) -> None:
    try:
        geometry = load_region(region)
        grid = grid_from_region(geometry, "EPSG:4326", 30)
    except GridError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert grid.width > 0 and grid.height > 0


@FUZZ
@given(content=st.binary(max_size=2048) | geojson_like.map(lambda g: json.dumps(g).encode()))
def test_any_region_file_gives_a_geometry_or_a_grid_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "region.geojson"
    path.write_bytes(content)
    try:
        geometry = geometry_from_file(path)
    except GridError as exc:
        assert str(exc)
    else:
        assert isinstance(geometry, dict) and "type" in geometry


def test_a_deeply_nested_region_file_is_a_grid_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.geojson"
    path.write_text('{"type": "Feature", "geometry": ' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(GridError, match="nested too deeply"):
        geometry_from_file(path)
    nested: dict[str, Any] = {"type": "Point", "coordinates": [1, 2]}
    for _ in range(5_000):
        nested = {"type": "Feature", "geometry": nested}
    with pytest.raises(GridError, match="a Feature where a geometry belongs"):
        load_region(nested)
