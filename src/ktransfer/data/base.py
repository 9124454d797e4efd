"""Dataset containers shared by every data source: dict-of-tensors datasets and train/val/test splits.

Every dataset that cuts or leaves out examples says so in one record, `info["examples"]`: per
split, how many examples are whole (`kept`), cut to the length limit (`truncated`), left out as
unusable (`dropped`, e.g. a training pair longer than `max_length`) and left out by a subsample
(`not_sampled`, e.g. `train_size`), with `info["examples_rule"]` saying what each means there.
Runs print it when they start and write it into summary.json; `ktransfer check` shows it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorDictDataset(Dataset):
    """Rows of equally long tensors, served as dicts (`{"inputs": ..., "labels": ...}`)."""

    def __init__(self, **tensors: Tensor) -> None:
        if not tensors:
            raise ValueError("TensorDictDataset needs at least one tensor")
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors must have the same length, got {lengths}")
        self.tensors = tensors
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def vocabulary_digest(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's string -> id map (`tokenizers.Tokenizer` or a Hugging Face tokenizer): two
    tokenizers with the same digest give the same ids to the same pieces."""
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode("utf-8")).hexdigest()


def collate_dicts(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a list of dict rows into a dict of batched tensors."""
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


SPLITS = ("train", "val", "test")
EXAMPLE_KEYS = ("kept", "truncated", "dropped", "not_sampled")
DROP_WARNING_FRACTION = 0.05  # more of the training split dropped than this is a warning


def example_counts(kept: int = 0, truncated: int = 0, dropped: int = 0, not_sampled: int = 0) -> dict[str, int]:
    """One split's entry of `info["examples"]` (see the module docstring)."""
    counts = {"kept": kept, "truncated": truncated, "dropped": dropped, "not_sampled": not_sampled}
    if any(int(v) < 0 for v in counts.values()):
        raise ValueError(f"example counts must be >= 0, got {counts}")
    return {k: int(v) for k, v in counts.items()}


def describe_examples(info: dict[str, Any]) -> list[str]:
    """One line per split of `info["examples"]` ("train: 950 kept, 10 truncated, 40 dropped (4.0%)"), and the rule."""
    examples = info.get("examples")
    if not examples:
        return []
    lines = []
    for split in SPLITS:
        if split not in examples:
            continue
        counts = examples[split]
        total = sum(counts.get(k, 0) for k in EXAMPLE_KEYS)
        parts = [f"{counts.get(k, 0):,} {k.replace('_', ' ')}" for k in EXAMPLE_KEYS if k in ("kept", "truncated")
                 or counts.get(k, 0)]
        share = f" ({100 * counts.get('dropped', 0) / total:.1f}% dropped)" if total and counts.get("dropped") else ""
        lines.append(f"{split}: {', '.join(parts)} of {total:,}{share}")
    if info.get("examples_rule"):
        lines.append(str(info["examples_rule"]))
    return lines


def example_warnings(info: dict[str, Any]) -> list[str]:
    """A warning when more than DROP_WARNING_FRACTION of the training examples are dropped."""
    counts = (info.get("examples") or {}).get("train")
    if not counts:
        return []
    total = sum(counts.get(k, 0) for k in EXAMPLE_KEYS)
    dropped = counts.get("dropped", 0)
    if not total or dropped / total <= DROP_WARNING_FRACTION:
        return []
    rule = f". How the data counts: {info['examples_rule']}" if info.get("examples_rule") else ""
    return [f"{dropped:,} of {total:,} training examples ({100 * dropped / total:.1f}%) are dropped{rule}"]


@dataclass
class DataSplits:
    """Train / validation / test datasets plus facts about them in `info`.

    Models are sized by `num_features` and `num_classes`; `kind` ("tabular", "image" or
    "tokens") and `input_keys` (the batch keys models read) say which tasks the data fits,
    checked before a run trains. A dataset may leave out what does not apply to it.
    `collate_fn` turns a list of rows into a batch for training and evaluation (text data pads
    each batch to its longest sequence); the default stacks equally shaped rows.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: dict[str, Any] = field(default_factory=dict)
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] = collate_dicts

    def get(self, split: str) -> Dataset:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split '{split}'; valid choices: train, val, test")
        return getattr(self, split)
