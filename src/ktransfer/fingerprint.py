"""Content fingerprints of the files a cache entry is made from.

A cache key must change when an input's bytes change, even when its path does not (a user edits
a CSV in place). `path_digest` is the SHA-256 of a file's bytes, or of a folder's file names and
bytes. Hashing a large file on every run would be slow, so each file's digest is remembered in
the cache root (`fingerprints/`) next to the size and modification time it was computed at; a
file whose size or modification time differs is hashed again. `source_digest` fingerprints the
code that builds an entry, for keys where a change of code must give a new entry.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from ktransfer.cache import cache_root
from ktransfer.io import file_digest as _sha256_file

_MEMO_DIR = "fingerprints"


def _memo_path(path: Path) -> Path:
    return cache_root() / _MEMO_DIR / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered by (path, size, mtime) so an unchanged file is read once."""
    path = Path(os.path.abspath(path))
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = _memo_path(path)
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if all(saved.get(k) == v for k, v in stamp.items()) and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = _sha256_file(path)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return digest  # written to while being read: do not remember a digest of a moving target
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fp-", suffix=".tmp", dir=memo.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**stamp, "sha256": digest}, f)
        os.replace(tmp, memo)
    except OSError:
        pass  # the memo is an optimisation: a read-only cache still gives correct digests
    return digest


def path_digest(path: str | Path) -> str:
    """The digest of a file, or of a folder (its files' relative names and digests, hidden files and
    folders skipped), or of the files a glob pattern matches (`data/*.json`, their names and digests);
    'missing' for a path that does not exist, so a key still changes when it appears."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir() and glob.has_magic(str(path)):
        matches = sorted(glob.glob(str(path), recursive=True))
        h = hashlib.sha256(b"glob\0")
        for match in matches:
            h.update(match.encode() + b"\0" + path_digest(match).encode() + b"\0")
        return h.hexdigest() if matches else "missing"
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256(b"folder\0")
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = Path(root) / name
            h.update(full.relative_to(path).as_posix().encode() + b"\0" + file_digest(full).encode() + b"\0")
    return h.hexdigest()


def digests_of(paths: dict[str, Any]) -> dict[str, str]:
    """`{name: path_digest(path)}` for every non-empty string path of `paths`."""
    return {name: path_digest(p) for name, p in sorted(paths.items()) if isinstance(p, str) and p}


def source_digest(code: Iterable[ModuleType | Callable[..., Any]]) -> str:
    """SHA-256 of the source code of modules or functions (the code that builds a cache entry)."""
    h = hashlib.sha256()
    for obj in sorted(code, key=lambda m: f"{m.__module__ if not isinstance(m, ModuleType) else ''}.{m.__name__}"):
        h.update(obj.__name__.encode() + b"\0" + inspect.getsource(obj).encode() + b"\0")
    return h.hexdigest()
