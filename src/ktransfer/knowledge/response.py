"""The teacher's output distribution as knowledge: a divergence between teacher and student logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ktransfer.divergences import DIVERGENCES, get_divergence
from ktransfer.knowledge.base import StepView


@dataclass
class ResponseTerm:
    """A divergence from `ktransfer.divergences` between student and teacher logits.

    `divergence` names the direction explicitly: "forward_kl" is KL(teacher || student),
    "backward_kl" is KL(student || teacher); "jsd" takes `beta`, the skew KLs take `alpha`
    (pass them in `params`). Positions without a target (padding) are masked out; the loss is
    the mean over the remaining positions (for classification: over the batch).
    `vocab_size` drops padded vocabulary rows when teacher and student share a tokenizer but
    one embedding matrix is padded.
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    chunk_size: int | None = None
    vocab_size: int | None = None
    name: str = "response"
    requires_teacher: bool = True
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._fn = get_divergence(self.divergence)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def loss(self, view: StepView) -> Tensor:
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        return self._fn(
            view.student.logits,
            view.teacher.logits,
            mask=view.student.mask,
            temperature=self.temperature,
            reduction="mean",
            chunk_size=self.chunk_size,
            vocab_size=self.vocab_size,
            **self.params,
        )


__all__ = ["ResponseTerm", "DIVERGENCES"]
