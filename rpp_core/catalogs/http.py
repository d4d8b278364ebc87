"""Shared async HTTP layer of the catalogue clients: bounded requests, retries, rate limit, cache.

One :class:`ServiceClient` (one ``httpx.AsyncClient``) serves every catalogue
service of a run, so connections are pooled and all limits live in one place:

- every attempt is bounded by ``services.timeout_s`` as a whole: connecting,
  each read, and a deadline on the complete answer (a server that trickles its
  answer cannot hold a run longer than that);
- every answer is bounded in size (``gaia_max_answer_mb`` for the Gaia archive,
  ``max_answer_mb`` for the others): the body is streamed and reading stops at
  the limit (at once if ``Content-Length`` announces more); the service fails
  saying so, and such an answer is neither retried nor cached;
- retries (``tenacity``; ``services.retries``) with exponential backoff
  ``backoff_s * 2**k`` on connect errors, time-outs, HTTP 5xx and 429 and
  unreadable answers; a ``Retry-After`` header (seconds or HTTP date) replaces
  the backoff, up to ``retry_after_max_s``;
- a per-service rate limit (``rate_limit_per_s``: requests started per second);
- cancellation by an ``asyncio.Event`` or a ``Callable[[], bool]`` (raises
  :class:`rpp_core.errors.Cancelled`), as well as ordinary task cancellation;
- one failure per run: a service that could not be reached (or a query that
  failed) is not asked again by the same client, so calibration and
  cross-match do not both wait for a dead archive;
- the answer cache (:class:`.cache.AnswerCache`, hishel storage): an answer is
  stored only after the client's ``parse`` accepted it, with every secret
  replaced by ``***``; a stored answer that no longer parses is dropped and
  fetched again; a cache that cannot be written means running without it (one
  warning). In offline mode a cache miss raises :class:`OfflineMiss`.

Secrets (API keys) are passed in ``secrets`` and replaced by ``***`` in every
message and cached body; they never enter cache keys (callers give
``key_extra`` without them).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, quote_plus

import httpx
import numpy as np
from astropy.table import Table
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from ..errors import Cancelled, ServiceError
from ..settings import ServicesSettings
from .cache import AnswerCache, CacheUnavailable

USER_AGENT = "rpp-photometry-pipeline/0.1 (+catalogue client)"


class ServiceSkipped(ServiceError):
    """The service was not asked (offline, no user id, no observation time): skipped, not failed."""


class OfflineMiss(ServiceSkipped):
    """Offline mode and no cached answer: the service was skipped, not failed."""


class MalformedAnswer(ServiceError):
    """An answer that cannot be read or lacks what the client needs: retried, never cached."""


class AnswerTooLarge(ServiceError):
    """An answer beyond the size limit: not retried (it would be as large again), never cached."""


class _Transient(ServiceError):
    """A failure worth another attempt: time-out, connection failure, HTTP 5xx or 429."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


# ---------------------------------------------------------------- helpers

def _secret_forms(secrets: dict | None):
    """Each secret as written, percent-encoded and form-encoded (how it may come back from a server)."""
    for value in (secrets or {}).values():
        if value and isinstance(value, str) and len(value) >= 3:
            yield from {value, quote(value, safe=""), quote_plus(value, safe="")}


def redact(text: str, secrets: dict | None) -> str:
    """Replace every secret value in ``text`` (also URL-encoded) by ``***``."""
    for form in _secret_forms(secrets):
        text = text.replace(form, "***")
    return text


def redact_bytes(body: bytes, secrets: dict | None) -> bytes:
    """:func:`redact` for an answer body (a server may echo the request, key included)."""
    for form in _secret_forms(secrets):
        body = body.replace(form.encode(), b"***")
    return body


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
    """A one-line hint from an error body: a JSON message, a VOTable/UWS error or the first text."""
    text = body[:20000].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("message", "error"):
            if isinstance(doc.get(key), str) and doc[key].strip():
                return " ".join(doc[key].split())[:limit]
    for marker in ('name="QUERY_STATUS" value="ERROR"', "<uws:message>", "<title>"):
        i = text.find(marker)
        if i >= 0:
            start = text.find(">", i) + 1
            end = text.find("<", start)
            msg = " ".join(text[start:end].split())
            if msg:
                return msg[:limit]
    return " ".join(text.split())[:limit]


