"""The errors the state layer raises for the user to act on."""

from __future__ import annotations


class StateError(Exception):
    """A problem with the state (a file or a database) that the user must act on; str() is one
    line: what, then what to do."""


class JobLockedError(StateError):
    """Another live process holds the job's lock."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
