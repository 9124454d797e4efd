"""The student's distribution collapsed onto a top-k teacher's outcomes, in one pass with a closed-form gradient.

Against a teacher that keeps ``k`` token ids per position and one tail bucket for the rest, the
student's full-vocabulary distribution ``q = softmax(z / T)`` is collapsed onto ``k + 1`` outcomes:

    log q_i = z_{id_i} / T - lse          (i = 1..k, the teacher's ids)
    log q_R = log sum_{v not in ids} exp(z_v / T) - lse

with ``lse = log sum_v exp(z_v / T)``. The rest is a log-sum-exp over the complement (never
``log(1 - sum q_i)``, which cancels to ``-inf`` when the kept mass rounds to 1). Differentiating,
with ``g`` the gradient of the loss with respect to the ``k + 1`` outputs and ``G = sum_o g_o``::

    dL/dz_v = (g_R * exp(z_v / T - lse_R) - G * q_v) / T        v not in ids
    dL/dz_v = (g_i - G * q_v) / T                                v = id_i

where ``lse_R = log sum_{v not in ids} exp(z_v / T)``; for ``v`` outside the ids,
``q_v = exp(z_v / T - lse_R) * q_R``, so both terms share one exponential and nothing overflows.
The forward pass keeps only ``lse`` and ``lse_R`` per row; the backward pass recomputes the
exponentials a chunk of rows at a time, so the rows x V intermediates never exceed one chunk and
nothing of size rows x V is saved besides the caller's logits (the gradient itself aside).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["bucket_log_probs"]

# Bytes of one (rows x V) intermediate per chunk: 8 MiB is 64 rows of a 32,000-token vocabulary in float32.
_CHUNK_BYTES = 8 * 2**20


def _rows_per_chunk(vocab: int, itemsize: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    return max(1, _CHUNK_BYTES // max(1, vocab * itemsize))


class _BucketCollapse(torch.autograd.Function):
    """(rows, V) logits and (rows, k) distinct ids -> (rows, k + 1) collapsed log-probabilities."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, ids: Tensor, temperature: float, chunk_rows: int | None) -> Tensor:  # type: ignore[override]
        rows, vocab = z.shape
        k = ids.shape[-1]
        out = torch.empty((rows, k + 1), dtype=z.dtype, device=z.device)
        lse = torch.empty(rows, dtype=z.dtype, device=z.device)
        lse_rest = torch.empty(rows, dtype=z.dtype, device=z.device)
        step = _rows_per_chunk(vocab, z.element_size(), chunk_rows)
        inv_t = 1.0 / temperature
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunk_ids = ids[start:stop]
            scaled = z[start:stop] * inv_t if temperature != 1.0 else z[start:stop].clone()
            top = scaled.gather(-1, chunk_ids)
            scaled.scatter_(-1, chunk_ids, -math.inf)
            rest = torch.logsumexp(scaled, dim=-1)  # -inf where nothing is left outside the ids
            kept = torch.logsumexp(top, dim=-1)
            total = torch.logaddexp(kept, rest)
            out[start:stop, :k] = top - total.unsqueeze(-1)
            out[start:stop, k] = rest - total
            lse[start:stop] = total
            lse_rest[start:stop] = rest
        ctx.save_for_backward(z, ids, out, lse_rest)
        ctx.temperature = temperature
        ctx.step = step
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, ids, out, lse_rest = ctx.saved_tensors
        temperature, step = ctx.temperature, ctx.step
        rows, vocab = z.shape
        k = ids.shape[-1]
        grad_out = grad_out.to(z.dtype)
        g_top, g_rest = grad_out[:, :k], grad_out[:, k]
        total_g = grad_out.sum(-1)
        q_rest = out[:, k].exp()  # 0 where the rest is empty
        # v outside the ids: exp(z_v / T - lse_R) * (g_R - G q_R); the ids: g_i - G q_i
        rest_scale = (g_rest - total_g * q_rest) / temperature
        top_grad = (g_top - total_g.unsqueeze(-1) * out[:, :k].exp()) / temperature
        # an empty rest (lse_R = -inf) has only -inf logits outside the ids: any finite shift gives them 0
        shift = torch.where(torch.isfinite(lse_rest), lse_rest, torch.zeros_like(lse_rest))
        grad = torch.empty_like(z)
        inv_t = 1.0 / temperature
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunk_ids = ids[start:stop]
            buf = grad[start:stop]
            if temperature != 1.0:
                torch.mul(z[start:stop], inv_t, out=buf)
                buf.sub_(shift[start:stop].unsqueeze(-1))
            else:
                torch.sub(z[start:stop], shift[start:stop].unsqueeze(-1), out=buf)
            buf.scatter_(-1, chunk_ids, -math.inf)
            buf.exp_().mul_(rest_scale[start:stop].unsqueeze(-1))
            buf.scatter_(-1, chunk_ids, top_grad[start:stop])
        return grad, None, None, None


def bucket_log_probs(z: Tensor, ids: Tensor, *, temperature: float = 1.0, chunk_rows: int | None = None) -> Tensor:
    """Log-probabilities of ``softmax(z / temperature)`` collapsed onto the ids and one rest outcome.

    ``z`` (..., V) floating logits, ``ids`` (..., k) distinct token ids per row. Returns (..., k + 1):
    the log-probabilities of the ``k`` ids, then the log of the mass on every other token (``-inf``
    when nothing is left). Differentiable in ``z`` with a closed-form backward (first order); rows
    are processed ``chunk_rows`` at a time (default: about 8 MiB of intermediates per chunk).
    """
    if z.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"logits of shape {tuple(z.shape)} and ids of shape {tuple(ids.shape)}: all dimensions but "
                         "the last must match")
    if not z.is_floating_point():
        raise TypeError(f"logits must be floating point, got {z.dtype}")
    lead, vocab, k = z.shape[:-1], z.shape[-1], ids.shape[-1]
    flat = _BucketCollapse.apply(z.reshape(-1, vocab), ids.reshape(-1, k).to(torch.int64), float(temperature),
                                 chunk_rows)
    return flat.reshape(*lead, k + 1)
