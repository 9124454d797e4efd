"""Tests for ktransfer.sparse_divergences: divergences against a top-k + tail teacher.

Values are checked against an independent float64 reference written with numpy loops over the
collapsed probability vectors; gradients against autograd of a plain float64 torch reference that
shares no helper with the module under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from ktransfer import divergences as D
from ktransfer import sparse_divergences as S

Case = tuple[str, dict[str, float]]
CASES: list[Case] = [
    ("forward_kl", {}),
    ("backward_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.2}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_backward_kl", {"alpha": 0.3}),
    ("tvd", {}),
    ("soft_target", {}),
]
V = 20


def case_id(case: Case) -> str:
    name, params = case
    return name + "".join(f"-{k}{v}" for k, v in params.items())


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def logits(*shape: int, seed: int = 0, scale: float = 2.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


# --------------------------------------------------------------------------------------
# Independent reference (numpy, float64, loops)
# --------------------------------------------------------------------------------------


def ref_kl(p: np.ndarray, q: np.ndarray) -> float:
    total = 0.0
    for p_v, q_v in zip(p, q):
        if p_v == 0.0:
            continue
        if q_v == 0.0:
            return math.inf
        total += p_v * (math.log(p_v) - math.log(q_v))
    return total


def ref_divergence(name: str, params: dict[str, float], p: np.ndarray, q: np.ndarray) -> float:
    """The dense formula on two probability vectors (P = teacher, Q = student)."""
    if name in ("forward_kl", "soft_target"):
        return ref_kl(p, q)
    if name == "backward_kl":
        return ref_kl(q, p)
    if name == "jsd":
        b = params["beta"]
        m = b * p + (1 - b) * q
        return b * ref_kl(p, m) + (1 - b) * ref_kl(q, m)
    if name == "skew_forward_kl":
        a = params["alpha"]
        return ref_kl(p, a * p + (1 - a) * q)
    if name == "skew_backward_kl":
        a = params["alpha"]
        return ref_kl(q, a * q + (1 - a) * p)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    raise AssertionError(name)


def ref_collapsed(z: np.ndarray, ids: list[int], lp: np.ndarray, tail: float, mode: str, T: float) -> tuple[np.ndarray, np.ndarray]:
    """(teacher, student) probability vectors over the collapsed outcomes, by loops."""
    e = np.exp(z / T - np.max(z / T))
    q_full = e / e.sum()
    q_top = np.array([q_full[i] for i in ids])
    if mode == "renormalize":
        w = np.exp(lp / T - np.max(lp / T))
        return w / w.sum(), q_top / q_top.sum()
    q_rest = sum(q_full[v] for v in range(len(z)) if v not in ids)
    n = len(z) - len(ids)
    tail_mass = 0.0 if n == 0 else n * (math.exp(tail) / n) ** (1.0 / T)
    w = np.append(np.exp(lp / T), tail_mass)
    return w / w.sum(), np.append(q_top, q_rest)


def ref_sparse(name: str, params: dict[str, float], z: np.ndarray, teacher: S.SparseTeacher, mode: str, T: float) -> np.ndarray:
    """Per-position reference values of a sparse divergence."""
    flat_z = z.reshape(-1, z.shape[-1])
    ids = teacher.ids.reshape(-1, teacher.k).numpy()
    lp = teacher.logprobs.reshape(-1, teacher.k).double().numpy()
    tail = teacher.tail_logprob.reshape(-1).double().numpy()
    out = []
    for r in range(flat_z.shape[0]):
        p, q = ref_collapsed(flat_z[r], list(ids[r]), lp[r], float(tail[r]), mode, T)
        value = ref_divergence(name, params, p, q)
        out.append(value * T**2 if name == "soft_target" else value)
    return np.array(out).reshape(teacher.shape)


def torch_reference(name: str, params: dict[str, float], z: Tensor, teacher: S.SparseTeacher, mode: str, T: float) -> Tensor:
    """Differentiable float64 reference (plain torch, no helper of the module): sum over positions."""
    q_full = torch.softmax(z / T, dim=-1)
    q_top = q_full.gather(-1, teacher.ids)
    lp = teacher.logprobs.double()
    if mode == "renormalize":
        p = torch.softmax(lp / T, dim=-1)
        q = q_top / q_top.sum(-1, keepdim=True)
    else:
        n = z.shape[-1] - teacher.k
        tail_mass = n * (teacher.tail_logprob.double().exp() / n) ** (1.0 / T)
        w = torch.cat([(lp / T).exp(), tail_mass.unsqueeze(-1)], dim=-1)
        p = w / w.sum(-1, keepdim=True)
        q = torch.cat([q_top, (1 - q_top.sum(-1)).unsqueeze(-1)], dim=-1)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return (a * (a.log() - b.log())).sum(-1)

    if name in ("forward_kl", "soft_target"):
        value = kl(p, q) * (T**2 if name == "soft_target" else 1.0)
    elif name == "backward_kl":
        value = kl(q, p)
    elif name == "jsd":
        b = params["beta"]
        m = b * p + (1 - b) * q
        value = b * kl(p, m) + (1 - b) * kl(q, m)
    elif name == "skew_forward_kl":
        value = kl(p, params["alpha"] * p + (1 - params["alpha"]) * q)
    elif name == "skew_backward_kl":
        value = kl(q, params["alpha"] * q + (1 - params["alpha"]) * p)
    else:
        value = 0.5 * (p - q).abs().sum(-1)
    return value.sum()


def sparse(case: Case) -> Callable[..., Tensor]:
    name, params = case
    fn = S.get_sparse_divergence(name)
    return lambda *a, **kw: fn(*a, **params, **kw)


def dense(case: Case) -> Callable[..., Tensor]:
    name, params = case
    fn = D.get_divergence(name)
    return lambda *a, **kw: fn(*a, **params, **kw)


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("k", [1, 7, V])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_reference(case: Case, tail: str, k: int, temperature: float) -> None:
    z, t = logits(2, 3, V, seed=1), logits(2, 3, V, seed=2, scale=3.0)
    teacher = S.SparseTeacher.from_logits(t, k)
    got = sparse(case)(z, teacher, tail=tail, temperature=temperature, reduction="none")
    want = ref_sparse(case[0], case[1], z.numpy(), teacher, tail, temperature)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_k_equals_vocabulary_is_the_dense_loss(case: Case, tail: str, temperature: float, reduction: str) -> None:
    z = logits(3, 4, V, seed=3).requires_grad_(True)
    t = logits(3, 4, V, seed=4, scale=4.0)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(5)) > 0.3
    teacher = S.SparseTeacher.from_logits(t, V)
    for chunk_size in (None, 5):
        got = sparse(case)(z, teacher, tail=tail, temperature=temperature, reduction=reduction, mask=mask,
                           chunk_size=chunk_size)
        want = dense(case)(z, t, temperature=temperature, reduction=reduction, mask=mask)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        (g_got,) = torch.autograd.grad(got.sum(), z)
        (g_want,) = torch.autograd.grad(want.sum(), z)
        torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-9)


def test_registry_mirrors_the_dense_names() -> None:
    assert set(S.SPARSE_DIVERGENCES) == set(D.DIVERGENCES)
    assert S.get_sparse_divergence("jsd") is S.sparse_jsd
    with pytest.raises(ValueError, match="valid choices: backward_kl, forward_kl, jsd"):
        S.get_sparse_divergence("kl_forward")


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradient_matches_float64_autograd_reference(case: Case, tail: str, chunk_size: int | None) -> None:
    z = logits(3, 5, V, seed=6).requires_grad_(True)
    teacher = S.SparseTeacher.from_logits(logits(3, 5, V, seed=7, scale=3.0), 6)
    temperature = 2.0
    got = sparse(case)(z, teacher, tail=tail, temperature=temperature, reduction="sum", chunk_size=chunk_size)
    (g_got,) = torch.autograd.grad(got, z)
    want = torch_reference(case[0], case[1], z, teacher, tail, temperature)
    (g_want,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[6]], ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(case: Case, tail: str, chunk_size: int | None, reduction: str) -> None:
    z = logits(2, 3, 8, seed=8).requires_grad_(True)
    teacher = S.SparseTeacher.from_logits(logits(2, 3, 8, seed=9), 3)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    fn = sparse(case)
    assert torch.autograd.gradcheck(
        lambda x: fn(x, teacher, tail=tail, temperature=1.5, reduction=reduction, mask=mask, chunk_size=chunk_size), (z,)
    )


def test_chunked_gradient_equals_plain_and_survives_retain_graph() -> None:
    z = logits(4, 6, V, seed=10).requires_grad_(True)
    teacher = S.SparseTeacher.from_logits(logits(4, 6, V, seed=11), 5)
    plain = S.sparse_jsd(z, teacher, beta=0.3)
    (g_plain,) = torch.autograd.grad(plain, z)
    chunked = S.sparse_jsd(z, teacher, beta=0.3, chunk_size=3)
    assert chunked.grad_fn is not None and "Sparse" in type(chunked.grad_fn).__name__
    chunked.backward(retain_graph=True)
    first = z.grad.clone()
    z.grad = None
    chunked.backward()
    torch.testing.assert_close(first, g_plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z.grad, g_plain, rtol=1e-10, atol=1e-12)


def test_teacher_tensors_get_gradients_when_they_require_them() -> None:
    z = logits(2, 3, V, seed=12)
    base = S.SparseTeacher.from_logits(logits(2, 3, V, seed=13), 4)
    lp = base.logprobs.clone().requires_grad_(True)
    teacher = S.SparseTeacher(base.ids, lp, base.tail_logprob)
    for chunk_size in (None, 2):
        loss = S.sparse_forward_kl(z, teacher, chunk_size=chunk_size)
        (g,) = torch.autograd.grad(loss, lp)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
def test_nonnegative_and_zero_for_the_teacher_itself(case: Case, tail: str) -> None:
    t = logits(4, 5, V, seed=14, scale=3.0)
    teacher = S.SparseTeacher.from_logits(t, 6)
    values = sparse(case)(logits(4, 5, V, seed=15), teacher, tail=tail, temperature=1.0, reduction="none")
    assert (values >= -1e-15).all()
    same = sparse(case)(t, teacher, tail=tail, temperature=1.0, reduction="none")
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bucket_temperature_is_exact_for_a_uniform_tail(case: Case) -> None:
    """The tempered tail is computed as if spread uniformly: exact (zero loss) when it is."""
    t = logits(3, V, seed=16, scale=3.0)
    top = t.topk(5, dim=-1).indices
    t = torch.full_like(t, -4.0).scatter(-1, top, t.gather(-1, top).abs() + 1.0)  # a flat tail below the top-5
    teacher = S.SparseTeacher.from_logits(t, 5)
    for temperature in (0.5, 2.0, 7.0):
        same = sparse(case)(t, teacher, temperature=temperature, reduction="none")
        torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-12)
        want = dense(case)(logits(3, V, seed=17), t, temperature=temperature, reduction="none")
        got = sparse(case)(logits(3, V, seed=17), teacher, temperature=temperature, reduction="none")
        assert (got <= want + 1e-12).all()  # a lower bound of the dense loss of this teacher


def test_renormalize_is_the_divergence_of_the_restricted_tempered_distributions() -> None:
    z, t = logits(2, V, seed=18), logits(2, V, seed=19)
    teacher = S.SparseTeacher.from_logits(t, 7)
    ids = teacher.ids
    for temperature in (0.7, 1.0, 4.0):
        got = S.sparse_backward_kl(z, teacher, tail="renormalize", temperature=temperature, reduction="none")
        want = D.backward_kl(z.gather(-1, ids), t.gather(-1, ids), temperature=temperature, reduction="none")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_forward_kl_decompositions() -> None:
    """dense - bucket = p_R KL(P_R || Q_R); bucket = p_S renormalize + KL(Bern(p_S) || Bern(q_S))."""
    z, t = logits(5, V, seed=20), logits(5, V, seed=21, scale=2.5)
    teacher = S.SparseTeacher.from_logits(t, 4)
    bucket = S.sparse_forward_kl(z, teacher, reduction="none").numpy()
    renorm = S.sparse_forward_kl(z, teacher, tail="renormalize", reduction="none").numpy()
    dense_kl = D.forward_kl(z, t, reduction="none").numpy()
    p_all, q_all = torch.softmax(t, -1).numpy(), torch.softmax(z, -1).numpy()
    for r in range(5):
        top = set(teacher.ids[r].tolist())
        rest = [v for v in range(V) if v not in top]
        p_r, q_r = p_all[r, rest].sum(), q_all[r, rest].sum()
        conditional = ref_kl(p_all[r, rest] / p_r, q_all[r, rest] / q_r)
        assert dense_kl[r] - bucket[r] == pytest.approx(p_r * conditional, rel=1e-9, abs=1e-12)
        two_point = ref_kl(np.array([1 - p_r, p_r]), np.array([1 - q_r, q_r]))
        assert bucket[r] == pytest.approx((1 - p_r) * renorm[r] + two_point, rel=1e-9, abs=1e-12)


def _distribution_pairs() -> Iterator[tuple[str, Tensor, Tensor]]:
    """(label, student logits, teacher logits): random, peaked, and a student near the teacher."""
    for seed in range(3):
        t = logits(6, 40, seed=100 + seed)
        yield "random", logits(6, 40, seed=200 + seed), t
        peaked = logits(6, 40, seed=300 + seed, scale=8.0)
        yield "peaked", logits(6, 40, seed=400 + seed), peaked
        yield "near", peaked + 0.3 * logits(6, 40, seed=500 + seed, scale=1.0), peaked


GAP_CASES: list[Case] = [c for c in CASES if c[0] != "soft_target"] + [("skew_forward_kl", {"alpha": 0.0})]


@pytest.mark.parametrize("case", GAP_CASES, ids=case_id)
@pytest.mark.parametrize("k", [1, 4, 16, 39])
def test_bucket_is_below_dense_within_the_documented_bound(case: Case, k: int) -> None:
    name, params = case
    for _label, z, t in _distribution_pairs():
        teacher = S.SparseTeacher.from_logits(t, k)
        gap = dense(case)(z, t, reduction="none") - sparse(case)(z, teacher, reduction="none")
        bound = S.bucket_gap_bound(name, z, teacher, **params)
        assert (gap >= -1e-12).all()
        assert (gap <= bound + 1e-12).all()
        if name == "backward_kl":
            assert torch.isinf(bound).all()
    full = S.SparseTeacher.from_logits(t, 40)
    if name != "backward_kl":
        torch.testing.assert_close(S.bucket_gap_bound(name, z, full, **params), torch.zeros(6, dtype=torch.float64))


def test_tvd_gap_bound_is_tight_enough_to_matter() -> None:
    z, t = logits(6, 40, seed=30), logits(6, 40, seed=31, scale=6.0)
    teacher = S.SparseTeacher.from_logits(t, 8)
    bound = S.bucket_gap_bound("tvd", z, teacher)
    assert (bound <= teacher.tail_logprob.exp() + 1e-15).all()


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
def test_zero_probabilities_give_no_nan(case: Case, tail: str) -> None:
    """-inf student logits (inside and outside the top-k) and teacher tokens of probability 0."""
    t = logits(2, 3, V, seed=22)
    t[..., 10:] = -math.inf  # the teacher has 10 possible tokens; its top-12 holds two of probability 0
    teacher = S.SparseTeacher.from_logits(t, 12)
    assert torch.isneginf(teacher.tail_logprob).all()
    z = logits(2, 3, V, seed=23)
    z[..., 10:] = -math.inf  # zero where the teacher is zero: in its top-k (10, 11) and in the rest
    z = z.clone().requires_grad_(True)
    for chunk_size in (None, 2):
        loss = sparse(case)(z, teacher, tail=tail, temperature=1.0, chunk_size=chunk_size)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    # and against the teacher itself, whose top-k includes tokens of probability 0
    z_same = t.clone().requires_grad_(True)
    loss = sparse(case)(z_same, teacher, tail=tail, temperature=1.0)
    (g,) = torch.autograd.grad(loss, z_same)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
    assert not torch.isnan(g).any()


def test_forward_kl_is_inf_where_the_student_has_no_mass_on_a_teacher_token() -> None:
    t, z = logits(1, V, seed=24), logits(1, V, seed=25)
    teacher = S.SparseTeacher.from_logits(t, 3)
    z[0, teacher.ids[0, 0]] = -math.inf
    assert math.isinf(float(S.sparse_forward_kl(z, teacher)))


def test_student_rest_is_computed_without_cancellation() -> None:
    """A student with top-k mass 1 - 6e-35 keeps that rest (1 - sum would round it to 0: forward KL = inf)."""
    z = torch.full((1, V), -80.0, dtype=torch.float64)
    z[0, :3] = 0.0
    t = z.clone()
    t[0, 3:] = -70.0
    teacher = S.SparseTeacher.from_logits(t, 3)
    log_q, _ = S._collapsed(z, teacher.ids, teacher.logprobs, teacher.tail_logprob, mode="bucket", temperature=1.0)
    assert float(log_q[0, -1]) == pytest.approx(math.log(V - 3) - 80.0 - math.log(3.0), rel=1e-12)
    loss = float(S.sparse_forward_kl(z, teacher, reduction="sum"))
    want = ref_sparse("forward_kl", {}, z.numpy(), teacher, "bucket", 1.0).sum()
    assert math.isfinite(loss) and loss > 0
    assert loss == pytest.approx(want, rel=0.15)  # the top-k terms (~1e-30 each) are below float64 resolution


# --------------------------------------------------------------------------------------
# Masks, chunks, dtypes, vocabularies
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", S.TAILS)
def test_masked_rows_contribute_nothing_even_if_nan(tail: str) -> None:
    z = logits(3, 4, V, seed=26)
    teacher = S.SparseTeacher.from_logits(logits(3, 4, V, seed=27), 5)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = mask[0, 0] = False
    garbage = z.clone()
    garbage[~mask] = math.nan
    for chunk_size in (None, 3):
        x = garbage.clone().requires_grad_(True)
        got = S.sparse_tvd(x, teacher, tail=tail, mask=mask, chunk_size=chunk_size)
        want = S.sparse_tvd(z, teacher, tail=tail, mask=mask)
        (g,) = torch.autograd.grad(got, x)
        torch.testing.assert_close(got, want)
        assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    labels = torch.where(mask, torch.zeros(3, 4, dtype=torch.long), torch.full((3, 4), -100))
    torch.testing.assert_close(S.sparse_tvd(z, teacher, tail=tail, labels=labels), want)


def test_all_masked_mean_is_zero_with_grad() -> None:
    z = logits(2, 3, V, seed=28).requires_grad_(True)
    teacher = S.SparseTeacher.from_logits(logits(2, 3, V, seed=29), 4)
    for chunk_size in (None, 2):
        loss = S.sparse_forward_kl(z, teacher, mask=torch.zeros(2, 3, dtype=torch.bool), chunk_size=chunk_size)
        assert float(loss.detach()) == 0.0
        loss.backward()


def test_bfloat16_student_is_computed_in_float32() -> None:
    z = logits(2, 3, V, seed=32).to(torch.bfloat16)
    teacher = S.SparseTeacher.from_logits(logits(2, 3, V, seed=33).float(), 4)
    loss = S.sparse_jsd(z, teacher, chunk_size=2)
    assert loss.dtype == torch.float32
    want = S.sparse_jsd(z.double(), S.SparseTeacher(teacher.ids, teacher.logprobs.double(), teacher.tail_logprob.double()))
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_vocab_size_drops_padded_student_rows() -> None:
    t = logits(2, V, seed=34)
    teacher = S.SparseTeacher.from_logits(t, 5)
    z = logits(2, V + 6, seed=35)
    z[:, V:] = 50.0  # padded rows that must not count
    got = S.sparse_forward_kl(z, teacher, vocab_size=V)
    torch.testing.assert_close(got, S.sparse_forward_kl(z[:, :V], teacher))
    padded = S.SparseTeacher.from_logits(torch.cat([t, torch.full((2, 6), -math.inf, dtype=t.dtype)], -1), 5)
    assert int(padded.ids.max()) < V
    with pytest.raises(ValueError, match=r"token id 1\d at position \(\d,\) is outside the student vocabulary of 10 tokens; "
                       "if one embedding matrix is padded, pass vocab_size"):
        S.sparse_forward_kl(logits(2, 10, seed=36), teacher)
    torch.testing.assert_close(S.sparse_forward_kl(logits(2, V + 6, seed=36), padded, vocab_size=V),
                               S.sparse_forward_kl(logits(2, V + 6, seed=36)[:, :V], teacher))


# --------------------------------------------------------------------------------------
# Building teachers and bad input
# --------------------------------------------------------------------------------------


def reference_topk(z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """float64: log_softmax, its top-k, and the log of the summed probabilities of the other tokens."""
    logp = torch.log_softmax(z.double(), dim=-1)
    top, ids = logp.topk(k, dim=-1)
    keep = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, ids, True)
    rest = torch.where(keep, torch.zeros_like(logp), logp.exp()).sum(-1).log()
    return ids, top, rest


@pytest.mark.parametrize("k", [1, 5, 64, 300])
def test_topk_log_probs_match_a_float64_reference_in_float32(k: int) -> None:
    """float32 logits: log-probabilities and tail within float32 rounding, also where the kept mass is ~1."""
    gen = torch.Generator().manual_seed(k)
    z = torch.randn(3, 7, 300, generator=gen) * 3
    z[0, :, 0] += 40.0   # kept mass 1 - ~1e-12: 1 - sum would leave no digit of the tail
    z[1, 0, :] = 0.0     # every token tied
    z[1, 1, 200:] = -math.inf
    ids, lp, tail = S.topk_log_probs(z, k)
    assert ids.shape == lp.shape == (3, 7, k) and tail.shape == (3, 7) and lp.dtype == torch.float32
    want_ids, want_lp, want_tail = reference_topk(z, k)
    torch.testing.assert_close(lp.double(), want_lp, rtol=0, atol=2e-6)
    # ids: the same tokens where values differ (ties may be broken either way)
    same = torch.gather(torch.log_softmax(z.double(), -1), -1, ids)
    torch.testing.assert_close(same, want_lp, rtol=0, atol=2e-6)
    assert torch.equal(ids.sort(-1).values[0], want_ids.sort(-1).values[0])
    if k == 300:
        assert bool(torch.isneginf(tail).all())
    else:
        finite = torch.isfinite(want_tail)
        assert torch.equal(finite, torch.isfinite(tail))
        torch.testing.assert_close(tail.double()[finite], want_tail[finite], rtol=0, atol=2e-5)
        assert float(want_tail[0].max()) < -20  # the peaked rows do test a tail far below float32's 1 - sum
    mask = torch.rand(3, 7, generator=gen) > 0.4
    m_ids, m_lp, m_tail = S.topk_log_probs(z, k, mask=mask)
    assert torch.equal(m_ids, ids[mask]) and torch.equal(m_lp, lp[mask]) and torch.equal(m_tail, tail[mask])
    strided = S.topk_log_probs(z[:, :-1], k)  # a causal LM's aligned logits: a strided slice, read as it is
    assert all(torch.equal(a, b[:, :-1]) for a, b in zip(strided, (ids, lp, tail), strict=True))
    s_ids, s_lp, s_tail = S.topk_log_probs(z[:, :-1], k, mask=mask[:, :-1])
    assert torch.equal(s_ids, ids[:, :-1][mask[:, :-1]]) and torch.equal(s_tail, tail[:, :-1][mask[:, :-1]])
    with pytest.raises(ValueError, match=r"mask has shape \(3,\), expected the logits' leading shape \(3, 7\)"):
        S.topk_log_probs(z, k, mask=mask[:, 0])


def test_from_logits_is_checked_and_matches_the_reference_in_float64() -> None:
    z = logits(4, 5, V, seed=40, scale=5.0)
    teacher = S.SparseTeacher.from_logits(z, 6)
    want_ids, want_lp, want_tail = reference_topk(z, 6)
    assert torch.equal(teacher.ids, want_ids)
    torch.testing.assert_close(teacher.logprobs, want_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(teacher.tail_logprob, want_tail, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 20\]"):
        S.SparseTeacher.from_logits(z, 21)


def test_from_topk_derives_the_tail_stably() -> None:
    t = logits(3, 4, V, seed=37, scale=6.0)
    exact = S.SparseTeacher.from_logits(t, 9)
    derived = S.SparseTeacher.from_topk(exact.ids, exact.logprobs)
    torch.testing.assert_close(derived.tail_logprob, exact.tail_logprob, rtol=1e-9, atol=1e-12)
    near_one = torch.tensor([[0.0, -40.0]], dtype=torch.float64)  # tail of mass ~ e^-45
    tiny = S.SparseTeacher.from_topk(torch.tensor([[0, 1]]), near_one - 1e-20 + torch.tensor([[-1e-19, 0.0]]))
    assert float(tiny.tail_logprob) == -math.inf or float(tiny.tail_logprob) < -40


def test_from_topk_rejects_mass_above_one() -> None:
    with pytest.raises(ValueError, match=r"top-k mass at position \(1,\) is 1\.5 > 1"):
        S.SparseTeacher.from_topk(torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0.5, 0.5], [0.75, 0.75]]).log())


def test_teacher_checks_name_the_position() -> None:
    ids = torch.tensor([[[0, 1], [2, 3]], [[4, 4], [5, 6]]])
    lp = torch.log(torch.full((2, 2, 2), 0.25))
    tail = torch.log(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match=r"ids at position \(1, 0\) hold token 4 more than once"):
        S.SparseTeacher(ids, lp, tail)
    ids[1, 0, 1] = 7
    bad_tail = tail.clone()
    bad_tail[0, 1] = math.log(0.7)
    with pytest.raises(ValueError, match=r"mass at position \(0, 1\) is 1\.2 \(top-k 0\.5 \+ tail 0\.7\), not 1"):
        S.SparseTeacher(ids, lp, bad_tail)
    bad_lp = lp.clone()
    bad_lp[1, 1, 0] = math.nan
    with pytest.raises(ValueError, match=r"logprobs at position \(1, 1, 0\) is nan"):
        S.SparseTeacher(ids, bad_lp, tail)
    with pytest.raises(ValueError, match=r"ids at position \(0, 0, 1\) is -3"):
        S.SparseTeacher(torch.tensor([[[0, -3], [2, 3]], [[4, 8], [5, 6]]]), lp, tail)
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        S.SparseTeacher(ids.float(), lp, tail)
    with pytest.raises(ValueError, match=r"tail_logprob has shape \(2,\), expected \(2, 2\)"):
        S.SparseTeacher(ids, lp, tail[0])
    with pytest.raises(ValueError, match=r"logprobs have shape \(2, 2, 3\) but ids \(2, 2, 2\)"):
        S.SparseTeacher(ids, torch.zeros(2, 2, 3), tail)
    assert S.SparseTeacher(ids, lp, tail).k == 2


def test_loss_checks_list_valid_choices() -> None:
    z = logits(2, V, seed=38)
    teacher = S.SparseTeacher.from_logits(logits(2, V, seed=39), 3)
    with pytest.raises(ValueError, match="unknown tail treatment 'drop'; valid choices: bucket, renormalize"):
        S.sparse_forward_kl(z, teacher, tail="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown reduction 'avg'; valid choices: none, sum, mean, batchmean"):
        S.sparse_forward_kl(z, teacher, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        S.sparse_forward_kl(z, teacher, temperature=0.0)
    with pytest.raises(ValueError, match=r"student logits have shape \(3, 20\) but the teacher has positions \(2,\)"):
        S.sparse_forward_kl(logits(3, V), teacher)
    with pytest.raises(TypeError, match="teacher must be a SparseTeacher"):
        S.sparse_forward_kl(z, logits(2, V))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"jsd beta must be in \[0, 1\]"):
        S.sparse_jsd(z, teacher, beta=1.5)
    with pytest.raises(ValueError, match="skew KL alpha must be in"):
        S.sparse_skew_forward_kl(z, teacher, alpha=1.0)
    with pytest.raises(ValueError, match="no bucket gap bound for 'soft_target'; valid choices: forward_kl"):
        S.bucket_gap_bound("soft_target", z, teacher)


def test_renormalize_needs_top_k_mass() -> None:
    teacher = S.SparseTeacher(torch.tensor([[0, 1]]), torch.full((1, 2), -math.inf), torch.zeros(1))
    with pytest.raises(ValueError, match=r"every kept log-probability at position \(0,\) is -inf; use tail='bucket'"):
        S.sparse_forward_kl(logits(1, V), teacher, tail="renormalize")
    assert torch.isfinite(S.sparse_forward_kl(logits(1, V), teacher))


# --------------------------------------------------------------------------------------
# Cross-entropy on the labels in the same pass (label_weight)
# --------------------------------------------------------------------------------------


def _labels_with_every_kind(teacher: S.SparseTeacher, seed: int = 3) -> Tensor:
    """Labels that are among the teacher's ids, outside them, and absent (-100), with row 1 all inside."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, teacher.shape, generator=gen)
    labels[1] = teacher.ids[1, :, -1]
    labels[0, 0] = -100
    return labels


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("k", [1, 7, V])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_label_weight_adds_cross_entropy_per_token(case: Case, tail: str, k: int, temperature: float) -> None:
    z = logits(3, 4, V, seed=11)
    teacher = S.SparseTeacher.from_logits(logits(3, 4, V, seed=12), k)
    labels = _labels_with_every_kind(teacher)
    got = sparse(case)(z, teacher, tail=tail, temperature=temperature, labels=labels, label_weight=0.7,
                       reduction="none").numpy()
    divergence = ref_sparse(case[0], case[1], z.numpy(), teacher, tail, temperature)
    flat_z, flat_labels = z.reshape(-1, V).numpy(), labels.reshape(-1).numpy()
    ce = np.zeros(flat_labels.shape)
    for r, label in enumerate(flat_labels):  # -log softmax at temperature 1, by a loop
        if label != -100:
            ce[r] = math.log(sum(math.exp(v) for v in flat_z[r])) - flat_z[r][label]
    want = np.where(labels.numpy() != -100, divergence + 0.7 * ce.reshape(labels.shape), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES[:3], ids=case_id)
