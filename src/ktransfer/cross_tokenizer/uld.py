"""Universal Logit Distillation (Boizard et al., 2024): a distance between two distributions over different
vocabularies that needs no mapping between them.

ULD compares the *sorted* probability vectors: with p the teacher's probabilities over its V_t
tokens and q the student's over its V_s tokens, both sorted in decreasing order and the shorter
one padded with zeros to max(V_t, V_s) entries,

    ULD(p, q) = sum_i | p_(i) - q_(i) |,

the Wasserstein-1 distance between the two distributions when every token of either vocabulary
is one unit away from every other (the closed form of the optimal transport for that cost,
which is what the paper uses). It sees only the shape of each distribution (how peaked, how
long its tail), not which tokens carry the mass: it matches confidence, not content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def uld_distance(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """ULD per row: (N, V_s) student and (N, V_t) teacher logits -> (N,), at temperature T (softmax(logits / T)).

    Computed in float32 at least (float64 stays float64); -inf logits are probability 0.
    """
    if student_logits.dim() != 2 or teacher_logits.dim() != 2 or student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"uld_distance takes (N, V_s) and (N, V_t) logits with the same N, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    p = F.softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    q = F.softmax(student_logits.to(dtype) / temperature, dim=-1)
    # Past the shorter vocabulary's n entries the other side pairs with zeros: those terms sum to the longer
    # side's mass outside its n largest, so only its top n need sorting (exact, and far cheaper for a
    # 49,152-token teacher over an 8,000-token student)
    n = min(p.shape[-1], q.shape[-1])
    p_top = p.topk(n, dim=-1, sorted=True).values
    q_top = q.topk(n, dim=-1, sorted=True).values
    longer, longer_top = (p, p_top) if p.shape[-1] > q.shape[-1] else (q, q_top)
    rest = (longer.sum(-1) - longer_top.sum(-1)).clamp_min(0.0) if longer.shape[-1] > n else 0.0
    return (p_top - q_top).abs().sum(dim=-1) + rest

__all__ = ["uld_distance"]
