"""Atomic file writes: the one way RPP puts a file on disk.

Every file is written under a temporary name in the same folder
(``.<name>.<pid>.<thread>.part``) and renamed over the target when complete,
so a crash, a full disk or a cancelled run leaves the old file or the new one,
never a torn one; the ``.part`` suffix is what
:func:`rpp_core.rundir.remove_partial_files` sweeps after a failed run. The
process and thread in the name let several writers (batch workers, the
watcher, the app) aim at one file at once: the last rename wins.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

PART_SUFFIX = ".part"


def part_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_path` uses for ``path`` in this process and thread."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{PART_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    The writer may create the temporary file any way it likes (``Table.write``,
    ``HDU.writeto``, ``zipfile``). ``mode`` creates it empty with those
    permissions first, so a secret is never readable by others, not even
    half-written. ``fsync`` flushes it to the disk before the rename (ledgers:
    survive a power cut). On an exception the temporary file is removed.
    """
    path = Path(path)
    tmp = part_path(path)
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
            os.chmod(tmp, mode)  # the umask may have cut the bits os.open asked for
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; the path."""
    with atomic_path(path, mode=mode, fsync=fsync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, mode: int | None = None, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; the path."""
    return write_bytes(path, text.encode("utf-8"), mode=mode, fsync=fsync)
