"""Several teachers: which teacher a knowledge term reads, and how several teachers' targets combine.

A run with named teachers gives every step's outputs of each teacher in `StepView.teachers` (by
name). A term's `teacher` attribute says what it reads:

* a name: that teacher alone;
* a `TeacherMix`: one target made from several teachers' output distributions, either
  `average` (the weighted mean of their probabilities at the term's temperature, never of their
  logits) or `choose` (for each example, or each target position of a sequence, the distribution of
  one teacher: the one giving the true label the highest probability, or the most confident one).

`view_for(term, view)` is the view the term then sees, with `teacher` set to what it reads, so
terms themselves know nothing of several teachers. `arrange_terms` applies a `CombineConfig` to a
run's terms: `pairs` makes one term per (teacher, term) pair, named `TERM@TEACHER`, so that any
selector weighs teachers exactly as it weighs kinds of knowledge (one arm per pair); `average` and
`choose` make each term read a `TeacherMix`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.knowledge.response import ResponseTerm
from ktransfer.tasks import IGNORE_INDEX, ForwardResult

COMBINE_METHODS = ("pairs", "average", "choose")
CHOOSE_BY = ("label", "confidence")
PAIR_SEPARATOR = "@"


@dataclass
class CombineConfig:
    """How knowledge terms that name no teacher read a run's several teachers (`combine`)."""

    # pairs: one term per (teacher, term) pair, named TERM@TEACHER, weighed by the run's selector like any term;
    # average: the teachers' probabilities averaged into one target; choose: per example, one teacher's distribution
    method: Literal["pairs", "average", "choose"] = "pairs"
    # weight per teacher name (default 1 each); pairs: multiplies the pair's own weight; average: the mixture
    # weight (normalised to sum 1)
    weights: dict[str, float] = field(default_factory=dict)
    # choose: the teacher giving the true label the highest probability (label) or the most confident one
    # (confidence: the highest top probability); ties go to the teacher named first
    by: Literal["label", "confidence"] = "label"

    def __post_init__(self) -> None:
        if self.method not in COMBINE_METHODS:
            raise ValueError(f"method: invalid value {self.method!r}; valid choices: {', '.join(COMBINE_METHODS)}")
        if self.by not in CHOOSE_BY:
            raise ValueError(f"by: invalid value {self.by!r}; valid choices: {', '.join(CHOOSE_BY)}")
        for name, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
                raise ValueError(f"weights.{name}: expected a finite number >= 0, got {w!r}")
        self.weights = {str(k): float(v) for k, v in self.weights.items()}


@dataclass(frozen=True)
class TeacherMix:
    """A target made from several teachers: `average` with mixture `weights` (summing to 1), or `choose` `by`."""

    names: tuple[str, ...]
    method: Literal["average", "choose"]
    weights: tuple[float, ...] = ()
    by: Literal["label", "confidence"] = "label"

    def __post_init__(self) -> None:
        if len(self.names) < 1:
            raise ValueError("a teacher mix needs at least one teacher")
        if self.method not in ("average", "choose"):
            raise ValueError(f"method: invalid value {self.method!r}; valid choices: average, choose")
        if self.method == "average" and len(self.weights) != len(self.names):
            raise ValueError(f"average: {len(self.weights)} weights for {len(self.names)} teachers")


def average_target(logits: Sequence[Tensor], weights: Sequence[float], temperature: float = 1.0) -> Tensor:
    """Logits whose softmax at `temperature` is sum_i w_i softmax(z_i / T): T * log sum_i w_i softmax(z_i / T).

    The teachers' tempered probabilities are averaged (never their logits); the weights must sum to 1,
    so the result is a distribution and any divergence at temperature T reads exactly that mixture.
    Computed as a log-sum-exp of log w_i + log_softmax(z_i / T), in float32 at least.
    """
    if len(logits) != len(weights) or not logits:
        raise ValueError(f"average_target: {len(logits)} teachers' logits and {len(weights)} weights")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"the teachers' outputs differ in shape ({sorted(shapes)}): averaging needs the same classes "
                         "(or vocabulary) in the same order")
    dtype = torch.promote_types(logits[0].dtype, torch.float32)
    logp = torch.stack([(z.to(dtype) / temperature).log_softmax(-1) for z in logits])
    w = torch.as_tensor(list(weights), dtype=dtype, device=logp.device).reshape(-1, *([1] * (logp.dim() - 1)))
    return temperature * torch.logsumexp(logp + w.log(), dim=0)


