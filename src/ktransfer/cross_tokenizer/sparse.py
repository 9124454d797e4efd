"""The cross-tokenizer losses against a stored teacher: top-k + tail on the teacher's own positions.

A store built on a dataset with `teacher_tokenizer` holds, per *teacher* target position, the teacher's
k most probable token ids, their log-probabilities (temperature 1), the log of the remaining mass
(the tail) and the teacher's log-probability of the token that actually follows
(:class:`TeacherTokensSparse`). The `cross_tokenizer` term takes its span starts and span tokens from
it as it takes them from the live teacher's logits; what the top-k leaves open is settled as follows.

Temperature. The student is tempered over its whole vocabulary (exact). The teacher's tail is tempered
as if its mass were spread uniformly over the V - k tokens the top-k left out (the maximum-entropy
completion, the same as `ktransfer.sparse_divergences` uses for `tail: bucket`): the tempered rest has
unnormalised log-mass ``log(V - k) + (tail - log(V - k)) / T``. Exact at T = 1, at k = V and for a
uniform tail.

`span`, next token (:func:`sparse_bucket_log_probs`). A kept token whose text both vocabularies hold
gives its probability to that text's bucket; the "rest" bucket gets the tail mass plus the kept tokens
whose text only the teacher has. How the tail splits between shared and unshared texts is not stored;
all of it goes to rest. With k = V (no tail) this is the dense bucket distribution.

`span`, span likelihood (:func:`sparse_next_log_probs`). The stored next-token log-probabilities are
exact at T = 1; at another T each is ``lp / T - log Z_T``, Z_T the tempered total mass of the top-k and
the completed tail.

`uld` (:func:`sparse_uld_distance`). The teacher's sorted probability vector is its k kept
probabilities, sorted, followed by V - k equal entries of ``tail mass / (V - k)`` (the same uniform
completion). These stay sorted: the mean of the probabilities the top-k left out is at most the k-th
largest, and tempering keeps the order. The distance is then exactly the dense formula on this vector;
with k = V it is the dense ULD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ktransfer.cross_tokenizer.span import _TINY
from ktransfer.sparse_divergences import SparseTeacher

__all__ = ["TeacherTokensSparse", "sparse_bucket_log_probs", "sparse_next_log_probs", "sparse_uld_distance",
           "tempered_top_and_rest"]


class TeacherTokensSparse(SparseTeacher):
    """A stored teacher on its own tokens: a `SparseTeacher` over the teacher's positions (B, T_teacher - 1),
    plus ``next_logprob`` (same shape: the teacher's log-probability, at temperature 1, of the teacher token
    that follows each position) and ``vocab_size`` (the teacher's vocabulary, for the tail's completion)."""

    __slots__ = ("next_logprob", "vocab_size")

    def __init__(self, ids: Tensor, logprobs: Tensor, tail_logprob: Tensor, next_logprob: Tensor, vocab_size: int,
                 *, mass_tolerance: float | None = None) -> None:
        super().__init__(ids, logprobs, tail_logprob, mass_tolerance=mass_tolerance)
        if not isinstance(next_logprob, Tensor) or not next_logprob.is_floating_point():
            raise TypeError("TeacherTokensSparse next_logprob must be a floating-point tensor")
        if next_logprob.shape != self.shape or next_logprob.device != self.device:
            raise ValueError(f"TeacherTokensSparse next_logprob has shape {tuple(next_logprob.shape)} on "
                             f"{next_logprob.device}, expected {tuple(self.shape)} on {self.device} (one per position)")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < self.k:
            raise ValueError(f"TeacherTokensSparse vocab_size must be an int >= k = {self.k}, got {vocab_size!r}")
        self.next_logprob = next_logprob
        self.vocab_size = vocab_size

    def __repr__(self) -> str:
        return (f"TeacherTokensSparse(positions={tuple(self.shape)}, k={self.k}, vocab_size={self.vocab_size}, "
                f"device={self.device})")

    def to(self, device: torch.device | str) -> TeacherTokensSparse:
        """The same teacher on ``device``."""
        return TeacherTokensSparse(self.ids.to(device), self.logprobs.to(device), self.tail_logprob.to(device),
                                   self.next_logprob.to(device), self.vocab_size, mass_tolerance=self.mass_tolerance)


def tempered_top_and_rest(logprobs: Tensor, tail: Tensor, vocab_size: int, temperature: float) -> Tensor:
    """(N, k + 1) unnormalised log-masses at `temperature`: the k kept tokens, then the rest (uniform completion)."""
    if temperature == 1.0:
        return torch.cat([logprobs, tail.unsqueeze(-1)], dim=-1)
    untracked = vocab_size - logprobs.shape[-1]
    if untracked == 0:
        rest = torch.full_like(tail, -math.inf)
    else:
        log_n = math.log(untracked)
        rest = log_n + (tail - log_n) / temperature
    return torch.cat([logprobs / temperature, rest.unsqueeze(-1)], dim=-1)


def _normalised(logprobs: Tensor, tail: Tensor, vocab_size: int, temperature: float, dtype: torch.dtype) -> Tensor:
    masses = tempered_top_and_rest(logprobs.to(dtype), tail.to(dtype), vocab_size, temperature)
    return masses - torch.logsumexp(masses, dim=-1, keepdim=True)


def sparse_bucket_log_probs(ids: Tensor, logprobs: Tensor, tail: Tensor, buckets: Tensor, n_buckets: int,
                            vocab_size: int, temperature: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, n_buckets) log-probabilities of the teacher's buckets from its top-k (module docstring).

    `ids` / `logprobs` (N, k) and `tail` (N,) at temperature 1; `buckets` (V,) the bucket of every teacher id
    (`VocabMapping.buckets`), whose last, ``n_buckets - 1``, is rest. An empty bucket gets the smallest normal
    number of `dtype`, as `span.project_log_probs` does.
    """
    lp = _normalised(logprobs, tail, vocab_size, temperature, dtype)
    probs = lp.exp()
    out = torch.zeros(*lp.shape[:-1], n_buckets, dtype=dtype, device=lp.device)
    out = out.scatter_add(-1, buckets[ids], probs[..., :-1])
    out[..., n_buckets - 1] += probs[..., -1]
    return out.clamp_min(max(_TINY, torch.finfo(dtype).tiny)).log()


