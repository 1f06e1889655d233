"""`eefetch clean` also removes what jobs whose state file was deleted left behind."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from engine.cli import main
from engine.live_merge import checkpoint_path
from engine.merge import OutputBuilder
from engine.paths import default_state_path, tiles_folder
from state import Store


def kept_output(output: Path) -> list[Path]:
    """What a stopped run keeps of an unfinished output: the file and its checkpoint."""
    temp, checkpoint = OutputBuilder.temp_for(output), checkpoint_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"II*\x00" + bytes(4000))
    checkpoint.write_text('{"version": 1}')
    return [temp, checkpoint]


def test_clean_removes_orphaned_unfinished_outputs_and_tile_folders(tmp_path: Path) -> None:
    orphan = kept_output(tmp_path / "sub" / "city.tif")  # its state file was deleted
    orphan_tiles = tiles_folder(default_state_path(tmp_path / "sub" / "city.tif"))
    orphan_tiles.mkdir()
    (orphan_tiles / "t00000001.tif").write_bytes(bytes(100))
    # A job that still has its state: nothing of it is an orphan.
    alive = kept_output(tmp_path / "alive.tif")
    Store.open(default_state_path(tmp_path / "alive.tif")).close()
    alive_tiles = tiles_folder(default_state_path(tmp_path / "alive.tif"))
    alive_tiles.mkdir()
    # An unfinished output without a checkpoint may be a running job's: never touched.
    running = OutputBuilder.temp_for(tmp_path / "running.tif")
    running.write_bytes(bytes(10))

    dry = CliRunner().invoke(main, ["clean", str(tmp_path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    for path in [*orphan, orphan_tiles]:
        assert f"would remove {path} (" in dry.stdout
        assert path.exists()
    assert str(tmp_path / "alive") not in dry.stdout and "running" not in dry.stdout

    done = CliRunner().invoke(main, ["clean", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert not any(path.exists() for path in [*orphan, orphan_tiles])
    assert all(path.exists() for path in [*alive, alive_tiles, running])
    assert "removed 3 item(s)" in done.stderr