def cache_key(service: str, method: str, url: str, params: Any, extra: Any = None) -> str:
    """The cache key of a query: a hash of service, method, endpoint, parameters and body (no secrets)."""
    blob = json.dumps([service, method.upper(), url, params, extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


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


_MISS = object()


class ServiceClient:
    """The one HTTP client shared by every catalogue service of a run.

    Parameters
    ----------
    settings : ServicesSettings
        Timeouts, retries, rate limit, size limits, cache, offline flag.
    secrets : dict, optional
        Values to hide from every message and cached answer (API keys).
    cache_dir : path, optional
        Cache folder; default ``locations.cache_dir() / "catalogs"``.
    log : callable, optional
        ``log(message, level)`` (level ``DEBUG``/``INFO``/``WARNING``) for retries and cache use.
    warn : callable, optional
        ``warn(message)`` for what the user should act on (a cache that cannot be
        written); default ``log(message, "WARNING")``.

    Use as ``async with ServiceClient(settings) as client: ...`` or call
    :meth:`aclose` when done.
    """

    def __init__(self, settings: ServicesSettings, *, secrets: dict | None = None, cache_dir=None,
                 log: Callable[[str, str], None] | None = None, warn: Callable[[str], None] | None = None,
                 transport=None):
        self.settings = settings
        self.secrets = dict(secrets or {})
        self.log = log or (lambda message, level="INFO": None)
        self.warn = warn or (lambda message: self.log(message, "WARNING"))
        self.stats = RequestStats()
        self._limiters: dict[str, _RateLimiter] = {}
        self._down: dict[str, str] = {}     # service -> why it could not be reached in this run
        self._failed: dict[str, str] = {}   # cache key -> why this query failed in this run
        self.cache: AnswerCache | None = AnswerCache(cache_dir, settings)
        try:
            self.cache.check()
        except CacheUnavailable as exc:
            self._cache_off(exc)
        # connect, read, write and pool waits are each bounded; the whole answer has its own deadline below
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), headers={"User-Agent": USER_AGENT},
                                       follow_redirects=True, transport=transport)

    async def __aenter__(self) -> "ServiceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    def _limiter(self, service: str) -> _RateLimiter:
        if service not in self._limiters:
            self._limiters[service] = _RateLimiter(self.settings.rate_limit_per_s)
        return self._limiters[service]

    def _say(self, text: str) -> str:
        return redact(text, self.secrets)

    def _cache_off(self, exc: Exception) -> None:
        self.warn(f"{exc}: running without the answer cache (answers will be fetched again next time)")
        self.cache = None

    def answer_limit(self, service: str) -> tuple[int, str]:
        """Largest answer read from ``service`` (bytes) and the setting that sets it."""
        if service == "gaia":
            return int(self.settings.gaia_max_answer_mb * 1024 * 1024), "services.gaia_max_answer_mb"
        return int(self.settings.max_answer_mb * 1024 * 1024), "services.max_answer_mb"

    async def request(self, service: str, method: str, url: str, *, params: dict | None = None,
                      data: dict | None = None, json_body: Any = None, key_extra: Any = None,
                      describe: str = "", cancel=None, cache: bool = True,
                      parse: Callable[[bytes], Any] | None = None, retry_on_429: bool = True,
                      too_large_hint: str = "") -> Any:
        """Send one request (through the cache) and return ``parse(body)`` (default: the body).

        ``parse`` must raise :class:`MalformedAnswer` for an answer it cannot use
        (unreadable, wrong columns): it is retried like a 5xx and never cached;
        other :class:`ServiceError` s fail at once. An answer is cached only once
        ``parse`` accepted it. ``key_extra`` replaces ``json_body`` in the cache
        key when the body holds a secret. ``retry_on_429=False`` makes a 429 final
        (a service whose every request spends a quota). Raises
        :class:`ServiceError` naming the service and the reason, :class:`OfflineMiss`
        in offline mode without a cached answer, and :class:`Cancelled` when
        ``cancel`` fires.
        """
        parse = parse or (lambda body: body)
        what = describe or "query"
        key_body = key_extra if json_body is not None and key_extra is not None else (json_body if json_body is not None else data)
        key = cache_key(service, method, url, params, key_body)
        if cache and self.cache is not None:
            value = await self._from_cache(service, key, parse, what)
            if value is not _MISS:
                return value
        if self.settings.offline:
            raise OfflineMiss(f"{service}: offline mode and no cached answer for this field ({what}); skipped")
        earlier = self._down.get(service) or self._failed.get(key)
        if earlier:
            raise ServiceError(f"{earlier} [failed earlier in this run; not asked again]")
        try:
            value, body = await run_cancellable(
                self._fetch(service, method, url, params=params, data=data, json_body=json_body, parse=parse,
                            what=what, retry_on_429=retry_on_429, too_large_hint=too_large_hint, cancel=cancel),
                cancel)
        except _Transient as exc:
            self._down[service] = str(exc)
            raise ServiceError(str(exc)) from None
        except ServiceError as exc:
            self._failed[key] = str(exc)
            raise
        if cache and self.cache is not None:
            try:
                await self.cache.put(service, key, redact_bytes(body, self.secrets), self._say(what))
            except Exception as exc:  # noqa: BLE001 - a cache that cannot be written must not fail the run
                self._cache_off(CacheUnavailable(f"answer cache {self.cache.root} cannot be written ({exc})"))
        return value

    async def _from_cache(self, service: str, key: str, parse, what: str):
        try:
            hits = await self.cache.get(service, key)
        except Exception as exc:  # noqa: BLE001 - an unreadable cache is a miss, and then no cache
            self._cache_off(CacheUnavailable(f"answer cache {self.cache.root} cannot be read ({exc})"))
            return _MISS
        for entry_id, body in hits:
            try:
                value = parse(body)
            except Exception as exc:  # noqa: BLE001 - stored by an older version or damaged: ask again
                self.log(self._say(f"{service}: dropped a cached answer that no longer reads ({exc}); asking again"),
                         "DEBUG")
                await self.cache.drop(service, entry_id)
                continue
            self.stats.add(self.stats.cache_hits, service)
            self.log(f"{service}: answer from cache ({what})", "DEBUG")
            return value
        return _MISS

    async def _fetch(self, service, method, url, *, params, data, json_body, parse, what, retry_on_429,
                     too_large_hint, cancel):
        s = self.settings
        attempts = s.retries + 1

        def wait(state) -> float:
            ra = getattr(state.outcome.exception(), "retry_after", None)
            return ra if ra is not None else s.backoff_s * 2 ** (state.attempt_number - 1)

        def before_sleep(state) -> None:
            self.stats.add(self.stats.retries, service)
            reason = str(state.outcome.exception()).removeprefix(f"{service}: ")
            # a retry is not yet a problem: the final failure is what the run warns about
            self.log(self._say(f"{service}: {reason}; retry {state.attempt_number}/{s.retries} "
                               f"in {state.upcoming_sleep:.1f} s"), "INFO")

        retrying = AsyncRetrying(stop=stop_after_attempt(attempts), wait=wait, before_sleep=before_sleep,
                                 retry=retry_if_exception_type((_Transient, MalformedAnswer)),
                                 sleep=lambda seconds: sleep_cancellable(seconds, cancel), reraise=True)
        try:
            return await retrying(self._attempt, service, method, url, params, data, json_body, parse, what,
                                  retry_on_429, too_large_hint, cancel)
        except (_Transient, MalformedAnswer) as exc:
            reason = str(exc).removeprefix(f"{service}: ")
            final = f"{service}: {reason} ({attempts} attempt{'s' if attempts > 1 else ''}; endpoint {url})"
            raise type(exc)(self._say(final)) from None

    async def _attempt(self, service, method, url, params, data, json_body, parse, what, retry_on_429,
                       too_large_hint, cancel):
        s = self.settings
        if is_cancelled(cancel):
            raise Cancelled()
        await self._limiter(service).wait(cancel)
        self.stats.add(self.stats.network, service)
        limit, setting = self.answer_limit(service)
        try:
            # the deadline covers the whole answer: httpx's own timeouts bound each read, not their sum
            async with asyncio.timeout(s.timeout_s):
                async with self._http.stream(method, url, params=params, data=data, json=json_body) as resp:
                    status, headers = resp.status_code, resp.headers
                    body = await self._read_capped(resp, service, limit if status < 400 else 65536, setting, what,
                                                   too_large_hint)
        except (TimeoutError, httpx.TimeoutException):
            raise _Transient(f"{service}: timed out after {s.timeout_s:g} s (services.timeout_s bounds "
                             f"connecting, each read and the whole answer)") from None
        except httpx.TransportError as exc:
            raise _Transient(f"{service}: connection failed ({type(exc).__name__})") from None
        if status >= 400:
            reason = _short_reason(body)
            reason = f"HTTP {status}" + (f": {self._say(reason)}" if reason else "")
            if status == 429 and not retry_on_429:
                raise ServiceError(f"{service}: {reason} (not retried: each request counts against the quota)")
            if status == 429 or status >= 500:
                ra = retry_after_seconds(headers.get("Retry-After"))
                if ra is not None and ra > s.retry_after_max_s:
                    raise ServiceError(self._say(
                        f"{service}: {reason}; server asks to retry after {ra:.0f} s, more than "
                        f"services.retry_after_max_s = {s.retry_after_max_s:g} s"))
                raise _Transient(f"{service}: {reason}", retry_after=ra)
            raise ServiceError(self._say(f"{service}: {reason} ({what})"))
        return parse(b"" if status == 204 else body), body

    async def _read_capped(self, resp: httpx.Response, service: str, limit: int, setting: str, what: str,
                           hint: str) -> bytes:
        def too_large(seen: str) -> AnswerTooLarge:
            return AnswerTooLarge(
                f"{service}: answer to {what} larger than {limit / 1024 ** 2:g} MB ({seen}); stopped reading it. "
                f"{hint + ', or ' if hint else ''}raise {setting} if such answers are expected")

        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(f"announced {int(declared) / 1024 ** 2:.1f} MB")
        buf = bytearray()
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) > limit:
                raise too_large("still coming")
        return bytes(buf)

    async def tap_sync(self, service: str, endpoint: str, adql: str, *, describe: str = "", cancel=None,
                       maxrec: int | None = None, parse_table: Callable[[Table], Table] | None = None,
                       too_large_hint: str = "") -> Table:
        """Run an ADQL query on a TAP service (``/sync``, VOTable answer) and return the table.

        ``MAXREC`` is sent when given; ``meta['overflow']`` is True when the answer
        was cut (``QUERY_STATUS = OVERFLOW``, or ``maxrec`` rows). ``parse_table``
        turns the raw table into what the caller needs (raising
        :class:`MalformedAnswer` when it cannot), before anything is cached.
        """
        data = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "QUERY": adql}
        if maxrec:
            data["MAXREC"] = str(int(maxrec))
        url = endpoint.rstrip("/") + "/sync"
        what = describe or "TAP query"

        def parse(body: bytes) -> Table:
            tab = read_votable(body, service, what)
            overflow = bool(tab.meta.get("overflow")) or bool(maxrec and len(tab) >= maxrec)
            out = parse_table(tab) if parse_table else tab
            out.meta["overflow"] = overflow
            return out

        return await self.request(service, "POST", url, data=data, describe=what, cancel=cancel, parse=parse,
                                  too_large_hint=too_large_hint)


