"""Every error eefetch raises, in one tree (as httpx's ``_exceptions`` and rasterio's ``errors``).

::

    EefetchError                      catch this one to catch them all
    ├── UserError                     the user has to act; the message says how
    │   ├── InvalidJob                arguments that cannot make a job (CLI exit 2)
    │   │   └── GridError             no grid from these region / crs / scale / transform
    │   ├── SpecError                 a stored job spec that cannot run
    │   ├── SourceError               the image or collection given (an expression, a
    │   │                             script) cannot be read
    │   ├── EarthEngineError          Earth Engine refused: credentials, project, the image
    │   ├── EarthEngineUnreachable    no answer from Earth Engine: network, proxy, timeout
    │   ├── JobError                  this job cannot go on here: another job's state, an
    │   │   │                         output in the way, a folder that cannot be written
    │   │   └── OtherJobError         the state given holds another download
    │   ├── MergeError                the output could not be written (a full disk, ...)
    │   │   └── OutputExistsError
    │   ├── PreviewError              no picture could be made
    │   └── state.StateError          a state file that cannot be used
    │       └── state.JobLockedError  another process holds the job or its output
    └── IncompleteError               stopped with work left, all of it saved: run again
        ├── JobStopped                a failure no tile can get past stopped the run
        ├── DownloadIncomplete        tiles failed or are pending after a run
        └── CollectionIncomplete      some images of a collection did not finish

The roots live in ``state.errors`` (the lowest package) so that the state store's errors are
part of the tree. Failures that eefetch handles itself and never shows as such are outside it:
:class:`FetchError` (one failed tile attempt, judged by ``engine.retry``),
``engine.tilestore.TileValidationError`` and ``engine.live_merge.MergeStopped``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from state.errors import EefetchError, IncompleteError, JobLockedError, StateError, UserError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.collection import CollectionResult
    from engine.job import JobResult


class InvalidJob(UserError):
    """The arguments cannot make a job (an impossible value or combination); nothing was
    fetched."""


class GridError(InvalidJob, ValueError):
    """No pixel grid can be made from the region, CRS, scale or transform given."""


class SpecError(UserError, ValueError):
    """A job spec that cannot run as given (read from an older state file; one being built is
    refused as an :class:`InvalidJob` instead)."""


class SourceError(UserError):
    """The image or collection given cannot be read: a serialized expression that is not one,
    a script that fails or defines nothing to download."""


class EarthEngineError(UserError):
    """Earth Engine answered, and refused: credentials, project, or the image itself."""


class EarthEngineUnreachable(UserError):
    """Earth Engine did not answer: the network, the proxy, or a timeout."""


class JobError(UserError):
    """The job cannot go on here as things stand: the message says what is in the way."""


class OtherJobError(JobError):
    """The state given holds another download (other arguments, or another output): the
    advice differs for one image and for a collection's, so callers can tell it apart.
    ``differs`` says how the two downloads differ."""

    def __init__(self, message: str, differs: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differs = tuple(differs)


class MergeError(UserError):
    """The output could not be written; the fetched tiles are kept."""


class OutputExistsError(MergeError, FileExistsError):
    """The output file exists and overwriting it was not asked for."""


class PreviewError(UserError):
    """No picture could be made of the file or image given."""


class JobStopped(IncompleteError):
    """A failure that no tile can get past (credentials, disk full) stopped the run."""


class DownloadIncomplete(IncompleteError):
    """Some tiles failed or are still pending; the job is saved and the same call (or
    ``eefetch resume``) retries them."""

    def __init__(self, result: JobResult) -> None:
        counts = result.counts
        first = f" First error: {result.summary.errors[0]}" if result.summary.errors else ""
        super().__init__(
            f"{counts.get('failed', 0)} tile(s) failed and {counts.get('pending', 0)} are still "
            f"pending; run the same command again (or `{result.resume_command}`) to "
            f"retry them.{first}"
        )
        self.result = result


class CollectionIncomplete(IncompleteError):
    """Some images of a collection did not finish; the same call again resumes them."""

    def __init__(self, result: CollectionResult) -> None:
        unfinished = [n for n, r in result.results.items() if not r.complete]
        failed = {**{n: "tiles failed" for n in unfinished}, **result.errors}
        resumable = {n: e for n, e in failed.items() if n not in result.blocked}
        first = next(iter((resumable or failed).items()))
        # An image a JobError stopped says itself what to do; running again cannot help it.
        advice = (
            f"; run the same command again to resume, or see `eefetch status {result.out_dir}`"
            if resumable
            else ""
        )
        super().__init__(
            f"{len(failed)} of {len(result.results) + len(result.errors)} image(s) did not "
            f"finish (first: {first[0]}: {first[1]}){advice}"
        )
        self.result = result


class ErrorKind(enum.Enum):
    """Where in a tile attempt the failure happened."""

    CONNECT = "connect"  # could not reach the server or the proxy
    TIMEOUT = "timeout"  # connect, first byte or idle timeout
    HTTP = "http"  # the server answered with an error status
    BODY = "body"  # the answer was short, cut, or not the GeoTIFF asked for
    EE = "ee"  # the earthengine-api client raised (URL creation)
    DISK = "disk"  # writing the tile failed locally (disk full, permissions)
    INTERNAL = "internal"  # an exception eefetch did not expect: retried, and logged


class FetchError(Exception):
    """One failed tile attempt, described well enough for ``engine.retry`` to decide what to
    do next. Internal: the scheduler consumes it; users see the verdict, not this.

    A plain exception class (not a dataclass): exceptions get their traceback and context
    set as they travel, which frozen or slotted classes do not allow.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        during_download: bool = False,
    ) -> None:
        super().__init__(kind, message, status)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.during_download = during_download  # the GET of an already made URL failed

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{prefix}{self.message}"


__all__ = [
    "CollectionIncomplete",
    "DownloadIncomplete",
    "EarthEngineError",
    "EarthEngineUnreachable",
    "EefetchError",
    "ErrorKind",
    "FetchError",
    "GridError",
    "IncompleteError",
    "InvalidJob",
    "JobError",
    "JobLockedError",
    "JobStopped",
    "MergeError",
    "OtherJobError",
    "OutputExistsError",
    "PreviewError",
    "SourceError",
    "SpecError",
    "StateError",
    "UserError",
]
