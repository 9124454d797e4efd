"""The `fit` value encoding of a top-k store: basis, weighted fit, decoding, and a store written and read with it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ktransfer.store import StoreError, StoreWriter, TeacherStore
from ktransfer.store.fit import check_degree, decode_logprobs, fit_logprobs, rank_basis


def test_basis_is_legendre_at_the_log_rank() -> None:
    k, degree = 64, 4
    x = 2 * np.log1p(np.arange(k)) / np.log(k) - 1
    assert x[0] == -1 and x[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(rank_basis(k, degree).numpy(), np.polynomial.legendre.legvander(x, degree), atol=1e-12)


def test_fit_is_the_sqrt_p_weighted_least_squares_solution() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 200, generator=gen, dtype=torch.float64) * 3
    y = torch.log_softmax(logits, -1).sort(-1, descending=True).values[:, :32]
    y[0, 20:] = y[0, 0] - 30.0  # p / p_0 = e^-30: weight floored at 1e-4
    got = fit_logprobs(y, 3)
    assert got.dtype == torch.float16
    basis = rank_basis(32, 3).numpy()
    for row, want_y in zip(got.double().numpy(), y.numpy()):
        weight = np.maximum(np.sqrt(np.exp(want_y - want_y.max())), 1e-4)
        root = np.sqrt(weight)  # rows scaled by sqrt(weight)
        want, *_ = np.linalg.lstsq(basis * root[:, None], want_y * root, rcond=None)
        np.testing.assert_allclose(row, want, rtol=1e-3, atol=1e-3)  # float16


def test_a_polynomial_position_decodes_to_itself_and_keeps_the_tail() -> None:
    k, degree = 16, 3
    basis = rank_basis(k, degree)
    coefficients = torch.tensor([[-3.0, -2.0, -0.4, 0.1], [-6.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    y = coefficients @ basis.T
    y = y - torch.logsumexp(y, -1, keepdim=True) + math.log(0.9)  # top-k mass 0.9
    tail = torch.full((2,), math.log(0.1))
    got = decode_logprobs(fit_logprobs(y, degree), tail, basis)
    torch.testing.assert_close(got.double(), y, rtol=0, atol=5e-3)  # float16 coefficients
    mass = torch.logsumexp(torch.cat([got.double(), tail.double().unsqueeze(-1)], -1), -1)
    torch.testing.assert_close(mass, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-6)


def test_decoding_edge_cases_give_distributions_without_nan() -> None:
    k, degree = 8, 2
    y = torch.log(torch.tensor([[0.9, 0.02, 0.01, 0.01, 0.01, 0.02, 0.02, 0.01],  # all the mass kept
                                [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]], dtype=torch.float64))
    peaked = torch.tensor([[0.0, -70.0, -71.0, -71.5, -72.0, -72.2, -72.4, -72.5]], dtype=torch.float64)
    y = torch.cat([y, peaked])
    tail = torch.tensor([-math.inf, math.log(0.2), -80.0])
    got = decode_logprobs(fit_logprobs(y, degree), tail, rank_basis(k, degree))
    assert not torch.isnan(got).any() and bool((got <= 0).all())
    mass = torch.logsumexp(torch.cat([got, tail.unsqueeze(-1)], -1), -1)
    torch.testing.assert_close(mass, torch.zeros(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], torch.full((8,), math.log(0.1)), rtol=0, atol=1e-5)
    # a very peaked position keeps the mass on its top token (a quadratic cannot follow the step, but the others
    # stay of negligible probability instead of being spread evenly)
    assert float(got[2, 0]) > -1e-6 and float(got[2, 1:].max()) < -40.0
    with pytest.raises(ValueError, match="cannot encode a log-probability of -inf"):
        fit_logprobs(torch.tensor([[0.0, -math.inf, -math.inf]]), 1)
    nothing_kept = decode_logprobs(torch.zeros(1, degree + 1), torch.zeros(1), rank_basis(k, degree))
    assert bool(torch.isneginf(nothing_kept).all())


def test_degree_is_checked() -> None:
    assert check_degree(3, 64) == 3
    with pytest.raises(ValueError, match=r"fit degree must be an int in \[1, 8\], got 0"):
        check_degree(0, 64)
    with pytest.raises(ValueError, match="fit degree 4 needs k > 4 kept tokens per position, got k=4"):
        check_degree(4, 4)


def test_writer_sorts_fits_and_the_reader_decodes(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(2, 9, 300, generator=gen) * 3, -1)
    top, ids = logp.topk(16, -1)
    tail = torch.logsumexp(logp.scatter(-1, ids, -math.inf), -1)
    shuffle = torch.randperm(16, generator=gen)
    writer = StoreWriter(tmp_path / "s", kind="topk", task="causal_lm", examples=2, teacher="t", data="d", k=16,
                         vocab_size=300, values="fit", fit_degree=4, shard_size=2)
    for i in range(2):  # ids in any order: the writer sorts them by log-probability
        writer.add(i, ids=ids[i][:, shuffle], logprobs=top[i][:, shuffle], tail=tail[i])
    writer.close()
    store = TeacherStore.open(tmp_path / "s")
    assert store.manifest["values"] == "fit" and store.manifest["fit_degree"] == 4 and store.manifest["version"] == 2
    for i in range(2):
        got_ids, got_lp, got_tail = store.topk(i)
        assert torch.equal(got_ids, ids[i])
        torch.testing.assert_close(got_tail, tail[i], rtol=1e-3, atol=1e-3)  # float16
        want = decode_logprobs(fit_logprobs(top[i], 4), tail[i].half().float(), rank_basis(16, 4))
        torch.testing.assert_close(got_lp, want, rtol=0, atol=1e-6)
        # Gaussian logits fall less smoothly with the rank than a language model's: a loose bound on the fit's error
        assert float((top[i].exp() - got_lp.exp()).abs().sum(-1).max()) < 0.15
    positions = 2 * 9
    # ids (2 bytes) + tail (2) + 5 float16 coefficients per position, plus offsets and the shard header
    assert 16 * 2 + 2 + 10 < store.bytes_per_position() < 16 * 2 + 2 + 10 + 1000 / positions
    with pytest.raises(StoreError, match=r"made from something else \(fit_degree: store 4, now 3\)"):
        StoreWriter(tmp_path / "s", kind="topk", task="causal_lm", examples=2, teacher="t", data="d", k=16,
                    vocab_size=300, values="fit", fit_degree=3, shard_size=2)
    with pytest.raises(ValueError, match="values 'fit' encodes top-k log-probabilities"):
        StoreWriter(tmp_path / "c", kind="logits", task="classification", examples=2, teacher="t", data="d",
                    num_classes=3, values="fit")
    with pytest.raises(ValueError, match="values must be one of float32, float16, fit, got 'int8'"):
        StoreWriter(tmp_path / "c", kind="topk", task="causal_lm", examples=2, teacher="t", data="d", k=16,
                    vocab_size=300, values="int8")


@pytest.mark.parametrize("values", ["float16", "fit"])
def test_add_rows_equals_add_example_by_example_and_names_a_bad_example(tmp_path: Path, values: str) -> None:
    gen = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(10, 50, generator=gen) * 2, -1)
    top, ids = logp.topk(8, -1)
    tail = torch.logsumexp(logp.scatter(-1, ids, -math.inf), -1)
    counts = [3, 0, 4, 3]
    header = {"kind": "topk", "task": "causal_lm", "examples": 4, "teacher": "t", "data": "d", "k": 8,
              "vocab_size": 50, "values": values, "fit_degree": 3, "shard_size": 3}
    one = StoreWriter(tmp_path / "one", **header)
    start = 0
    for index, count in enumerate(counts):
        one.add(index, ids=ids[start:start + count], logprobs=top[start:start + count], tail=tail[start:start + count])
        start += count
    rows = StoreWriter(tmp_path / "rows", **header)
    rows.add_rows([0, 1, 2, 3], counts, ids=ids, logprobs=top, tail=tail)
    one.close(), rows.close()
    a, b = TeacherStore.open(tmp_path / "one"), TeacherStore.open(tmp_path / "rows")
    for i in range(4):
        for x, y in zip(a.topk(i), b.topk(i), strict=True):
            assert torch.equal(x, y)
    bad = top.clone()
    bad[8, 0] = 0.5  # a log-probability above 0, in example 3 (rows 7..9)
    with pytest.raises(ValueError, match=r"^example 3: .*logprobs at position \(1, 0\) is 0\.5"):
        StoreWriter(tmp_path / "bad", **header).add_rows([0, 1, 2, 3], counts, ids=ids, logprobs=bad, tail=tail)
    with pytest.raises(ValueError, match="the counts add up to 9 rows, but ids has 10"):
        StoreWriter(tmp_path / "bad2", **header).add_rows([0, 1, 2, 3], [3, 0, 3, 3], ids=ids, logprobs=top)
