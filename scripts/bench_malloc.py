"""A/B of the command line's glibc mmap-threshold setting on whole-job peak memory.

Runs the demo's composite (Nanjing, 8 bands, float32, 30 m, ~500 MB) against a clean-profile
emulator through `eefetch composite`, alternating runs with the setting off and on, and
prints wall time and peak RSS (from /usr/bin/time -v) for each.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread

REPO = Path(__file__).resolve().parents[1]
WITHOUT = (
    "import sys, engine.cli as c; c.return_large_buffers_to_the_system = lambda: None; "
    "sys.argv[0] = 'eefetch'; c.main()"
)


def run(url: str, output: Path, setting_on: bool) -> tuple[float, int]:
    entry = ["-m", "engine.cli"] if setting_on else ["-c", WITHOUT]
    command = ["/usr/bin/time", "-v", sys.executable, *entry, "composite"]
    command += ["--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10"]
    command += ["--bands", "B[1-8]", "--region", str(REPO / "engine/data/nanjing.geojson")]
    command += ["--crs", "EPSG:4326", "--scale", "30", "-o", str(output), "--ee-url", url]
    command += ["--quiet", "--overwrite"]
    shutil.rmtree(output.parent, ignore_errors=True)
    output.parent.mkdir(parents=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert wall and rss, done.stderr
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, int(rss.group(1)) // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eefetch-malloc-"))
    with EmulatorThread(EmulatorConfig.from_profile("clean", seed=1)) as emulator:
        for pair in range(args.pairs):
            for setting_on in (False, True):
                wall, rss = run(emulator.url, work / "run" / "out.tif", setting_on)
                state = "on " if setting_on else "off"
                print(f"pair {pair + 1} setting {state}: wall {wall:.1f} s, peak RSS {rss} MB")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
