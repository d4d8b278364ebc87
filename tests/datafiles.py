"""The one way tests reach the real data kept in ``tests/data`` (copied from ../shared/data).

A missing file is a test failure, never a skip: the repository must stand on its own.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def data_file(relative: str) -> Path:
    """Path of ``tests/data/<relative>``; raises FileNotFoundError (the test fails) when absent."""
    path = DATA / relative
    if not path.exists():
        raise FileNotFoundError(f"test data file missing: {path} (tests/data is part of the repository; "
                                "restore it with git checkout -- tests/data)")
    return path


_UNPACKED: Path | None = None


def data_unpacked(relative: str) -> Path:
    """A plain (decompressed) copy of ``tests/data/<relative>``, for tests that read raw bytes or sizes.

    ``relative`` names the stored file (``images/M6707HH.fits.gz``); the copy lives in a
    temporary folder for the whole test session and is made once.
    """
    import atexit
    import gzip
    import shutil
    import tempfile

    global _UNPACKED
    source = data_file(relative)
    if source.suffix != ".gz":
        return source
    if _UNPACKED is None:
        _UNPACKED = Path(tempfile.mkdtemp(prefix="rpp-test-data-"))
        atexit.register(shutil.rmtree, _UNPACKED, True)
    target = _UNPACKED / Path(relative).with_suffix("")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        part.write_bytes(gzip.decompress(source.read_bytes()))
        part.replace(target)
    return target
