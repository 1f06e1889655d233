"""The merge that runs beside the fetch, against real tile files in a real tile store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import rasterio
from test_merge import random_data, write_tile

from engine.fetch import tile_name
from engine.grid import Grid, TilePlan, Window
from engine.live_merge import LiveMerge, interleave_for
from engine.spec import JobSpec
from engine.tilestore import TileStore, sha256_file
from state import TileRecord

GRID = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), 1536, 1024)
BANDS = ("B2", "B3", "B4")


def spec_for(output: Path) -> JobSpec:
    return JobSpec("{}", GRID, BANDS, "uint16", 0, str(output))


def record(tile_id: int, plan: TilePlan, checksum: str | None) -> TileRecord:
    w = plan.window
    return TileRecord(
        tile_id, None, w.row_off, w.col_off, w.height, w.width, plan.band_start, plan.band_stop,
        "done", 1, None, None, None, None, checksum, tile_name(tile_id), None, None, None, 0.0,
    )  # fmt: skip


def tile_records(folder: Path, data: np.ndarray) -> list[TileRecord]:
    """Six 512 x 512 tiles stored under their state names, as the fetch leaves them."""
    folder.mkdir()
    records = []
    for index, (row, col) in enumerate((r, c) for r in (0, 512) for c in (0, 512, 1024)):
        plan = TilePlan(Window(row, col, 512, 512), 0, len(BANDS))
        written = write_tile(folder, GRID, plan, data)
        path = written.rename(folder / tile_name(index + 1))
        records.append(record(index + 1, plan, sha256_file(path)))
    return records


def test_tiles_go_into_the_output_while_others_are_awaited_and_a_changed_one_is_reported(
    tmp_path: Path,
) -> None:
    data = random_data(GRID, len(BANDS), "uint16")
    store = TileStore(tmp_path / "tiles")
    records = tile_records(store.root, data)
    output = tmp_path / "out.tif"
    spec = spec_for(output)
    earlier, fetched_now = records[:3], records[3:]
    changed = store.final_path(earlier[1].path or "")
    body = bytearray(changed.read_bytes())
    body[-100:] = bytes(255 - b for b in body[-100:])
    changed.write_bytes(bytes(body))  # same size, other pixels: only the hash can tell

    async def scenario() -> tuple[list, int]:
        live = LiveMerge(spec, store, overwrite=False, interleave=interleave_for(spec, []))
        try:
            live.start()
            for tile in earlier:
                live.offer(tile, tile.path or "", tile.checksum, earlier=True)
            for tile in fetched_now[:2]:
                live.offer(tile, tile.path or "", tile.checksum, earlier=False)
            resets = await live.settle()
            written_before_the_end = live._builder.written_bytes if live._builder else 0
            assert not output.exists()
            # The changed tile is fetched again (here: rewritten from the source) and offered.
            write_tile(store.root, GRID, _plan(earlier[1]), data).replace(changed)
            again = record(earlier[1].id, _plan(earlier[1]), sha256_file(changed))
            live.offer(again, again.path or "", again.checksum, earlier=False)
            await live.settle()
            done = [*records[:1], again, *records[2:]]
            await asyncio.wrap_future(live.finish_in_thread(done))  # writes the last tile
            return resets, written_before_the_end
        finally:
            live.close()

    resets, written = asyncio.run(scenario())
    assert [(r.tile_id, r.reason) for r in resets] == [(earlier[1].id, "checksum mismatch")]
    assert written == 4 * 512 * 512 * len(BANDS) * 2  # 2 earlier + 2 new, before the end
    with rasterio.open(output) as dataset:
        np.testing.assert_array_equal(dataset.read(), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "tiles"]


def test_closing_before_the_end_leaves_no_output_and_no_temporary_file(tmp_path: Path) -> None:
    data = random_data(GRID, len(BANDS), "uint16")
    store = TileStore(tmp_path / "tiles")
    records = tile_records(store.root, data)
    spec = spec_for(tmp_path / "out.tif")

    async def scenario() -> None:
        live = LiveMerge(spec, store, overwrite=False, interleave="PIXEL")
        live.start()
        for tile in records[:4]:
            live.offer(tile, tile.path or "", tile.checksum, earlier=False)
        await live.settle()
        live.close()  # Ctrl-C during the fetch

    asyncio.run(scenario())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


def test_an_error_only_turns_the_live_merge_off(tmp_path: Path) -> None:
    data = random_data(GRID, len(BANDS), "uint16")
    store = TileStore(tmp_path / "tiles")
    records = tile_records(store.root, data)
    spec = spec_for(tmp_path / "out.tif")
    store.final_path(records[0].path or "").write_bytes(b"II*\x00 not a tiff at all")

    async def scenario() -> LiveMerge:
        live = LiveMerge(spec, store, overwrite=False, interleave="PIXEL")
        live.start()
        for tile in records:
            live.offer(tile, tile.path or "", tile.checksum, earlier=False)
        await live.settle()
        live.close()
        return live

    live = asyncio.run(scenario())
    assert not live.active
    assert "cannot read tile" in str(live.failure)
    with pytest.raises(type(live.failure)):
        raise live.failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


def _plan(tile: TileRecord) -> TilePlan:
    return TilePlan(Window(*tile.window), tile.band_start, tile.band_stop)


def test_the_layout_is_band_interleaved_only_when_a_window_lacks_bands(tmp_path: Path) -> None:
    spec = spec_for(tmp_path / "o.tif")
    assert interleave_for(spec, []) == "PIXEL"
    assert interleave_for(spec, [(0, 0, 512, 512, 0, 1), (0, 0, 512, 512, 1, 3)]) == "PIXEL"
    assert interleave_for(spec, [(0, 0, 512, 512, 0, 1), (0, 0, 256, 512, 1, 3)]) == "BAND"
