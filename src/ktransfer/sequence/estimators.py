"""Backward-KL estimators on the student's samples, as knowledge terms.

Notation: q = student, p = teacher, y = (y_1..y_L) a sampled target sequence after a prompt x,
q_t = q(y_t | x, y_<t), r_t = log p_t - log q_t the per-token reward (no gradient).

* `OnPolicyTerm` ("on_policy"): the exact per-token divergence over the whole vocabulary at
  each sampled prefix, D(q(.|x, y_<t), p(.|x, y_<t)), for any divergence of
  `ktransfer.divergences` (backward_kl, jsd with beta, skew KLs, tvd, ...). Its gradient
  ignores that the prefixes themselves depend on the student (as GKD does).
* `ReinforceTerm` ("reinforce"): the sequence-level policy gradient of
  KL(q || p) = E_{y~q}[log q(y) - log p(y)]. Since E_q[grad log q(y)] = 0,

      grad KL = E_{y~q}[ sum_t grad log q_t * (R_t - b) ],   R_t = -sum_{s>=t} r_s,

  (a reward at s < t does not depend on y_t, so only the return from t on is kept: per-token
  returns). The loss is the surrogate  sum_t stopgrad(w * (R_t - b)) * log q_t, whose gradient
  is this estimate; any baseline b that does not depend on the sample (a moving average of
  past returns, the reward of the student's greedy output) leaves its expectation unchanged.
  When the targets were sampled from another policy (teacher-mixed, MiniLLM), the sequence
  importance weight w = q(y) / b(y) = exp(sum_t log q_t - log b_t) makes the estimate unbiased
  again (optionally clipped, which trades bias for variance).

  Normalisation (`normalise`) divides each sequence's returns by N and decides what the
  estimate is the gradient of. A constant N (`max_length`: the targets stage's
  `max_new_tokens`, or a number) is exact: the batch estimate sum_i s_i / (N * B) is unbiased
  for grad E_q[KL(y)] / N, the sequence KL per token of the generation budget. `none` is the
  same with N = 1 (the whole-sequence KL). N = the sample's own length (`sample_length`) is
  biased whenever lengths vary: E_q[sum_t grad log q_t * R_t / |y|] is not the gradient of
  E_q[KL(y) / |y|] (nor of any fixed objective, tested by enumeration), because |y| depends on
  the sample. `batch_tokens` keeps the returns whole and divides the batch's sum by its
  target-token count, a ratio of sampled quantities: exact only when all lengths are equal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ktransfer.divergences import get_divergence
from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView, weighted_mean
from ktransfer.knowledge.response import divergence_params
from ktransfer.registry import suggest
from ktransfer.knowledge.sources import check_sources, source_rows, source_units
from ktransfer.sequence.targets import MAX_LENGTH_KEY
from ktransfer.tasks import IGNORE_INDEX

Baseline = Literal["none", "moving_average", "self_critic"]
# How a sequence's returns are normalised (besides a positive number, a constant of the user's).
NORMALISATIONS: tuple[str, ...] = ("max_length", "none", "sample_length", "batch_tokens")
# Normalisations by a constant: the batch's estimate is a mean over its sequences, unbiased.
_CONSTANT = ("max_length", "none")


def token_logprobs(logits: Tensor, targets: Tensor, vocab_size: int | None = None) -> Tensor:
    """log softmax(logits)[target] per position (0 where the target is IGNORE_INDEX), in float32 or better."""
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    safe = targets.clamp_min(0)
    log_probs = torch.log_softmax(logits.to(dtype), -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(targets != IGNORE_INDEX, log_probs, torch.zeros_like(log_probs))


def returns_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """G_t = sum_{s>=t} rewards_s over masked positions of each row (0 where unmasked)."""
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    return torch.where(mask, r.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(r))


def reinforce_surrogate(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    baseline: Tensor | float | None = None,
    length_normalise: bool = False,
    behaviour_logprobs: Tensor | None = None,
    clip_weight: float | None = None,
    normaliser: Tensor | float | None = None,
) -> Tensor:
    """Per-sequence surrogate losses (B,) whose gradient is the REINFORCE estimate of grad KL(q || p).

    `student_logprobs` (B, L) carry the gradient (log q_t of the sampled tokens); the teacher's
    log p_t, the `baseline` (scalar or (B,)) and the `behaviour_logprobs` (log-probs under the
    policy that sampled, for importance weights) do not. Summing the surrogates of all sequences
    weighted by their probability under the sampling policy gives exactly grad KL (tested by
    enumeration). `normaliser` (scalar or (B,)) divides each sequence's returns: a constant keeps
    the estimate exact for grad KL / normaliser; `length_normalise` divides by each sequence's
    own length (biased when lengths vary, see the module docstring). The baseline is on the
    scale of the divided returns.
    """
    if length_normalise and normaliser is not None:
        raise ValueError("give either length_normalise or normaliser, not both")
    log_q = student_logprobs
    rewards = (teacher_logprobs - log_q).detach()
    costs = -returns_to_go(rewards, mask)  # R_t = -sum_{s>=t} r_s: the backward KL still to come
    if length_normalise:
        normaliser = mask.sum(-1).clamp_min(1)
    if normaliser is not None:
        n = torch.as_tensor(normaliser, dtype=costs.dtype, device=costs.device)
        costs = costs / (n.reshape(-1, 1) if n.dim() == 1 else n)
    if baseline is not None:
        b = torch.as_tensor(baseline, dtype=costs.dtype, device=costs.device)
        costs = costs - (b.reshape(-1, 1) if b.dim() == 1 else b)
    weight = torch.ones(log_q.shape[0], dtype=costs.dtype, device=costs.device)
    if behaviour_logprobs is not None:
        log_ratio = torch.where(mask, log_q.detach() - behaviour_logprobs.to(costs.dtype), torch.zeros_like(costs))
        weight = log_ratio.sum(-1).exp()
        if clip_weight is not None:
            weight = weight.clamp(max=clip_weight)
    advantage = torch.where(mask, costs, torch.zeros_like(costs)).detach() * weight.detach().unsqueeze(-1)
    return (advantage * torch.where(mask, log_q, torch.zeros_like(log_q))).sum(-1)


def _positions(view: StepView, rows: Tensor | None, who: str) -> Tensor:
    out = view.student
    if out.targets is None or out.mask is None:
        kind = "decoder targets ('labels')" if out.task == "seq2seq" else "'labels'"
        raise ValueError(f"knowledge term '{who}' needs batches with {kind}: a {out.task} batch without them "
                         "has no target tokens to score")
    mask = out.mask
    if rows is not None:
        mask = mask & rows.reshape(-1, *([1] * (mask.dim() - 1)))
    return mask


@dataclass
class OnPolicyTerm:
    """The exact per-token divergence over the vocabulary at the sampled prefixes.

    D(q_S(.|prefix), p_T(.|prefix)) averaged over the target tokens of the examples whose
    targets came from `sources` (default: the student's samples; None: every example, as in
    GKD's mixed batches). `divergence` is any name of `ktransfer.divergences`, default
    backward_kl = KL(student || teacher); `params` holds its beta / alpha.
    """

    divergence: str = "backward_kl"
    params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    sources: list[str] | None = field(default_factory=lambda: ["student"])
    chunk_size: int | None = None
    vocab_size: int | None = None
    weight: float = 1.0
    name: str = "on_policy"
    requires_teacher: bool = field(default=True, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self._fn = get_divergence(self.divergence)
        valid = divergence_params(self.divergence)
        for key in self.params:
            if key not in valid:
                raise ValueError(f"params.{key}: divergence '{self.divergence}' takes {', '.join(valid) or 'no params'}")
        check_sources(self.sources)

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """The target tokens of the examples from `sources` (the loss's denominator), not every example's."""
        return source_units(batch, task, self.sources, per_sequence=False)

    def loss(self, view: StepView) -> Tensor:
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        mask = _positions(view, source_rows(view, self.sources, self.name), self.name)
        per_position = self._fn(view.student.logits, view.teacher.logits, mask=mask, temperature=self.temperature,
                                reduction="none", chunk_size=self.chunk_size, vocab_size=self.vocab_size, **self.params)
        return weighted_mean(per_position, mask, view.batch)


@dataclass
class ReinforceTerm:
    """Sequence-level policy gradient of KL(student || teacher) on sampled targets (see the module docstring).

    `normalise` divides each sequence's returns by N: `max_length` (default; N = the targets
    stage's `generation.max_new_tokens`, the batch's 'max_new_tokens'), a positive number (N
    itself), `none` (N = 1) -- each exact: the gradient is the mean over sequences, an unbiased
    estimate of grad E_q[KL(y)] / N when a step is one micro-batch on one process (the engine
    weighs accumulated micro-batches by their shares of the step's target tokens) -- or
    `sample_length` (N = the sample's own length) and `batch_tokens` (whole returns), whose
    gradient is divided by the batch's target-token count: biased when lengths vary.
    `length_normalise` (deprecated) is `sample_length` when true, `batch_tokens` when false.
    `baseline`: "none", "moving_average" (an exponential average, decay `baseline_decay`, of past
    mean normalised returns; checkpointed) or "self_critic" (the cost of the student's greedy
    output, from a targets stage with `greedy_baseline: true`, normalised as the returns are:
    divided by N, or by the greedy output's own length under `sample_length`).
    `importance_weights` uses the stage's `sample_logprobs` (needed when the targets were
    sampled teacher-mixed or at another temperature). The loss's value is the sampled estimate
    of the backward KL per target token, -mean(r_t), whatever the normalisation; its gradient
    is the policy-gradient estimate.
    """

    baseline: Baseline = "moving_average"
    baseline_decay: float = 0.9
    normalise: str | float = "max_length"
    length_normalise: bool | None = None
    importance_weights: bool = False
    clip_weight: float | None = None
    sources: list[str] | None = field(default_factory=lambda: ["student"])
    vocab_size: int | None = None
    weight: float = 1.0
    name: str = "reinforce"
    requires_teacher: bool = field(default=True, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if self.baseline not in ("none", "moving_average", "self_critic"):
            raise ValueError(f"baseline: invalid value '{self.baseline}'; valid choices: none, moving_average, self_critic")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if self.clip_weight is not None and self.clip_weight <= 0:
            raise ValueError(f"clip_weight must be > 0 or null, got {self.clip_weight}")
        if self.length_normalise is not None:
            self.normalise = _deprecated_length_normalise(self.length_normalise, self.normalise, self.name)
        self.normalise = _check_normalise(self.normalise)
        check_sources(self.sources)
        self._average: float | None = None

    @property
    def exact(self) -> bool:
        """Whether the normalisation is a constant, so that the gradient is an unbiased estimate."""
        return self.normalise in _CONSTANT or isinstance(self.normalise, float)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self._average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._average = state["average"]

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """The loss's denominator: the sequences from `sources` with a target under a constant normalisation,
        else their target tokens."""
        return source_units(batch, task, self.sources, per_sequence=self.exact)

    def loss(self, view: StepView) -> Tensor:
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        mask = _positions(view, source_rows(view, self.sources, self.name), self.name)
        targets = view.student.targets
        assert targets is not None
        log_q = token_logprobs(view.student.logits, targets, self.vocab_size)
        with torch.no_grad():
            log_p = self.teacher_logprobs(view, log_q.detach(), mask)
        behaviour = None
        if self.importance_weights:
            behaviour = view.batch.get("sample_logprobs")
            if behaviour is None:
                raise ValueError(f"knowledge term '{self.name}': importance_weights needs the batch's 'sample_logprobs' "
                                 "(a targets stage writes them)")
            behaviour = _aligned(behaviour, view)
        normaliser = self._normaliser(view.batch, mask)
        surrogate = reinforce_surrogate(log_q, log_p, mask, baseline=self._baseline(view), normaliser=normaliser,
                                        behaviour_logprobs=behaviour, clip_weight=self.clip_weight)
        # per sequence (constant N) or per target token of the batch (sample_length, batch_tokens)
        per_row = mask.any(-1) if self.exact else mask.sum(-1)
        weights = view.batch.get(SAMPLE_WEIGHT_KEY)
        if weights is not None:  # per-example weights: sum_i w_i surrogate_i / sum_i w_i d_i
            w = torch.as_tensor(weights, dtype=surrogate.dtype, device=surrogate.device)
            pg = (w * surrogate).sum() / (w * per_row).sum().clamp_min(torch.finfo(surrogate.dtype).tiny)
        else:
            pg = surrogate.sum() / per_row.sum().clamp_min(1)
        with torch.no_grad():
            estimate = weighted_mean(log_q.detach() - log_p, mask, view.batch)
            self._update_average(log_p - log_q.detach(), mask, normaliser)
        return pg - pg.detach() + estimate.to(pg.dtype)

    def teacher_logprobs(self, view: StepView, log_q: Tensor, mask: Tensor) -> Tensor:
        """The teacher's log p_t of the student's target tokens, (B, L) like `log_q` (no gradient).

        The per-token reward is r_t = log p_t - log q_t; a subclass whose teacher reads other
        tokens (`ktransfer.cross_tokenizer.reinforce`) gives its own per-token log p_t here.
        """
        assert view.teacher is not None and view.student.targets is not None
        return token_logprobs(view.teacher.logits, view.student.targets, self.vocab_size)

    def _normaliser(self, batch: dict[str, Any], mask: Tensor) -> Tensor | float | None:
        """N per sequence ((B,) or a scalar), or None for whole returns."""
        if self.normalise in ("none", "batch_tokens"):
            return None
        if self.normalise == "sample_length":
            return mask.sum(-1).clamp_min(1)
        if self.normalise == "max_length":
            budget = batch.get(MAX_LENGTH_KEY)
            if budget is None:
                raise ValueError(f"knowledge term '{self.name}': normalise 'max_length' needs the batch's "
                                 f"'{MAX_LENGTH_KEY}' (a targets stage writes its generation.max_new_tokens): add a "
                                 "targets section, or give normalise a number (e.g. the longest target length)")
            return torch.as_tensor(budget, device=mask.device).clamp_min(1)
        assert isinstance(self.normalise, float)
        return self.normalise

    def _baseline(self, view: StepView) -> Tensor | float | None:
        if self.baseline == "none":
            return None
        if self.baseline == "self_critic":
            greedy = view.batch.get("greedy_reward")
            if greedy is None:
                raise ValueError(f"knowledge term '{self.name}': baseline 'self_critic' needs the batch's 'greedy_reward': "
                                 "set greedy_baseline: true in the targets stage")
            cost = -torch.as_tensor(greedy)  # the greedy output's cost sum_t (log q - log p)
            if self.normalise == "sample_length":  # on the scale of the returns: the greedy output's cost per token
                length = view.batch.get("greedy_length")
                if length is None:
                    raise ValueError(f"knowledge term '{self.name}': a self-critic baseline with normalise "
                                     "'sample_length' needs the batch's 'greedy_length' (a targets stage with "
                                     "greedy_baseline: true writes it)")
                return cost / torch.as_tensor(length, dtype=cost.dtype, device=cost.device).clamp_min(1)
            if self.normalise in ("none", "batch_tokens"):
                return cost
            n = self._normaliser(view.batch, torch.ones(cost.shape[0], 1, dtype=torch.bool, device=cost.device))
            return cost / torch.as_tensor(n, dtype=cost.dtype, device=cost.device)
        return self._average

    def _update_average(self, rewards: Tensor, mask: Tensor, normaliser: Tensor | float | None) -> None:
        """The moving average of the mean normalised cost-to-go over the batch's target positions."""
        if self.baseline != "moving_average" or not bool(mask.any()):
            return
        costs = -returns_to_go(rewards, mask)
        if normaliser is not None:
            n = torch.as_tensor(normaliser, dtype=costs.dtype, device=costs.device)
            costs = costs / (n.reshape(-1, 1) if n.dim() == 1 else n)
        mean = float(costs[mask].mean())
        d = self.baseline_decay
        self._average = mean if self._average is None else d * self._average + (1 - d) * mean


def _check_normalise(value: str | float) -> str | float:
    """`normalise` as a name of NORMALISATIONS or a positive float; else a ValueError listing the choices."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"normalise: invalid value {value!r}; valid choices: {', '.join(NORMALISATIONS)}, "
                         "or a positive number")
    if isinstance(value, str):
        if value not in NORMALISATIONS:
            raise ValueError(f"normalise: invalid value '{value}'{suggest(value, list(NORMALISATIONS))}; valid "
                             f"choices: {', '.join(NORMALISATIONS)}, or a positive number")
        return value
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"normalise: a number must be positive and finite, got {value}")
    return float(value)


def _deprecated_length_normalise(flag: bool, normalise: str | float, who: str) -> str:
    """The `normalise` a deprecated `length_normalise` flag stands for, with a FutureWarning."""
    mapped = "sample_length" if flag else "batch_tokens"
    if normalise != "max_length":
        raise ValueError(f"give normalise or the deprecated length_normalise, not both (got normalise: {normalise!r} "
                         f"and length_normalise: {str(flag).lower()})")
    warnings.warn(f"knowledge term '{who}': length_normalise is deprecated; length_normalise: {str(flag).lower()} is "
                  f"normalise: {mapped} (an identical gradient). Write normalise: {mapped} to keep it, or drop "
                  "the key for the default normalise: max_length, which divides by a constant and stays unbiased "
                  "when sample lengths vary (sample_length does not)", FutureWarning, stacklevel=3)
    return mapped


def _aligned(per_token: Tensor, view: StepView) -> Tensor:
    """A (B, T) batch tensor aligned with `labels`, shifted like the targets (causal LM: t predicts t+1)."""
    if view.student.task == "causal_lm":
        per_token = per_token[..., 1:]
    return per_token


__all__ = ["NORMALISATIONS", "OnPolicyTerm", "ReinforceTerm", "reinforce_surrogate", "returns_to_go", "token_logprobs"]
