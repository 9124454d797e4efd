"""Prompt / completion pairs for causal language models, with the loss on the completion only.

Each example is its prompt's tokens followed by its completion's tokens and an end-of-sequence
token; its labels are -100 on the prompt (no loss) and the completion's ids after it. Pairs are
de-duplicated (case and spacing ignored) and split into train / val / test by pair (as documents
are in `ktransfer.data.corpus`). An example longer than `max_length` tokens is cut to it
(truncated: its completion loses its end); one whose prompt alone fills `max_length` has no
completion token to learn and is dropped. Counts per split are in `info["examples"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ktransfer.data.base import DataSplits, example_counts
from ktransfer.data.corpus import BlockCollator, resolve_tokenizer, split_documents, token_data_info
from ktransfer.tasks import IGNORE_INDEX


class PromptCompletionDataset(Dataset):
    """Rows {input_ids, attention_mask, labels} with labels -100 on the prompt's tokens."""

    def __init__(self, ids: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> None:
        self.ids = [torch.tensor(row, dtype=torch.long) for row in ids]
        self.prompt_lengths = list(prompt_lengths)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.ids[i]
        labels = ids.clone()
        labels[: self.prompt_lengths[i]] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _cap(index: list[int], size: int | None, seed: int, key: str) -> list[int]:
    if size is None or size >= len(index):
        return index
    if size < 1:
        raise ValueError(f"{key} must be >= 1 or null, got {size}")
    g = torch.Generator().manual_seed(seed)
    return sorted(index[int(i)] for i in torch.randperm(len(index), generator=g)[:size])


def prompt_completion_splits(
    name: str, prompts: Sequence[str], completions: Sequence[str], *, tokenizer: str | None = None,
    prepared_tokenizer: str | None = None, train_tokenizer: int | None = None, max_length: int = 128,
    add_eos: bool = True, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    extra_info: dict[str, Any] | None = None,
) -> DataSplits:
    """Train/val/test prompt+completion examples for a causal LM (see the module docstring)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions need the same length")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    joined = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
    train_idx, val_idx, test_idx, duplicates = split_documents(joined, val_fraction, test_fraction, split_seed)
    tok, tokenizer_path = resolve_tokenizer(tokenizer, prepared_tokenizer, train_tokenizer,
                                            [joined[i] for i in train_idx])
    eos = tok.eos_token_id if add_eos else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    examples: dict[str, dict[str, int]] = {}
    built = []
    for split, index, size in (("train", train_idx, train_size), ("val", val_idx, val_size),
                               ("test", test_idx, test_size)):
        p_ids = tok([prompts[i] for i in index], add_special_tokens=False)["input_ids"]
        c_ids = tok([completions[i] for i in index], add_special_tokens=False)["input_ids"]
        fits = [k for k, p in enumerate(p_ids) if len(p) < max_length]
        chosen = _cap(fits, size, split_seed, f"{split}_size")
        rows = [(p_ids[k] + c_ids[k] + ([eos] if eos is not None else []), len(p_ids[k])) for k in chosen]
        truncated = sum(len(ids) > max_length for ids, _ in rows)
        examples[split] = example_counts(kept=len(rows) - truncated, truncated=truncated,
                                         dropped=len(index) - len(fits), not_sampled=len(fits) - len(chosen))
        built.append(PromptCompletionDataset([ids[:max_length] for ids, _ in rows], [n for _, n in rows]))
    train, val, test = built
    for split, data in zip(("train", "val", "test"), built):
        if len(data) == 0:
            raise ValueError(f"{name}: the {split} split has no example whose prompt is shorter than "
                             f"max_length={max_length} tokens")
    return DataSplits(
        train=train, val=val, test=test, collate_fn=BlockCollator(int(pad)),
        info={**token_data_info(name, tok, tokenizer_path, int(pad)),
              "max_length": max_length, "loss_on": "completion",
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "examples": examples,
              "examples_rule": f"an example is a prompt and its completion (loss on the completion only); truncated: "
                               f"longer than max_length={max_length} tokens, cut to it; dropped: the prompt alone "
                               "fills max_length (no completion token to learn); not sampled: left out by "
                               "train_size/val_size/test_size",
              "duplicates_removed": duplicates, **(extra_info or {})},
    )
