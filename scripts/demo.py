"""The offline demo: the tutorial's composite of Huainan through eefetch, interrupted and resumed.

Starts the bundled Earth Engine emulator in its own process, then does what a user of the
tutorial would: `eefetch composite --dry-run` to see the size, `--preview` for a true-colour
look, the download itself, stopped with Ctrl-C (SIGINT) part way, the same command again, and
`eefetch status`. The emulator's own accounting shows that finished tiles were not fetched
again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.testing.cli import emulator_process

REPO = Path(__file__).resolve().parents[1]


def tiles_done(state: Path) -> tuple[int, int]:
    """(done, total) read from the state database while the download runs."""
    from state import Store

    if not state.exists():
        return 0, 0
    try:
        with Store.open(state, create=False) as store:
            counts = store.counts()
    except Exception:
        return 0, 0
    total = sum(v for k, v in counts.items() if k != "split")
    return counts.get("done", 0), total


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as answer:
        return json.load(answer)


def main() -> int:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background, the demo would pass an ignored Ctrl-C on to the eefetch it
        # interrupts, and the interruption it shows would never happen.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--profile", default="realistic", choices=["clean", "realistic", "flaky", "hostile"]
    )
    parser.add_argument("--scale", type=float, default=30.0, help="metres per pixel")
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo-output")
    parser.add_argument(
        "--interrupt-at",
        type=float,
        default=0.4,
        help="fraction of tiles after which the first run is interrupted",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    if args.output_dir.exists():
        shutil.rmtree(args.output_dir)
    args.output_dir.mkdir(parents=True)
    output = args.output_dir / "huainan-s2-2022-median.tif"
    state = output.with_name(output.name + ".eefetch.db")

    emulator = contextlib.ExitStack()
    _, url = emulator.enter_context(
        emulator_process("--profile", args.profile, "--seed", str(args.seed))
    )
    print(f"demo: emulator ({args.profile} profile) at {url}", flush=True)
    region = str(REPO / "engine" / "data" / "huainan.geojson")
    command = [sys.executable, "-m", "engine.cli", "composite"]
    command += ["--collection", "COPERNICUS/S2_SR_HARMONIZED"]
    command += ["--start", "2022-01-01", "--end", "2022-12-31", "--max-cloud", "10"]
    command += ["--cloud-mask", "qa60", "--bands", "B[1-8]", "--reducer", "median"]
    command += ["--region", region, "--crs", "EPSG:4326", "--scale", str(args.scale)]
    command += ["-o", str(output), "--ee-url", url]
    try:
        print("demo: $ eefetch " + " ".join(command[3:]) + " --dry-run", flush=True)
        subprocess.run([*command, "--dry-run"], cwd=REPO, check=True)
        preview = args.output_dir / "huainan-preview.png"
        subprocess.run(
            [*command, "--preview", str(preview)], cwd=REPO, check=True, stdout=subprocess.DEVNULL
        )
        print(f"demo: true-colour preview written to {preview}", flush=True)
        print("demo: $ eefetch " + " ".join(command[3:]), flush=True)
        first = subprocess.Popen(command, cwd=REPO)
        interrupted = False
        while first.poll() is None:
            done, total = tiles_done(state)
            if total and done >= max(1, int(total * args.interrupt_at)):
                print(f"\ndemo: {done}/{total} tiles done: pressing Ctrl-C", flush=True)
                first.send_signal(signal.SIGINT)
                interrupted = True
                break
            time.sleep(0.2)
        first.wait(timeout=120)
        if interrupted:
            done, total = tiles_done(state)
            print(f"demo: stopped with {done}/{total} tiles saved in {state}", flush=True)
            print("demo: running the same command again to resume", flush=True)
            second = subprocess.run(command, cwd=REPO, check=False)
            if second.returncode != 0:
                print("demo: the resumed run did not finish; see the messages above")
                return second.returncode
        elif first.returncode != 0:
            return first.returncode
        subprocess.run(
            [sys.executable, "-m", "engine.cli", "status", str(state)], cwd=REPO, check=False
        )
        served = stats(url)
        repeats = [item for item in served.get("tiles_served", []) if item["count"] > 1]
        print(
            f"demo: the emulator served {len(served.get('tiles_served', []))} distinct tiles; "
            f"{len(repeats)} were served twice (at most the tiles in flight at the interrupt)"
        )
    finally:
        emulator.close()

    import rasterio

    with rasterio.open(output) as dataset:
        print(f"demo: {output}")
        print(
            f"demo:   {dataset.width} x {dataset.height} pixels, {dataset.count} bands "
            f"{dataset.descriptions}, {dataset.dtypes[0]}, {dataset.crs}, "
            f"{output.stat().st_size / 1e6:.0f} MB on disk"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
