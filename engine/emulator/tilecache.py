"""Encoded tile bodies, and the facts of evaluated images, kept on disk by request identity,
so each tile is rendered, and each expression evaluated, once.

The emulator stands for Earth Engine, whose compute the performance model charges as
latency; the pixels it renders locally (and the expressions it evaluates) cost CPU that the
client under test needs on a small machine. With a cache folder, a benchmark renders each
tile once and every later request (in any emulator process sharing the folder) reads it back.
Entries are written under a temporary name, synced, then renamed, so a reader sees a whole
entry or none. Keys include a fingerprint of the model's source, so a changed pixel model
never serves an old body.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import uuid
from pathlib import Path

from engine.emulator.render import ImageFacts, PixelGrid

MODEL_MODULES = (
    "engine.emulator.evaluate",
    "engine.emulator.model",
    "engine.emulator.pixels",
    "engine.emulator.catalog",
    "engine.emulator.encode",
    "engine.emulator.render",
    "engine.imaging",
)


def model_fingerprint(modules: tuple[str, ...] = MODEL_MODULES) -> str:
    """A digest of the source of every module that decides a tile's bytes."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode())
        if origin and os.path.exists(origin):
            h.update(Path(origin).read_bytes())
    return h.hexdigest()[:16]


class TileCache:
    """A folder of bodies named by key; blocking calls (run them in a thread)."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root) / fingerprint

    def _path(self, key: str, suffix: str = ".bin") -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> bytes | None:
        """The body stored under `key`, or None."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, body: bytes) -> None:
        """Store `body` under `key` atomically."""
        self._write(self._path(key), body)

    def get_facts(self, key: str) -> ImageFacts | None:
        """The image facts stored under `key`, or None."""
        try:
            data = json.loads(self._path(key, ".facts.json").read_text())
        except FileNotFoundError:
            return None
        grid = data["grid"]
        return ImageFacts(
            PixelGrid(grid["crs"], tuple(grid["transform"]), grid["width"], grid["height"])
            if grid is not None
            else None,
            tuple((band_id, dtype) for band_id, dtype in data["bands"]),
            data["work"],
        )

    def put_facts(self, key: str, facts: ImageFacts) -> None:
        """Store `facts` under `key` atomically."""
        text = json.dumps(dataclasses.asdict(facts))
        self._write(self._path(key, ".facts.json"), text.encode())

    def _write(self, path: Path, data: bytes) -> None:
        """Write under a temporary name, fsync, then rename: never half an entry."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
