"""The ``fit`` value encoding of a top-k store: each position's sorted log-probabilities as a short polynomial.

A teacher's top-k log-probabilities, sorted from the most probable down, fall smoothly with the
rank. Per position they are fitted with a Legendre polynomial of low degree ``d`` in

    x(r) = 2 * log(1 + r) / log(k) - 1        r = 0 .. k-1 (rank), so x runs from -1 to 1

by least squares weighted by ``sqrt(p)`` (minimising ``sum_r sqrt(p_r) * (y_r - f(x_r))^2``, so the
probable tokens, which carry the loss, are fitted closest), and only the ``d + 1`` coefficients are
stored. Decoding evaluates the polynomial at the k ranks and shifts the k values by one constant so
that their mass is exactly ``1 - exp(tail)``: the stored tail (kept explicitly, never derived from the
fit) is preserved and the decoded position is a distribution. Tokens of probability 0 (``-inf``) get
weight 0 in the fit and come back as small probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ktransfer.sparse_divergences import _log1mexp

MAX_DEGREE = 8


def check_degree(degree: object, k: int) -> int:
    """A valid fit degree for top-k positions: an int in [1, MAX_DEGREE] below k."""
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"fit degree must be an int in [1, {MAX_DEGREE}], got {degree!r}")
    if degree >= k:
        raise ValueError(f"fit degree {degree} needs k > {degree} kept tokens per position, got k={k}; "
                         "store the values as float16 or float32 instead")
    return degree


def rank_basis(k: int, degree: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Legendre polynomials P_0..P_degree at x(r) for the ranks r = 0..k-1: shape (k, degree + 1)."""
    x = 2.0 * torch.log1p(torch.arange(k, dtype=torch.float64)) / math.log(k) - 1.0
    columns = [torch.ones_like(x), x]
    for n in range(1, degree):
        columns.append(((2 * n + 1) * x * columns[n] - n * columns[n - 1]) / (n + 1))
    return torch.stack(columns[: degree + 1], dim=-1).to(dtype)


def fit_logprobs(logprobs: Tensor, degree: int) -> Tensor:
    """Coefficients (P, degree + 1), float32, of the sqrt(p)-weighted fit of sorted log-probabilities (P, k)."""
    y = logprobs.detach().to(torch.float64)
    k = y.shape[-1]
    basis = rank_basis(k, degree)
    finite = torch.isfinite(y)
    weight = torch.where(finite, torch.exp(0.5 * y.clamp(max=0.0)), torch.zeros_like(y))
    y = torch.where(finite, y, torch.zeros_like(y))
    gram = torch.einsum("pk,ka,kb->pab", weight, basis, basis)
    # a tiny ridge keeps positions with almost no weight (every token of probability ~0) solvable
    ridge = 1e-12 * weight.sum(-1).clamp(min=1e-30)
    gram = gram + ridge[:, None, None] * torch.eye(degree + 1, dtype=torch.float64)
    rhs = torch.einsum("pk,ka,pk->pa", weight, basis, y)
    return torch.linalg.solve(gram, rhs).to(torch.float32)


def decode_logprobs(coefficients: Tensor, tail: Tensor, basis: Tensor) -> Tensor:
    """Log-probabilities (P, k), float32, from coefficients (P, d + 1) and the stored tail (P,).

    The polynomial's values are shifted so that the k probabilities sum to exactly ``1 - exp(tail)``.
    """
    fitted = coefficients.to(torch.float64) @ basis.to(torch.float64).T
    kept = _log1mexp(tail.to(torch.float64))  # log of the top-k mass; 0 where the tail is -inf
    shift = kept - torch.logsumexp(fitted, dim=-1)
    out = torch.where(torch.isneginf(kept).unsqueeze(-1), torch.full_like(fitted, -math.inf),
                      fitted + shift.unsqueeze(-1))
    return out.clamp(max=0.0).to(torch.float32)
