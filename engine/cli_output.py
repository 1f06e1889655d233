"""What the commands print: job status, tables of jobs, preview results.

Plain text for people on stdout (errors and progress go to stderr), ``--json`` for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def report_preview(result: Any, quiet: bool) -> None:
    if not quiet:
        ranges = ", ".join(
            f"{b} {lo:.4g}..{hi:.4g}"
            for b, lo, hi in zip(result.bands, result.min, result.max, strict=False)
        )
        click.echo(f"eefetch: {result.width} x {result.height} picture of {ranges}", err=True)
    click.echo(str(result.path))


def show_job(row: Any) -> None:
    from engine.progress import format_bytes

    counts = row.tiles
    click.echo(f"job:     {row.output}")
    click.echo(f"state:   {row.state_label} ({row.status})")
    click.echo(
        "tiles:   "
        + ", ".join(
            f"{counts[k]} {k.replace('_', ' ')}"
            for k in ("done", "pending", "in_flight", "failed", "split")
        )
        + f" ({row.percent:.0f}% done)"
    )
    click.echo(
        f"fetched: {format_bytes(row.bytes_done)} of about {format_bytes(row.expected_bytes)}"
    )
    for item in row.last_errors:
        click.echo(f"error:   tile {item['tile']}: {item['error']}")
    if row.workers:
        from engine.inventory import worker_table

        alive = sum(w["state"] == "alive" for w in row.workers)
        click.echo(f"workers: {len(row.workers)} ({alive} alive)")
        for line in worker_table(row.workers).splitlines():
            click.echo(f"  {line}")
    hint = next_step(row)
    if hint:
        click.echo(f"next:    {hint}")


def next_step(row: Any) -> str:
    from state import is_database_url

    if row.status == "merged" or row.running:
        return ""
    if is_database_url(row.state):
        if row.status == "downloaded":
            return f"eefetch merge {row.state} --job {row.name}"
        return f"eefetch worker --state {row.state} --job {row.name}  (on any machine)"
    if row.status == "downloaded":
        return f"eefetch merge {row.state}"
    return f"eefetch resume {row.state}  (or run the same download command again)"


def status_json(row: Any) -> dict[str, Any]:
    """The fields scripts relied on before (state, output, status, tiles, bytes_done,
    last_errors), plus the rest of the row."""
    data: dict[str, Any] = row.to_dict()
    return data


def show_jobs(paths: list[Path], folder: str, as_json: bool, *, totals: bool) -> None:
    from engine import inventory

    show_rows([inventory.read_job(p) for p in paths], folder, as_json, totals=totals)


def show_rows(rows: list[Any], folder: str, as_json: bool, *, totals: bool) -> None:
    """Jobs as a table (or JSON), with a line of totals under it if asked."""
    from engine import inventory

    if as_json:
        click.echo(json.dumps([status_json(r) for r in rows], indent=2))
        return
    if not rows:
        from state import is_database_url

        where = "in" if is_database_url(folder) else "under"
        looked = "" if is_database_url(folder) else " (looked for *.eefetch.db)"
        click.echo(f"no eefetch jobs {where} {folder}{looked}")
        return
    click.echo(inventory.table(rows))
    if totals:
        click.echo(inventory.totals(rows))
