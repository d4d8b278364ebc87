"""Options shared by the commands that process frames (run, demo, batch, watch) and the one ``--set`` parser."""

from __future__ import annotations

import argparse

from rpp_core.errors import UsageError


def add_frame_options(p: argparse.ArgumentParser, *, catalog: bool = True) -> None:
    """--profile, --out, --catalog, --offline, --hdu, --set, --quiet."""
    p.add_argument("--profile", "-p", help="profile name (in the config dir) or path to a TOML file")
    p.add_argument("--out", "-o", metavar="DIR", help="workspace: parent folder of run folders (default: $RPP_WORKSPACE)")
    if catalog:
        p.add_argument("--catalog", "-c", action="append", metavar="FILE", help="local reference catalogue (repeatable)")
    p.add_argument("--offline", action="store_true", help="use only cached answers and local catalogue files")
    p.add_argument("--hdu", type=int, help="HDU index of the image (default: first image HDU)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a profile setting (repeatable), e.g. photometry.aperture_factors=1.5,2,3")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings, failures and the summary")


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``: the text values go to the profile's one coercion path."""
    changes: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: use section.name=value, e.g. --set detection.threshold_sigma=4")
        changes[key.strip()] = value.strip()
    return changes


def apply_sets(profile, items: list[str] | None):
    """``profile`` with the ``--set`` changes applied and validated."""
    changes = parse_sets(items)
    return profile.replace(**changes) if changes else profile


def profile_from_args(args):
    """The profile named by ``--profile`` (defaults without it) with ``--set`` applied."""
    from rpp_core.settings import load_profile

    return apply_sets(load_profile(getattr(args, "profile", None)), getattr(args, "set", None))
