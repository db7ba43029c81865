"""A content-addressed on-disk cache for trained models and attack results.

Every entry is named by a hash of the configuration that produced it (canonical JSON, sorted
keys, plus :data:`CACHE_VERSION`), so a changed option never returns a stale result and two
identical configurations always share one entry. Writes are atomic (temporary file, then
``os.replace``), so concurrent workers computing the same entry never leave a torn file.

The default location is ``~/.cache/taoism`` (never relative to the current directory or the
checkout); pass ``cache_dir`` to put it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taoism.errors import ConfigError

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_VERSION",
    "Cache",
    "config_hash",
    "default_cache_dir",
    "resolve_cache_dir",
]

#: Bump when a change to the training or attack code changes what a cached entry would hold.
CACHE_VERSION = 3

#: The environment variable entry points (the CLI) read for the cache directory.
CACHE_DIR_ENV = "TAOISM_CACHE_DIR"


def default_cache_dir() -> Path:
    """``~/.cache/taoism``."""
    return Path.home() / ".cache" / "taoism"


def resolve_cache_dir(explicit: str | os.PathLike | None, environ: Mapping[str, str]) -> Path:
    """The cache directory an entry point uses: ``explicit`` (``--cache-dir``), else
    ``environ["TAOISM_CACHE_DIR"]``, else :func:`default_cache_dir`. Library code never reads
    the environment itself: the CLI calls this with ``os.environ`` and passes the result on."""
    if explicit is not None and os.fspath(explicit) != "":
        return Path(explicit).expanduser()
    env = environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir()


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return repr(obj)
        return float(repr(obj))
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ConfigError(f"cannot hash a {type(obj).__name__} in a cache key: {obj!r}")


def config_hash(config: dict[str, Any], length: int = 24) -> str:
    """The hex SHA-256 (truncated to ``length``) of ``config`` as canonical JSON."""
    blob = json.dumps(
        {"v": CACHE_VERSION, "config": _canonical(config)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class Cache:
    """Files under ``root/<kind>/<hash>.<ext>``; counts its own hits and misses."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"cache_dir {self.root} exists and is not a directory; pass another cache_dir"
            )
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str, ext: str) -> Path:
        return self.root / kind / f"{key}.{ext}"

    def _write(self, path: Path, write: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # JSON results ------------------------------------------------------------------------------
    def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        p = self.path(kind, key, "json")
        try:
            out = json.loads(p.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put_json(self, kind: str, key: str, value: dict[str, Any]) -> Path:
        p = self.path(kind, key, "json")
        blob = json.dumps(value, indent=1, sort_keys=True).encode()
        self._write(p, lambda f: f.write(blob))
        return p

    # tensors (state dicts) ---------------------------------------------------------------------
    def get_tensors(self, kind: str, key: str) -> dict[str, Any] | None:
        p = self.path(kind, key, "pt")
        if not p.is_file():
            self.misses += 1
            return None
        try:
            out = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt entry is recomputed, never trusted
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put_tensors(self, kind: str, key: str, value: dict[str, Any]) -> Path:
        p = self.path(kind, key, "pt")
        self._write(p, lambda f: torch.save(value, f))
        return p
