"""What a knowledge term sees at a training step, and the interface every term implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ktransfer.tasks import ForwardResult


@dataclass
class StepView:
    """Everything a knowledge term may read at one step.

    `teacher` is None when no term of the run needs the teacher. Captured values are keyed
    "module:output" / "module:input" (see `ktransfer.capture`); teacher captures are detached.
    """

    batch: dict[str, Any]
    student: ForwardResult
    teacher: ForwardResult | None
    student_captured: dict[str, Any] = field(default_factory=dict)
    teacher_captured: dict[str, Any] = field(default_factory=dict)
    step: int = 0


@runtime_checkable
class KnowledgeTerm(Protocol):
    """One kind of knowledge to transfer: a loss computed from a `StepView`.

    Attributes:
        name: unique within a run; selectors and logs refer to the term by it.
        weight: the weight a fixed selector gives it.
        requires_teacher: whether the teacher must run for this term.
        student_modules / teacher_modules: capture specs ("module" or "module:input") that
            the engine hooks before the forward passes.
    """

    name: str
    weight: float
    requires_teacher: bool
    student_modules: tuple[str, ...]
    teacher_modules: tuple[str, ...]

    def loss(self, view: StepView) -> Tensor:
        """A scalar loss for this step."""
        ...
