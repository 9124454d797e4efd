"""Atomic writes (a file appears complete or not at all), self-verifying weights, manifests.

Whole checkpoint directories are written by the trainer into a temporary directory, given a
manifest (every file's size and checksum) last, and swapped into place by `replace_dir`;
readers verify the manifest and fall back to the newest intact checkpoint. Weights files carry
a checksum of their tensors in the safetensors header, so a damaged file is refused by name.
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

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


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


WEIGHTS_DIGEST_KEY = "ktransfer.sha256"


def tensors_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of tensors (independent of file layout)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


WEIGHTS_TIED_KEY = "ktransfer.tied"


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """The later names of parameters that are one tensor under several names (tied weights), each
    mapped to the first name in registration order (the one `named_parameters` lists)."""
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a model's state dict as safetensors, atomically, with a checksum of its tensors.

    A tied tensor is saved once, under its first name; the file's metadata maps the other names
    to it, and `load_weights` restores them. The checksum lets `load_weights` refuse a damaged file.
    """
    aliases = tied_aliases(model)
    full = model.state_dict()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in full.items()
             if not (k in aliases and aliases[k] in full)}
    kept = {alias: first for alias, first in aliases.items() if first in state}
    metadata = {WEIGHTS_DIGEST_KEY: tensors_digest(state)}
    if kept:
        metadata[WEIGHTS_TIED_KEY] = json.dumps(kept, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, verified against its checksum when it carries one.

    A missing file is FileNotFoundError; a truncated or damaged one CorruptFileError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(WEIGHTS_DIGEST_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"weights file {path} is damaged or incomplete ({e}); "
                               "it cannot be read, retrain or restore it from a checkpoint") from e
    if expected is not None and tensors_digest(state) != expected:
        raise CorruptFileError(f"weights file {path} does not match its checksum (damaged on disk)")
    return state


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load verified safetensors weights into `model`; a missing, damaged or mismatched file is a clear error.

    A tied tensor saved once fills each of its names: one tensor in a model that ties them (the
    tie holds), equal copies in a model that does not.
    """
    state = read_weights(path)
    for alias, first in _tied_names(path).items():
        if alias not in state and first in state:
            state[alias] = state[first]
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(
            f"weights in {path} do not fit the model: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return model


def _tied_names(path: str | Path) -> dict[str, str]:
    """The tied names a weights file records (name -> the name it was saved under); {} when none."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(WEIGHTS_TIED_KEY)
    if text is None:
        return {}
    try:
        tied = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"weights file {path}: unreadable '{WEIGHTS_TIED_KEY}' metadata ({e})") from e
    return {str(k): str(v) for k, v in tied.items()}


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


def checkpoints_newest_first(checkpoint_dir: str | Path) -> list[Path]:
    """The `step-N` directories under `checkpoint_dir`, highest step first (unverified)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    steps = [(int(p.name[5:]), p) for p in root.iterdir()
             if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return [p for _, p in sorted(steps, reverse=True)]


def find_intact_checkpoint(checkpoint_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose manifest verifies, and the newer ones skipped with the reason."""
    skipped: list[tuple[Path, str]] = []
    for path in checkpoints_newest_first(checkpoint_dir):
        reason = verify_manifest(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest intact checkpoint directory (manifest verified), or None."""
    return find_intact_checkpoint(checkpoint_dir)[0]
