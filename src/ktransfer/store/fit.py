"""The ``fit`` value encoding of a top-k store: each position's sorted log-probabilities as a short polynomial.

A teacher's top-k log-probabilities, sorted from the most probable down, fall smoothly with the
rank. Per position they are fitted with a Legendre polynomial of low degree ``d`` in

    x(r) = 2 * log(1 + r) / log(k) - 1        r = 0 .. k-1 (rank), so x runs from -1 to 1

by least squares weighted by ``sqrt(p)`` (minimising ``sum_r w_r * (y_r - f(x_r))^2`` with
``w_r = max(sqrt(p_r / p_0), 1e-4)``, so the probable tokens, which carry the loss, are fitted closest,
and a very peaked position still fits its whole top-k), and only the ``d + 1`` coefficients are
stored, as float16 (their rounding changes no loss or gradient at the precision measured; the
constant term's rounding is undone by the normalisation below). Decoding evaluates the polynomial at
the k ranks and shifts the k values by one constant so that their mass is exactly ``1 - exp(tail)``:
the stored tail (kept explicitly, never derived from the fit) is preserved and the decoded position
is a distribution. Tokens of probability 0 (``-inf``) cannot be encoded (the writer refuses them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ktransfer.sparse_divergences import _log1mexp

MAX_DEGREE = 8
DEFAULT_DEGREE = 6
COEFFICIENTS = torch.float16
_WEIGHT_FLOOR = 1e-4


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
    """Coefficients (P, degree + 1), float16, of the sqrt(p)-weighted fit of finite sorted log-probabilities (P, k).

    Raises ValueError where a log-probability is not finite or a coefficient does not fit float16.
    """
    y = logprobs.detach().to(torch.float64)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("values 'fit' cannot encode a log-probability of -inf (a token of probability 0); "
                         "store the values as float16 or float32 instead")
    basis = rank_basis(y.shape[-1], degree)
    top = y.max(dim=-1, keepdim=True).values if y.numel() else y[..., :1]
    weight = torch.exp(0.5 * (y - top)).clamp(min=_WEIGHT_FLOOR)
    gram = torch.einsum("pk,ka,kb->pab", weight, basis, basis)
    gram = gram + 1e-12 * torch.eye(degree + 1, dtype=torch.float64)
    rhs = torch.einsum("pk,ka,pk->pa", weight, basis, y)
    coefficients = torch.linalg.solve(gram, rhs)
    out = coefficients.to(COEFFICIENTS)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"values 'fit': a coefficient ({float(coefficients.abs().max()):.3g}) does not fit float16 "
                         f"(log-probabilities as low as {float(y.min()):.3g}); store the values as float16 or float32")
    return out


def decode_logprobs(coefficients: Tensor, tail: Tensor, basis: Tensor) -> Tensor:
    """Log-probabilities (P, k), float32, from coefficients (P, d + 1) and the stored tail (P,).

    The polynomial's values are shifted so that the k probabilities sum to exactly ``1 - exp(tail)``.
    """
    fitted = coefficients.to(torch.float64) @ basis.to(torch.float64).T
    kept = _log1mexp(tail.to(torch.float64))  # log of the top-k mass; 0 where the tail is -inf
    shift = kept - torch.logsumexp(fitted, dim=-1)
    return (fitted + shift.unsqueeze(-1)).clamp(max=0.0).to(torch.float32)
