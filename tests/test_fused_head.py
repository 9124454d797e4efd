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


# ------------------------------------------------------------------------------ through the engine
def _tiny(family: str, seed: int, vocab: int = 23) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2,
                                                                     n_positions=32))
    else:
        model = transformers.MarianMTModel(transformers.MarianConfig(
            vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32,
            pad_token_id=0, decoder_start_token_id=0))
        with torch.no_grad():  # a bias that is not zero, so that forgetting it would show
            model.final_logits_bias.normal_()
    return model.double().eval()


def _batch(family: str, vocab: int = 23) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, vocab, (3, 7), generator=g)
    if family == "marian":
        labels = torch.randint(1, vocab, (3, 5), generator=g)
        labels[0, -2:] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    labels = ids.clone()
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_engine_fused_head_equals_the_unfused_loss_and_gradients_float64(family: str, divergence: str) -> None:
    """The response term with fused_head gives the unfused loss and parameter gradients (float64),
    and the student's output layer only ever sees one position (its logits are never built)."""
    from ktransfer.knowledge import ResponseTerm, StepView
    from ktransfer.tasks import Task

    task = Task("causal_lm")
    student, teacher = _tiny(family, 1), _tiny(family, 2)
    batch = _batch(family)
    params = {"beta": 0.3} if divergence == "jsd" else {}
    with torch.no_grad():
        t_out = task.forward(teacher, batch)

    def loss_and_grads(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen: list[int] = []
        hook = student.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-2]))
        try:
            s_out = task.forward(student, batch, fused_head=fused, check_head=fused)
            term = ResponseTerm(divergence, temperature=1.3, params=params, chunk_size=4 if fused else None,
                                fused_head=fused)
            loss = term.loss(StepView(batch=batch, student=s_out, teacher=t_out))
        finally:
            hook.remove()
        assert seen == ([1] if fused else [batch["labels"].shape[-1]])
        assert s_out.fused == fused
        grads = torch.autograd.grad(loss, [p for p in student.parameters()], allow_unused=True)
        return loss.detach(), [torch.zeros(()) if g is None else g for g in grads]

    loss_f, grads_f = loss_and_grads(True)
    loss_p, grads_p = loss_and_grads(False)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_distiller_with_fused_head_trains_like_the_unfused_run() -> None:
    """Through the engine (and the config's knowledge section): same weights after 3 steps, fused or not."""
    from ktransfer.config import RunConfig
    from ktransfer.data import TensorDictDataset
    from ktransfer.knowledge import build_terms
    from ktransfer.train import Distiller, OptimConfig, TrainConfig

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 23, (8, 9), generator=g)
    data = TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    knowledge = [{"type": "response", "divergence": "backward_kl", "chunk_size": 5, "fused_head": True}]
    cfg = RunConfig.from_dict({"task": "causal_lm", "data": {"name": "digits"}, "student": {"builder": "mlp"},
                               "teacher": {"builder": "mlp"}, "knowledge": knowledge})
    finals = []
    for fused in (True, False):
        terms = build_terms([{**cfg.knowledge[0], "fused_head": fused, "chunk_size": 5 if fused else None}])
        assert terms[0].fused_head is fused
        student, teacher = _tiny("llama", 1).float().train(), _tiny("llama", 2).float()
        d = Distiller(student, teacher, terms, train_data=data, task="causal_lm",
                      config=TrainConfig(max_steps=3, batch_size=4), optim=OptimConfig(lr=1e-2), progress=False)
        assert d.fit().step == 3
        finals.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*finals, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_head_refuses_what_it_cannot_do() -> None:
    from ktransfer.fused_head import FusedHeadError
    from ktransfer.knowledge import ResponseTerm
    from ktransfer.tasks import Task

    with pytest.raises(ValueError, match="fused_head computes the student's logits inside the loss chunk by chunk"):
        ResponseTerm(fused_head=True)
    batch = _batch("gpt2")
    model = _tiny("gpt2", 0)
    with pytest.raises(FusedHeadError, match="needs a Hugging Face model whose forward takes logits_to_keep"):
        Task("causal_lm").forward(torch.nn.Sequential(model.transformer), batch, fused_head=True)
    with pytest.raises(FusedHeadError, match="MarianMTModel ignored logits_to_keep=1"):  # its forward has none
        Task("seq2seq").forward(_tiny("marian", 0), _batch("marian"), fused_head=True)

    class Scaled(type(model)):  # type: ignore[misc]
        def forward(self, *args, **kwargs):  # logits transformed after the output layer (like soft-capping)
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    scaled = Scaled(model.config).double()
    with pytest.raises(FusedHeadError, match="not its output layer applied to its body's output"):
        Task("causal_lm").forward(scaled, batch, fused_head=True, check_head=True)
    from ktransfer.train import Distiller

    with pytest.raises(ValueError, match="use fused_head, which needs task causal_lm or seq2seq"):
        Distiller(model, model, [ResponseTerm(fused_head=True, chunk_size=4)], train_data=[1], task="classification")
