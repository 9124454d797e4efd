"""Divergences with `student_head`: the student's output layer fused into the chunked loss."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.nn.functional import linear

from ktransfer.divergences import DIVERGENCES

PARAMS = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2}, "skew_backward_kl": {"alpha": 0.2}}


def make(seed: int = 0, lead: tuple[int, ...] = (3, 4), hidden: int = 6, vocab: int = 9):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(*lead, vocab, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(*lead, generator=g) > 0.3
    return h, w, b, t, mask


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("chunk", [None, 1, 5, 100])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_head_equals_logits_then_divergence(name: str, chunk: int | None, reduction: str) -> None:
    fn = DIVERGENCES[name]
    h, w, b, t, mask = make()
    kw = {"mask": mask, "temperature": 1.7, "reduction": reduction, **PARAMS.get(name, {})}
    fused = fn(h, t, student_head=(w, b), chunk_size=chunk, **kw)
    plain = fn(linear(h, w, b), t, **kw)
    torch.testing.assert_close(fused, plain)
    g_fused = torch.autograd.grad(fused.sum(), (h, w, b))
    g_plain = torch.autograd.grad(plain.sum(), (h, w, b))
    for a, c in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("name", ["forward_kl", "backward_kl", "jsd"])
def test_fused_head_gradcheck(name: str) -> None:
    h, w, b, t, mask = make(lead=(2, 3), hidden=4, vocab=5)
    fn = DIVERGENCES[name]
    assert torch.autograd.gradcheck(
        lambda h, w, b: fn(h, t, student_head=(w, b), chunk_size=2, mask=mask, **PARAMS.get(name, {})), (h, w, b)
    )


def test_fused_head_without_bias_and_with_padded_vocabulary() -> None:
    h, w, _, t, mask = make(vocab=12)
    teacher = t[..., :10]
    with pytest.raises(ValueError, match="student has vocabulary 12, teacher 10.*vocab_size"):
        DIVERGENCES["forward_kl"](h, teacher, student_head=(w, None))
    fused = DIVERGENCES["forward_kl"](h, teacher, student_head=(w, None), vocab_size=10, chunk_size=3, mask=mask)
    plain = DIVERGENCES["forward_kl"](linear(h, w[:10]), teacher, mask=mask)
    torch.testing.assert_close(fused, plain)


def test_fused_head_bad_shapes() -> None:
    h, w, b, t, _ = make()
    with pytest.raises(ValueError, match=r"weight has shape \(9, 5\).*hidden states have size 6"):
        DIVERGENCES["forward_kl"](h, t, student_head=(w[:, :5], b))
    with pytest.raises(ValueError, match=r"bias has shape \(8,\), expected \(9,\)"):
        DIVERGENCES["forward_kl"](h, t, student_head=(w, b[:8]))
    with pytest.raises(TypeError, match=r"\(weight, bias\) pair"):
        DIVERGENCES["forward_kl"](h, t, student_head=w)  # type: ignore[arg-type]


def test_fused_head_keeps_no_token_by_vocabulary_tensor_for_backward() -> None:
    tokens, hidden, vocab = 64, 8, 50
    h = torch.randn(tokens, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    t = torch.randn(tokens, vocab)
    saved: list[weakref.ref[torch.Tensor]] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(x))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = DIVERGENCES["backward_kl"](h, t, student_head=(w, None), chunk_size=8)
    gc.collect()
    kept = [x for ref in saved if (x := ref()) is not None]
    # what is kept for backward: gradient buffers the size of the hidden states and of the weight
    assert max((x.numel() for x in kept), default=0) <= max(tokens * hidden, vocab * hidden)
    loss.backward()
    assert h.grad is not None and w.grad is not None
