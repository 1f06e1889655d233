"""The merge that runs beside the fetch, against real tile files in a real tile store."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from test_merge import random_data, write_tile

from engine import job
from engine.grid import Grid, TilePlan, Window
from engine.live_merge import (
    LiveMerge,
    MergeStopped,
    checkpoint_path,
    interleave_for,
    published_by,
)
from engine.merge import OutputBuilder
from engine.spec import JobSpec
from engine.tiles import tile_name, tile_plan
from engine.tilestore import TileStore, sha256_file
from state import NewTile, Store, TileRecord

GRID = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), 1536, 1024)
BANDS = ("B2", "B3", "B4")
UID = "0123456789ab"


def spec_for(output: Path) -> JobSpec:
    return JobSpec("{}", GRID, BANDS, "uint16", 0, str(output))


def record(tile_id: int, plan: TilePlan, checksum: str | None) -> TileRecord:
    w = plan.window
    return TileRecord(
        tile_id, None, w.row_off, w.col_off, w.height, w.width, plan.band_start, plan.band_stop,
        "done", 1, None, None, None, None, checksum, tile_name(UID, tile_id), None, None, None, 0.0,
    )  # fmt: skip


def assert_published_and_nothing_else(output: Path, spec: JobSpec) -> None:
    """The output is published, beside it only the record of publishing it (which the job
    removes once the state says "merged") and the tile folder."""
    assert published_by(output, UID, spec.fingerprint())
    assert sorted(p.name for p in output.parent.iterdir()) == [
        checkpoint_path(output).name,
        "out.tif",
        "tiles",
    ]


def tile_records(folder: Path, data: np.ndarray) -> list[TileRecord]:
    """Six 512 x 512 tiles stored under their state names, as the fetch leaves them."""
    folder.mkdir()
    records = []
    for index, (row, col) in enumerate((r, c) for r in (0, 512) for c in (0, 512, 1024)):
        plan = TilePlan(Window(row, col, 512, 512), 0, len(BANDS))
        written = write_tile(folder, GRID, plan, data)
        path = written.rename(folder / tile_name(UID, index + 1))
        records.append(record(index + 1, plan, sha256_file(path)))
    return records


def six_tiles(tmp_path: Path) -> tuple[np.ndarray, TileStore, list[TileRecord], Path, JobSpec]:
    """Random pixels stored as six fetched tiles under ``tmp_path/tiles``, and the job (its
    output ``tmp_path/out.tif``) they belong to."""
    data = random_data(GRID, len(BANDS), "uint16")
    store = TileStore(tmp_path / "tiles")
    records = tile_records(store.root, data)
    output = tmp_path / "out.tif"
    return data, store, records, output, spec_for(output)


async def run_live(
    spec: JobSpec,
    store: TileStore,
    earlier: list[TileRecord],
    offered: list[TileRecord],
    finish_with: list[TileRecord] | None,
) -> int:
    """One run's live merge: earlier tiles, then fetched ones, then (if given) the finish;
    returns the bytes written before the finish. Closing keeps an unfinished output."""
    live = LiveMerge(spec, UID, store, overwrite=False, interleave="PIXEL")
    try:
        live.start()
        for tile in earlier:
            live.offer(tile, tile.path or "", tile.checksum, earlier=True)
        for tile in offered:
            live.offer(tile, tile.path or "", tile.checksum, earlier=False)
        await live.settle()
        written = live._builder.written_bytes if live._builder else -1
        if finish_with is not None:
            await asyncio.wrap_future(live.finish_in_thread(finish_with))
        return written
    finally:
        live.close()  # Ctrl-C, or tiles left to fetch: the output is kept


def test_tiles_go_into_the_output_while_others_are_awaited_and_a_changed_one_is_reported(
    tmp_path: Path,
) -> None:
    data, store, records, output, spec = six_tiles(tmp_path)
    earlier, fetched_now = records[:3], records[3:]
    changed = store.final_path(earlier[1].path or "")
    body = bytearray(changed.read_bytes())
    body[-100:] = bytes(255 - b for b in body[-100:])
    changed.write_bytes(bytes(body))  # same size, other pixels: only the hash can tell

    async def scenario() -> tuple[list, int]:
        live = LiveMerge(spec, UID, store, overwrite=False, interleave=interleave_for(spec, []))
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
            write_tile(store.root, GRID, tile_plan(earlier[1]), data).replace(changed)
            again = record(earlier[1].id, tile_plan(earlier[1]), sha256_file(changed))
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
    assert_published_and_nothing_else(output, spec)


def test_a_stopped_run_keeps_its_unfinished_output_and_the_next_one_writes_only_the_rest(
    tmp_path: Path,
) -> None:
    data, store, records, output, spec = six_tiles(tmp_path)
    tile_bytes = 512 * 512 * len(BANDS) * 2

    assert asyncio.run(run_live(spec, store, [], records[:4], None)) == 4 * tile_bytes
    assert not output.exists()
    assert checkpoint_path(output).exists()
    # The next run: the four tiles come as earlier ones and are not written again.
    resumed = run_live(spec, store, records[:4], records[4:], records)
    assert asyncio.run(resumed) == 2 * tile_bytes
    np.testing.assert_array_equal(rasterio.open(output).read(), data)
    assert_published_and_nothing_else(output, spec)


def test_an_unfinished_output_touched_since_its_run_stopped_is_written_anew(
    tmp_path: Path,
) -> None:
    data, store, records, output, spec = six_tiles(tmp_path)

    asyncio.run(run_live(spec, store, [], records[:3], None))
    temp = OutputBuilder.temp_for(output)
    with temp.open("r+b") as handle:  # as if a killed run had written more after the stop
        handle.seek(0, 2)
        handle.write(b"\0" * 10)
    anew = run_live(spec, store, records[:3], records[3:], records)
    assert asyncio.run(anew) == 6 * 512 * 512 * len(BANDS) * 2
    np.testing.assert_array_equal(rasterio.open(output).read(), data)
    assert_published_and_nothing_else(output, spec)


def test_an_error_only_turns_the_live_merge_off(tmp_path: Path) -> None:
    _, store, records, _, spec = six_tiles(tmp_path)
    store.final_path(records[0].path or "").write_bytes(b"II*\x00 not a tiff at all")

    async def scenario() -> LiveMerge:
        live = LiveMerge(spec, UID, store, overwrite=False, interleave="PIXEL")
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


def test_the_layout_is_band_interleaved_only_when_a_window_lacks_bands(tmp_path: Path) -> None:
    spec = spec_for(tmp_path / "o.tif")
    assert interleave_for(spec, []) == "PIXEL"
    assert interleave_for(spec, [(0, 0, 512, 512, 0, 1), (0, 0, 512, 512, 1, 3)]) == "PIXEL"
    assert interleave_for(spec, [(0, 0, 512, 512, 0, 1), (0, 0, 256, 512, 1, 3)]) == "BAND"


@pytest.mark.parametrize("published", [True, False])
def test_an_interrupt_while_the_output_is_finished_records_it_only_if_it_was_published(
    tmp_path: Path, published: bool
) -> None:
    """Ctrl-C reaches the job while the merge thread finishes: that thread cannot be
    cancelled, so the job waits for it; a published output is recorded as the job's,
    a merge that stopped at the signal leaves the job unmerged."""
    output = tmp_path / "out.tif"
    started, release = threading.Event(), threading.Event()
    stop = threading.Event()

    def finishing() -> Path:
        started.set()
        release.wait(10)
        if not published and stop.is_set():
            raise MergeStopped
        output.write_bytes(b"the output")
        return output

    async def scenario(store: Store) -> None:
        merging = asyncio.ensure_future(asyncio.to_thread(finishing))
        task = asyncio.ensure_future(job._record_merge(merging, stop, store))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()  # what Ctrl-C does to the job's task
        await asyncio.sleep(0.05)
        assert stop.is_set()  # the merge was told to stop at its next strip
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    with Store.open(tmp_path / "s.db") as store:
        store.create_job("fp", {}, "0", str(output), [NewTile(0, 0, 1, 1, 0, 1)])
        store.set_job_status("downloaded")
        asyncio.run(scenario(store))
        row = store.job()
    assert row is not None
    if published:
        assert (row.status, row.output_path) == ("merged", str(output))
    else:
        assert row.status == "downloaded"
        assert not output.exists()