def choose_teacher(logits: Sequence[Tensor], targets: Tensor | None, by: str = "label") -> Tensor:
    """The index of the chosen teacher per example (or per position): shape `logits[0].shape[:-1]`.

    `label`: the teacher whose probability (temperature 1) of the target is highest; positions without a
    target (`IGNORE_INDEX`) go to the first teacher. `confidence`: the teacher whose top probability is
    highest. Ties go to the teacher listed first.
    """
    if by not in CHOOSE_BY:
        raise ValueError(f"by: invalid value {by!r}; valid choices: {', '.join(CHOOSE_BY)}")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"the teachers' outputs differ in shape ({sorted(shapes)}): choosing between them needs the "
                         "same classes (or vocabulary) in the same order")
    logp = torch.stack([z.detach().float().log_softmax(-1) for z in logits])  # (N, ..., V)
    if by == "confidence":
        score = logp.max(-1).values
    else:
        if targets is None:
            raise ValueError("choosing the teacher by the label needs the batch's targets; use by: confidence")
        if tuple(targets.shape) != tuple(logp.shape[1:-1]):
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the teachers' outputs "
                             f"{tuple(logp.shape[1:-1])}")
        valid = targets != IGNORE_INDEX
        index = torch.where(valid, targets, torch.zeros_like(targets)).long()
        score = logp.gather(-1, index.unsqueeze(0).unsqueeze(-1).expand(logp.shape[0], *index.shape, 1)).squeeze(-1)
        score = torch.where(valid.unsqueeze(0), score, torch.zeros_like(score))
    # argmax of the first maximum: ties (and positions without a target) go to the first teacher
    best = score.max(0).values
    first = (score == best.unsqueeze(0)).float().argmax(0)
    return first


def choose_target(logits: Sequence[Tensor], targets: Tensor | None, by: str = "label") -> Tensor:
    """Per example (or position), the logits of the teacher `choose_teacher` picks, unchanged."""
    chosen = choose_teacher(logits, targets, by)
    stacked = torch.stack(list(logits))
    index = chosen.unsqueeze(0).unsqueeze(-1).expand(1, *chosen.shape, stacked.shape[-1])
    return stacked.gather(0, index).squeeze(0)


def teacher_names_of(term: Any) -> tuple[str, ...]:
    """The teachers a term reads by name (none when it names none)."""
    source = getattr(term, "teacher", None)
    if isinstance(source, str):
        return (source,)
    if isinstance(source, TeacherMix):
        return source.names
    return ()


def combinable(term: Any) -> bool:
    """Whether a term reads only the teacher's output distribution, so that a combined target can replace it."""
    return isinstance(term, ResponseTerm)


