"""Where each row's targets came from, for terms that read only some rows.

A targets stage (`ktransfer.sequence.TargetsStage`) writes, per example, the index in `SOURCES` of
the source its targets came from under the batch key `target_source`; a term with a `sources`
setting keeps the rows of those sources.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ktransfer.knowledge.base import StepView

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


def check_sources(sources: list[str] | None) -> None:
    """Every name in `sources` is one of `SOURCES`; else a ValueError listing them."""
    for s in sources or []:
        if s not in SOURCES:
            raise ValueError(f"sources: unknown source '{s}'; valid choices: {', '.join(SOURCES)}")


__all__ = ["SOURCES", "SOURCE_IDS", "SOURCE_KEY", "check_sources", "source_rows"]
