"""Shared async HTTP layer of the catalogue clients: retries, rate limit, cache, cancellation.

One :class:`ServiceClient` (one ``httpx.AsyncClient``) serves every catalogue
service of a run, so connections are pooled and all limits live in one place:

- per-request timeout ``services.timeout_s``;
- retries (``services.retries``) with exponential backoff ``backoff_s * 2**k``
  on connect errors, time-outs, HTTP 5xx and 429; a ``Retry-After`` header
  (seconds or HTTP date) replaces the backoff, up to ``retry_after_max_s``;
- a per-service rate limit (``rate_limit_per_s``: requests started per second);
- cancellation by an ``asyncio.Event`` or a ``Callable[[], bool]`` (raises
  :class:`rpp_core.errors.Cancelled`), as well as ordinary task cancellation;
- an on-disk answer cache (:class:`AnswerCache`) keyed by service and query, so a
  field re-run at night needs no network; in offline mode a cache miss raises
  :class:`OfflineMiss` without touching the network.

Secrets (API keys) are passed in ``secrets`` and replaced by ``***`` in every
message; they never enter cache keys or cache metadata (callers give
``key_extra`` without them).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
from astropy.table import Table

from .. import fsio, locations
from ..errors import Cancelled, ServiceError
from ..settings import ServicesSettings

USER_AGENT = "rpp-photometry-pipeline/0.1 (+catalogue client)"


class ServiceSkipped(ServiceError):
    """The service was not asked (offline, no user id, no observation time): skipped, not failed."""


class OfflineMiss(ServiceSkipped):
    """Offline mode and no cached answer: the service was skipped, not failed."""


class MalformedAnswer(ServiceError):
    """An answer that cannot be read (truncated, not the expected format): retried, never cached."""


# ---------------------------------------------------------------- helpers

def redact(text: str, secrets: dict | None) -> str:
    """Replace every secret value in ``text`` by ``***``."""
    for value in (secrets or {}).values():
        if value and isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return text


def is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, asyncio.Event):
        return cancel.is_set()
    return bool(cancel())


async def run_cancellable(coro, cancel, poll_s: float = 0.05):
    """Await ``coro``; if ``cancel`` fires first, cancel it and raise :class:`Cancelled`."""
    if cancel is None:
        return await coro
    if is_cancelled(cancel):
        coro.close()
        raise Cancelled()
    task = asyncio.ensure_future(coro)
    if isinstance(cancel, asyncio.Event):
        waiter = asyncio.ensure_future(cancel.wait())
    else:
        async def _poll():
            while not cancel():
                await asyncio.sleep(poll_s)
        waiter = asyncio.ensure_future(_poll())
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        waiter.cancel()
        raise
    if task in done:
        waiter.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - the task was cancelled on purpose
        pass
    raise Cancelled()


async def sleep_cancellable(seconds: float, cancel) -> None:
    if seconds > 0:
        await run_cancellable(asyncio.sleep(seconds), cancel)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short_reason(body: bytes, limit: int = 200) -> str:
    """A one-line hint from an error body: a VOTable/UWS error message or the first text."""
    text = body[:20000].decode("utf-8", "replace")
    for marker in ('name="QUERY_STATUS" value="ERROR"', "<uws:message>", "<title>"):
        i = text.find(marker)
        if i >= 0:
            start = text.find(">", i) + 1
            end = text.find("<", start)
            msg = " ".join(text[start:end].split())
            if msg:
                return msg[:limit]
    return " ".join(text.split())[:limit]


# ---------------------------------------------------------------- cache

class AnswerCache:
    """Answers on disk: ``<dir>/<service>/<sha256>.bin`` plus a small ``.json`` description.

    Size-bounded: after each write, least recently used answers are removed
    until the total is below ``max_mb``. Reads touch the file's mtime.
    Writes are atomic, so a killed run never leaves a half answer.
    """

    def __init__(self, root: Path | None = None, max_mb: float = 500.0):
        self.root = Path(root) if root is not None else locations.catalog_cache_dir()
        self.max_bytes = int(max_mb * 1024 * 1024)

    @staticmethod
    def key(service: str, method: str, url: str, params: Any, extra: Any = None) -> str:
        blob = json.dumps([service, method.upper(), url, params, extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, service: str, key: str) -> Path:
        return self.root / service / f"{key}.bin"

    def get(self, service: str, key: str) -> bytes | None:
        path = self._path(service, key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return data

    def put(self, service: str, key: str, data: bytes, describe: dict) -> None:
        path = self._path(service, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fsio.write_bytes(path, data)
        fsio.write_bytes(path.with_suffix(".json"), json.dumps(describe, default=str).encode())
        self.prune()

    def entries(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in self.root.glob("*/*.bin")]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def prune(self) -> int:
        """Remove least recently used answers beyond the size bound; return how many."""
        files = []
        total = 0
        for p in self.entries():
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
            total += st.st_size
        removed = 0
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            for q in (p, p.with_suffix(".json")):
                try:
                    q.unlink()
                except OSError:
                    pass
            total -= size
            removed += 1
        return removed


# ---------------------------------------------------------------- client

@dataclass
class RequestStats:
    network: dict = field(default_factory=dict)  # service -> requests sent (incl. retries)
    cache_hits: dict = field(default_factory=dict)
    retries: dict = field(default_factory=dict)

    def add(self, table: dict, service: str, n: int = 1) -> None:
        table[service] = table.get(service, 0) + n


class _RateLimiter:
    def __init__(self, per_s: float):
        self.interval = 1.0 / per_s if per_s > 0 else 0.0
        self.next_t = 0.0
        self.lock = asyncio.Lock()

    async def wait(self, cancel) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = self.next_t - now
            self.next_t = max(now, self.next_t) + self.interval
        await sleep_cancellable(delay, cancel)


class ServiceClient:
    """The one HTTP client shared by every catalogue service of a run.

    Parameters
    ----------
    settings : ServicesSettings
        Timeouts, retries, rate limit, cache size, offline flag.
    secrets : dict, optional
        Values to hide from every message (API keys).
    cache_dir : path, optional
        Cache root; default ``locations.cache_dir() / "catalogs"``.
    log : callable, optional
        ``log(message, level)`` (level ``DEBUG``/``INFO``/``WARNING``) for retries and cache use.

    Use as ``async with ServiceClient(settings) as client: ...`` or call
    :meth:`aclose` when done.
    """

    def __init__(self, settings: ServicesSettings, *, secrets: dict | None = None, cache_dir=None,
                 log: Callable[[str, str], None] | None = None, transport=None):
        self.settings = settings
        self.secrets = dict(secrets or {})
        self.cache = AnswerCache(cache_dir, settings.cache_max_mb)
        self.log = log or (lambda message, level="INFO": None)
        self.stats = RequestStats()
        self._limiters: dict[str, _RateLimiter] = {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=True,
            transport=transport,
        )

    async def __aenter__(self) -> "ServiceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _limiter(self, service: str) -> _RateLimiter:
        if service not in self._limiters:
            self._limiters[service] = _RateLimiter(self.settings.rate_limit_per_s)
        return self._limiters[service]

    def _say(self, text: str) -> str:
        return redact(text, self.secrets)

    async def request(self, service: str, method: str, url: str, *, params: dict | None = None,
                      data: dict | None = None, json_body: Any = None, key_extra: Any = None,
                      describe: str = "", cancel=None, cache: bool = True,
                      parse: Callable[[bytes], Any] | None = None) -> Any:
        """Send one request (through the cache) and return the answer body, or ``parse(body)``.

        An answer is cached only once ``parse`` accepted it; a :class:`MalformedAnswer`
        from ``parse`` (truncated transfer, proxy error page) is retried like a 5xx.
        ``key_extra`` replaces ``json_body`` in the cache key when the body holds a
        secret. Raises :class:`ServiceError` naming the service and the reason,
        :class:`OfflineMiss` in offline mode without a cached answer, and
        :class:`Cancelled` when ``cancel`` fires.
        """
        parse = parse or (lambda body: body)
        key_body = key_extra if json_body is not None and key_extra is not None else (json_body if json_body is not None else data)
        key = AnswerCache.key(service, method, url, params, key_body)
        if cache:
            hit = self.cache.get(service, key)
            if hit is not None:
                try:
                    value = parse(hit)
                except ServiceError:
                    value = None  # a damaged cache file: ask the service again
                if value is not None:
                    self.stats.add(self.stats.cache_hits, service)
                    self.log(f"{service}: answer from cache ({describe or 'query'})", "DEBUG")
                    return value
        if self.settings.offline:
            raise OfflineMiss(f"{service}: offline mode and no cached answer for this field ({describe or 'query'}); skipped")

        s = self.settings
        last_reason = ""
        for attempt in range(s.retries + 1):
            if is_cancelled(cancel):
                raise Cancelled()
            await self._limiter(service).wait(cancel)
            self.stats.add(self.stats.network, service)
            wait = s.backoff_s * (2 ** attempt)
            try:
                resp = await run_cancellable(
                    self._http.request(method, url, params=params, data=data, json=json_body), cancel)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
                last_reason = f"{kind} after {s.timeout_s:g} s" if kind == "timed out" else f"{kind} ({type(exc).__name__})"
            else:
                if resp.status_code < 400:
                    body = resp.content
                    try:
                        value = parse(body)
                    except MalformedAnswer as exc:
                        last_reason = str(exc).removeprefix(f"{service}: ")
                        value = None
                    if value is not None:
                        if cache:
                            self.cache.put(service, key, body, {
                                "service": service, "method": method, "url": self._say(url),
                                "params": self._say(json.dumps(params, default=str)) if params else "",
                                "query": self._say(describe), "time": time.time()})
                        return value
                    if attempt < s.retries:
                        self.stats.add(self.stats.retries, service)
                        self.log(self._say(f"{service}: {last_reason}; retry {attempt + 1}/{s.retries} "
                                           f"in {wait:.1f} s"), "INFO")
                        await sleep_cancellable(wait, cancel)
                    continue
                reason = _short_reason(resp.content)
                last_reason = f"HTTP {resp.status_code}" + (f": {self._say(reason)}" if reason else "")
                if resp.status_code == 429 or resp.status_code >= 500:
                    ra = retry_after_seconds(resp.headers.get("Retry-After"))
                    if ra is not None:
                        if ra > s.retry_after_max_s:
                            raise ServiceError(self._say(
                                f"{service}: {last_reason}; server asks to retry after {ra:.0f} s, more than "
                                f"services.retry_after_max_s = {s.retry_after_max_s:g} s"))
                        wait = ra
                else:
                    raise ServiceError(self._say(f"{service}: {last_reason} ({describe or url})"))
            if attempt < s.retries:
                self.stats.add(self.stats.retries, service)
                # a retry is not yet a problem: the final failure is what the run warns about
                self.log(self._say(f"{service}: {last_reason}; retry {attempt + 1}/{s.retries} in {wait:.1f} s"), "INFO")
                await sleep_cancellable(wait, cancel)
        raise ServiceError(self._say(f"{service}: {last_reason} ({s.retries + 1} attempts; endpoint {url})"))

    async def tap_sync(self, service: str, endpoint: str, adql: str, *, describe: str = "", cancel=None,
                       maxrec: int | None = None) -> Table:
        """Run an ADQL query on a TAP service (``/sync``, VOTable answer) and return the table."""
        data = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "QUERY": adql}
        if maxrec:
            data["MAXREC"] = str(int(maxrec))
        url = endpoint.rstrip("/") + "/sync"
        what = describe or "TAP query"
        return await self.request(service, "POST", url, data=data, describe=what, cancel=cancel,
                                  parse=lambda body: read_votable(body, service, what))


# ---------------------------------------------------------------- VOTable parsing

def read_votable(content: bytes, service: str, what: str = "answer", table_name: str | None = None,
                 all_tables: bool = False) -> Table | list[Table]:
    """Parse a VOTable answer; raise :class:`ServiceError` for errors and malformed or truncated XML.

    An answer with ``QUERY_STATUS = ERROR`` raises with the server's message;
    ``OVERFLOW`` is accepted (the table is then marked ``meta['overflow']``).
    Column names are the FIELD names (not IDs).
    """
    from astropy.io.votable import parse
    from astropy.io.votable.exceptions import VOWarning

    if not content or not content.strip():
        raise MalformedAnswer(f"{service}: empty answer to {what} (expected a VOTable)")
    head = content[:2000].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not (head.startswith(b"<?xml") or head.startswith(b"<votable") or head.startswith(b"<vot:")):
        raise MalformedAnswer(f"{service}: answer to {what} is not a VOTable (starts with {content[:60]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)
            warnings.simplefilter("ignore", UserWarning)
            vot = parse(io.BytesIO(content), verify="ignore")
    except Exception as exc:  # noqa: BLE001 - expat/astropy raise many kinds on bad XML
        raise MalformedAnswer(f"{service}: malformed or truncated VOTable in answer to {what} ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from None
    status = None
    overflow = False
    infos = list(vot.infos)
    stack = list(vot.resources)
    while stack:
        res = stack.pop()
        infos += list(res.infos)
        stack += list(res.resources)
    for info in infos:
        if info.name == "QUERY_STATUS":
            status = (info.value or "").upper()
            if status == "ERROR":
                msg = " ".join(str(info.content or "").split()) or "no reason given"
                raise ServiceError(f"{service}: server reported an error for {what}: {msg[:300]}")
            if status == "OVERFLOW":
                overflow = True
    tables = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in vot.iter_tables():
            if table_name and t.name != table_name and t.ID != table_name:
                continue
            tab = t.to_table(use_names_over_ids=True)
            tab.meta["votable_name"] = t.name or t.ID or ""
            tab.meta["overflow"] = overflow
            tables.append(tab)
    if all_tables:
        return tables
    if not tables:
        raise ServiceError(f"{service}: answer to {what} holds no table")
    return tables[0]


def column(tab: Table, name: str, default=np.nan, dtype=float) -> np.ndarray:
    """Column as a plain array with masked/missing values replaced by ``default``."""
    if name not in tab.colnames:
        return np.full(len(tab), default, dtype=dtype)
    col = tab[name]
    if dtype is str:
        vals = np.ma.filled(np.ma.asarray(col).astype(str), "") if hasattr(col, "mask") else np.asarray(col).astype(str)
        out = np.array([("" if v in ("--", "None") else v.strip()) for v in vals], dtype=object)
        return out.astype(str) if len(out) else np.array([], dtype=str)
    arr = np.ma.asarray(col)
    try:
        return np.ma.filled(arr.astype(dtype), default)
    except (TypeError, ValueError):
        out = np.full(len(tab), default, dtype=dtype)
        for i, v in enumerate(arr):
            try:
                out[i] = dtype(v)
            except (TypeError, ValueError):
                pass
        return out


def snap_cone(ra: float, dec: float, radius_deg: float) -> tuple[float, float, float]:
    """A slightly larger cone on a fixed grid that contains ``(ra, dec, radius_deg)``.

    Frames of one field never have exactly the same centre and footprint, and
    the cache key is the query text: snapping the centre to a grid of about 5%
    of the radius (a power of two in degrees, so it does not move as the radius
    changes slightly) and rounding the radius up makes a night on one field ask
    each service once.
    """
    step = 2.0 ** np.floor(np.log2(max(radius_deg * 0.05, 1.0 / 3600.0)))
    dec_s = float(np.clip(np.round(dec / step) * step, -90.0, 90.0))
    ra_step = step / max(np.cos(np.radians(dec_s)), 1e-3)
    ra_s = float((np.round(ra / ra_step) * ra_step) % 360.0)
    # the snapped centre is at most step * sqrt(2)/2 (plus cos(dec) slack) from the true one
    radius_s = float(np.ceil((radius_deg + 1.5 * step) / step) * step)
    return ra_s, dec_s, radius_s
