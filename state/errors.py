"""The roots of every error eefetch raises on purpose, and the state layer's own.

They live here, in the lowest package, so that the state store's own errors belong to the same
tree as the engine's (``engine/errors.py`` builds the rest of it on these): a program that
calls eefetch catches :class:`EefetchError` and has everything, and the command line turns any
of them into one line.
"""

from __future__ import annotations


class EefetchError(Exception):
    """Something eefetch cannot do; ``str()`` is one line: what is wrong, then what to do."""


class UserError(EefetchError):
    """The user has to act before this can go on: fix an argument, free disk space, stop the
    other process, reach the network."""


class IncompleteError(EefetchError):
    """The job stopped with work left and everything done so far saved: running the same
    command (or call) again carries on."""


class StateError(UserError):
    """A problem with the state (a file or a database) that the user must act on; str() is one
    line: what, then what to do."""


class NoJobError(StateError):
    """The state holds no job yet (or none of that name): a reader has nothing to show."""


class JobExistsError(StateError):
    """The job to create exists already (on a server: another worker created it first)."""


class JobLockedError(StateError):
    """Another live process holds the job's lock."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


__all__ = [
    "EefetchError",
    "IncompleteError",
    "JobExistsError",
    "JobLockedError",
    "NoJobError",
    "StateError",
    "UserError",
]
