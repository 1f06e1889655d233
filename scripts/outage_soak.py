#!/usr/bin/env python3
"""Kill the proxy in the middle of a job for a long time, bring it back, and report.

The job (18 tiles through tinyproxy, against the emulator) must wait the outage out with
eefetch's default probe intervals (doubling up to 5 minutes), finish without a failed tile
and with its attempts intact, and equal the oracle. Not run in CI: the default outage is
30 minutes. `tests/test_outage.py` is the same with a few seconds.

    .venv/bin/python scripts/outage_soak.py                       # 30 minutes
    .venv/bin/python scripts/outage_soak.py --outage-minutes 3 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from engine.scheduler import SchedulerOptions
from engine.testing.campaigns import run_through_outage
from engine.testing.oracle import assert_matches_oracle

REPO = Path(__file__).resolve().parents[1]

START = "<!-- outage-soak:start -->"
END = "<!-- outage-soak:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-minutes", type=float, default=30.0)
    parser.add_argument("--kill-after", type=int, default=6, help="tiles done before the kill")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--max-probe-interval",
        type=float,
        default=SchedulerOptions().max_probe_interval,
        help="longest wait between two probes (eefetch's default)",
    )
    parser.add_argument("--write", action="store_true", help="update docs/RELIABILITY.md")
    args = parser.parse_args()
    scheduler = SchedulerOptions(
        concurrency=args.concurrency, max_probe_interval=args.max_probe_interval
    )
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="eefetch-soak-") as folder:
        report = run_through_outage(
            Path(folder),
            outage_s=args.outage_minutes * 60,
            kill_after=args.kill_after,
            scheduler=scheduler,
        )
        assert_matches_oracle(report.output, report.state_path)
    lines = [*report.lines(), "merged file equals the oracle: yes"]
    print("\n".join(lines))
    if not (report.complete and report.failed == 0):
        raise SystemExit("the job did not survive the outage")
    if args.write:
        command = shlex.join(["python", "scripts/outage_soak.py", *sys.argv[1:]])
        machine = f"{platform.node() or 'unknown'}, {platform.platform()}, {os.cpu_count()} CPUs"
        block = "\n".join(
            [
                START,
                f"Command: `{command}`  ",
                f"Run: started {started} on {machine}.",
                "",
                *(f"- {line}" for line in lines),
                END,
            ]
        )
        path = REPO / "docs" / "RELIABILITY.md"
        content = path.read_text()
        if START not in content or END not in content:
            raise SystemExit(f"{path} has no {START} ... {END} block to replace")
        path.write_text(content.split(START, 1)[0] + block + content.split(END, 1)[1])


if __name__ == "__main__":
    main()
