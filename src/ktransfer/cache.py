"""One cache folder for files ktransfer obtains itself (Debian packages, wheels, unpacked data).

The root is `$KTRANSFER_CACHE`, else `~/.cache/ktransfer`. An entry is a folder named by a key;
it is built in a temporary folder beside it, given a manifest (every file's size and SHA-256)
last, and renamed into place, so a reader sees a complete entry or none; an entry that no longer
matches its manifest (damaged on disk, or written before manifests) is rebuilt, never read.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ktransfer.io import verify_manifest, write_manifest

CACHE_ENV = "KTRANSFER_CACHE"


def cache_root() -> Path:
    """The cache root folder (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ktransfer"


def cached_entry(key: str, build: Callable[[Path], None]) -> Path:
    """The folder for `key` under the cache root; `build(tmp_dir)` fills it the first time.

    `build` writes into an empty temporary folder, which is renamed onto the entry only when
    `build` returns, so a failure or a kill leaves no partial entry.
    """
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"cache key must be a plain folder name, got {key!r}")
    path = cache_root() / key
    if path.is_dir():
        reason = verify_manifest(path)
        if reason is None:
            return path
        print(f"ktransfer: cache entry {path} is not intact ({reason}); rebuilding it", file=sys.stderr)
        doomed = path.with_name(f".damaged-{key}-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent))
    try:
        build(tmp)
        write_manifest(tmp, key=key)
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():  # another process finished the same entry first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
