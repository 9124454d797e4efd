"""Files written whole or not at all, and directories that prove they are complete.

`atomic_path` writes a file aside and renames it into place, so a reader sees the old file or
the new one, never a partial one. A directory written in several steps (a checkpoint, a cache
entry) gets a manifest last (every file's size and SHA-256); `verify_manifest` tells a complete
directory from one cut short or damaged, and `replace_dir` swaps a new directory in with no
window in which neither is there. Checkpoints, caches, selectors and chains all write through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success rename it onto `path` in one step.

    The file gets the permissions of a plain `open()` (0o666 minus the umask), whatever the
    writer used: some (safetensors) create their files readable by the owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class CorruptFileError(ValueError):
    """A checkpoint, weights file or cache entry is incomplete or damaged (and must not be read)."""


# ---------------------------------------------------------------------------------------- manifests
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, **extra: Any) -> None:
    """Record every file of `directory` (size, SHA-256) in its manifest; call it after all other writes.

    A directory whose manifest is missing or disagrees with its files was cut short or damaged.
    """
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    write_json_atomic(directory / MANIFEST, {"version": MANIFEST_VERSION, "files": files, **extra})


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of `directory`; CorruptFileError when it is missing or unreadable."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CorruptFileError(f"{directory}: no {MANIFEST} (the write was cut short, or an older version wrote it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CorruptFileError(f"{path}: not a ktransfer manifest")
    return data


def verify_manifest(directory: str | Path, checksums: bool = True) -> str | None:
    """None when every file of the manifest is present with its size (and checksum); else the reason."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except CorruptFileError as e:
        return str(e).removeprefix(f"{directory}: ")
    for name, meta in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != meta.get("size"):
            return f"{name} has {size} bytes, the manifest says {meta.get('size')}"
        if checksums and file_digest(path) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the complete directory `tmp` at `final`, replacing what is there, with no window of loss.

    The old directory is first renamed aside (a hidden name readers ignore), the new one renamed
    into place, then the old one deleted: a kill at any moment leaves either the old or the new
    directory at `final` (or, between the two renames, none, and readers fall back to an older
    checkpoint), never a partial one.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
