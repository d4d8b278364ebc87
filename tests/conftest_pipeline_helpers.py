"""Shared helpers for the end-to-end tests (imported by test modules, not a conftest)."""

from __future__ import annotations

from pathlib import Path

from rpp_core.settings import Profile



def offline_profile(**changes) -> Profile:
    """A profile that needs no network and no index files: for synthetic frames."""
    base = {
        "services.offline": True,
        "services.enabled": [],
        "astrometry.solve": "never",
        "cosmic_rays.niter": 1,
        "output.zip": True,
    }
    base.update(changes)
    return Profile(name="test").replace(**base)
