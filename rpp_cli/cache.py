"""``rpp cache info`` / ``rpp cache clear [SERVICE]``: catalogue answers cached on disk.

The logic lives in :mod:`rpp_core.catalogs.cache` (typed results); this only prints them.
"""

from __future__ import annotations

import time

#: services with cached answers (rpp_core.catalogs.cache.SERVICES), listed here so ``rpp --help`` imports no core
SERVICES = ("gaia", "simbad", "vsx", "milliquas", "10pc", "skybot", "astrocolibri")


def cmd_cache(args) -> int:
    from rpp_core import settings
    from rpp_core.catalogs import cache
    from rpp_core.errors import UsageError

    if args.action == "clear":
        done = cache.clear_cache(args.service)
        print(f"cleared the cached answers of {', '.join(done.services)} ({done.freed_bytes / 1e6:.1f} MB freed)")
        return 0
    if args.service:
        raise UsageError("rpp cache info takes no service; it lists them all")
    services = settings.load_profile(args.profile).services if args.profile else settings.ServicesSettings()
    rows = cache.cache_info(services)
    print(f"answer cache: {rows[0].path.parent}")
    print(f"{'service':<13}{'answers':>8}{'expired':>9}{'size MB':>9}{'kept for':>11}  first expiry")
    for r in rows:
        kept = f"{r.ttl_days:g} d" if r.ttl_days >= 1 else f"{r.ttl_days * 24:g} h"
        first = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.next_expiry)) if r.next_expiry else "-"
        print(f"{r.service:<13}{r.answers:>8}{r.expired:>9}{r.size_bytes / 1e6:>9.1f}{kept:>11}  {first}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="catalogue answers cached on disk: info, clear [SERVICE]",
                       description="List the cached catalogue answers per service (count, size, time to live), "
                                   "or forget those of one service or of all.")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("service", nargs="?", choices=SERVICES, help="clear only this service's answers")
    p.add_argument("--profile", "-p", help="show the times to live of this profile (default: the defaults)")
    p.set_defaults(func=cmd_cache)
