"""Where each row's targets came from, for terms that read only some rows.

A targets stage (`ktransfer.sequence.TargetsStage`) writes, per example, the index in `SOURCES` of
the source its targets came from under the batch key `target_source`; a term with a `sources`
setting keeps the rows of those sources.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView
from ktransfer.tasks import IGNORE_INDEX

SOURCES: tuple[str, ...] = ("dataset", "teacher", "student")
SOURCE_IDS: dict[str, int] = {name: i for i, name in enumerate(SOURCES)}
SOURCE_KEY = "target_source"


def source_rows(view: StepView, sources: list[str] | None, who: str) -> Tensor | None:
    """True for the examples whose targets came from one of `sources` (None = all examples)."""
    if sources is None:
        return None
    origin = view.batch.get(SOURCE_KEY)
    if origin is None:
        raise ValueError(f"knowledge term '{who}' restricts itself to targets from {sources}, but the batch has no "
                         f"'{SOURCE_KEY}': add a targets stage (sequence.TargetsStage) to the run")
    ids = torch.tensor([SOURCE_IDS[s] for s in sources], device=origin.device)
    return torch.isin(origin, ids)


def source_units(batch: dict[str, Any], task_kind: str, sources: list[str] | None, per_sequence: bool) -> float | None:
    """The units a term restricted to `sources` averages over in `batch`, from the batch alone (`count_units`).

    `per_sequence`: the examples of those sources with at least one target; else their target
    tokens. With a `sample_weight`, each unit counts its example's weight. None where the batch
    has no `labels` (or no sources where some are asked for): the term's loss then says what is
    missing.
    """
    labels = batch.get("labels")
    if not isinstance(labels, Tensor):
        return None
    if task_kind == "causal_lm":  # position t predicts token t + 1
        labels = labels[..., 1:]
    units = (labels != IGNORE_INDEX).reshape(labels.shape[0], -1).sum(-1).to(torch.float64).cpu()
    if sources is not None:
        origin = batch.get(SOURCE_KEY)
        if not isinstance(origin, Tensor):
            return None
        ids = torch.tensor([SOURCE_IDS[s] for s in sources])
        units = units * torch.isin(origin.reshape(-1).cpu(), ids)
    if per_sequence:
        units = (units > 0).to(torch.float64)
    weights = batch.get(SAMPLE_WEIGHT_KEY)
    if weights is not None:
        units = units * torch.as_tensor(weights, dtype=torch.float64).reshape(-1).cpu()
    return float(units.sum())


def check_sources(sources: list[str] | None) -> None:
    """Every name in `sources` is one of `SOURCES`; else a ValueError listing them."""
    for s in sources or []:
        if s not in SOURCES:
            raise ValueError(f"sources: unknown source '{s}'; valid choices: {', '.join(SOURCES)}")


__all__ = ["SOURCES", "SOURCE_IDS", "SOURCE_KEY", "check_sources", "source_rows", "source_units"]
