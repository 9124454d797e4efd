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
from ktransfer.tasks import Task

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
    return _from(origin, sources)


def _from(origin: Tensor, sources: list[str]) -> Tensor:
    """True where a row's `origin` (its SOURCE_KEY entry) is one of `sources`."""
    return torch.isin(origin, torch.tensor([SOURCE_IDS[s] for s in sources], device=origin.device))


def source_units(batch: dict[str, Any], task: Task, sources: list[str] | None, per_sequence: bool) -> float | None:
    """The units a term restricted to `sources` averages over in `batch`, from the batch alone (`count_units`).

    `per_sequence`: the examples of those sources with at least one target; else their target
    tokens. With a `sample_weight`, each unit counts its example's weight. None where the batch
    has no `labels` (or no sources where some are asked for): the term's loss then says what is
    missing.
    """
    targets = task.targets_per_example(batch)
    if targets is None:
        return None
    units = targets.to(torch.float64).cpu()
    if sources is not None:
        origin = batch.get(SOURCE_KEY)
        if not isinstance(origin, Tensor):
            return None
        units = units * _from(origin.reshape(-1).cpu(), sources)
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
