"""One place for each option: the command line and the Python API cannot drift apart.

Every field of what a download asks for (``DownloadRequest``), how it runs (``RunSettings``)
and where Earth Engine is (``Connection``) must be reachable from ``download``, ``composite``
and ``collection`` on the command line and from ``download_ee_image`` and
``download_ee_image_collection`` in Python, with the same defaults; ``plan`` takes what
decides the tiles. The names users see are the same too, but where geemap named it otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import engine
from engine import api, cli, cli_command, cli_options, defaults, ee_adapter
from engine.ee_adapter import Connection
from engine.request import DownloadRequest, RunSettings

# Fields that are not options of their own: the output is -o / filename; a connection's
# deadline is internal.
NOT_OPTIONS = {"output", "deadline_seconds"}
# geemap's Python names where they differ from the command line's.
PYTHON = {"nodata": "unmask_value", "url": "ee_url"}
CLI = {"url": "ee_url"}


def fields_of(*classes: type) -> set[str]:
    names = {f.name for cls in classes for f in dataclasses.fields(cls)}
    return names - NOT_OPTIONS


def cli_params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params if p.name is not None}


@pytest.mark.parametrize("command", [cli.download, cli.composite, cli.collection])
def test_every_download_option_is_on_the_command_line(command: click.Command) -> None:
    params = cli_params(command)
    wanted = {CLI.get(n, n) for n in fields_of(DownloadRequest, RunSettings, Connection)}
    assert wanted - set(params) == set()


@pytest.mark.parametrize("function", [api.download_ee_image, api.download_ee_image_collection])
def test_every_download_option_is_in_python(function: object) -> None:
    parameters = inspect.signature(function).parameters
    wanted = {PYTHON.get(n, n) for n in fields_of(DownloadRequest, RunSettings, Connection)}
    assert wanted - set(parameters) == set()


@pytest.mark.parametrize("command", [cli.download, cli.composite, cli.collection, cli.worker])
def test_every_download_can_share_its_state_with_other_workers(command: click.Command) -> None:
    params = cli_params(command)
    assert "state" in params and ({"job_name", "job_prefix"} & set(params))
    assert {"project_quota", "lease_seconds", "tile_folder"} <= set(params)


@pytest.mark.parametrize("function", [api.download_ee_image, api.download_ee_image_collection])
def test_python_downloads_can_share_their_state_too(function: object) -> None:
    parameters = inspect.signature(function).parameters
    assert {"state", "job", "project_quota", "lease_seconds", "tile_folder"} <= set(parameters)


def test_the_command_line_and_python_have_the_same_defaults() -> None:
    python = inspect.signature(api.download_ee_image).parameters
    command = cli_params(cli.download)
    for name in fields_of(RunSettings) - {"concurrency", "overwrite"}:
        assert command[name].default == python[name].default == getattr(RunSettings(), name)
    assert command["concurrency"].default is None  # found while running
    assert python["concurrency"].default is None and RunSettings().concurrency is None
    request = DownloadRequest(output=None)
    for name in ("endpoint", "compress"):
        assert command[name].default == python[name].default == getattr(request, name), name
    for name in ("cog", "keep_tiles", "overwrite", "high_volume"):  # flags: off unless given
        assert command[name].is_flag and python[name].default is False, name
    assert command["max_tile_bytes"].default == request.max_tile_bytes


def test_plan_takes_what_decides_the_tiles_and_nothing_it_would_ignore() -> None:
    command = cli_params(cli.plan)
    python = inspect.signature(api.plan).parameters
    tiling = {"endpoint", "max_tile_bytes", "max_tile_dim", "concurrency", "bands", "nodata"}
    assert tiling - set(command) == set()
    assert {PYTHON.get(n, n) for n in tiling} - set(python) == set()
    ignored = {"idle_timeout", "first_byte_timeout", "max_attempts", "max_backoff", "quiet"}
    assert ignored & set(command) == set()


def test_preview_takes_no_option_it_would_ignore() -> None:
    command = cli_params(cli.preview)
    assert {"max_attempts", "idle_timeout", "concurrency", "compress"} & set(command) == set()


def test_choices_come_from_the_engine() -> None:
    command = cli_params(cli.download)
    for name, values in (
        ("dtype", defaults.DTYPES),
        ("endpoint", defaults.ENDPOINTS),
        ("compress", defaults.COMPRESSIONS),
        ("resampling", defaults.RESAMPLINGS),
    ):
        choice = command[name].type
        assert isinstance(choice, click.Choice) and tuple(choice.choices) == values, name
    assert tuple(ee_adapter.CASTS) == defaults.DTYPES
    composite = cli_params(cli.composite)
    for name, values in (("reducer", defaults.REDUCERS), ("clip", defaults.CLIPS)):
        choice = composite[name].type
        assert isinstance(choice, click.Choice) and tuple(choice.choices) == values, name


def test_each_option_is_declared_once() -> None:
    """--bands, -o, --json and --debug were declared over and over; one object now."""
    source = inspect.getsource(cli)
    for flag in ('"--bands"', '"--json"', '"--debug"', '"--quiet"', '"--overwrite"'):
        assert flag not in source, f"{flag} declared in cli.py; use engine.cli_options"
    options = inspect.getsource(cli_options)
    for flag in ('"--json"', '"--quiet"', '"--overwrite"', '"--concurrency"'):
        assert options.count(flag) == 1, flag
    # --debug belongs to the command class: every command has it, none declares it.
    assert '"--debug"' not in options
    assert inspect.getsource(cli_command).count('"--debug"') == 1
    for name, command in cli.main.commands.items():
        debug = [p for p in command.params if "--debug" in getattr(p, "opts", ())]
        assert len(debug) == 1 and not debug[0].expose_value, name


def test_the_package_exports_what_it_lists() -> None:
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    assert engine.EefetchError is engine.UserError.__mro__[1]
    assert {"download_ee_image", "download_ee_image_collection", "plan", "preview"} <= set(
        engine.__all__
    )
    with pytest.raises(AttributeError):
        engine.nothing_of_that_name  # noqa: B018


def test_the_emulators_module_command_is_eefetch_emulator() -> None:
    """`python -m engine.emulator` and `eefetch emulator` take the same options (they once had
    two parsers, and only one reached the server models and HTTPS)."""
    done = subprocess.run(
        [sys.executable, "-m", "engine.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = CliRunner().invoke(cli.main, ["emulator", "--help"], prog_name="eefetch")
    module_help = done.stdout.replace("python -m engine.emulator", "eefetch emulator")
    assert module_help.split() == expected.output.split()  # the same words, wrapped anyhow
