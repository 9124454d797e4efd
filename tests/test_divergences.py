"""Tests for ktransfer.divergences.

Values are checked against an independent float64 reference written with plain loops over
probability vectors (numpy), which does not reuse any helper of the module under test.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ktransfer import divergences as D

REDUCTIONS = ("none", "sum", "mean", "batchmean")

# (divergence name, extra keyword arguments) covering every divergence and a few parameters.
Case = tuple[str, dict[str, float]]
CASES: list[Case] = [
    ("forward_kl", {}),
    ("backward_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.2}),
    ("jsd", {"beta": 0.9}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_forward_kl", {"alpha": 0.5}),
    ("skew_backward_kl", {"alpha": 0.1}),
    ("skew_backward_kl", {"alpha": 0.5}),
    ("tvd", {}),
    ("soft_target", {}),
]
# One case per divergence function, for the more expensive tests.
MAIN_CASES = [CASES[i] for i in (0, 1, 2, 5, 7, 9, 10)]


def case_id(case: Case) -> str:
    name, params = case
    return name + "".join(f"-{k}{v}" for k, v in params.items())


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """All tensors here are tiny; intra-op threads only add overhead (badly so on a busy CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------
# Independent reference (numpy, float64, loops)
# --------------------------------------------------------------------------------------


def ref_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    e = np.exp(z - np.max(z))
    return e / e.sum()


def ref_kl(p: np.ndarray, q: np.ndarray) -> float:
    total = 0.0
    for p_v, q_v in zip(p, q):
        if p_v == 0.0:
            continue  # 0 * log 0 = 0
        if q_v == 0.0:
            return math.inf
        total += p_v * (math.log(p_v) - math.log(q_v))
    return total


def ref_row(
    name: str, s_row: np.ndarray, t_row: np.ndarray, temperature: float, **params: float
) -> float:
    p = ref_softmax(t_row, temperature)  # teacher
    q = ref_softmax(s_row, temperature)  # student
    if name == "forward_kl":
        return ref_kl(p, q)
    if name == "backward_kl":
        return ref_kl(q, p)
    if name == "jsd":
        beta = params["beta"]
        if beta == 0.0:
            return ref_kl(p, q)
        if beta == 1.0:
            return ref_kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
    if name == "skew_forward_kl":
        a = params["alpha"]
        return ref_kl(p, a * p + (1 - a) * q)
    if name == "skew_backward_kl":
        a = params["alpha"]
        return ref_kl(q, a * q + (1 - a) * p)
    if name == "tvd":
        return 0.5 * sum(abs(p_v - q_v) for p_v, q_v in zip(p, q))
    if name == "soft_target":
        return temperature**2 * ref_kl(p, q)
    raise AssertionError(name)


def reference(
    name: str,
    student: Tensor,
    teacher: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    **params: float,
) -> np.ndarray:
    s = student.detach().double().numpy()
    t = teacher.detach().double().numpy()
    lead = s.shape[:-1]
    m = np.ones(lead, dtype=bool) if mask is None else mask.numpy()
    per_token = np.zeros(lead)
    for idx in np.ndindex(*lead):
        if m[idx]:
            per_token[idx] = ref_row(name, s[idx], t[idx], temperature, **params)
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return np.asarray(total)
    if reduction == "mean":
        return np.asarray(total / max(int(m.sum()), 1))
    batch = s.shape[0] if s.ndim > 1 else 1
    return np.asarray(total / batch)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def call(name: str, student: Tensor, teacher: Tensor, **kwargs: Any) -> Tensor:
    return D.get_divergence(name)(student, teacher, **kwargs)


def logits(
    *shape: int, scale: float = 2.0, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def random_mask(*shape: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=gen) < 0.6
    mask.view(-1)[0] = True  # at least one token counts
    mask.view(-1)[-1] = False  # and at least one is masked
    return mask


def value_and_grads(
    fn: Callable[[Tensor, Tensor], Tensor], s: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Value of fn(s, t) and the gradients of its sum w.r.t. fresh copies of s and t."""
    s = s.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    out = fn(s, t)
    out.sum().backward()
    assert s.grad is not None and t.grad is not None
    return out.detach(), s.grad, t.grad


# --------------------------------------------------------------------------------------
# Agreement with the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_reference(
    case: Case, temperature: float, shape: tuple[int, ...], masked: bool
) -> None:
    name, params = case
    s, t = logits(*shape, seed=1), logits(*shape, seed=2)
    mask = random_mask(*shape[:-1], seed=3) if masked else None
    for reduction in REDUCTIONS:
        got = call(name, s, t, mask=mask, temperature=temperature, reduction=reduction, **params)
        want = reference(
            name, s, t, mask=mask, temperature=temperature, reduction=reduction, **params
        )
        assert got.dtype == torch.float64
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_kl_is_named_by_arguments() -> None:
    s, t = logits(5, 9, seed=1), logits(5, 9, seed=2)
    p = np.stack([ref_softmax(row, 1.7) for row in t.numpy()])
    q = np.stack([ref_softmax(row, 1.7) for row in s.numpy()])
    want = np.mean([ref_kl(p_row, q_row) for p_row, q_row in zip(p, q)])
    np.testing.assert_allclose(D.kl(t, s, temperature=1.7).item(), want, rtol=1e-10)
    assert torch.equal(D.kl(t, s), D.forward_kl(s, t))
    assert torch.equal(D.kl(s, t), D.backward_kl(s, t))


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_forward_kl_matches_torch_kl_div(reduction: D.Reduction, temperature: float) -> None:
    s, t = logits(6, 11, seed=4), logits(6, 11, seed=5)
    want = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        log_target=True,
        reduction=reduction,
    )
    got = D.forward_kl(s, t, temperature=temperature, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(case: Case, chunk_size: int | None, masked: bool, reduction: str) -> None:
    name, params = case
    s = logits(2, 3, 5, seed=6).requires_grad_(True)
    t = logits(2, 3, 5, seed=7).requires_grad_(True)
    mask = random_mask(2, 3, seed=8) if masked else None

    def fn(student: Tensor, teacher: Tensor) -> Tensor:
        return call(
            name, student, teacher,
            mask=mask, temperature=1.3, reduction=reduction, chunk_size=chunk_size, **params,
        )

    assert torch.autograd.gradcheck(fn, (s, t))


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "tvd"], ids=case_id)
def test_kl_type_divergences_are_nonnegative(case: Case) -> None:
    name, params = case
    for scale in (0.1, 2.0, 20.0):
        s, t = logits(8, 13, scale=scale, seed=9), logits(8, 13, scale=scale, seed=10)
        values = call(name, s, t, reduction="none", **params)
        assert torch.all(values >= -1e-12)
        assert torch.all(torch.isfinite(values))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_zero_when_student_equals_teacher(case: Case) -> None:
    name, params = case
    s = logits(3, 4, 9, seed=11)
    values = call(name, s, s.clone(), reduction="none", temperature=1.5, **params)
    assert torch.all(values.abs() < 1e-12)


def test_jsd_end_points_are_the_plain_kls() -> None:
    s, t = logits(3, 4, 9, seed=12), logits(3, 4, 9, seed=13)
    for reduction in REDUCTIONS:
        kw: dict[str, Any] = {"reduction": reduction}
        assert torch.equal(D.jsd(s, t, beta=0.0, **kw), D.forward_kl(s, t, **kw))
        assert torch.equal(D.jsd(s, t, beta=1.0, **kw), D.backward_kl(s, t, **kw))


def test_jsd_end_points_are_a_deliberate_discontinuity() -> None:
    s, t = logits(3, 9, seed=12), logits(3, 9, seed=13)
    assert D.jsd(s, t, beta=1e-9).item() < 1e-6
    assert D.jsd(s, t, beta=1 - 1e-9).item() < 1e-6
    assert D.jsd(s, t, beta=0.0).item() > 0.1


def test_jsd_half_is_bounded_by_log2_and_symmetric() -> None:
    for scale in (1.0, 10.0, 1000.0):
        s, t = logits(16, 7, scale=scale, seed=14), logits(16, 7, scale=scale, seed=15)
        values = D.jsd(s, t, beta=0.5, reduction="none")
        assert torch.all(values <= math.log(2) + 1e-12)
        swapped = D.jsd(t, s, beta=0.5, reduction="none")
        torch.testing.assert_close(values, swapped, rtol=1e-12, atol=1e-14)
    # Disjoint supports reach the bound.
    far_s = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    far_t = torch.tensor([[-math.inf, 0.0]], dtype=torch.float64)
    assert D.jsd(far_s, far_t).item() == pytest.approx(math.log(2), rel=1e-12)


def test_tvd_is_in_unit_interval() -> None:
    for scale in (0.1, 3.0, 1000.0):
        s, t = logits(16, 7, scale=scale, seed=16), logits(16, 7, scale=scale, seed=17)
        values = D.tvd(s, t, reduction="none")
        assert torch.all(values >= 0) and torch.all(values <= 1 + 1e-12)


def test_skew_with_zero_alpha_is_plain_kl() -> None:
    s, t = logits(3, 4, 9, seed=18), logits(3, 4, 9, seed=19)
    for reduction in REDUCTIONS:
        kw: dict[str, Any] = {"reduction": reduction, "temperature": 2.0}
        assert torch.equal(D.skew_forward_kl(s, t, alpha=0.0, **kw), D.forward_kl(s, t, **kw))
        assert torch.equal(D.skew_backward_kl(s, t, alpha=0.0, **kw), D.backward_kl(s, t, **kw))


def test_soft_target_is_scaled_forward_kl() -> None:
    s, t = logits(5, 4, 9, seed=20), logits(5, 4, 9, seed=21)
    kl_t4 = D.forward_kl(s, t, temperature=4.0, reduction="batchmean")
    torch.testing.assert_close(D.soft_target_loss(s, t), 16.0 * kl_t4)  # defaults: T=4, batchmean
    kl_t2 = D.forward_kl(s, t, temperature=2.0, reduction="batchmean")
    torch.testing.assert_close(D.soft_target_loss(s, t, temperature=2.0), 4.0 * kl_t2)


def test_registry() -> None:
    assert set(D.DIVERGENCES) == {
        "forward_kl",
        "backward_kl",
        "jsd",
        "skew_forward_kl",
        "skew_backward_kl",
        "tvd",
        "soft_target",
    }
    assert D.get_divergence("soft_target") is D.soft_target_loss
    assert D.get_divergence("forward_kl") is D.forward_kl


def test_one_dimensional_logits_are_one_token() -> None:
    s, t = logits(9, seed=22), logits(9, seed=23)
    none = D.forward_kl(s, t, reduction="none")
    assert none.shape == ()
    for reduction in ("sum", "mean", "batchmean"):
        kw: dict[str, Any] = {"reduction": reduction}
        torch.testing.assert_close(D.forward_kl(s, t, **kw), none)
    want = ref_kl(ref_softmax(t.numpy(), 1.0), ref_softmax(s.numpy(), 1.0))
    np.testing.assert_allclose(none.item(), want, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_chunked_equals_plain(case: Case, masked: bool) -> None:
    name, params = case
    s, t = logits(3, 5, 11, seed=24), logits(3, 5, 11, seed=25)
    mask = random_mask(3, 5, seed=26) if masked else None
    for reduction in ("none", "mean"):

        def run(chunk_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
            return value_and_grads(
                lambda a, b: call(
                    name, a, b, mask=mask, reduction=reduction, chunk_size=chunk_size, **params
                ),
                s,
                t,
            )

        want = run(None)
        for chunk_size in (1, 3, 7, 100):
            for got_part, want_part in zip(run(chunk_size), want):
                torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
def test_chunks_split_by_working_set_match_float64_autograd(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradients taken in the forward pass in sub-chunks of a few rows equal plain autograd (float64).

    The working set is set to one row of this vocabulary (and to a row and a half: uneven
    sub-chunks inside a chunk), with masked rows and a temperature.
    """
    name, params = case
    s, t = logits(4, 5, 11, seed=60), logits(4, 5, 11, seed=61)
    mask = random_mask(4, 5, seed=62)
    kw: dict[str, Any] = {"mask": mask, "temperature": 1.5, **params}
    want = value_and_grads(lambda a, b: call(name, a, b, **kw), s, t)
    for rows in (1.0, 1.5):
        monkeypatch.setattr(D, "_WORKING_SET_BYTES", int(rows * 11 * 8))
        got = value_and_grads(lambda a, b: call(name, a, b, chunk_size=7, **kw), s, t)
        for got_part, want_part in zip(got, want, strict=True):
            torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-14)


def test_chunked_gradient_is_handed_over_without_a_copy() -> None:
    """Backward scales the gradient buffer in place and autograd takes it as .grad (no second copy)."""
    s = logits(64, 50, seed=63).requires_grad_(True)
    t = logits(64, 50, seed=64)
    loss = D.forward_kl(s, t, chunk_size=16) * 3.0
    pending = [loss.grad_fn]
    buffers: list[Tensor] = []
    while pending:  # find the buffer the chunked loss computed in its forward pass
        node = pending.pop()
        if node is None:
            continue
        buffers += [g for g in getattr(node, "grads", None) or () if g is not None]
        pending += [n for n, _ in node.next_functions]
    assert len(buffers) == 1
    pointer = buffers[0].data_ptr()
    loss.backward()
    assert s.grad is not None and s.grad.data_ptr() == pointer
    want = torch.autograd.grad(D.forward_kl(s, t) * 3.0, s)[0]
    torch.testing.assert_close(s.grad, want, rtol=1e-12, atol=1e-14)


def test_chunked_loss_with_retained_graph_backpropagates_twice() -> None:
    """retain_graph keeps the buffers (scaled copies are returned), so a second backward gives the same gradient."""
    s = logits(8, 10, seed=65).requires_grad_(True)
    t = logits(8, 10, seed=66)
    loss = D.jsd(s, t, chunk_size=3)
    first = torch.autograd.grad(loss, s, retain_graph=True)[0]
    second = torch.autograd.grad(loss * 2.0, s)[0]
    torch.testing.assert_close(second, 2 * first)
    torch.testing.assert_close(first, torch.autograd.grad(D.jsd(s, t), s)[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="already back-propagated"):
        loss.backward()


def test_chunked_without_grad() -> None:
    s, t = logits(4, 6, 10, seed=27), logits(4, 6, 10, seed=28)
    with torch.no_grad():
        torch.testing.assert_close(D.jsd(s, t, chunk_size=5), D.jsd(s, t))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunking_keeps_float32_intermediates_out_of_the_graph(reduction: str) -> None:
    """With chunk_size, no upcast intermediates are kept for backward.

    Counts float32 tensors that autograd saved and that are still alive once the loss is
    computed: per-chunk work inside the forward pass may save tensors briefly, but must not
    keep them.
    """
    s = logits(64, 500, seed=29, dtype=torch.bfloat16).requires_grad_(True)
    t = logits(64, 500, seed=30, dtype=torch.bfloat16)

    def kept_float32_numel(chunk_size: int | None) -> int:
        saved: list[weakref.ref[Tensor]] = []

        def pack(x: Tensor) -> Tensor:
            if x.dtype == torch.float32:
                saved.append(weakref.ref(x))
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = D.jsd(s, t, chunk_size=chunk_size, reduction=reduction)
        gc.collect()
        kept = sum(x.numel() for ref in saved if (x := ref()) is not None)
        loss.sum().backward()
        return kept

    assert kept_float32_numel(None) >= 64 * 500
    # at most the per-token results (64 values for "none"), never anything of vocabulary size
    assert kept_float32_numel(8) <= (64 if reduction == "none" else 0)


# --------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
def test_masked_rows_contribute_nothing(case: Case) -> None:
    name, params = case
    s, t = logits(3, 5, 8, seed=31), logits(3, 5, 8, seed=32)
    mask = random_mask(3, 5, seed=33)
    base = {
        reduction: value_and_grads(
            lambda a, b: call(name, a, b, mask=mask, reduction=reduction, **params), s, t
        )
        for reduction in REDUCTIONS
    }
    huge = logits(3, 5, 8, scale=1e6, seed=50)
    nan = torch.full((3, 5, 8), math.nan, dtype=torch.float64)
    for garbage in (huge, nan):
        s_bad = torch.where(mask[..., None], s, garbage)
        t_bad = torch.where(mask[..., None], t, -garbage)
        for chunk_size in (None, 4):
            for reduction in REDUCTIONS:
                value, g_s, g_t = value_and_grads(
                    lambda a, b: call(
                        name, a, b, mask=mask, reduction=reduction, chunk_size=chunk_size, **params
                    ),
                    s_bad,
                    t_bad,
                )
                want_value, want_g_s, want_g_t = base[reduction]
                torch.testing.assert_close(value, want_value, rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(g_s, want_g_s, rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(g_t, want_g_t, rtol=1e-12, atol=1e-14)
                assert torch.all(g_s[~mask] == 0) and torch.all(g_t[~mask] == 0)
                if reduction == "none":
                    assert torch.all(value[~mask] == 0)


def test_labels_with_ignore_index_equal_explicit_mask() -> None:
    s, t = logits(2, 6, 10, seed=34), logits(2, 6, 10, seed=35)
    mask = random_mask(2, 6, seed=36)
    labels = torch.randint(0, 10, (2, 6)).masked_fill(~mask, -100)
    torch.testing.assert_close(D.forward_kl(s, t, labels=labels), D.forward_kl(s, t, mask=mask))
    labels_7 = labels.masked_fill(~mask, 7).masked_fill(mask & (labels == 7), 0)
    torch.testing.assert_close(D.tvd(s, t, labels=labels_7, ignore_index=7), D.tvd(s, t, mask=mask))
    # Both given: a token counts only if both say so.
    other = random_mask(2, 6, seed=37)
    both = D.jsd(s, t, mask=other, labels=labels)
    torch.testing.assert_close(both, D.jsd(s, t, mask=mask & other))


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
def test_all_masked_mean_is_zero_with_grad(case: Case) -> None:
    name, params = case
    s = logits(2, 3, 5, seed=38).requires_grad_(True)
    t = logits(2, 3, 5, seed=39).requires_grad_(True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for chunk_size in (None, 2):
        loss = call(name, s, t, mask=mask, reduction="mean", chunk_size=chunk_size, **params)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert s.grad is not None and torch.all(s.grad == 0)
        assert t.grad is not None and torch.all(t.grad == 0)


# --------------------------------------------------------------------------------------
# -inf logits and +inf KL
# --------------------------------------------------------------------------------------

NEG_INF_POSITIONS = torch.tensor(
    [[[True, False, False, True, False], [False, False, False, False, True]],
     [[False, True, True, False, False], [False, False, False, False, False]]]
)


def assert_finite_value_and_grads(
    name: str, params: dict[str, float], s: Tensor, t: Tensor
) -> None:
    for chunk_size in (None, 1):
        for reduction in ("none", "mean"):
            value, g_s, g_t = value_and_grads(
                lambda a, b: call(
                    name, a, b,
                    reduction=reduction, chunk_size=chunk_size, temperature=1.5, **params,
                ),
                s,
                t,
            )
            assert torch.all(torch.isfinite(value)), value
            assert torch.all(torch.isfinite(g_s)) and torch.all(torch.isfinite(g_t))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_neg_inf_in_both_is_finite(case: Case) -> None:
    name, params = case
    s = logits(2, 2, 5, seed=40).masked_fill(NEG_INF_POSITIONS, -math.inf)
    t = logits(2, 2, 5, seed=41).masked_fill(NEG_INF_POSITIONS, -math.inf)
    assert_finite_value_and_grads(name, params, s, t)
    # The -inf entries behave like a smaller vocabulary.
    got = call(name, s, t, reduction="none", temperature=1.5, **params)
    want = reference(name, s, t, reduction="none", temperature=1.5, **params)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


# Which side(s) may have zeros without making the divergence infinite.
OUTER_SIDES = {
    "forward_kl": ("teacher",),
    "soft_target": ("teacher",),
    "skew_forward_kl": ("teacher", "student"),  # alpha > 0 mixes P into the inner distribution
    "backward_kl": ("student",),
    "skew_backward_kl": ("student", "teacher"),
    "jsd": ("teacher", "student"),
    "tvd": ("teacher", "student"),
}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_neg_inf_in_outer_distribution_is_finite(case: Case) -> None:
    name, params = case
    for side in OUTER_SIDES[name]:
        s, t = logits(2, 2, 5, seed=42), logits(2, 2, 5, seed=43)
        if side == "teacher":
            t = t.masked_fill(NEG_INF_POSITIONS, -math.inf)
        else:
            s = s.masked_fill(NEG_INF_POSITIONS, -math.inf)
        assert_finite_value_and_grads(name, params, s, t)
        got = call(name, s, t, reduction="none", temperature=1.5, **params)
        want = reference(name, s, t, reduction="none", temperature=1.5, **params)
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_underflow_in_both_is_finite() -> None:
    s = torch.tensor([[0.0, -1e5, 1.0, -2e5]], dtype=torch.float64)
    t = torch.tensor([[0.5, -3e5, 0.0, -1e5]], dtype=torch.float64)
    for name, params in CASES:
        assert_finite_value_and_grads(name, params, s, t)


def test_kl_is_inf_where_inner_distribution_is_zero() -> None:
    """Student -inf where the teacher has mass: forward KL is genuinely +inf (documented)."""
    s = torch.tensor([[0.0, -math.inf, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    per_token = D.forward_kl(s, t, reduction="none")
    assert math.isinf(per_token[0].item()) and per_token[0].item() > 0
    assert per_token[1].item() == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(D.forward_kl(s, t).item())
    assert math.isinf(D.backward_kl(t, s).item())
    # Mixtures stay finite.
    assert math.isfinite(D.jsd(s, t).item())
    assert math.isfinite(D.skew_forward_kl(s, t).item())
    assert math.isfinite(D.tvd(s, t).item())


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def test_vocab_mismatch_message() -> None:
    s, t = logits(2, 100, seed=44), logits(2, 104, seed=45)
    with pytest.raises(ValueError, match=r"student has vocabulary 100, teacher 104.*vocab_size"):
        D.forward_kl(s, t)


def test_vocab_size_slices_padded_rows() -> None:
    s, t = logits(2, 3, 100, seed=46), logits(2, 3, 104, seed=47)
    for name, params in CASES:
        got = call(name, s, t, vocab_size=100, **params)
        torch.testing.assert_close(got, call(name, s, t[..., :100], **params))
    torch.testing.assert_close(D.jsd(s, t, vocab_size=90), D.jsd(s[..., :90], t[..., :90]))
    aligned_s, aligned_t = D.align_vocab(s, t, 100)
    assert aligned_s.shape == aligned_t.shape == (2, 3, 100)
    assert aligned_t.data_ptr() == t.data_ptr()  # a view, no copy
    with pytest.raises(ValueError, match="vocab_size=101"):
        D.forward_kl(s, t, vocab_size=101)
    with pytest.raises(ValueError, match="vocab_size"):
        D.forward_kl(s, t, vocab_size=0)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 4, 5\)"):
        D.forward_kl(logits(2, 3, 5), logits(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(2, 3, 5\)"):
        D.tvd(logits(6, 5), logits(2, 3, 5))


def test_device_mismatch() -> None:
    s = torch.empty(2, 5, device="meta")
    with pytest.raises(ValueError, match="meta.*cpu"):
        D.forward_kl(s, logits(2, 5, dtype=torch.float32))


def test_mask_shape_mismatch() -> None:
    s, t = logits(2, 3, 5), logits(2, 3, 5)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 5\).*\(2, 3\)"):
        D.forward_kl(s, t, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels have shape \(3, 2\).*\(2, 3\)"):
        D.forward_kl(s, t, labels=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="bool"):
        D.forward_kl(s, t, mask=torch.ones(2, 3))


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        D.forward_kl(logits(2, 5), logits(2, 5), temperature=temperature)


def test_bad_reduction_and_chunk_size() -> None:
    with pytest.raises(ValueError, match="'avg'.*none, sum, mean, batchmean"):
        D.forward_kl(logits(2, 5), logits(2, 5), reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        D.forward_kl(logits(2, 5), logits(2, 5), chunk_size=0)


def test_non_float_logits() -> None:
    with pytest.raises(TypeError, match="floating point"):
        D.forward_kl(torch.zeros(2, 5, dtype=torch.long), logits(2, 5))


def test_unknown_divergence_lists_choices() -> None:
    with pytest.raises(ValueError) as info:
        D.get_divergence("kld")
    message = str(info.value)
    assert "'kld'" in message
    assert ", ".join(sorted(D.DIVERGENCES)) in message


@pytest.mark.parametrize("beta", [-0.1, 1.1, math.nan])
def test_jsd_beta_out_of_range(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        D.jsd(logits(2, 5), logits(2, 5), beta=beta)


@pytest.mark.parametrize("fn", [D.skew_forward_kl, D.skew_backward_kl])
def test_skew_alpha_out_of_range(fn: Callable[..., Tensor]) -> None:
    with pytest.raises(ValueError, match="identically 0"):
        fn(logits(2, 5), logits(2, 5), alpha=1.0)
    for alpha in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            fn(logits(2, 5), logits(2, 5), alpha=alpha)


# --------------------------------------------------------------------------------------
# Golden values (computed once with the reference above; guard against silent changes)
# --------------------------------------------------------------------------------------

GOLDEN: dict[str, float] = {
    "forward_kl": 5.271380755057,
    "backward_kl": 5.526747530540,
    "jsd-beta0.5": 1.096520693937,
    "jsd-beta0.2": 0.7318446129943,
    "jsd-beta0.9": 0.4478966983183,
    "skew_forward_kl-alpha0.1": 3.641026411143,
    "skew_forward_kl-alpha0.5": 1.118733618763,
    "skew_backward_kl-alpha0.1": 3.730202207121,
    "skew_backward_kl-alpha0.5": 1.074307769110,
    "tvd": 2.546757575184,
    "soft_target": 11.86060669888,
}


def golden_inputs() -> tuple[Tensor, Tensor, Tensor]:
    """Fixed inputs built from trigonometric functions (independent of RNG implementations)."""
    idx = torch.arange(2 * 3 * 6, dtype=torch.float64)
    student = (3.0 * torch.sin(0.7 * idx)).reshape(2, 3, 6)
    teacher = (2.5 * torch.cos(1.3 * idx + 0.4)).reshape(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    return student, teacher, mask


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_values(case: Case) -> None:
    name, params = case
    s, t, mask = golden_inputs()
    got = call(name, s, t, mask=mask, temperature=1.5, reduction="sum", **params)
    assert got.item() == pytest.approx(GOLDEN[case_id(case)], rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------------------
# Low precision
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MAIN_CASES, ids=case_id)
def test_bfloat16_is_computed_in_float32(case: Case) -> None:
    name, params = case
    s = logits(4, 6, 32, seed=48, dtype=torch.bfloat16)
    t = logits(4, 6, 32, seed=49, dtype=torch.bfloat16)
    for chunk_size in (None, 5):
        s_bf = s.clone().requires_grad_(True)
        got = call(name, s_bf, t, temperature=2.0, chunk_size=chunk_size, **params)
        assert got.dtype == torch.float32
        want = call(name, s.float(), t.float(), temperature=2.0, **params)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        got.backward()
        assert s_bf.grad is not None and s_bf.grad.dtype == torch.bfloat16
        assert torch.all(torch.isfinite(s_bf.grad.float()))