@pytest.mark.parametrize("tail", S.TAILS)
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_label_weight_gradient_is_that_of_the_two_losses_apart(
    case: Case, tail: str, chunk_size: int | None, temperature: float,
) -> None:
    """Same value and gradient as the divergence plus a separate F.cross_entropy (float64, autograd)."""
    teacher = S.SparseTeacher.from_logits(logits(3, 4, V, seed=12), 7)
    labels = _labels_with_every_kind(teacher)
    z1 = logits(3, 4, V, seed=11).requires_grad_(True)
    fused = sparse(case)(z1, teacher, tail=tail, temperature=temperature, labels=labels, label_weight=0.4,
                         chunk_size=chunk_size)
    (g1,) = torch.autograd.grad(fused, z1)
    z2 = logits(3, 4, V, seed=11).requires_grad_(True)
    apart = sparse(case)(z2, teacher, tail=tail, temperature=temperature, mask=labels != -100) + 0.4 * (
        torch.nn.functional.cross_entropy(z2.reshape(-1, V), labels.reshape(-1), ignore_index=-100))
    (g2,) = torch.autograd.grad(apart, z2)
    torch.testing.assert_close(fused, apart, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)
    assert g1[0, 0].abs().max() == 0  # the position without a label is not counted


def test_label_weight_gradcheck_with_labels_inside_and_outside_the_ids() -> None:
    teacher = S.SparseTeacher.from_logits(logits(2, 3, V, seed=5), 4)
    labels = _labels_with_every_kind(teacher, seed=6)
    z = logits(2, 3, V, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: S.sparse_forward_kl(x, teacher, labels=labels, label_weight=1.5), (z,))


