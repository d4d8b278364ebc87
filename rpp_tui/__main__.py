"""``python -m rpp_tui [PATH] [--profile NAME]``: open the app without the CLI."""

from __future__ import annotations

import argparse
import sys

from .app import run_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpp_tui", description="RPP terminal app")
    parser.add_argument("path", nargs="?", help="folder to browse or FITS frame to select")
    parser.add_argument("--profile", help="saved profile name or TOML path")
    args = parser.parse_args(argv)
    return run_app(args.path, args.profile)


if __name__ == "__main__":
    sys.exit(main())
