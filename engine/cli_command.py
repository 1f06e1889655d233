"""How every ``eefetch`` command runs: eefetch's errors as one line, Ctrl-C as exit 130.

Commands are plain click functions; :class:`Command` wraps their invocation once, instead of
each command guarding itself. Every command has ``--debug``, which shows the traceback instead;
the option belongs to the class, so no command declares or receives it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Any

import click


class OneLineError(click.ClickException):
    """What went wrong and what to do, in one line (exit status 1)."""

    def format_message(self) -> str:
        return self.message


class InvalidInput(OneLineError):
    """Input that cannot make a job: exit status 2, as for any misuse of the command line."""

    exit_code = 2


DEBUG = "eefetch.debug"  # where the --debug flag is kept, in the context's meta


def _keep_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta[DEBUG] = value


class Command(click.Command):
    """A click command whose eefetch errors (and OS errors) end in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                callback=_keep_debug,
                help="Show tracebacks.",
            )
        )

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # The state is committed by now. Leave at once: a worker thread stuck in an Earth
            # Engine API call would otherwise hold the exit until its deadline passes.
            click.echo("eefetch: stopped; run the same command again to resume", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                # `eefetch status | head`: the reader has all it wanted. Say nothing, as any
                # Unix tool that SIGPIPE ends, and point stdout elsewhere so that Python's
                # own flush at exit does not complain either.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise click.exceptions.Exit(128 + signal.SIGPIPE) from exc
            if ctx.meta.get(DEBUG) or not _is_users(exc):
                raise
            raise _one_line_error(exc) from exc


class Group(click.Group):
    """The ``eefetch`` group: its commands are :class:`Command`."""

    command_class = Command


def _stdout_closed() -> bool:
    """Whether standard output is a pipe nobody reads any more (and not a network peer that
    hung up, which is a BrokenPipeError too)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no file under stdout
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


def one_line(exc: BaseException) -> str:
    """An error's message on one line; an OS error names its file."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or text}: {exc.filename}"
    return text


def _is_users(exc: BaseException) -> bool:
    """eefetch's own errors and the operating system's are the user's to act on; anything
    else is a bug, and its traceback is what a bug report needs."""
    from state.errors import EefetchError

    return isinstance(exc, EefetchError | OSError)


def _one_line_error(exc: BaseException) -> OneLineError:
    from engine.errors import InvalidJob

    kind = InvalidInput if isinstance(exc, InvalidJob) else OneLineError
    return kind(one_line(exc))
