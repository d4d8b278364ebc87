"""What a batch processes: the frames named or found in folders, and the hash of how they are processed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from ..fitsnames import is_fits_name
from ..settings import Profile


def collect_frames(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """FITS files named or found in folders, absolute, without duplicates, in a stable order.

    Files named explicitly are taken whatever their suffix; folders give the
    FITS files (:func:`rpp_core.fitsnames.is_fits_name`; hidden files excluded).
    Raises :class:`UsageError` naming a path that does not exist.
    """
    frames: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.glob("*")
            found = sorted(p for p in pattern if p.is_file() and is_fits_name(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.exists():
            found = [path]
        else:
            raise UsageError(f"{item}: no such file or folder")
        for p in found:
            p = p.resolve()
            if p not in seen:
                seen.add(p)
                frames.append(p)
    return frames


def profile_hash(profile: Profile, catalog_files=(), hdu: int | None = None, offline: bool | None = None) -> str:
    """Short hash of everything that changes a frame's result (profile name and retention excluded)."""
    data = profile.to_dict()
    data.pop("name", None)
    # retention settings change what is kept, not what a frame gives
    data["output"] = {k: v for k, v in data["output"].items() if k not in ("keep_days", "max_total_gb")}
    data["_catalog_files"] = sorted(str(Path(c).expanduser().resolve()) for c in catalog_files)
    data["_hdu"] = hdu
    data["_offline"] = offline
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
