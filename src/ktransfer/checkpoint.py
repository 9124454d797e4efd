"""Self-verifying weights files and the training checkpoints of a run directory.

Whole checkpoint directories are written by the engine into a temporary directory, given a
manifest (every file's size and checksum, `ktransfer.io`) last, and swapped into place by
`replace_dir`; readers verify the manifest and fall back to the newest intact checkpoint.
Weights files carry a checksum of their tensors in the safetensors header, so a damaged file is
refused by name. The file primitives of `ktransfer.io` stay importable from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ktransfer.io import (
    MANIFEST,
    MANIFEST_VERSION,
    CorruptFileError,
    atomic_path,
    current_umask,
    file_digest,
    read_manifest,
    replace_dir,
    verify_manifest,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)

__all__ = ["MANIFEST", "MANIFEST_VERSION", "WEIGHTS_DIGEST_KEY", "WEIGHTS_TIED_KEY", "CorruptFileError", "atomic_path",
           "checkpoints_newest_first", "current_umask", "file_digest", "find_intact_checkpoint", "latest_checkpoint",
           "load_weights", "read_manifest", "read_weights", "replace_dir", "save_weights", "tensors_digest",
           "tied_aliases", "verify_manifest", "write_json_atomic", "write_manifest", "write_text_atomic"]


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


def save_weights(model: nn.Module, path: str | Path, state: dict[str, Tensor] | None = None) -> None:
    """Save a model's state dict as safetensors, atomically, with a checksum of its tensors.

    A tied tensor is saved once, under its first name; the file's metadata maps the other names
    to it, and `load_weights` restores them. The checksum lets `load_weights` refuse a damaged file.
    `state` replaces `model.state_dict()` where the model's own is not whole (a model sharded
    across processes passes its gathered tensors; `model` still tells which names are tied).
    """
    aliases = tied_aliases(model)
    full = model.state_dict() if state is None else state
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
