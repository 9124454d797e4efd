"""The teacher's output distribution as knowledge: a divergence between teacher and student logits."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ktransfer.divergences import DIVERGENCES, DistillOptions, get_divergence
from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView, weighted_mean
from ktransfer.sparse_divergences import TAILS, get_sparse_divergence
from ktransfer.tasks import IGNORE_INDEX, label_range_error

# Keyword arguments every divergence takes; the others (beta, alpha) are its own parameters.
_SHARED = {"temperature", "reduction", *DistillOptions.__annotations__}


def divergence_params(name: str) -> list[str]:
    """The parameters specific to divergence `name` (e.g. ['beta'] for jsd)."""
    signature = inspect.signature(get_divergence(name))
    return [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in _SHARED]


@dataclass
class ResponseTerm:
    """A divergence from `ktransfer.divergences` between student and teacher logits.

    `divergence` names the direction explicitly: "forward_kl" is KL(teacher || student),
    "backward_kl" is KL(student || teacher); "jsd" takes `beta`, the skew KLs take `alpha`
    (pass them in `params`). Positions without a target (padding) are masked out; the loss is
    the mean over the remaining positions (for classification: over the batch), weighted by the
    batch's `sample_weight` (one weight per example) when it has one.
    `vocab_size` drops padded vocabulary rows when teacher and student share a tokenizer but
    one embedding matrix is padded.
    `fused_head` (sequence models from Hugging Face, with `chunk_size`): the engine runs the student
    without its output layer on the positions (see `ktransfer.fused_head`) and this term computes
    the student's logits chunk by chunk inside the divergence (`student_head`), so its
    (tokens x V) logits are never materialised. Another term reading the student's logits would
    build them all at once, losing the saving.
    When the run trains from a teacher output store of a sequence teacher (`view.teacher_sparse`, top-k ids,
    log-probabilities and tail mass), the same divergence is computed against that sparse teacher
    (`ktransfer.sparse_divergences`); `tail` says how its untracked mass is treated: "bucket" (one
    extra outcome, equal to the dense loss at k = V) or "renormalize" (the top-k only). A stored
    classifier holds every class logit, so the dense divergence applies unchanged.
    `label_weight` > 0 adds that many times the cross-entropy on the batch's targets (the labels term's
    loss, at temperature 1) over the same positions, as one term: against a stored top-k teacher with
    the bucket tail at temperature 1 both losses then come from one pass over the student's vocabulary
    (`ktransfer.sparse_divergences`), where a separate labels term takes a second. The targets are the
    batch's `labels`, whichever source a targets stage took them from; a run whose targets may be the
    student's own samples keeps a separate labels term with `sources` instead. A selector weighs the
    two losses together, as one term. With `fused_head` against a live teacher the cross-entropy
    builds the student's full logits, as a separate labels term would.
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    chunk_size: int | None = None
    vocab_size: int | None = None
    fused_head: bool = False
    tail: str = "bucket"
    label_weight: float = 0.0
    name: str = "response"
    # what the engine reads; fixed for this term, so not configurable
    requires_teacher: bool = field(default=True, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self._fn = get_divergence(self.divergence)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.fused_head and self.chunk_size is None:
            raise ValueError(
                "fused_head computes the student's logits inside the loss chunk by chunk: give chunk_size too "
                "(rows of logits at a time, e.g. 1024); without it all logits would be built at once"
            )
        if not (math.isfinite(self.label_weight) and self.label_weight >= 0):
            raise ValueError(f"label_weight must be a finite number >= 0, got {self.label_weight!r}")
        if self.tail not in TAILS:
            raise ValueError(f"tail: invalid value {self.tail!r}; valid choices: {', '.join(TAILS)}")
        valid = divergence_params(self.divergence)
        for key in self.params:
            if key not in valid:
                raise ValueError(
                    f"params.{key}: divergence '{self.divergence}' takes "
                    f"{', '.join(valid) if valid else 'no params'}"
                )

    def loss(self, view: StepView) -> Tensor:
        if self.label_weight and view.student.targets is None:
            raise ValueError(f"knowledge term '{self.name}' has label_weight {self.label_weight} but the batch has no "
                             "'labels' to compute the cross-entropy on")
        if view.teacher_sparse is not None:
            return self._sparse_loss(view)
        divergence = self._dense_loss(view)
        return divergence + self.label_weight * self._label_loss(view) if self.label_weight else divergence

    def _label_loss(self, view: StepView) -> Tensor:
        """The (weighted) mean cross-entropy on the targets over the term's positions that have one."""
        out = view.student
        assert out.targets is not None
        logits = out.logits.float()
        try:
            per_position = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), out.targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="none").reshape(out.targets.shape)
        except IndexError as e:  # a label beyond the student's classes or vocabulary
            raise label_range_error(logits, out.targets, "the student") from e
        labelled = out.targets != IGNORE_INDEX
        return weighted_mean(per_position, labelled if out.mask is None else labelled & out.mask, view.batch)

    def _dense_loss(self, view: StepView) -> Tensor:
        """The divergence against the live (or stored dense) teacher's logits."""
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        n_teacher = view.teacher.logits.shape[-1]
        if view.student.task == "classification" and view.student.logits.shape[-1] != n_teacher and self.vocab_size is None:
            # the divergence's own message speaks of vocabularies and tokenizers; here they are classes
            raise ValueError(
                f"knowledge term '{self.name}': the teacher predicts {n_teacher} classes and the student "
                f"{view.student.logits.shape[-1]}; a classifier's teacher and student must predict the same classes (give both "
                "as many outputs as the data has classes)"
            )
        options: dict[str, Any] = {}
        if self.fused_head and view.student.fused:  # the logits are computed chunk by chunk inside the loss
            student, options["student_head"] = view.student.hidden, view.student.head
        else:
            student = view.student.logits
        if SAMPLE_WEIGHT_KEY in view.batch:
            per_position = self._fn(
                student, view.teacher.logits, mask=view.student.mask, temperature=self.temperature,
                reduction="none", chunk_size=self.chunk_size, vocab_size=self.vocab_size, **options, **self.params,
            )
            return weighted_mean(per_position, view.student.mask, view.batch)
        return self._fn(
            student,
            view.teacher.logits,
            mask=view.student.mask,
            temperature=self.temperature,
            reduction="mean",
            chunk_size=self.chunk_size,
            vocab_size=self.vocab_size,
            **options,
            **self.params,
        )

    def _sparse_loss(self, view: StepView) -> Tensor:
        """The divergence against a stored top-k teacher aligned with the student's positions."""
        fn = get_sparse_divergence(self.divergence)
        teacher = view.teacher_sparse
        assert teacher is not None
        student = view.student.logits  # a fused head's logits are built here: the sparse loss takes no head
        if tuple(teacher.shape) != tuple(student.shape[:-1]):
            raise ValueError(f"knowledge term '{self.name}': the stored teacher covers positions of shape "
                             f"{tuple(teacher.shape)}, the student's logits have {tuple(student.shape[:-1])}")
        kwargs = dict(mask=view.student.mask, temperature=self.temperature, tail=self.tail,
                      chunk_size=self.chunk_size, vocab_size=self.vocab_size, **self.params)
        if self.label_weight:  # the cross-entropy joins the divergence's pass over the vocabulary
            kwargs.update(labels=view.student.targets, ignore_index=IGNORE_INDEX, label_weight=self.label_weight)
        if SAMPLE_WEIGHT_KEY in view.batch:
            per_position = fn(student, teacher, reduction="none", **kwargs)
            mask = view.student.mask
            if self.label_weight:  # the positions counted are those with a label
                assert view.student.targets is not None
                labelled = view.student.targets != IGNORE_INDEX
                mask = labelled if mask is None else mask & labelled
            return weighted_mean(per_position, mask, view.batch)
        return fn(student, teacher, reduction="mean", **kwargs)


__all__ = ["ResponseTerm", "DIVERGENCES"]