# ---------------------------------------------------------------- VOTable parsing

def read_votable(content: bytes, service: str, what: str = "answer", table_name: str | None = None,
                 all_tables: bool = False) -> Table | list[Table]:
    """Parse a VOTable answer; raise :class:`ServiceError` for errors and malformed or truncated XML.

    An answer with ``QUERY_STATUS = ERROR`` raises with the server's message
    (VizieR puts it in ``INFO name="Error"`` lines); ``OVERFLOW`` is accepted
    (the table is then marked ``meta['overflow']``). Column names are the FIELD
    names (not IDs).
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
    overflow = False
    infos = list(vot.infos)
    stack = list(vot.resources)
    while stack:
        res = stack.pop()
        infos += list(res.infos)
        stack += list(res.resources)
    errors = [" ".join(str(i.value or "").split()) for i in infos if i.name == "Error"]
    for info in infos:
        if info.name == "QUERY_STATUS":
            status = (info.value or "").upper()
            if status == "ERROR":
                msg = "; ".join(e for e in errors if e) or " ".join(str(info.content or "").split()) or "no reason given"
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
        raise MalformedAnswer(f"{service}: answer to {what} holds no table")
    return tables[0]


def require_columns(tab: Table, names, service: str, what: str) -> None:
    """Raise :class:`MalformedAnswer` unless ``tab`` has every column in ``names``."""
    missing = [n for n in names if n not in tab.colnames]
    if missing:
        have = ", ".join(tab.colnames[:12]) + (" ..." if len(tab.colnames) > 12 else "")
        raise MalformedAnswer(f"{service}: answer to {what} lacks the column(s) {', '.join(missing)} "
                              f"(it has: {have or 'none'})")


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