def test_free_ids_are_outside_the_row() -> None:
    ids = torch.tensor([[0, 1, 2], [3, 0, 1], [1, 2, 5], [2, 0, 1]])
    free = S._free_ids(ids)
    assert free.tolist() == [3, 2, 0, 3]
    assert not (ids == free.unsqueeze(-1)).any()


def test_label_weight_checks_name_the_problem() -> None:
    z = logits(2, 3, V)
    teacher = S.SparseTeacher.from_logits(logits(2, 3, V, seed=1), 4)
    with pytest.raises(ValueError, match="pass labels"):
        S.sparse_forward_kl(z, teacher, label_weight=1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        S.sparse_forward_kl(z, teacher, labels=torch.zeros(2, 3, dtype=torch.long), label_weight=-1.0)
    labels = torch.zeros(2, 3, dtype=torch.long)
    labels[1, 2] = V
    with pytest.raises(ValueError, match=rf"label {V} at position \(1, 2\) is not a token id .* {V} tokens"):
        S.sparse_forward_kl(z, teacher, labels=labels, label_weight=1.0)
    with pytest.raises(TypeError, match="integer token ids"):
        S.sparse_forward_kl(z, teacher, labels=labels.double(), label_weight=1.0)


def test_a_top_k_narrowed_to_fewer_tokens_is_the_top_k_of_the_same_distribution_in_float64() -> None:
    """narrow_topk(top-K, k) = top-k of the full distribution: the k largest kept, the rest folded into the tail
    (the tail from the full vocabulary by numpy in float64), whatever the order of the K entries given."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 40, dtype=torch.float64, generator=gen) * 3
    wide = S.SparseTeacher.from_logits(logits, 12)
    shuffle = torch.randperm(12, generator=gen)
    ids, lp, tail = S.narrow_topk(wide.ids[..., shuffle], wide.logprobs[..., shuffle], wide.tail_logprob, 4)
    full = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    order = np.argsort(-full, axis=-1)[..., :4]
    assert np.array_equal(ids.numpy(), order)
    assert np.allclose(lp.numpy(), np.take_along_axis(full, order, -1), atol=1e-12)
    rest = np.exp(full).sum(-1) - np.exp(np.take_along_axis(full, order, -1)).sum(-1)
    assert np.allclose(tail.numpy(), np.log(rest), atol=1e-10)
    narrow = wide.narrow(4)
    assert narrow.k == 4 and torch.equal(narrow.ids, ids) and torch.allclose(narrow.tail_logprob, tail, atol=1e-12)
    same = S.narrow_topk(wide.ids, wide.logprobs, wide.tail_logprob, 12)
    assert all(a is b for a, b in zip(same, (wide.ids, wide.logprobs, wide.tail_logprob), strict=True))
    for bad in (0, 13, 2.0, True):
        with pytest.raises(ValueError, match=r"k must be an int in \[1, 12\] \(the stored top-k\)"):
            S.narrow_topk(wide.ids, wide.logprobs, wide.tail_logprob, bad)  # type: ignore[arg-type]
