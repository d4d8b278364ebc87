"""Run ``rpp`` with its ``--out`` on a small or read-only tmpfs, in a mount namespace of its own.

The disk is a real file system (the kernel says ENOSPC or EROFS), not a
patched writer. ``unshare --mount`` (``--map-root-user`` when not root, in a
user namespace) gives the driver its own mounts, so nothing is mounted on
the host and the tmpfs goes away with the driver; the driver therefore
inspects each run folder itself and reports it as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

_DRIVER = textwrap.dedent('''
    import json, os, subprocess, sys
    from pathlib import Path
    cases, argv, root = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
    report = {}
    for label, options in cases:
        disk = root / label
        disk.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], check=True)
        out = disk / "runs"
        if "ro" not in options.split(","):
            out.mkdir()
        proc = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True)
        files, summaries = [], {}
        for path in sorted(disk.rglob("*")):
            rel = str(path.relative_to(disk))
            files.append(rel + ("/" if path.is_dir() else ""))
            if path.name == "summary.json" and path.parent.parent == out:
                summaries[path.parent.name] = json.loads(path.read_text())
        report[label] = {"code": proc.returncode, "stderr": proc.stderr, "files": files, "summaries": summaries}
        subprocess.run(["umount", str(disk)], check=True)
    print(json.dumps(report))
''')


def _namespace_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("tests need util-linux `unshare` to mount a small tmpfs")
    return [unshare, "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])


def run_on_tmpfs(cases: list[tuple[str, str]], argv: list[str], workdir: Path, env: dict | None = None,
                 timeout: float = 600) -> dict:
    """Run ``argv --out <tmpfs>/runs`` once per case (label, mount options such as ``size=800k`` or ``ro``).

    Returns label -> {"code", "stderr", "files" (paths under the tmpfs, folders with a trailing
    "/"), "summaries" (run folder name -> summary.json content)}.
    """
    proc = subprocess.run([*_namespace_prefix(), sys.executable, "-c", _DRIVER, json.dumps(cases), json.dumps(argv),
                           str(workdir)], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"small-disk driver failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
