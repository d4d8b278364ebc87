"""Where RPP keeps its files.

Every directory is created on demand. Environment variables override the
platformdirs defaults, so tests and services can isolate themselves:

``RPP_CONFIG_DIR``  profiles (``profiles/*.toml``) and ``secrets.toml`` (0600)
``RPP_CACHE_DIR``   catalogue answers cache
``RPP_WORKSPACE``   default parent folder of run folders
``RPP_INDEX_DIR``   astrometry.net index files built by ``rpp index build`` (searched by the solver)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "rpp"


def _dir(env: str, default: str, create: bool = True) -> Path:
    path = Path(os.environ.get(env) or default).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    return _dir("RPP_CONFIG_DIR", platformdirs.user_config_dir(APP))


def profiles_dir() -> Path:
    path = config_dir() / "profiles"
    path.mkdir(parents=True, exist_ok=True)
    return path


def secrets_path() -> Path:
    return config_dir() / "secrets.toml"


def cache_dir(create: bool = True) -> Path:
    return _dir("RPP_CACHE_DIR", platformdirs.user_cache_dir(APP), create)


def catalog_cache_dir() -> Path:
    """Where catalogue answers are kept (``<cache>/catalogs``), created on first write.

    Only named here: a cache folder that cannot be made must not stop a run
    (the cache says so in a warning and the run goes on without it).
    """
    return cache_dir(create=False) / "catalogs"


def index_dir(create: bool = True) -> Path:
    """Where ``rpp index build`` writes index files and the solver looks for them by default.

    ``RPP_INDEX_DIR``, else ``<user data>/rpp/indexes``: data the user built, kept
    apart from the cache so that clearing the cache keeps them.
    """
    path = Path(os.environ.get("RPP_INDEX_DIR") or Path(platformdirs.user_data_dir(APP)) / "indexes").expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_dir() -> Path:
    return _dir("RPP_WORKSPACE", str(Path(platformdirs.user_data_dir(APP)) / "runs"))


def package_data(name: str) -> Path:
    """Path of a file shipped inside the package (sample frame, sample catalogue)."""
    return Path(__file__).parent / "data" / name
