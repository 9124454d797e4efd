"""Dataset containers shared by every data source: dict-of-tensors datasets and train/val/test splits."""

from __future__ import annotations

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


def collate_dicts(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a list of dict rows into a dict of batched tensors."""
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


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
