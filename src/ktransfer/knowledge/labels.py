"""Ground-truth labels as a knowledge term: cross-entropy on the student's logits.

With a targets stage (on-policy runs) a row's `labels` may be a sample of the student or the
teacher instead of the dataset's reference; `sources` restricts the term to rows whose targets
came from the named sources (e.g. `[dataset]`: the references only, so that the term does not
train the student on its own samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView, weighted_mean
from ktransfer.knowledge.sources import check_sources, source_rows, source_units
from ktransfer.tasks import IGNORE_INDEX, label_range_error


@dataclass
class LabelsTerm:
    """Cross-entropy between the student's logits and the labels, mean over labelled positions.

    A batch with a `sample_weight` key (one weight per example) gives the weighted mean instead.
    `sources` (names of `ktransfer.knowledge.sources.SOURCES`; None: every row) keeps only the rows whose
    targets a targets stage took from those sources; a batch with none of them gives a zero loss.
    """

    weight: float = 1.0
    label_smoothing: float = 0.0
    sources: list[str] | None = None
    name: str = "labels"
    # what the engine reads; fixed for this term, so not configurable
    requires_teacher: bool = field(default=False, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.sources is not None:
            self.sources = list(self.sources)
            check_sources(self.sources)

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """With `sources`, the labelled positions of those rows only (the loss's denominator); else the task's count."""
        return None if self.sources is None else source_units(batch, task, self.sources, per_sequence=False)

    def loss(self, view: StepView) -> Tensor:
        out = view.student
        if out.targets is None:
            raise ValueError("the 'labels' knowledge term needs batches with a 'labels' key")
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
        targets = out.targets.reshape(-1)
        try:
            if self.sources is not None:
                return self._from_sources(view, logits, targets)
            if SAMPLE_WEIGHT_KEY in view.batch:
                per_position = F.cross_entropy(
                    logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing, reduction="none",
                ).reshape(out.targets.shape)
                return weighted_mean(per_position, out.mask, view.batch)
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        except IndexError as e:  # a label beyond the student's classes (the CPU kernel says "Target N is out of bounds")
            raise label_range_error(logits, targets, "the student") from e

    def _from_sources(self, view: StepView, logits: Tensor, targets: Tensor) -> Tensor:
        """The (weighted) mean cross-entropy over the labelled positions of the rows from `sources`."""
        out = view.student
        assert out.targets is not None
        rows = source_rows(view, self.sources, self.name)
        assert rows is not None
        labelled = out.targets != IGNORE_INDEX if out.mask is None else out.mask
        mask = labelled & rows.reshape(-1, *([1] * (labelled.dim() - 1)))
        per_position = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing,
                                       reduction="none").reshape(out.targets.shape)
        return weighted_mean(per_position, mask, view.batch)
