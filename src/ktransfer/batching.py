"""Example lengths and length-grouped batch orders, so padded batches waste little compute.

A batch padded to its longest example costs as much as if every example had that length. For
short texts of varied length (tweets, Bible verses) a random batch of 32 is padded to nearly the
longest example of the data, about 1.7x the mean. Grouping examples of similar length into a
batch, as Hugging Face's `group_by_length` does, removes most of that padding while each epoch
still sees every example once in an order drawn from the seed.

A dataset declares its lengths through a `lengths` attribute (a sequence of ints, one per
example); `torch.utils.data.Subset`s of it inherit them. Datasets without one are measured by
reading every example once (the number of elements of its tensors and lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

# Batches are sorted within windows of this many batches: long enough to group lengths well,
# short enough that the order stays random at the scale of the epoch.
GROUP_BATCHES = 50


def declared_lengths(data: Dataset) -> list[int] | None:
    """The per-example lengths `data` (or the dataset a Subset views) declares, or None."""
    if isinstance(data, Subset):
        parent = declared_lengths(data.dataset)
        return None if parent is None else [parent[i] for i in data.indices]
    lengths = getattr(data, "lengths", None)
    return None if lengths is None else [int(n) for n in lengths]


def example_size(example: Any) -> int:
    """How much padding-sensitive content one example holds: the elements of its tensors and lists."""
    if isinstance(example, Tensor):
        return int(example.numel())
    if isinstance(example, Mapping):
        return sum(example_size(v) for v in example.values())
    if isinstance(example, (list, tuple)):
        if example and all(isinstance(v, (int, float)) for v in example):
            return len(example)
        return sum(example_size(v) for v in example)
    return 0


def example_lengths(data: Dataset) -> list[int]:
    """Per-example lengths: declared by the dataset, or else measured by reading each example once."""
    lengths = declared_lengths(data)
    if lengths is None:
        lengths = [example_size(data[i]) for i in range(len(data))]  # type: ignore[arg-type]
    return lengths


def length_grouped_order(order: Tensor, lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                         group_batches: int = GROUP_BATCHES) -> list[int]:
    """`order` (a permutation) rearranged so that consecutive `batch_size` examples have similar lengths.

    The full batches of `order` are cut into windows of `group_batches` batches, each window is
    sorted by length (longest first), the resulting batches are shuffled with `generator`, and the
    examples that do not fill a last batch stay at the end, so that a loader taking `batch_size`
    examples at a time forms exactly these batches.
    """
    if batch_size < 1 or group_batches < 1:
        raise ValueError(f"batch_size and group_batches must be >= 1, got {batch_size} and {group_batches}")
    if len(lengths) != len(order):
        raise ValueError(f"{len(lengths)} lengths for {len(order)} examples")
    ids = order.tolist()
    full = len(ids) - len(ids) % batch_size
    window = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, full, window):
        chunk = sorted(ids[start:min(start + window, full)], key=lambda i: -lengths[i])
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffled for i in batches[b]] + ids[full:]


def length_sorted(data: Dataset) -> Dataset:
    """`data` viewed longest example first when it declares its lengths (for evaluation, where order
    does not matter but padding does); otherwise `data` itself."""
    lengths = declared_lengths(data)
    if lengths is None:
        return data
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if order == list(range(len(lengths))):
        return data
    return Subset(data, order)
