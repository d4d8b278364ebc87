"""The ledger: which frames were processed, with which profile and outcome (shared by batch and watch)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from ..fsio import atomic_path

LEDGER_DIRNAME = ".rpp-ledger"


@dataclasses.dataclass(frozen=True)
class FrameKey:
    """What makes a frame 'the same frame processed the same way'."""

    path: str
    size: int
    mtime_ns: int
    profile_hash: str

    @classmethod
    def of(cls, path, phash: str) -> "FrameKey":
        p = Path(path).resolve()
        st = p.stat()
        return cls(str(p), st.st_size, st.st_mtime_ns, phash)

    @property
    def id(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime_ns}|{self.profile_hash}"


class Ledger:
    """Which frames were processed, with which profile and outcome.

    One small JSON file per source folder in ``<workspace>/.rpp-ledger/``
    (a night folder of frames gives one file, so it stays small), rewritten
    atomically (temporary file, fsync, rename) under an advisory lock, so
    ``rpp batch`` and ``rpp watch`` may share it and a crash or power cut
    leaves either the old or the new file, never a torn one.
    """

    def __init__(self, workspace: str | os.PathLike) -> None:
        self.root = Path(workspace) / LEDGER_DIRNAME
        self._cache: dict[Path, tuple[int, dict]] = {}

    def _shard(self, key: FrameKey) -> Path:
        folder = str(Path(key.path).parent)
        return self.root / (hashlib.sha1(folder.encode()).hexdigest()[:16] + ".json")

    def _read(self, shard: Path) -> dict:
        try:
            mtime = shard.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._cache.get(shard)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            data = json.loads(shard.read_text()).get("frames", {})
        except (OSError, ValueError):
            data = {}  # unreadable ledger: frames are redone, nothing is lost
        self._cache[shard] = (mtime, data)
        return data

    def get(self, key: FrameKey) -> dict | None:
        return self._read(self._shard(key)).get(key.id)

    def entries(self, folder: str | os.PathLike) -> list[dict]:
        """All entries recorded for frames of one folder."""
        shard = self.root / (hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16] + ".json")
        return list(self._read(shard).values())

    @contextlib.contextmanager
    def _locked(self, shard: Path):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(shard.with_suffix(".lock"), "a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no flock (Windows, some NFS): last writer wins
                pass
            yield

    def _update(self, key: FrameKey, change: Callable[[dict], None]) -> None:
        shard = self._shard(key)
        with self._locked(shard):
            self._cache.pop(shard, None)
            frames = dict(self._read(shard))
            change(frames)
            with atomic_path(shard, fsync=True) as tmp:
                tmp.write_text(json.dumps({"version": 1, "frames": frames}, indent=1, default=str))
            self._cache.pop(shard, None)

    def put(self, key: FrameKey, entry: dict) -> None:
        record = {**entry, "key": dataclasses.asdict(key),
                  "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._update(key, lambda frames: frames.__setitem__(key.id, record))

    def forget(self, key: FrameKey) -> None:
        self._update(key, lambda frames: frames.pop(key.id, None))
