"""What a knowledge term sees at a training step, and the interface every term implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ktransfer.sparse_divergences import SparseTeacher
from ktransfer.tasks import ForwardResult

# The batch key under which a stored teacher's outputs reach the engine (set by a store stage):
# class logits (B, C) or a SparseTeacher over the batch's aligned positions.
STORED_TEACHER_KEY = "stored_teacher"
# The batch key under which a store stage hands over the teacher's stored internals: a dict from capture
# key ("module:output") to tensor, which the engine puts where live capture would (`teacher_captured`).
STORED_CAPTURES_KEY = "stored_teacher_captures"


@dataclass
class StepView:
    """Everything a knowledge term may read at one step.

    `teacher` is None when no term of the run needs the teacher. Captured values are keyed
    "module:output" / "module:input" (see `ktransfer.capture`); teacher captures are detached.
    `teacher_sparse` holds a stored teacher's top-k outputs (`ktransfer.store`) aligned with the
    student's positions, when the run trains from a store of a sequence teacher; `teacher` is None then.
    A run with named teachers (several, `ktransfer.knowledge.teachers`) fills `teachers`,
    `teachers_captured` and `teachers_sparse` by teacher name instead; each term then sees a view
    whose `teacher` fields hold the teacher it reads (`view_for`).
    """

    batch: dict[str, Any]
    student: ForwardResult
    teacher: ForwardResult | None
    student_captured: dict[str, Any] = field(default_factory=dict)
    teacher_captured: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    teacher_sparse: SparseTeacher | None = None
    teachers: dict[str, ForwardResult] = field(default_factory=dict)
    teachers_captured: dict[str, dict[str, Any]] = field(default_factory=dict)
    teachers_sparse: dict[str, SparseTeacher] = field(default_factory=dict)


@runtime_checkable
class KnowledgeTerm(Protocol):
    """One kind of knowledge to transfer: a loss computed from a `StepView`.

    Attributes:
        name: unique within a run; selectors and logs refer to the term by it.
        weight: the weight a fixed selector gives it.
        requires_teacher: whether the teacher must run for this term.
        student_modules / teacher_modules: capture specs ("module" or "module:input") that
            the engine hooks before the forward passes.

    Optional method `count_units(batch, task) -> float | None`: the number of units the term's
    loss averages over in `batch` (spans, unpadded positions, examples; with a `sample_weight`,
    the summed weights the loss divides by), computed from the batch alone before the forward.
    The engine sums it over a step's micro-batches and processes and weights each micro-batch's
    value of the term by its share, so the update equals that of one large batch however the
    step is split. Without the method (or when it returns None) the unit is the task's target
    count (`Task.count_targets`), the denominator of the token- and example-level terms.

    Optional attribute `counts: dict[str, int]`: running counts of what the term has seen (the
    cross-tokenizer terms: aligned spans, ends of sequence, unaligned tokens). The engine logs
    them, summed over processes, with every training record of metrics.jsonl (`counts`, by term);
    a term that checkpoints them in its `state_dict` keeps them across a resume.
    """

    name: str
    weight: float
    requires_teacher: bool
    student_modules: tuple[str, ...]
    teacher_modules: tuple[str, ...]

    def loss(self, view: StepView) -> Tensor:
        """A scalar loss for this step."""
        ...


SAMPLE_WEIGHT_KEY = "sample_weight"


def term_units(term: Any, batch: dict[str, Any], task: Any) -> float:
    """The units `term`'s loss averages over in `batch`: its `count_units`, else the task's target count."""
    counter = getattr(term, "count_units", None)
    value = counter(batch, task) if callable(counter) else None
    return float(task.count_targets(batch)) if value is None else float(value)


def mask_units(batch: dict[str, Any]) -> float | None:
    """The batch's unpadded positions (its 2-D `attention_mask` summed), or None without such a mask.

    The denominator of the terms that average over the positions `position_mask` keeps.
    """
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2:
        return float(mask.bool().sum())
    return None


def batch_examples(batch: dict[str, Any]) -> float | None:
    """The number of examples in `batch` (the first dimension of its inputs), or None without a tensor."""
    first = batch.get("inputs", batch.get("input_ids"))
    if not isinstance(first, Tensor):
        first = next((v for v in batch.values() if isinstance(v, Tensor)), None)
    return None if first is None else float(first.shape[0])


def weighted_mean(values: Tensor, mask: Tensor | None, batch: dict[str, Any]) -> Tensor:
    """Mean of per-position losses `values` over `mask`, weighted by the batch's `sample_weight`.

    `sample_weight` (shape (B,), one weight per example, as sample-reweighting transfer methods
    produce) multiplies every position of its example; the result is sum(w * v) / sum(w) over
    the counted positions, so uniform weights give the plain mean. Without the key: plain mean.
    A batch whose weights are all zero gives a zero loss (with a gradient), not NaN.
    """
    values = values.float()
    keep = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.reshape(values.shape)
    weights = batch.get(SAMPLE_WEIGHT_KEY)
    if weights is None:
        w = keep.to(values.dtype)
    else:
        weights = torch.as_tensor(weights, device=values.device, dtype=values.dtype)
        if weights.dim() != 1 or weights.shape[0] != values.shape[0]:
            raise ValueError(
                f"batch['{SAMPLE_WEIGHT_KEY}'] must have shape ({values.shape[0]},) (one weight per example), "
                f"got {tuple(weights.shape)}"
            )
        if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"batch['{SAMPLE_WEIGHT_KEY}'] must be finite and >= 0")
        w = weights.reshape(-1, *([1] * (values.dim() - 1))).expand_as(values) * keep.to(values.dtype)
    total = w.sum()
    # masked positions may hold garbage: select rather than multiply by zero
    numerator = torch.where(w > 0, values * w, torch.zeros_like(values)).sum()
    return numerator / total.clamp_min(torch.finfo(values.dtype).tiny) if bool(total > 0) else numerator * 0.0
