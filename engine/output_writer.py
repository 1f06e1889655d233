"""What every output writer shares: its lifetime as a context manager and its one-line errors.

A writer (``merge.OutputBuilder`` for a GeoTIFF, ``zarr_output.ZarrBuilder`` for a Zarr store)
builds its output under a temporary name and publishes it only when complete. Leaving the
``with`` block without ``finish`` or ``suspend`` removes what it wrote; a failure to write
becomes one line that says whether the disk is full. Written once here so that the two writers
cannot drift apart on what a user finds on disk after an error.
"""

from __future__ import annotations

import errno
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Self

from engine.errors import MergeError, OutputExistsError


class AtomicOutput(ABC):
    """An output built under a temporary name: discarded unless published or suspended."""

    output: Path
    # The exceptions that mean "the disk or the file system refused a write": they become one
    # line with the free space; anything else passes through unchanged.
    write_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self) -> None:
        self._published = False
        self._suspended = False

    def __enter__(self) -> Self:
        try:
            self._open()
        except BaseException as exc:
            self._discard()
            raise self._failure(exc) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._published and not self._suspended:
            self._discard()

    @abstractmethod
    def _open(self) -> None:
        """Create (or reopen) the temporary output."""

    @abstractmethod
    def _discard(self) -> None:
        """Close and remove every temporary file; never raises."""

    @abstractmethod
    def _needed_bytes(self) -> int:
        """The most the finished output may take on disk, for the disk-full message."""

    def _failure(self, exc: BaseException) -> BaseException:
        """The error to raise for ``exc``: a refused write becomes one line, after discarding
        the temporary output so that the free space reported counts without it."""
        if isinstance(exc, MergeError) or not isinstance(exc, self.write_errors):
            return exc
        self._discard()
        return write_failure(self.output, self._needed_bytes(), exc)


def output_exists(output: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{output} already exists; pass overwrite=True / --overwrite to replace it"
    )


def write_failure(output: Path, needed: int, exc: BaseException) -> MergeError:
    """One line for a merge that could not write its output: a full disk says so."""
    try:
        free = shutil.disk_usage(output.parent).free
    except OSError:
        free = None
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if full or (free is not None and free < needed):
        room = (
            ""
            if free is None
            else f" ({free / 1e6:.1f} MB free, the merge may need up to {needed / 1e6:.1f} MB)"
        )
        return MergeError(
            f"cannot write {output}: the disk is full{room}; free "
            "some space there and run the same command again (the fetched tiles are kept)"
        )
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return MergeError(
        f"cannot write {output} ({detail}); check that folder and its disk, then run the same "
        "command again (the fetched tiles are kept)"
    )
