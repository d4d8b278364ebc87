"""A ZIP archive whose members are compressed in parallel threads, with ISA-L when it is there.

``zipfile`` deflates one member after the other in the calling thread: 2.5 s
of CPU at its default level 6 for the ~70 MB of text a 20,000-row run writes,
0.7 s at level 1. Measured on one 22 MB catalog.csv: zlib level 1 0.18 s
(9.0 MB), zlib level 6 1.05 s (8.0 MB), ISA-L (``isal``) level 1 0.06 s
(8.4 MB). So members are deflated with ISA-L level 1 (zlib level 1 where
``isal`` is missing), each in a thread of its own (both release the
interpreter lock), and files that are compressed already (Parquet, PNG,
gzip, ZIP) are stored. A CSV file and the ECSV of the same table end with the
same rows: given as ``same_rows``, those are deflated once, for both members
(deflate blocks of each header, flushed to a byte, then the rows' blocks). The
archive itself is plain PKZIP 2.0 (deflate, UTF-8 names), as ``zipfile``,
``unzip`` and every desktop tool read it; members of 2 GiB or more, or more
than 60,000 of them, go through ``zipfile`` (ZIP64) instead.
"""

from __future__ import annotations

import os
import struct
import time
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

#: suffixes stored without compression: they are compressed already (FITS is not: it deflates 2x)
STORED_SUFFIXES = {".parquet", ".png", ".gz", ".fz", ".zip", ".bz2", ".jpg", ".jpeg"}
LEVEL = 1

try:  # ISA-L's deflate: 3x zlib's speed at level 1, and smaller output
    from isal import isal_zlib as _deflater
except ImportError:  # pragma: no cover - a platform without isal wheels
    _deflater = zlib
_SMALL_LIMIT = 2**31 - 1
_MAX_MEMBERS = 60000


def _deflate(path: Path, split: bool = False, rows_of: Future | None = None) -> tuple:
    """(data as stored, method, CRC-32, uncompressed size, shared rows) of one file.

    ``split``: the file's rows (all but its first line) are deflated apart and returned as the last item,
    (rows, their deflate blocks), for a member that ends with the same rows (``rows_of``: that task's future;
    the data are then its head's blocks and those, when the file does end with them).
    """
    raw = path.read_bytes()
    crc = _deflater.crc32(raw)
    if path.suffix.lower() in STORED_SUFFIXES or not raw:
        return raw, zipfile.ZIP_STORED, crc, len(raw), None
    if rows_of is not None:
        shared = rows_of.result()[4]
        if shared is not None and len(shared[0]) and len(shared[0]) < len(raw) and raw.endswith(shared[0]):
            data = _head_blocks(memoryview(raw)[:len(raw) - len(shared[0])]) + shared[1]
            return data, zipfile.ZIP_DEFLATED, crc, len(raw), None
    if split and b"\n" in raw:
        start = raw.index(b"\n") + 1
        rows = memoryview(raw)[start:]
        deflated = _deflater.compress(rows, LEVEL, -15)
        return _head_blocks(memoryview(raw)[:start]) + deflated, zipfile.ZIP_DEFLATED, crc, len(raw), (rows, deflated)
    # one-shot: isal's compressobj holds the interpreter lock while it deflates, its compress() does not
    return _deflater.compress(raw, LEVEL, -15), zipfile.ZIP_DEFLATED, crc, len(raw), None


def _head_blocks(head) -> bytes:
    """``head`` as deflate blocks that a stream may follow: not final, ending on a byte (zlib's sync flush).

    A deflate stream is a sequence of blocks, each complete in itself but for references back into the
    window; a stream deflated on its own refers to nothing before it, so these blocks followed by the
    rows' stream decompress to head + rows.
    """
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return c.compress(head) + c.flush(zlib.Z_SYNC_FLUSH)


def _dos_time(path: Path) -> tuple[int, int]:
    t = time.localtime(max(path.stat().st_mtime, 315532800))  # ZIP dates start in 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def write_zip(target: Path, members: Iterable[tuple[Path, str]], check: Callable[[], None] = lambda: None,
              threads: int | None = None, same_rows: Iterable[tuple[Path, Path]] = ()) -> Path:
    """Write ``target`` (a path the caller replaces atomically) from (file, name in the archive) pairs.

    ``check`` is called between members (it raises to cancel). ``same_rows``: pairs of member files
    (a, b), a before b, where b probably ends with a's rows (all but a's first line): a CSV file and
    the ECSV of the same table. Those rows are then deflated once for both (11 MB, 30 ms of CPU for
    a 20,000-row catalogue); b is deflated whole where it does not end with them.
    """
    members = list(members)
    if len(members) > _MAX_MEMBERS or any(p.stat().st_size > _SMALL_LIMIT for p, _ in members):
        return _write_zip64(target, members, check)
    threads = threads or min(4, os.cpu_count() or 1)
    order = {path: i for i, (path, _) in enumerate(members)}
    partner = {b: a for a, b in same_rows if a in order and b in order and order[a] < order[b]}
    heads: dict[Path, Future | None] = {a: None for a in partner.values()}
    central = []
    with open(target, "wb") as fh, ThreadPoolExecutor(threads, thread_name_prefix="rpp-zip") as pool:

        def submit(path: Path) -> Future:
            # a member that shares its rows waits for the earlier task that deflates them: submitted
            # before it to a first-in first-out pool, that task is running or done, never waiting itself
            future = pool.submit(_deflate, path, path in heads, heads.get(partner[path]) if path in partner else None)
            if path in heads:
                heads[path] = future
            return future

        # at most a few members in memory at once: compressed in order, `threads` ahead of the writer
        pending = [submit(p) for p, _ in members[:threads]]
        for i, (path, name) in enumerate(members):
            check()
            data, method, crc, size, _ = pending[i].result()
            if i + threads < len(members):
                pending.append(submit(members[i + threads][0]))
            pending[i] = None  # type: ignore[call-overload]  # free the member once written
            if path in partner:
                heads.pop(partner[path], None)  # its rows too
            encoded = name.encode("utf-8")
            flags = 0x800 if not name.isascii() else 0
            mtime, mdate = _dos_time(path)
            offset = fh.tell()
            if offset + len(data) + 200 > _SMALL_LIMIT:
                fh.close()
                return _write_zip64(target, members, check)
            fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, mtime, mdate, crc, len(data), size,
                                 len(encoded), 0) + encoded)
            fh.write(data)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, flags, method, mtime, mdate, crc,
                                       len(data), size, len(encoded), 0, 0, 0, 0, (0o100644 << 16), offset) + encoded)
        start = fh.tell()
        directory = b"".join(central)
        fh.write(directory)
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory), start, 0))
    return Path(target)


def _write_zip64(target: Path, members: list[tuple[Path, str]], check: Callable[[], None]) -> Path:
    with zipfile.ZipFile(target, "w", allowZip64=True) as zf:
        for path, name in members:
            check()
            stored = path.suffix.lower() in STORED_SUFFIXES
            zf.write(path, name, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                     compresslevel=None if stored else LEVEL)
    return Path(target)