def sparse_next_log_probs(next_logprob: Tensor, logprobs: Tensor, tail: Tensor, vocab_size: int,
                          temperature: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) the teacher's log-probability of each next token at `temperature` (stored at 1; module docstring)."""
    if temperature == 1.0:
        return next_logprob.to(dtype)
    masses = tempered_top_and_rest(logprobs.to(dtype), tail.to(dtype), vocab_size, temperature)
    return next_logprob.to(dtype) / temperature - torch.logsumexp(masses, dim=-1)


def sparse_uld_distance(student_logits: Tensor, logprobs: Tensor, tail: Tensor, vocab_size: int,
                        temperature: float = 1.0) -> Tensor:
    """ULD per row between (N, V_s) student logits and a top-k teacher (N, k) + tail (N,) over `vocab_size` tokens.

    The teacher's sorted vector is its sorted top-k then V_t - k entries of tail / (V_t - k) (module
    docstring); the rest is `uld.uld_distance`'s formula. Computed in float32 at least.
    """
    if student_logits.dim() != 2 or logprobs.dim() != 2 or student_logits.shape[0] != logprobs.shape[0]:
        raise ValueError(f"sparse_uld_distance takes (N, V_s) student logits and (N, k) teacher log-probabilities "
                         f"with the same N, got {tuple(student_logits.shape)} and {tuple(logprobs.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    k, v_t, v_s = logprobs.shape[-1], vocab_size, student_logits.shape[-1]
    p = _normalised(logprobs, tail, v_t, temperature, dtype).exp()
    top = p[:, :k].sort(dim=-1, descending=True).values
    rest = p[:, k]
    q = F.softmax(student_logits.to(dtype) / temperature, dim=-1)
    n = min(v_s, v_t)
    q_top = q.topk(n, dim=-1, sorted=True).values
    if n <= k:  # the teacher's first n entries are all kept ones
        p_top, p_beyond = top[:, :n], top[:, n:].sum(-1) + rest
    else:  # then the uniform entries of the completed tail
        each = rest / (v_t - k)
        p_top = torch.cat([top, each.unsqueeze(-1).expand(-1, n - k)], dim=-1)
        p_beyond = each * (v_t - n)
    q_beyond = (q.sum(-1) - q_top.sum(-1)).clamp_min(0.0) if v_s > n else 0.0
    return (p_top - q_top).abs().sum(dim=-1) + p_beyond + q_beyond
