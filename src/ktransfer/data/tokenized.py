"""Tokenised text examples of their own length, padded per batch, and their split into train/val/test.

Examples are tokenised once, kept at their own length, and padded per batch by `PadCollator`
(the `collate_fn` of the splits), so short texts cost no padding. Duplicate texts are removed
before splitting, so that no text is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ktransfer.data.base import DataSplits, example_counts
from ktransfer.pretrained import minilm_dir

IGNORED_LABEL = -100


def load_tokenizer(tokenizer: str | None) -> Any:
    """A tokenizer from a local folder or tokenizer.json file (default: the prepared MiniLM's folder); never the hub."""
    from ktransfer.data.corpus import load_tokenizer as load_local

    path = Path(tokenizer) if tokenizer else minilm_dir()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    return load_local(path)


class TokenizedDataset(Dataset):
    """Tokenised examples of their own length: rows {input_ids, attention_mask, [token_type_ids], labels}."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int]) -> None:
        if any(len(v) != len(labels) for v in encodings.values()):
            raise ValueError("every encoding needs one row per label")
        self.encodings = {k: [torch.tensor(row, dtype=torch.long) for row in v] for k, v in encodings.items()}
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        """Tokens per example (for length-grouped batching)."""
        return [len(row) for row in self.encodings["input_ids"]]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.encodings.items()}, "labels": self.labels[i]}


class PadCollator:
    """Pads a list of rows to the longest sequence of the batch: ids with `pad_id`, sequence labels with -100
    (no target), masks and anything else with 0."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in rows[0]:
            values = [torch.as_tensor(r[key]) for r in rows]
            if values[0].dim() == 0:
                out[key] = torch.stack(values)
                continue
            fill = self.pad_id if key == "input_ids" else IGNORED_LABEL if key == "labels" else 0
            batch = torch.full((len(values), max(len(v) for v in values)), fill, dtype=values[0].dtype)
            for i, v in enumerate(values):
                batch[i, : len(v)] = v
            out[key] = batch
        return out


def _label_order(label: Any) -> tuple[bool, float, str]:
    """Numbers in numeric order (2 before 10), then other labels alphabetically."""
    try:
        return (False, float(label), str(label))
    except (TypeError, ValueError):
        return (True, 0.0, str(label))


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int, groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices: stratified by label, or (with `groups`) whole groups per split."""
    from sklearn.model_selection import train_test_split

    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    index = np.arange(len(labels))
    if groups is None:
        try:  # stratified by label; data too small for that (a class with a single example) is split plainly
            rest, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
            train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                          stratify=labels[rest])
        except ValueError:
            rest, test = train_test_split(index, test_size=test_fraction, random_state=seed)
            train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed)
        return np.sort(train), np.sort(val), np.sort(test)
    names = np.unique(groups)
    if len(names) < 3:
        raise ValueError(f"a split by group needs at least 3 groups, got {len(names)}")
    order = np.random.default_rng(seed).permutation(names)
    sizes = {g: int(n) for g, n in zip(*np.unique(groups, return_counts=True))}
    held: dict[str, list[Any]] = {"test": [], "val": []}
    taken = 0
    for split, frac in (("test", test_fraction), ("val", val_fraction)):
        goal = frac * len(labels)
        got = 0
        while (got < goal or not held[split]) and taken < len(order) - 1:
            held[split].append(order[taken])
            got += sizes[order[taken]]
            taken += 1
    test_mask, val_mask = np.isin(groups, held["test"]), np.isin(groups, held["val"])
    return index[~test_mask & ~val_mask], index[val_mask], index[test_mask]


def _cap(index: np.ndarray, size: int | None, seed: int, key: str) -> np.ndarray:
    if size is None or size >= len(index):
        return index
    if size < 1:
        raise ValueError(f"{key} must be >= 1 or null, got {size}")
    return np.sort(np.random.default_rng(seed).permutation(index)[:size])


def _groups_per_split(groups: np.ndarray, splits: Sequence[np.ndarray]) -> dict[str, list[Any]]:
    """The groups (e.g. Bible books) each split holds, for `info` and for checks of leakage."""
    return {name: sorted({groups[i].item() for i in idx}) for name, idx in zip(("train", "val", "test"), splits)}


def count_truncated(tok: Any, enc: Any, first: Sequence[str], second: Sequence[str] | None, max_length: int) -> int:
    """How many rows of `enc` (`tok(first, second, truncation=True, max_length=max_length)`) truncation cut.

    A fast tokenizer's encodings keep what was cut (`overflowing`), so the count costs no second pass; any other
    tokenizer encodes the texts again untruncated and counts the rows longer than `max_length`.
    """
    encodings = getattr(enc, "encodings", None)  # None for tokenizers without a Rust backend
    if encodings is not None and len(encodings) == len(first):
        return sum(bool(e.overflowing) for e in encodings)
    full = tok(list(first), list(second) if second is not None else None, truncation=False, verbose=False)
    return sum(len(ids) > max_length for ids in full["input_ids"])


def text_splits(
    name: str, texts: Sequence[str], labels: Sequence[Any], *, pairs: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None, classes: Sequence[Any] | None = None, tokenizer: str | None = None,
    max_length: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    dedupe: bool = True, extra_info: dict[str, Any] | None = None,
) -> DataSplits:
    """Tokenised train/val/test splits of texts (or text pairs) with labels of any kind.

    Labels map to classes 0..C-1 (in the order of `classes`, else sorted; kept in
    `info["classes"]`). With `dedupe`, repeated texts (case and spacing ignored) keep their first
    occurrence, so no text is in two splits. `groups` (e.g. Bible books) keeps each group in one
    split; otherwise splits are stratified by label. `*_size` subsample a split after splitting.
    """
    if len(texts) != len(labels) or (pairs is not None and len(pairs) != len(texts)):
        raise ValueError("texts, pairs and labels need the same length")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    keep = list(range(len(texts)))
    if dedupe:
        seen: set[tuple[str, str]] = set()
        keep = []
        for i, text in enumerate(texts):
            key = (_normalised(text), _normalised(pairs[i]) if pairs is not None else "")
            if key not in seen:
                seen.add(key)
                keep.append(i)
    found = sorted({labels[i] for i in keep}, key=_label_order) if classes is None else list(classes)
    if len(found) < 2:
        raise ValueError(f"{name}: labels have fewer than two classes ({found})")
    class_index = {c: k for k, c in enumerate(found)}
    unknown = sorted({str(labels[i]) for i in keep if labels[i] not in class_index})
    if unknown:
        raise ValueError(f"{name}: labels {', '.join(unknown[:5])} are not among the classes {found}")
    y = np.asarray([class_index[labels[i]] for i in keep], dtype=np.int64)
    g = np.asarray([groups[i] for i in keep]) if groups is not None else None
    pools = _split_indices(y, val_fraction, test_fraction, split_seed, g)
    splits = tuple(_cap(idx, size, split_seed, key) for idx, size, key in
                   zip(pools, (train_size, val_size, test_size), ("train_size", "val_size", "test_size")))
    tok = load_tokenizer(tokenizer)
    examples: dict[str, dict[str, int]] = {}

    def encode(split: str, idx: np.ndarray, pool: np.ndarray) -> TokenizedDataset:
        rows = [keep[i] for i in idx]
        first, second = [texts[i] for i in rows], [pairs[i] for i in rows] if pairs is not None else None
        enc = tok(first, second, truncation=True, max_length=max_length)
        truncated = count_truncated(tok, enc, first, second, max_length)
        examples[split] = example_counts(kept=len(idx) - truncated, truncated=truncated,
                                         not_sampled=len(pool) - len(idx))
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return TokenizedDataset({k: enc[k] for k in keys}, y[idx].tolist())

    train, val, test = (encode(split, idx, pool) for split, idx, pool in zip(("train", "val", "test"), splits, pools))
    input_keys = list(train.encodings)
    return DataSplits(
        train=train, val=val, test=test, collate_fn=PadCollator(int(tok.pad_token_id or 0)),
        info={"name": name, "kind": "tokens", "input_keys": input_keys, "num_classes": len(found),
              "classes": [str(c) for c in found], "max_length": max_length, "vocab_size": len(tok),
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "examples": examples,
              "examples_rule": f"truncated: texts (with their pair) longer than max_length={max_length} tokens, cut "
                               "to it; not sampled: left out by train_size/val_size/test_size; repeated texts are "
                               "removed before splitting (duplicates_removed)",
              "duplicates_removed": len(texts) - len(keep),
              **({"groups": _groups_per_split(g, splits)} if g is not None else {}),
              **(extra_info or {})},
    )
