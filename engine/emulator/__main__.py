"""`python -m engine.emulator`: the emulator's command (`eefetch emulator`, in engine.cli) under
the module's name, so that its options are declared once."""

from __future__ import annotations

import sys


def main() -> None:
    from engine.cli import emulator

    emulator.main(
        sys.argv[1:], prog_name="python -m engine.emulator", help_option_names=["-h", "--help"]
    )


if __name__ == "__main__":
    main()
