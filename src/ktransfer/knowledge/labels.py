"""Ground-truth labels as a knowledge term: cross-entropy on the student's logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView, weighted_mean
from ktransfer.tasks import IGNORE_INDEX, label_range_error


@dataclass
class LabelsTerm:
    """Cross-entropy between the student's logits and the labels, mean over labelled positions.

    A batch with a `sample_weight` key (one weight per example) gives the weighted mean instead.
    """

    weight: float = 1.0
    label_smoothing: float = 0.0
    name: str = "labels"
    # what the engine reads; fixed for this term, so not configurable
    requires_teacher: bool = field(default=False, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def loss(self, view: StepView) -> Tensor:
        out = view.student
        if out.targets is None:
            raise ValueError("the 'labels' knowledge term needs batches with a 'labels' key")
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
        targets = out.targets.reshape(-1)
        try:
            if SAMPLE_WEIGHT_KEY in view.batch:
                per_position = F.cross_entropy(
                    logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing, reduction="none",
                ).reshape(out.targets.shape)
                return weighted_mean(per_position, out.mask, view.batch)
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        except IndexError as e:  # a label beyond the student's classes (the CPU kernel says "Target N is out of bounds")
            raise label_range_error(logits, targets, "the student") from e
