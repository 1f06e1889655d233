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
    hint = next_step(row)
    if hint:
        click.echo(f"next:    {hint}")


def next_step(row: Any) -> str:
    if row.status == "merged" or row.running:
        return ""
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

    rows = [inventory.read_job(p) for p in paths]
    if as_json:
        click.echo(json.dumps([status_json(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no eefetch jobs under {folder} (looked for *.eefetch.db)")
        return
    click.echo(inventory.table(rows))
    if totals:
        click.echo(inventory.totals(rows))
