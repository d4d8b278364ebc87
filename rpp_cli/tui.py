"""``rpp`` and ``rpp tui [PATH]``: the terminal app."""

from __future__ import annotations


def cmd_tui(args) -> int:
    from rpp_tui.app import run_app

    return run_app(getattr(args, "path", None), getattr(args, "profile", None))


def register(sub) -> None:
    p = sub.add_parser("tui", help="open the terminal app (same as plain `rpp`)")
    p.add_argument("path", nargs="?", help="folder or frame to start in")
    p.add_argument("--profile", "-p")
    p.set_defaults(func=cmd_tui)
