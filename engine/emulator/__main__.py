"""`python -m engine.emulator`: serve the emulator with any profile and the server knobs.

`eefetch emulator` is the user's command; this one also reaches the server models and the
knobs benchmarks need (tile cache, render processes, shaping off).
"""

from __future__ import annotations

import argparse

from engine.emulator.config import PROFILES, EmulatorConfig
from engine.emulator.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.emulator",
        description="Serve the offline Earth Engine emulator; prints its URL on the first line.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--profile", default="realistic", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault model")
    parser.add_argument("--no-limits", action="store_true", help="no limits, quota or faults")
    parser.add_argument(
        "--no-shaping", action="store_true", help="no latency or bandwidth shaping (limits kept)"
    )
    parser.add_argument("--tile-cache", metavar="DIR", help="keep rendered tiles in DIR")
    parser.add_argument(
        "--render-processes", type=int, default=0, help="render in N processes (0: threads)"
    )
    args = parser.parse_args(argv)
    config = EmulatorConfig.from_profile(
        args.profile,
        seed=args.seed,
        no_limits=args.no_limits,
        shaping=not args.no_shaping,
        tile_cache_dir=args.tile_cache,
        render_processes=args.render_processes,
    )
    serve_forever(config, args.host, args.port)


if __name__ == "__main__":
    main()
