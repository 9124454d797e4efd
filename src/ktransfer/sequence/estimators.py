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
  again (optionally clipped, which trades bias for variance). Length normalisation divides
  the returns by the sequence's length (the objective then is the per-token KL rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ktransfer.divergences import get_divergence
from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, StepView, weighted_mean
from ktransfer.knowledge.response import divergence_params
from ktransfer.sequence.targets import SOURCE_IDS, SOURCES
from ktransfer.tasks import IGNORE_INDEX

Baseline = Literal["none", "moving_average", "self_critic"]


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
) -> Tensor:
    """Per-sequence surrogate losses (B,) whose gradient is the REINFORCE estimate of grad KL(q || p).

    `student_logprobs` (B, L) carry the gradient (log q_t of the sampled tokens); the teacher's
    log p_t, the `baseline` (scalar or (B,)) and the `behaviour_logprobs` (log-probs under the
    policy that sampled, for importance weights) do not. Summing the surrogates of all sequences
    weighted by their probability under the sampling policy gives exactly grad KL (tested by
    enumeration).
    """
    log_q = student_logprobs
    rewards = (teacher_logprobs - log_q).detach()
    costs = -returns_to_go(rewards, mask)  # R_t = -sum_{s>=t} r_s: the backward KL still to come
    if length_normalise:
        costs = costs / mask.sum(-1, keepdim=True).clamp_min(1).to(costs.dtype)
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


def _source_rows(view: StepView, sources: list[str] | None, who: str) -> Tensor | None:
    """True for the examples whose targets came from one of `sources` (None = all examples)."""
    if sources is None:
        return None
    origin = view.batch.get("target_source")
    if origin is None:
        raise ValueError(f"knowledge term '{who}' restricts itself to targets from {sources}, but the batch has no "
                         "'target_source': add a targets stage (sequence.TargetsStage) to the run")
    ids = torch.tensor([SOURCE_IDS[s] for s in sources], device=origin.device)
    return torch.isin(origin, ids)


def _check_sources(sources: list[str] | None) -> None:
    for s in sources or []:
        if s not in SOURCES:
            raise ValueError(f"sources: unknown source '{s}'; valid choices: {', '.join(SOURCES)}")


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
        _check_sources(self.sources)

    def loss(self, view: StepView) -> Tensor:
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        mask = _positions(view, _source_rows(view, self.sources, self.name), self.name)
        per_position = self._fn(view.student.logits, view.teacher.logits, mask=mask, temperature=self.temperature,
                                reduction="none", chunk_size=self.chunk_size, vocab_size=self.vocab_size, **self.params)
        return weighted_mean(per_position, mask, view.batch)


@dataclass
class ReinforceTerm:
    """Sequence-level policy gradient of KL(student || teacher) on sampled targets (see the module docstring).

    `baseline`: "none", "moving_average" (an exponential average, decay `baseline_decay`, of past
    mean returns; checkpointed) or "self_critic" (the reward of the student's greedy output,
    `greedy_reward` from a targets stage with `greedy_baseline: true`; per token of the greedy
    output when `length_normalise`, the scale of the normalised returns). `importance_weights`
    uses the stage's `sample_logprobs` (needed when the targets were sampled teacher-mixed or
    at another temperature). The loss's value is the sampled estimate of the backward KL per
    token, -mean(r_t); its gradient is the policy-gradient estimate, summed over tokens and
    divided by the number of target tokens (the engine's normalisation).
    """

    baseline: Baseline = "moving_average"
    baseline_decay: float = 0.9
    length_normalise: bool = False
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
        _check_sources(self.sources)
        self._average: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"average": self._average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._average = state["average"]

    def loss(self, view: StepView) -> Tensor:
        if view.teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs")
        mask = _positions(view, _source_rows(view, self.sources, self.name), self.name)
        targets = view.student.targets
        assert targets is not None
        log_q = token_logprobs(view.student.logits, targets, self.vocab_size)
        with torch.no_grad():
            log_p = token_logprobs(view.teacher.logits, targets, self.vocab_size)
        behaviour = None
        if self.importance_weights:
            behaviour = view.batch.get("sample_logprobs")
            if behaviour is None:
                raise ValueError(f"knowledge term '{self.name}': importance_weights needs the batch's 'sample_logprobs' "
                                 "(a targets stage writes them)")
            behaviour = _aligned(behaviour, view)
        baseline = self._baseline(view)
        surrogate = reinforce_surrogate(log_q, log_p, mask, baseline=baseline, length_normalise=self.length_normalise,
                                        behaviour_logprobs=behaviour, clip_weight=self.clip_weight)
        tokens = mask.sum()
        weights = view.batch.get(SAMPLE_WEIGHT_KEY)
        if weights is not None:  # per-example weights: sum_i w_i surrogate_i / sum_i w_i n_i
            w = torch.as_tensor(weights, dtype=surrogate.dtype, device=surrogate.device)
            pg = (w * surrogate).sum() / (w * mask.sum(-1)).sum().clamp_min(torch.finfo(surrogate.dtype).tiny)
        else:
            pg = surrogate.sum() / tokens.clamp_min(1)
        with torch.no_grad():
            estimate = weighted_mean(log_q.detach() - log_p, mask, view.batch)
            self._update_average(log_p - log_q.detach(), mask)
        return pg - pg.detach() + estimate.to(pg.dtype)

    def _baseline(self, view: StepView) -> Tensor | float | None:
        if self.baseline == "none":
            return None
        if self.baseline == "self_critic":
            greedy = view.batch.get("greedy_reward")
            if greedy is None:
                raise ValueError(f"knowledge term '{self.name}': baseline 'self_critic' needs the batch's 'greedy_reward': "
                                 "set greedy_baseline: true in the targets stage")
            cost = -greedy  # the greedy output's cost sum_t (log q - log p)
            if self.length_normalise:  # on the scale of the returns: the greedy output's cost per token
                length = view.batch.get("greedy_length")
                if length is None:
                    raise ValueError(f"knowledge term '{self.name}': a length-normalised self-critic baseline needs the "
                                     "batch's 'greedy_length' (a targets stage with greedy_baseline: true writes it)")
                cost = cost / torch.as_tensor(length, dtype=cost.dtype, device=cost.device).clamp_min(1)
            return cost
        return self._average

    def _update_average(self, rewards: Tensor, mask: Tensor) -> None:
        """The moving average of the mean cost-to-go over the batch's target positions."""
        if self.baseline != "moving_average" or not bool(mask.any()):
            return
        costs = -returns_to_go(rewards, mask)
        if self.length_normalise:
            costs = costs / mask.sum(-1, keepdim=True).clamp_min(1).to(costs.dtype)
        mean = float(costs[mask].mean())
        d = self.baseline_decay
        self._average = mean if self._average is None else d * self._average + (1 - d) * mean


def _aligned(per_token: Tensor, view: StepView) -> Tensor:
    """A (B, T) batch tensor aligned with `labels`, shifted like the targets (causal LM: t predicts t+1)."""
    if view.student.task == "causal_lm":
        per_token = per_token[..., 1:]
    return per_token


__all__ = ["OnPolicyTerm", "ReinforceTerm", "reinforce_surrogate", "returns_to_go", "token_logprobs"]