def view_for(term: KnowledgeTerm, view: StepView) -> StepView:
    """The view `term` sees: with named teachers, its `teacher` fields hold the teacher (or mix) it reads."""
    if not view.teachers and not view.teachers_sparse:
        return view  # one unnamed teacher: every term reads it
    source = getattr(term, "teacher", None)
    known = sorted({*view.teachers, *view.teachers_sparse})
    if source is None:
        raise ValueError(f"knowledge term '{term.name}' reads a teacher but names none, and the run has teachers "
                         f"{', '.join(known)}: give it a teacher (a name, or a TeacherMix)")
    if isinstance(source, str):
        if source not in view.teachers and source not in view.teachers_sparse:
            raise ValueError(f"knowledge term '{term.name}' reads teacher '{source}', whose outputs this step does not "
                             f"have; teachers: {', '.join(known)}")
        return replace(view, teacher=view.teachers.get(source), teacher_captured=view.teachers_captured.get(source, {}),
                       teacher_sparse=view.teachers_sparse.get(source))
    if not isinstance(source, TeacherMix):
        raise ValueError(f"knowledge term '{term.name}': teacher must be a name or a TeacherMix, got {source!r}")
    sparse = [n for n in source.names if n in view.teachers_sparse]
    if sparse:
        raise ValueError(f"knowledge term '{term.name}': teacher(s) {', '.join(sparse)} come from a top-k store, whose "
                         "distributions are partial; they cannot be averaged or chosen between: read them with "
                         "separate terms (combine method pairs)")
    missing = [n for n in source.names if n not in view.teachers]
    if missing:
        raise ValueError(f"knowledge term '{term.name}' combines teacher(s) {', '.join(missing)}, whose outputs this "
                         f"step does not have; teachers: {', '.join(known)}")
    outs = [view.teachers[n] for n in source.names]
    if source.method == "average":
        logits = average_target([o.logits for o in outs], source.weights, float(getattr(term, "temperature", 1.0)))
    else:
        logits = choose_target([o.logits for o in outs], view.student.targets, source.by)
    mixed = ForwardResult(logits=logits, targets=outs[0].targets, raw=None, task=outs[0].task)
    return replace(view, teacher=mixed, teacher_captured={}, teacher_sparse=None)


def with_teacher(term: KnowledgeTerm, teacher: str | TeacherMix) -> KnowledgeTerm:
    """`term` reading `teacher` (a name, or a mix): what `teacher: NAME` on a knowledge term does in YAML."""
    term.teacher = teacher  # type: ignore[attr-defined]
    return term


def arrange_terms(terms: Sequence[KnowledgeTerm], teachers: Sequence[str],
                  combine: CombineConfig | None = None) -> list[KnowledgeTerm]:
    """The run's terms with every teacher-reading term bound to what it reads among the named `teachers`.

    A term that names a teacher reads it. One that names none reads the only teacher, or, with several,
    follows `combine` (pairs: one copy per teacher, named TERM@TEACHER, weight x the teacher's weight;
    average / choose: a `TeacherMix` over all teachers). Terms that read no teacher stay as they are.
    """
    names = list(teachers)
    if not names:
        raise ValueError("arrange_terms: no teachers named")
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must be unique, got {names}")
    combine = combine or CombineConfig()
    unknown = sorted(set(combine.weights) - set(names))
    if unknown:
        raise ValueError(f"combine.weights names teacher '{unknown[0]}', which is not defined; teachers: "
                         f"{', '.join(names)}")
    out: list[KnowledgeTerm] = []
    for term in terms:
        for name in teacher_names_of(term):
            if name not in names:
                raise ValueError(f"knowledge term '{term.name}' names teacher '{name}', which is not defined; "
                                 f"teachers: {', '.join(names)}")
        if not term.requires_teacher or getattr(term, "teacher", None) is not None:
            out.append(term)
        elif len(names) == 1:
            out.append(with_teacher(term, names[0]))
        elif combine.method == "pairs":
            for name in names:
                pair = copy.deepcopy(term)
                pair.name = f"{term.name}{PAIR_SEPARATOR}{name}"
                pair.weight = float(term.weight) * combine.weights.get(name, 1.0)
                out.append(with_teacher(pair, name))
        else:
            if not combinable(term):
                raise ValueError(f"knowledge term '{term.name}' ({type(term).__name__}) reads more than the teacher's "
                                 f"output distribution, so combine method '{combine.method}' cannot merge the "
                                 "teachers for it: give it `teacher: NAME`, or use method pairs")
            weights: tuple[float, ...] = ()
            if combine.method == "average":
                raw = [combine.weights.get(n, 1.0) for n in names]
                if sum(raw) <= 0:
                    raise ValueError("combine.weights: every teacher has weight 0; the average needs a positive one")
                weights = tuple(w / sum(raw) for w in raw)
            mix = TeacherMix(tuple(names), combine.method, weights, combine.by)  # type: ignore[arg-type]
            out.append(with_teacher(term, mix))
    return out


__all__ = ["CHOOSE_BY", "COMBINE_METHODS", "CombineConfig", "TeacherMix", "arrange_terms", "average_target",
           "choose_target", "choose_teacher", "combinable", "teacher_names_of", "view_for", "with_teacher"]
