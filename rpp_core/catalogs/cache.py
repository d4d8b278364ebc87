"""On-disk answer cache of the catalogue services, one SQLite store per service (``hishel``).

``<cache_dir>/catalogs/<service>.db`` is a :class:`hishel.AsyncSqliteStorage`:
it keeps each answer with its own time to live, evicts the least recently
used answers beyond ``services.cache_max_mb`` and makes an answer visible only
once it is completely written, so a killed run never leaves half an answer.

What hishel's HTTP transport cannot express is kept here and in
:mod:`.http`: the transport caches only GET/HEAD (our TAP and Astro-Colibri
queries are POSTs), stores a body while it streams, before the client could
check it, and keys by URL. So the client uses hishel's *storage* directly:
the key is our query (cones snapped to a grid), an answer is stored only
after the client parsed it into what it needs, its secrets are redacted first,
and an entry that no longer parses is dropped and fetched again.

Time to live (``services.cache_days`` / ``cache_days_transient``): Gaia,
SIMBAD, VizieR and VSX answers change slowly and live long; SkyBoT and
Astro-Colibri answers depend on the observation epoch (it is in their key)
and on new discoveries, so they live a day.

:func:`cache_info` and :func:`clear_cache` back ``rpp cache info`` and
``rpp cache clear [SERVICE]``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import locations
from ..errors import UsageError
from ..settings import ServicesSettings

#: every service with answers in the cache, in the order ``rpp cache info`` lists them
SERVICES = ("gaia", "simbad", "vsx", "milliquas", "10pc", "skybot", "astrocolibri")
#: answers keyed by the observation epoch, and short-lived
EPOCH_SERVICES = frozenset({"skybot", "astrocolibri"})

# hishel logs storage failures with tracebacks; the client reports them itself in one line
logging.getLogger("hishel").addHandler(logging.NullHandler())
logging.getLogger("hishel").propagate = False


def cache_root(root: Path | str | None = None) -> Path:
    """The cache folder: ``root``, else ``locations.catalog_cache_dir()`` (named, not created)."""
    return Path(root) if root is not None else locations.catalog_cache_dir()


async def _one_chunk(body: bytes):
    yield body


def ttl_seconds(service: str, settings: ServicesSettings) -> float:
    """Time to live of a new answer of ``service`` (seconds)."""
    days = settings.cache_days_transient if service in EPOCH_SERVICES else settings.cache_days
    return float(days) * 86400.0


def _db_files(root: Path, service: str) -> list[Path]:
    db = root / f"{service}.db"
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def has_answers(service: str, root: Path | str | None = None) -> bool:
    """Whether the cache holds any live answer of ``service``: an offline run without one needs
    neither the HTTP client nor its imports (httpx, hishel: 0.2-0.3 s) to know it has none.
    Read-only, as :func:`cache_info`; an unreadable store counts as holding answers (the client says why)."""
    db = cache_root(root) / f"{service}.db"
    if not db.exists():
        return False
    try:
        rows = _read_entries(db)
    except sqlite3.Error:
        return True
    now = time.time()
    return any(chunks is not None and (expires is None or expires > now) for expires, chunks in rows)


def _read_entries(db: Path) -> list[tuple[float | None, int | None]]:
    """``(expires_at, chunk_count)`` of every entry of a store, read-only (hishel's SQLite schema)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
    try:
        return con.execute("SELECT expires_at, chunk_count FROM entries").fetchall()
    finally:
        con.close()


class AnswerCache:
    """The answers of every service, one hishel SQLite storage each (opened on first use).

    Raises :class:`CacheUnavailable` from :meth:`check` when the folder cannot be
    created or written; the client then runs without a cache.
    """

    def __init__(self, root: Path | str | None, settings: ServicesSettings):
        self.root = cache_root(root)
        self.settings = settings
        self._stores: dict = {}

    def check(self) -> None:
        """Make sure answers can be stored: create the folder and write into it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheUnavailable(f"answer cache folder {self.root} cannot be written ({exc.strerror or exc})") from None

    def _store(self, service: str):
        if service not in self._stores:
            from hishel import AsyncSqliteStorage

            self._stores[service] = AsyncSqliteStorage(
                database_path=self.root / f"{service}.db", max_size=int(self.settings.cache_max_mb * 1024 * 1024),
                # readers finish a cached answer within a request, so a short grace before rows are reclaimed
                soft_delete_ttl=30.0)
        return self._stores[service]

    async def get(self, service: str, key: str) -> list[tuple[uuid.UUID, bytes]]:
        """The unexpired answers stored under ``key`` (usually one), newest storage first."""
        out = []
        if service not in self._stores and not (self.root / f"{service}.db").exists():
            return out  # opening a store creates it: nothing to read, and nothing to leave behind
        for entry in await self._store(service).get_entries(key):
            try:
                body = b"".join([chunk async for chunk in entry.response.stream])
            except Exception:  # noqa: BLE001 - an entry removed while read is a miss, not a failure
                continue
            out.append((entry.id, body))
        return out

    async def drop(self, service: str, entry_id: uuid.UUID) -> None:
        await self._store(service).remove_entry(entry_id)

    async def put(self, service: str, key: str, body: bytes, what: str) -> None:
        """Store ``body`` (already redacted) under ``key`` with the service's time to live."""
        from hishel import Headers, Request, Response

        store = self._store(service)
        # the request recorded with the entry is a description, never the URL or body (they may hold secrets)
        request = Request(method="POST", url=f"rpp://{service}/{key}", headers=Headers({"x-rpp-query": what[:500]}))
        response = Response(status_code=200, headers=Headers({"content-length": str(len(body))}),
                            stream=_one_chunk(body))
        entry = await store.create_entry(request, response, key, ttl=ttl_seconds(service, self.settings))
        async for _ in entry.response.stream:  # the storage saves the body as it is read
            pass

    async def aclose(self) -> None:
        for store in self._stores.values():
            try:
                await store.close()
            except Exception:  # noqa: BLE001 - closing a broken store must not fail the run
                pass
        self._stores.clear()


class CacheUnavailable(OSError):
    """The answer cache cannot be used (folder not writable, not creatable)."""


# ---------------------------------------------------------------- rpp cache info / clear

@dataclass(frozen=True)
class ServiceCacheInfo:
    """What ``rpp cache info`` shows for one service."""

    service: str
    answers: int            #: answers that can still be used
    expired: int            #: answers past their time to live, removed as new ones are stored
    size_bytes: int         #: on disk, including SQLite's journal
    ttl_days: float         #: time to live of new answers
    next_expiry: float | None   #: Unix time when the first usable answer expires (None: no answers)
    path: Path


def cache_info(settings: ServicesSettings | None = None, root: Path | str | None = None) -> list[ServiceCacheInfo]:
    """Answers, size and time to live of every service's cache (nothing is created or changed)."""
    settings = settings or ServicesSettings()
    base = cache_root(root)
    now = time.time()
    out = []
    for service in SERVICES:
        files = _db_files(base, service)
        size = sum(p.stat().st_size for p in files if p.exists())
        answers = expired = 0
        next_expiry = None
        if files[0].exists():
            try:
                rows = _read_entries(files[0])
            except sqlite3.Error:
                rows = []
            live = [e for e, chunks in rows if chunks is not None and (e is None or e > now)]
            answers = len(live)
            expired = sum(1 for e, chunks in rows if chunks is not None and e is not None and e <= now)
            finite = [e for e in live if e is not None]
            next_expiry = min(finite) if finite else None
        out.append(ServiceCacheInfo(service=service, answers=answers, expired=expired, size_bytes=size,
                                    ttl_days=ttl_seconds(service, settings) / 86400.0, next_expiry=next_expiry,
                                    path=files[0]))
    return out


@dataclass(frozen=True)
class ClearedCache:
    services: tuple[str, ...]
    freed_bytes: int


def clear_cache(service: str | None = None, root: Path | str | None = None) -> ClearedCache:
    """Delete the cached answers of ``service`` (or of every service); the next run asks again."""
    if service is not None and service not in SERVICES:
        raise UsageError(f"unknown service {service!r}: use one of {', '.join(SERVICES)}")
    base = cache_root(root)
    names = (service,) if service else SERVICES
    freed = 0
    for name in names:
        for p in _db_files(base, name):
            try:
                size = p.stat().st_size
                p.unlink()
                freed += size
            except FileNotFoundError:
                pass
    return ClearedCache(services=names, freed_bytes=freed)
