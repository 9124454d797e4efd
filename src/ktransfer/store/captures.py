"""Named teacher internals in a store: hidden states and attention maps, per example, at reduced precision.

A store built with captures (``build_store(..., hidden=[...], attentions=[...])``) holds, next to
the teacher's outputs, what the teacher's named submodules gave for every training example, so
that feature, relation and attention terms (and a selector reading a teacher representation) train
with no teacher in memory. The manifest's ``captures`` entry describes them::

    "captures": {
      "values": "float16",                 # dtype of every stored capture ("float32" | "float16")
      "items": [{"key": "bert.encoder.layer.2:output", "kind": "hidden", "tokens": true}, ...],
      "outline": {...}                     # the teacher's module tree (ktransfer.store.outline)
    }

``key`` is the capture key the engine uses (``"<module>:output"`` / ``"<module>:input"``, see
`ktransfer.capture`); ``kind`` is ``hidden`` (the first tensor of the module's output: a hidden
state (batch, tokens, width) or (batch, width)) or ``attention`` (the attention probabilities
(batch, heads, queries, keys) in the module's output). ``tokens`` says whether the tensor has token
axes that line up with the batch's ``attention_mask``; then only an example's own (unmasked)
positions are stored (hidden: (L, width); attention: (heads, L, L)), and at training time they are
put back at the positions the batch gives the example, with zeros at padding (which every term
masks out). A tensor without token axes is stored whole per example.

Tensors of capture ``n`` (its position in ``items``) in every shard::

    captures.<n>.values   float16 | float32 (total,)   every example's tensor flattened, in example order
    captures.<n>.offsets  int64 (count + 1,)           example i of the shard owns values[offsets[i]:offsets[i+1]]
    captures.<n>.shapes   int64 (count, ndim)          example i's tensor shape (without the batch axis)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ktransfer.capture import CaptureError, first_tensor, parse_spec

CAPTURE_VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CaptureStoreError(ValueError):
    """A capture that cannot be stored or placed: not a tensor of the expected kind, or positions that differ."""


@dataclass(frozen=True)
class CaptureItem:
    """One stored capture: its engine key, its kind ("hidden" or "attention"), and whether it has token axes."""

    key: str
    kind: str
    tokens: bool

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "tokens": self.tokens}


def capture_keys(hidden: Sequence[str], attentions: Sequence[str]) -> list[tuple[str, str]]:
    """`(key, kind)` for the named modules, checked: valid specs, each named once."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for kind, names in (("hidden", hidden), ("attention", attentions)):
        if isinstance(names, str):
            raise CaptureStoreError(f"{kind}: expected a list of module names, got the string {names!r}")
        for name in names:
            try:
                key = parse_spec(name).key
            except CaptureError as e:
                raise CaptureStoreError(f"{kind}: {e}") from None
            if not parse_spec(name).module:
                raise CaptureStoreError(f"{kind}: '{name}' names the whole model; name a submodule "
                                        "(its outputs are in the store already)")
            if key in seen:
                raise CaptureStoreError(f"module '{name}' is named twice (as {seen[key]} and {kind}); name it once")
            seen[key] = kind
            out.append((key, kind))
    return out


def capture_tensor(value: Any, kind: str, where: str) -> Tensor:
    """The tensor to store from a captured value: the hidden state, or the 4-D attention probabilities."""
    if kind == "attention":
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        found = next((x for x in items if isinstance(x, Tensor) and x.dim() == 4 and x.shape[-1] == x.shape[-2]), None)
        if found is None:
            hint = (" (a Hugging Face model returns them only when loaded with attn_implementation='eager')"
                    if any(x is None for x in items) else "")
            raise CaptureStoreError(f"{where} gives no attention maps (batch, heads, queries, keys){hint}")
        return found
    try:
        tensor = first_tensor(value)
    except CaptureError:
        raise CaptureStoreError(f"{where} gives no tensor to store as a hidden state") from None
    if tensor.dim() < 2 or not tensor.is_floating_point():
        raise CaptureStoreError(f"{where} gives {tuple(tensor.shape)} {tensor.dtype}; a hidden state must be a float "
                                "tensor (batch, ..., width)")
    return tensor


def has_token_axes(tensor: Tensor, kind: str, mask: Tensor | None) -> bool:
    """Whether `tensor`'s token axes line up with the batch's attention mask (batch, tokens)."""
    if mask is None or mask.dim() != 2:
        return False
    if kind == "attention":
        return tensor.shape[0] == mask.shape[0] and tensor.shape[-1] == tensor.shape[-2] == mask.shape[1]
    return tensor.dim() == 3 and tuple(tensor.shape[:2]) == tuple(mask.shape)


def split_examples(tensor: Tensor, item: CaptureItem, mask: Tensor | None) -> list[Tensor]:
    """The batch tensor cut into each example's own tensor (only its unmasked positions when it has token axes)."""
    tensor = tensor.detach().cpu()
    if not item.tokens:
        return [tensor[i] for i in range(tensor.shape[0])]
    assert mask is not None
    out = []
    for i in range(tensor.shape[0]):
        where = mask[i].cpu().bool().nonzero().squeeze(-1)
        row = tensor[i]
        out.append(row[:, where][:, :, where] if item.kind == "attention" else row[where])
    return out


