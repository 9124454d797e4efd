"""The span alignment loss: teacher and student compared where both have read the same text.

For an aligned span (`ktransfer.cross_tokenizer.align.Span`: teacher tokens and student tokens
covering the same characters), each model's prediction *at the start of the span* is conditioned
on the same text, so the two next-token distributions are comparable once they are put on common
outcomes (`ktransfer.cross_tokenizer.vocab.VocabMapping`): the token texts both vocabularies hold,
plus one "rest" bucket with the mass of every other id of that side. Two parts, per span:

1. next token: D(teacher, student) over the (shared + rest) buckets of the two distributions
   at the span's start, D any divergence of `ktransfer.divergences` (forward KL, backward KL,
   JSD(beta), ...), at temperature T (softmax(logits / T), then summed into buckets);
2. span likelihood (weight `likelihood_weight`): by the chain rule each side's log-probability
   of the whole span is the sum of its tokens' log-probabilities (at temperature T); the same
   divergence D compares the two two-outcome distributions {this span, anything else}:
   (p, 1 - p) with p = exp(sum of log-probs). This part reaches every token of a span, not only
   its first, so a word the student splits into three tokens teaches all three.

With the same tokenizer on both sides every span is one token, the mapping is the identity, and
part 1 is exactly the same-vocabulary loss of a response term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_TINY = 1e-300  # float64; float32 is clamped at its own smallest normal number


def project_log_probs(log_probs: Tensor, buckets: Tensor, n_buckets: int) -> Tensor:
    """(N, V) log-probabilities summed into `n_buckets` outcomes by `buckets` (V,) -> (N, n_buckets) log-probs.

    A bucket without mass gets the smallest normal number of the dtype rather than 0, so the log
    and its gradient stay finite; its contribution to a divergence is then negligible (0 * log 0 = 0
    up to ~1e-38 in float32).
    """
    probs = log_probs.exp()
    out = torch.zeros(*log_probs.shape[:-1], n_buckets, dtype=probs.dtype, device=probs.device)
    out = out.index_add(-1, buckets, probs)
    tiny = max(_TINY, torch.finfo(probs.dtype).tiny)
    return out.clamp_min(tiny).log()


def binary_log_probs(log_p: Tensor) -> Tensor:
    """(N,) log-probabilities of an event -> (N, 2) log-probs of (the event, anything else)."""
    log_p = log_p.clamp(max=0.0)
    tiny = max(_TINY, torch.finfo(log_p.dtype).tiny)
    # log(1 - p) = log(-expm1(log p)), kept finite where p rounds to 1
    rest = torch.log((-torch.expm1(log_p)).clamp_min(tiny))
    return torch.stack([log_p, rest], dim=-1)


def token_log_probs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T)[id] per position: (..., V) logits and (...) ids -> (...)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    scaled = logits.to(dtype) / temperature
    picked = scaled.gather(-1, ids.unsqueeze(-1).clamp_min(0)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def span_sums(values: Tensor, span_of: Tensor, n_spans: int) -> Tensor:
    """Sum of per-token `values` (M,) within each span, `span_of` (M,) naming each token's span -> (n_spans,)."""
    return torch.zeros(n_spans, dtype=values.dtype, device=values.device).index_add(0, span_of, values)


def span_loss(
    divergence: Callable[..., Tensor], student_first: Tensor, teacher_first: Tensor,
    student_buckets: Tensor, teacher_buckets: Tensor, n_buckets: int, *, temperature: float = 1.0,
    student_span_log_probs: Tensor | None = None, teacher_span_log_probs: Tensor | None = None,
    likelihood_weight: float = 1.0, params: dict[str, Any] | None = None,
) -> Tensor:
    """Per-span values (N,) of the span alignment loss (module docstring).

    `student_first` (N, V_s) / `teacher_first` (N, V_t): logits at each span's start; `*_buckets`
    the bucket of every row of each (`VocabMapping.buckets`); `*_span_log_probs` (N,) each side's
    log-probability of the span at temperature T (`token_log_probs` summed by `span_sums`);
    `divergence` a function of `ktransfer.divergences` (`params`: its beta or alpha).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(torch.promote_types(student_first.dtype, teacher_first.dtype), torch.float32)
    q = project_log_probs(F.log_softmax(student_first.to(dtype) / temperature, dim=-1), student_buckets, n_buckets)
    p = project_log_probs(F.log_softmax(teacher_first.to(dtype) / temperature, dim=-1), teacher_buckets, n_buckets)
    return bucket_span_loss(divergence, q, p, student_span_log_probs=student_span_log_probs,
                            teacher_span_log_probs=teacher_span_log_probs, likelihood_weight=likelihood_weight,
                            params=params)


def bucket_span_loss(
    divergence: Callable[..., Tensor], student_buckets: Tensor, teacher_buckets: Tensor, *,
    student_span_log_probs: Tensor | None = None, teacher_span_log_probs: Tensor | None = None,
    likelihood_weight: float = 1.0, params: dict[str, Any] | None = None,
) -> Tensor:
    """`span_loss` from each side's (N, n_buckets) bucket log-probabilities at each span's start, already at the
    temperature (`project_log_probs`, or a stored teacher's `sparse.sparse_bucket_log_probs`)."""
    params = params or {}
    dtype = torch.promote_types(torch.promote_types(student_buckets.dtype, teacher_buckets.dtype), torch.float32)
    q, p = student_buckets.to(dtype), teacher_buckets.to(dtype)
    # the buckets already are log-probabilities: the divergence takes them as logits at T = 1
    values = divergence(q, p, temperature=1.0, reduction="none", **params)
    if likelihood_weight != 0.0:
        if student_span_log_probs is None or teacher_span_log_probs is None:
            raise ValueError("likelihood_weight != 0 needs the span log-probabilities of both sides")
        qs = binary_log_probs(student_span_log_probs.to(dtype))
        ps = binary_log_probs(teacher_span_log_probs.to(dtype))
        values = values + likelihood_weight * divergence(qs, ps, temperature=1.0, reduction="none", **params)
    return values


__all__ = ["binary_log_probs", "bucket_span_loss", "project_log_probs", "span_loss", "span_sums", "token_log_probs"]
