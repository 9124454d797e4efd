"""Tests for ktransfer.bucket_student: the fused collapse of the student onto a top-k teacher's outcomes.

Values and gradients are compared with a plain float64 autograd reference (log_softmax, then the
kept entries and the log of the summed probabilities of the others), and with gradcheck.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ktransfer.bucket_student import bucket_log_probs


def reference(z: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """float64 autograd: log_softmax(z / T) at the ids, and log of the summed probability of the rest."""
    logp = torch.log_softmax(z.double() / temperature, dim=-1)
    keep = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, ids, True)
    rest = torch.log(torch.where(keep, torch.zeros_like(logp), logp.exp()).sum(-1, keepdim=True))
    return torch.cat([logp.gather(-1, ids), rest], dim=-1)


def distinct_ids(rows: int, vocab: int, k: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=gen)[:k] for _ in range(rows)])


@pytest.mark.parametrize("k", [1, 5, 17])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3])
def test_values_and_gradient_match_float64_autograd(k: int, temperature: float, chunk_rows: int | None) -> None:
    gen = torch.Generator().manual_seed(k)
    z = (torch.randn(7, 17, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    ids = distinct_ids(7, 17, k, seed=k + 1)
    weights = torch.randn(7, k + 1, generator=gen, dtype=torch.float64)
    got = bucket_log_probs(z, ids, temperature=temperature, chunk_rows=chunk_rows)
    want = reference(z, ids, temperature)
    if k == 17:  # nothing is left: the rest is -inf and takes no gradient
        assert torch.isneginf(got[:, -1]).all()
        weights[:, -1] = 0.0
        torch.testing.assert_close(got[:, :-1], want[:, :-1], rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (g_got,) = torch.autograd.grad((got.nan_to_num(neginf=0.0) * weights).sum(), z)
    (g_want,) = torch.autograd.grad((want.nan_to_num(neginf=0.0) * weights).sum(), z)
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradcheck(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64).requires_grad_(True)
    ids = distinct_ids(6, 9, 4, seed=1).reshape(2, 3, 4)
    assert torch.autograd.gradcheck(lambda x: bucket_log_probs(x, ids, temperature=temperature, chunk_rows=2), (z,))


def test_minus_infinity_logits_give_no_nan() -> None:
    """Tokens of probability 0 among the ids and in the rest, and a row whose rest is all -inf."""
    z = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    z[0, 1] = -math.inf        # an id of probability 0
    z[1, 7:] = -math.inf       # part of the rest of probability 0
    z[2, 3:] = -math.inf       # the whole rest of probability 0
    z.requires_grad_(True)
    got = bucket_log_probs(z, ids)
    assert got[0, 1] == -math.inf and got[2, 3] == -math.inf and torch.isfinite(got[1]).all()
    want = reference(z, ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # a loss that weights the outcomes by finite coefficients (0 * log 0 is left out, as the divergences do)
    weights = torch.tensor([[0.3, 0.0, 0.2, 0.5], [0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
    (g_got,) = torch.autograd.grad((got.nan_to_num(neginf=0.0) * weights).sum(), z)
    # the reference differentiates log 0 (NaN): it takes the last row's kept entries only, the others in full
    want_rows = reference(z[:2], ids[:2]), torch.log_softmax(z[2], dim=-1)[ids[2]]
    want_loss = (want_rows[0].nan_to_num(neginf=0.0) * weights[:2]).sum() + (want_rows[1] * weights[2, :3]).sum()
    (g_want,) = torch.autograd.grad(want_loss.nan_to_num(), z)
    assert not torch.isnan(g_got).any()
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_rest_is_kept_where_one_minus_the_kept_mass_rounds_to_zero() -> None:
    z = torch.full((1, 50), -90.0)
    z[0, :3] = 0.0
    got = bucket_log_probs(z, torch.tensor([[0, 1, 2]]))  # float32: 1 - sum q_i is exactly 0
    assert float(got[0, -1]) == pytest.approx(math.log(47) - 90.0 - math.log(3.0), rel=1e-6)


def test_float32_matches_float64_and_checks_shapes() -> None:
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(4, 6, 300, generator=gen) * 4
    ids = distinct_ids(24, 300, 32, seed=5).reshape(4, 6, 32)
    torch.testing.assert_close(bucket_log_probs(z, ids), reference(z, ids).float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="all dimensions but the last must match"):
        bucket_log_probs(z, ids[:, :5])
    with pytest.raises(TypeError, match="floating point"):
        bucket_log_probs(z.long(), ids)