def check_value(value: Tensor, values: str, where: str) -> Tensor:
    """`value` in the stored dtype; a value that does not fit it (overflow to inf) is an error naming it."""
    stored = value.to(CAPTURE_VALUE_DTYPES[values])
    if not bool(torch.isfinite(stored).all()):
        hint = " (too large for float16: build with feature_values float32)" if bool(torch.isfinite(value).all()) else ""
        raise CaptureStoreError(f"{where}: the captured values are not finite{hint}")
    return stored


def pack(items: Sequence[CaptureItem], rows: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The shard tensors of every capture for the shard's examples (`rows[i][key]`, in example order)."""
    tensors: dict[str, Tensor] = {}
    for n, item in enumerate(items):
        parts = [r[item.key] for r in rows]
        sizes = torch.tensor([0] + [p.numel() for p in parts], dtype=torch.int64)
        ndim = parts[0].dim() if parts else 0
        tensors[f"captures.{n}.values"] = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0)
        tensors[f"captures.{n}.offsets"] = sizes.cumsum(0)
        tensors[f"captures.{n}.shapes"] = torch.tensor([list(p.shape) for p in parts], dtype=torch.int64).reshape(-1, ndim)
    return tensors


def is_values_key(name: str) -> bool:
    """Whether a shard tensor holds a capture's values (read per example, not loaded whole)."""
    return name.startswith("captures.") and name.endswith(".values")


def unpack(shard: dict[str, Tensor], n: int, j: int, values: Any) -> Tensor:
    """Capture `n` of the shard's `j`-th example, as float32; `values` is the shard file opened with
    `safetensors.safe_open`, from which only this example's values are read."""
    offsets = shard[f"captures.{n}.offsets"]
    start, stop = int(offsets[j]), int(offsets[j + 1])
    shape = [int(s) for s in shard[f"captures.{n}.shapes"][j].tolist()]
    return values.get_slice(f"captures.{n}.values")[start:stop].float().reshape(shape)


def place(rows: Sequence[Tensor], item: CaptureItem, mask: Tensor | None, indices: Sequence[int],
          where: str) -> Tensor:
    """The batch tensor of a capture from its examples' stored tensors (zeros at padded positions)."""
    if not item.tokens:
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) != 1:
            raise CaptureStoreError(f"{where}: capture '{item.key}' has shapes {sorted(shapes)} in one batch")
        return torch.stack(list(rows))
    if mask is None or mask.dim() != 2:
        raise CaptureStoreError(f"{where}: capture '{item.key}' is stored per token, but the batch has no "
                                "attention_mask (batch, tokens) to place it")
    mask = mask.cpu().bool()
    batch, length = mask.shape
    first = rows[0]
    if item.kind == "attention":
        out = torch.zeros(batch, first.shape[0], length, length)
    else:
        out = torch.zeros(batch, length, first.shape[-1])
    for row, (stored, index) in enumerate(zip(rows, indices, strict=True)):
        positions = mask[row].nonzero().squeeze(-1)
        if stored.shape[-2 if item.kind == "attention" else 0] != positions.numel():
            raise CaptureStoreError(f"{where}: example {index} has {stored.shape[-2 if item.kind == 'attention' else 0]} "
                                    f"stored positions of '{item.key}', but the batch gives it {positions.numel()}: "
                                    "the run's data differs from the store's")
        if item.kind == "attention":
            out[row][:, positions[:, None], positions[None, :]] = stored
        else:
            out[row, positions] = stored
    return out


class CaptureRecorder:
    """Captures the named modules of a teacher during its forward passes and cuts them per example.

    `hidden` / `attentions` are module names (or ``"name:input"``); they are resolved on the teacher at
    once, so an unknown name is an error listing close matches. The first recorded batch fixes each
    capture's layout (`items`); later batches must agree.
    """

    def __init__(self, teacher: Any, hidden: Sequence[str], attentions: Sequence[str], values: str) -> None:
        from ktransfer.capture import Capture

        if values not in CAPTURE_VALUE_DTYPES:
            raise CaptureStoreError(f"feature_values must be one of {', '.join(CAPTURE_VALUE_DTYPES)}, got {values!r}")
        self.values = values
        self.kinds = dict(capture_keys(hidden, attentions))
        if not self.kinds:
            raise CaptureStoreError("no modules to capture: give hidden and/or attentions module names")
        try:
            self.capture = Capture(teacher, list(self.kinds), detach=True)
        except CaptureError as e:
            raise CaptureStoreError(f"teacher: {e}") from None
        self.items: list[CaptureItem] | None = None

    def split(self, mask: Tensor | None) -> list[dict[str, Tensor]]:
        """Per example of the last forward pass: key -> its tensor in the stored dtype."""
        captured = self.capture.outputs
        tensors = {}
        for key, kind in self.kinds.items():
            if key not in captured:
                raise CaptureStoreError(f"teacher module '{key}' exists but was not called in the forward pass, "
                                        "so it has nothing to store")
            tensors[key] = capture_tensor(captured[key], kind, f"teacher module '{key}'")
        items = [CaptureItem(key, kind, has_token_axes(tensors[key], kind, mask)) for key, kind in self.kinds.items()]
        if self.items is None:
            self.items = items
        elif items != self.items:
            raise CaptureStoreError(f"the teacher's captures changed layout between batches: {self.items} then {items}")
        per_item = {i.key: split_examples(tensors[i.key], i, mask) for i in items}
        batch = next(iter(tensors.values())).shape[0]
        return [{key: check_value(rows[r], self.values, f"teacher module '{key}'") for key, rows in per_item.items()}
                for r in range(batch)]
