"""``rpp profile ...`` (TOML profiles in the config dir) and ``rpp secret ...`` (API keys, 0600 file)."""

from __future__ import annotations

import sys

from rpp_core.errors import UsageError

from .options import apply_sets


def cmd_profile(args) -> int:
    from rpp_core import locations, settings

    action = args.action
    if action in ("new", "set", "delete", "rename") and args.name is not None:
        # commands that write or delete take names only; a path is for reading (show, --base, --profile)
        settings.check_profile_name(args.name)
    if args.name and action in ("show", "set", "rename"):
        loaded = settings.load_profile(args.name) if action == "show" else settings.load_named_profile(args.name)
        for note in loaded.notes:
            print(f"rpp: note: {note}", file=sys.stderr)
    if action == "list":
        names = settings.list_profiles()
        print("\n".join(names) if names else f"no profiles in {locations.profiles_dir()} (rpp profile new NAME)")
    elif action == "path":
        print(locations.profiles_dir())
    elif action == "show":
        print(settings.dumps(loaded if args.name else settings.load_profile("default")), end="")
    elif action == "new":
        if not args.name:
            raise UsageError("rpp profile new NAME")
        if settings.profile_path(args.name).exists() and not args.force:
            raise UsageError(f"profile {args.name!r} exists ({settings.profile_path(args.name)}); use --force to overwrite")
        base = settings.load_profile(args.base) if args.base else settings.Profile()
        base.name = args.name
        print(settings.save_profile(apply_sets(base, args.set)))
    elif action == "set":
        if not args.name or not args.set:
            raise UsageError("rpp profile set NAME --set section.key=value [...]")
        print(settings.save_profile(apply_sets(loaded, args.set)))
    elif action == "delete":
        settings.delete_profile(args.name)
        print(f"deleted profile {args.name}")
    elif action == "rename":
        print(settings.rename_profile(args.name, args.new_name or ""))
    return 0


def cmd_secret(args) -> int:
    import getpass

    from rpp_core import settings

    if args.action == "set":
        # hidden prompt on a terminal; one line from stdin otherwise (scripts, provisioning)
        value = getpass.getpass(f"{args.key} (input hidden): ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        path = settings.save_secret(args.key, value)
        print(f"stored {args.key} in {path} (mode 0600)")
    elif args.action == "list":
        for key, value in settings.load_secrets().items():
            print(f"{key}: {settings.mask_secret(value)}")
    elif args.action == "delete":
        settings.save_secret(args.key, "")
        print(f"removed {args.key}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("profile", help="manage profiles (TOML in the config dir)")
    p.add_argument("action", choices=["list", "show", "new", "set", "delete", "rename", "path"])
    p.add_argument("name", nargs="?")
    p.add_argument("new_name", nargs="?")
    p.add_argument("--base", help="copy this profile when creating")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("secret", help="API keys in the 0600 secrets file")
    p.add_argument("action", choices=["set", "list", "delete"])
    p.add_argument("key", nargs="?", default="astrocolibri_uid")
    p.set_defaults(func=cmd_secret)
