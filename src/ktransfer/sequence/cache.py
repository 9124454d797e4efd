"""Teacher generations cached on disk, for sequence-level KD: generated once, reused every epoch and run.

An entry is a folder under the cache root (`ktransfer.cache.cache_root()/generations/<key>`),
the key a SHA-256 of what determines a generation: the teacher's weights, the decoding settings,
the task and the tokenizer's vocabulary. Inside, each prompt (its token ids: the data) is looked
up by its own hash. New generations are written as shards, each written aside and renamed into
place, named by the SHA-256 of its bytes: a reader verifies every shard against its name and
skips (and deletes) a damaged one, so a kill at any moment loses at most the shard being
written, and a resumed run finds every generation a finished shard holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor, nn

from ktransfer.cache import cache_root


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's class, parameter and buffer names, shapes, dtypes and values.

    A model sharded across processes (FSDP2) has the fingerprint of the whole model: its class
    without the sharding wrapper, its tensors gathered one at a time (collective: every process
    calls it together).
    """
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if isinstance(model, FSDPModule):  # fully_shard made the class FSDP<Class>(FSDPModule, Class)
        cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    digest = hashlib.sha256(cls.__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        whole = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        t = whole.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def prompt_key(tokens: Tensor) -> str:
    """The hash of one prompt's token ids (the data part of a generation's key)."""
    return hashlib.sha256(tokens.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:32]


class GenerationCache:
    """Generations (tokens, log-probabilities) by prompt, for one teacher and one decoding."""

    def __init__(self, teacher: nn.Module, decoding: Any, task: str, tokenizer: Any = None,
                 root: str | Path | None = None) -> None:
        described = {"teacher": model_fingerprint(teacher), "task": task,
                     "decoding": asdict(decoding) if hasattr(decoding, "__dataclass_fields__") else decoding,
                     "vocabulary": (hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
                                    if tokenizer is not None else None)}
        self.key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:40]
        self.dir = Path(root) if root is not None else cache_root() / "generations"
        self.dir = self.dir / self.key
        self.entries: dict[str, tuple[Tensor, Tensor]] = {}
        self.skipped: list[Path] = []
        self._read()

    def _read(self) -> None:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != path.name[len("shard-"):-len(".safetensors")]:
                self.skipped.append(path)  # damaged (or cut short outside our own writes): regenerate those
                path.unlink(missing_ok=True)
                continue
            tensors = load(data)
            keys = json.loads(bytes(tensors["keys"].tolist()).decode())
            for i, key in enumerate(keys):
                length = int(tensors["lengths"][i])
                self.entries[key] = (tensors["tokens"][i, :length], tensors["logprobs"][i, :length])

    def get(self, key: str) -> tuple[Tensor, Tensor] | None:
        return self.entries.get(key)

    def put(self, items: dict[str, tuple[Tensor, Tensor]]) -> Path | None:
        """Write new generations as one shard (aside, then renamed to its content hash)."""
        new = {k: v for k, v in items.items() if k not in self.entries}
        if not new:
            return None
        keys = sorted(new)
        width = max(new[k][0].shape[0] for k in keys)
        tokens = torch.full((len(keys), width), -100, dtype=torch.int64)
        logprobs = torch.zeros(len(keys), width, dtype=torch.float32)
        for i, k in enumerate(keys):
            t, lp = new[k]
            tokens[i, :t.shape[0]], logprobs[i, :lp.shape[0]] = t.cpu(), lp.float().cpu()
        payload = save({"tokens": tokens, "logprobs": logprobs,
                        "lengths": torch.tensor([new[k][0].shape[0] for k in keys]),
                        "keys": torch.tensor(list(json.dumps(keys).encode()), dtype=torch.uint8)})
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"shard-{hashlib.sha256(payload).hexdigest()}.safetensors"
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for k in keys:
            self.entries[k] = (new[k][0].cpu(), new[k][1].float().cpu())
        return final
