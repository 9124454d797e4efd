"""Sequence distillation: targets from dataset / teacher / student, REINFORCE and on-policy terms, resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import LabelsTerm, StepView
from ktransfer.sequence import (
    OnPolicyTerm,
    ReinforceTerm,
    StageContext,
    TargetsStage,
    VocabularyError,
    check_same_tokenizer,
    reinforce_surrogate,
)
from ktransfer.sequence.estimators import token_logprobs
from ktransfer.tasks import Task
from ktransfer.terms import TERMS
from ktransfer.train import Distiller, OptimConfig, TrainConfig

EOS = 1


# ------------------------------------------------------------------------------------ tiny models
def gpt2(vocab: int = 20, seed: int = 0, layers: int = 1, dropout: float = 0.0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=layers, n_embd=16, n_head=2, n_positions=64,
                                      eos_token_id=EOS, bos_token_id=EOS, resid_pdrop=dropout, embd_pdrop=dropout,
                                      attn_pdrop=dropout))


def llama(vocab: int = 20, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        eos_token_id=EOS, bos_token_id=EOS, pad_token_id=0))


def marian(vocab: int = 20, seed: int = 0) -> nn.Module:
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    return MarianMTModel(MarianConfig(vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=1,
                                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                      decoder_ffn_dim=16, max_position_embeddings=64, pad_token_id=0, eos_token_id=EOS,
                                      decoder_start_token_id=0, forced_eos_token_id=None))


def bart(vocab: int = 20, seed: int = 0) -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    return BartForConditionalGeneration(BartConfig(
        vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=64, pad_token_id=0,
        eos_token_id=EOS, bos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None, forced_bos_token_id=None))


FAMILIES = {"gpt2": ("causal_lm", gpt2), "llama": ("causal_lm", llama), "marian": ("seq2seq", marian),
            "bart": ("seq2seq", bart)}


def prompts(task: str, n: int = 8, vocab: int = 20, length: int = 6) -> TensorDictDataset:
    """Causal: prompt of 3 tokens then reference targets; seq2seq: source and reference target."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    if task == "causal_lm":
        labels = ids.clone()
        labels[:, :3] = -100
        return TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    return TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids),
                             labels=torch.randint(3, vocab, (n, 4), generator=g))


def batch_of(data: TensorDictDataset) -> dict[str, Tensor]:
    return dict(data.tensors)


# ------------------------------------------------------------------------------ REINFORCE = exact gradient
def enumerate_sequences(vocab: int, length: int, prompt_tokens: list[int]) -> dict[str, Tensor]:
    """Every continuation of `length` tokens after each one-token prompt (labels -100 on the prompt)."""
    rows = [[x, *ys] for x in prompt_tokens for ys in itertools.product(range(vocab), repeat=length)]
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, 0] = -100
    return {"input_ids": ids, "labels": labels}


def sequence_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    out = Task("causal_lm").forward(model, batch)
    assert out.targets is not None and out.mask is not None
    return token_logprobs(out.logits, out.targets), out.mask, out.logits


@pytest.mark.parametrize("length", [2, 3])
def test_reinforce_gradient_equals_exact_backward_kl_gradient_by_enumeration(length: int) -> None:
    vocab, prompt_tokens = 3, [0, 2]
    student, teacher = gpt2(vocab, seed=1).double(), gpt2(vocab, seed=2).double()
    batch = enumerate_sequences(vocab, length, prompt_tokens)
    params = [p for p in student.parameters() if p.requires_grad]
    log_q, mask, _ = sequence_logprobs(student, batch)
    with torch.no_grad():
        log_p, _, _ = sequence_logprobs(teacher, batch)
    seq_q, seq_p = log_q.sum(-1), log_p.sum(-1)
    per_prompt = seq_q.detach().exp().reshape(len(prompt_tokens), -1).sum(-1)
    torch.testing.assert_close(per_prompt, torch.ones_like(per_prompt))  # every sequence is enumerated
    # exact: sum over prompts of KL(q(.|x) || p(.|x)) over whole sequences, by autograd
    exact = torch.autograd.grad((seq_q.exp() * (seq_q - seq_p)).sum(), params, retain_graph=True)
    prob = seq_q.detach().exp()
    n = vocab**length
    greedy_like = torch.tensor([0.37, -1.2]).double().repeat_interleave(n)  # one value per prompt, not per sample
    for baseline in (None, 0.7, greedy_like):
        surrogate = reinforce_surrogate(log_q, log_p, mask, baseline=baseline)
        estimate = torch.autograd.grad((prob * surrogate).sum(), params, retain_graph=True)
        for a, b in zip(estimate, exact, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(g.abs().sum()) for g in exact) > 1e-3  # the comparison is not between zeros
    # length normalisation: with every sequence of `length` tokens, the gradient of the KL per token
    normalised = reinforce_surrogate(log_q, log_p, mask, baseline=0.2, length_normalise=True)
    per_token = torch.autograd.grad((prob * normalised).sum(), params, retain_graph=True)
    for a, b in zip(per_token, exact, strict=True):
        torch.testing.assert_close(a, b / length, rtol=1e-9, atol=1e-12)
    # a baseline that depends on the sample itself does change the expected gradient (the test can fail)
    biased = reinforce_surrogate(log_q, log_p, mask, baseline=seq_q.detach())
    wrong = torch.autograd.grad((prob * biased).sum(), params, retain_graph=True)
    assert max(float((a - b).abs().max()) for a, b in zip(wrong, exact, strict=True)) > 1e-6


def test_importance_weights_of_teacher_mixed_sampling_make_the_estimate_exact() -> None:
    vocab, length, alpha = 3, 3, 0.4
    student, teacher = gpt2(vocab, seed=1).double(), gpt2(vocab, seed=2).double()
    batch = enumerate_sequences(vocab, length, [0])
    params = [p for p in student.parameters() if p.requires_grad]
    log_q, mask, q_logits = sequence_logprobs(student, batch)
    with torch.no_grad():
        log_p, _, _ = sequence_logprobs(teacher, batch)
    exact = torch.autograd.grad((log_q.sum(-1).exp() * (log_q - log_p).sum(-1)).sum(), params, retain_graph=True)
    # the behaviour policy b_t = alpha p_t + (1 - alpha) q_t, token by token
    log_b = torch.logaddexp(log_p + math.log(alpha), log_q.detach() + math.log1p(-alpha))
    surrogate = reinforce_surrogate(log_q, log_p, mask, behaviour_logprobs=log_b)
    estimate = torch.autograd.grad((log_b.sum(-1).exp() * surrogate).sum(), params, retain_graph=True)
    for a, b in zip(estimate, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    unweighted = reinforce_surrogate(log_q, log_p, mask)  # without the weights: biased
    off = torch.autograd.grad((log_b.sum(-1).exp() * unweighted).sum(), params)
    assert max(float((a - b).abs().max()) for a, b in zip(off, exact, strict=True)) > 1e-6


def test_reinforce_term_loss_is_the_kl_estimate_and_its_gradient_the_policy_gradient() -> None:
    vocab, length = 3, 2
    student, teacher = gpt2(vocab, seed=1).double(), gpt2(vocab, seed=2).double()
    batch = enumerate_sequences(vocab, length, [0])
    params = [p for p in student.parameters() if p.requires_grad]
    task = Task("causal_lm")
    s_out = task.forward(student, batch)
    with torch.no_grad():
        t_out = task.forward(teacher, batch)
    log_q = token_logprobs(s_out.logits, s_out.targets)  # type: ignore[arg-type]
    log_p = token_logprobs(t_out.logits, t_out.targets)  # type: ignore[arg-type]
    seq_q = log_q.sum(-1)
    exact_kl = (seq_q.exp() * (seq_q - log_p.sum(-1))).sum()
    exact = torch.autograd.grad(exact_kl, params, retain_graph=True)
    weighted = {**batch, "sample_weight": seq_q.detach().exp()}  # each sequence weighted by its probability
    # every sequence has `length` tokens: per batch token and per token of the budget agree
    budget = torch.full((seq_q.shape[0],), float(length))
    for normalise, extra in (("batch_tokens", {}), ("max_length", {"max_new_tokens": budget}), (float(length), {})):
        term = ReinforceTerm(baseline="none", sources=None, normalise=normalise)
        loss = term.loss(StepView(batch={**weighted, **extra}, student=s_out, teacher=t_out))
        # value: the KL per token; gradient: the exact gradient per token (length tokens per sequence)
        torch.testing.assert_close(loss, exact_kl.detach() / length)
        for a, b in zip(torch.autograd.grad(loss, params, retain_graph=True), exact, strict=True):
            torch.testing.assert_close(a, b / length, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------- normalisation with unequal lengths
def enumerate_stopping_sequences(vocab: int, max_length: int, eos: int) -> dict[str, Tensor]:
    """Every continuation after prompt token 0 that ends at its first `eos` or at `max_length` tokens,
    right-padded (labels -100 on the prompt and the padding): the support of a sampler that stops at eos."""
    others = [v for v in range(vocab) if v != eos]
    conts = [[*body, eos] for k in range(max_length - 1) for body in itertools.product(others, repeat=k)]
    conts += [[*body, last] for body in itertools.product(others, repeat=max_length - 1) for last in range(vocab)]
    ids = torch.zeros(len(conts), max_length + 1, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, cont in enumerate(conts):
        ids[i, 1:len(cont) + 1] = torch.tensor(cont)
        labels[i, 1:len(cont) + 1] = torch.tensor(cont)
    return {"input_ids": ids, "labels": labels}


def _grads(value: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    return list(torch.autograd.grad(value, params, retain_graph=True))


def _max_gap(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _stopping_setup(max_length: int = 3) -> tuple[dict[str, Tensor], list[nn.Parameter], Tensor, Tensor, Tensor]:
    vocab = 3
    student, teacher = gpt2(vocab, seed=1).double(), gpt2(vocab, seed=2).double()
    batch = enumerate_stopping_sequences(vocab, max_length, EOS)
    params = [p for p in student.parameters() if p.requires_grad]
    log_q, mask, _ = sequence_logprobs(student, batch)
    with torch.no_grad():
        log_p, _, _ = sequence_logprobs(teacher, batch)
    torch.testing.assert_close(log_q.sum(-1).exp().sum(), torch.tensor(1.0, dtype=torch.float64))  # the whole support
    assert len(set(mask.sum(-1).tolist())) == max_length  # lengths 1 .. max_length all occur
    return batch, params, log_q, log_p, mask


def test_a_constant_normalisation_is_exact_and_the_own_length_one_is_biased_with_unequal_lengths() -> None:
    """Float64 enumeration of every sequence a stop-at-EOS sampler can draw (lengths 1 to 3): the
    estimator's expectation (each sample's surrogate gradient weighted by its probability) against
    autograd of the expected normalised objective."""
    max_length = 3
    _, params, log_q, log_p, mask = _stopping_setup(max_length)
    seq_q = log_q.sum(-1)
    prob = seq_q.detach().exp()
    cost = seq_q - log_p.sum(-1)  # KL(y) = log q(y) - log p(y), with its dependence on the student
    for constant in (1.0, float(max_length), 2.5):
        exact = _grads((seq_q.exp() * cost).sum() / constant, params)
        assert sum(float(g.abs().sum()) for g in exact) > 1e-3
        for baseline in (None, 0.3):
            surrogate = reinforce_surrogate(log_q, log_p, mask, baseline=baseline, normaliser=constant)
            torch.testing.assert_close(_grads((prob * surrogate).sum(), params), exact, rtol=1e-9, atol=1e-12)
    # dividing by each sample's own length: the expectation is not the gradient of E[KL(y) / |y|]
    lengths = mask.sum(-1).double()
    rate = _grads((seq_q.exp() * cost / lengths).sum(), params)
    for own in (reinforce_surrogate(log_q, log_p, mask, length_normalise=True),
                reinforce_surrogate(log_q, log_p, mask, normaliser=lengths)):
        assert _max_gap(_grads((prob * own).sum(), params), rate) > 1e-4


@pytest.mark.parametrize("normalise", ["max_length", "none", 2.0, "sample_length", "batch_tokens"])
def test_the_reinforce_term_is_unbiased_exactly_for_constant_normalisations(normalise: str | float) -> None:
    """The term's expected gradient over batches of one sampled sequence (the enumerated sequences' term
    gradients weighted by their probabilities): for a constant N it equals grad E_q[KL(y)] / N; per
    sample length or per batch token it is off the nearest fixed objectives."""
    max_length = 3
    batch, _, _, _, mask = _stopping_setup(max_length)
    student, teacher = gpt2(3, seed=1).double(), gpt2(3, seed=2).double()
    params = [p for p in student.parameters() if p.requires_grad]
    task = Task("causal_lm")
    term = ReinforceTerm(baseline="none", sources=None, normalise=normalise)
    expected: Tensor = torch.zeros(())
    for i in range(batch["input_ids"].shape[0]):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        s_out = task.forward(student, row)
        with torch.no_grad():
            t_out = task.forward(teacher, row)
        loss = term.loss(StepView(batch={**row, "max_new_tokens": torch.tensor([float(max_length)])},
                                  student=s_out, teacher=t_out))
        prob = token_logprobs(s_out.logits, s_out.targets).sum().detach().exp()  # type: ignore[arg-type]
        expected = expected + prob * loss
    got = _grads(expected, params)
    log_q, _, _ = sequence_logprobs(student, batch)
    with torch.no_grad():
        log_p, _, _ = sequence_logprobs(teacher, batch)
    seq_q = log_q.sum(-1)
    cost = seq_q - log_p.sum(-1)
    if term.exact:
        n = {"max_length": float(max_length), "none": 1.0}.get(normalise, normalise)  # type: ignore[arg-type]
        torch.testing.assert_close(got, _grads((seq_q.exp() * cost).sum() / n, params), rtol=1e-9, atol=1e-12)
    else:
        lengths = mask.sum(-1).double()
        mean_length = float((seq_q.detach().exp() * lengths).sum())
        for objective in ((seq_q.exp() * cost / lengths).sum(), (seq_q.exp() * cost).sum() / mean_length,
                          (seq_q.exp() * cost).sum() / max_length):
            assert _max_gap(got, _grads(objective, params)) > 1e-5


def test_normalise_is_checked_and_the_old_length_normalise_flag_maps_to_it_with_a_warning() -> None:
    from ktransfer.registry import ConfigError
    from ktransfer.terms import build_terms

    assert ReinforceTerm().normalise == "max_length" and ReinforceTerm().exact
    assert build_terms([{"type": "reinforce", "normalise": 12}])[0].normalise == 12.0  # type: ignore[attr-defined]
    for flag, mapped in ((True, "sample_length"), (False, "batch_tokens")):
        with pytest.warns(FutureWarning, match=f"length_normalise: {str(flag).lower()} is normalise: {mapped}"):
            term = build_terms([{"type": "reinforce", "length_normalise": flag}])[0]
        assert term.normalise == mapped and not term.exact  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"knowledge\[0\]: normalise: invalid value 'max_len' \(did you mean "
                                          r"'max_length'\?\); valid choices: max_length, none, sample_length"):
        build_terms([{"type": "reinforce", "normalise": "max_len"}])
    with pytest.raises(ConfigError, match="must be positive"):
        build_terms([{"type": "reinforce", "normalise": 0}])
    with pytest.raises(ConfigError, match="not both"):
        build_terms([{"type": "reinforce", "normalise": "none", "length_normalise": True}])


# ------------------------------------------------------------------------------ on-policy exact divergence
def test_on_policy_term_is_the_per_token_backward_kl_at_sampled_prefixes_float64_reference() -> None:
    student, teacher = gpt2(seed=1), gpt2(seed=2)
    stage = TargetsStage(sources={"dataset": 0.5, "student": 0.5}, generation={"max_new_tokens": 5}, seed=3)
    task = Task("causal_lm")
    batch = stage(batch_of(prompts("causal_lm")), StageContext(student, teacher, task, 0, torch.device("cpu")))
    source = batch["target_source"]
    assert set(source.tolist()) == {0, 2}  # both sources drawn: the restriction below matters
    with torch.no_grad():
        s_out, t_out = task.forward(student, batch), task.forward(teacher, batch)
    view = StepView(batch=batch, student=s_out, teacher=t_out)
    term_values = {}
    for divergence, params in (("backward_kl", {}), ("jsd", {"beta": 0.3})):
        term_values[divergence] = OnPolicyTerm(divergence, params=params).loss(view)
    # reference: loops in float64 over the student-sourced examples' target positions
    total_b, total_j, count = 0.0, 0.0, 0
    for i in range(batch["input_ids"].shape[0]):
        if int(source[i]) != 2:
            continue
        for t in range(s_out.targets.shape[1]):  # type: ignore[union-attr]
            if int(s_out.targets[i, t]) == -100:  # type: ignore[index]
                continue
            q = torch.softmax(s_out.logits[i, t].double(), -1)
            p = torch.softmax(t_out.logits[i, t].double(), -1)
            total_b += float((q * (q.log() - p.log())).sum())
            m = 0.3 * p + 0.7 * q
            total_j += float(0.3 * (p * (p.log() - m.log())).sum() + 0.7 * (q * (q.log() - m.log())).sum())
            count += 1
    assert count > 0
    assert abs(float(term_values["backward_kl"]) - total_b / count) < 1e-5
    assert abs(float(term_values["jsd"]) - total_j / count) < 1e-5


def test_labels_restricted_to_sources_score_only_the_rows_those_sources_gave() -> None:
    student = gpt2(seed=1)
    stage = TargetsStage(sources={"dataset": 0.5, "student": 0.5}, generation={"max_new_tokens": 5}, seed=3)
    task = Task("causal_lm")
    batch = stage(batch_of(prompts("causal_lm")), StageContext(student, None, task, 0, torch.device("cpu")))
    source = batch["target_source"]
    assert set(source.tolist()) == {0, 2}
    s_out = task.forward(student, batch)
    view = StepView(batch=batch, student=s_out, teacher=None)
    for sources, wanted in ((["dataset"], {0}), (["student"], {2}), (["dataset", "student"], {0, 2})):
        total, count = 0.0, 0  # float64 reference over the rows of `wanted`
        for i in range(source.shape[0]):
            if int(source[i]) not in wanted:
                continue
            for t in range(s_out.targets.shape[1]):  # type: ignore[union-attr]
                target = int(s_out.targets[i, t])  # type: ignore[index]
                if target != -100:
                    total -= float(torch.log_softmax(s_out.logits[i, t].detach().double(), -1)[target])
                    count += 1
        assert abs(float(LabelsTerm(sources=sources).loss(view)) - total / count) < 1e-5
    # every source: the plain term
    assert torch.allclose(LabelsTerm(sources=["dataset", "student"]).loss(view), LabelsTerm().loss(view), atol=1e-6)
    # no row from the source: zero, with a gradient
    none = LabelsTerm(sources=["teacher"]).loss(view)
    assert float(none) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="unknown source 'teachr'; valid choices: dataset, teacher, student"):
        LabelsTerm(sources=["teachr"])
    del batch["target_source"]
    with pytest.raises(ValueError, match="add a targets stage"):
        LabelsTerm(sources=["dataset"]).loss(view)


def test_teacher_mixed_sampling_records_the_mixture_log_probabilities() -> None:
    student, teacher, alpha = gpt2(seed=1), gpt2(seed=2), 0.3
    stage = TargetsStage(sources={"student": 1.0}, generation={"max_new_tokens": 4, "teacher_mix": alpha}, seed=5)
    task = Task("causal_lm")
    batch = stage(batch_of(prompts("causal_lm", n=4)), StageContext(student, teacher, task, 0, torch.device("cpu")))
    student.eval()
    with torch.no_grad():
        s_out, t_out = task.forward(student, batch), task.forward(teacher, batch)
    targets = s_out.targets
    assert targets is not None
    log_mix = torch.logaddexp(torch.log_softmax(t_out.logits.double(), -1) + math.log(alpha),
                              torch.log_softmax(s_out.logits.double(), -1) + math.log1p(-alpha))
    expected = log_mix.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    recorded = batch["sample_logprobs"][:, 1:]
    mask = targets != -100
    assert int(mask.sum()) >= 4
    torch.testing.assert_close(recorded[mask].double(), expected[mask], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ through the engine
class Recorder:
    """A second stage: remembers the batches the terms will see."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def __call__(self, batch: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        self.batches.append(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("decoding", ["sample", "beam"])
def test_sampling_and_beam_search_through_the_engine(family: str, decoding: str) -> None:
    task, build = FAMILIES[family]
    generation: dict[str, Any] = ({"do_sample": True, "top_k": 5, "top_p": 0.9, "temperature": 0.8}
                                  if decoding == "sample" else {"do_sample": False, "num_beams": 3})
    sampling = decoding == "sample"
    stage = TargetsStage(sources={"dataset": 0.2, "teacher": 0.4, "student": 0.4},
                         generation={"max_new_tokens": 4, **generation}, seed=0, greedy_baseline=sampling)
    recorder = Recorder()
    terms = [OnPolicyTerm(sources=["student", "teacher"]),
             ReinforceTerm(weight=0.5, baseline="self_critic" if sampling else "moving_average"),
             LabelsTerm(weight=0.1)]
    d = Distiller(build(seed=1), build(seed=2), terms, train_data=prompts(task), task=task,
                  config=TrainConfig(max_steps=2, batch_size=8), optim=OptimConfig(lr=1e-3), progress=False,
                  stages=[stage, recorder])
    assert d.fit().step == 2
    assert len(recorder.batches) == 2
    for batch in recorder.batches:
        generated = batch["target_source"] != 0
        labelled = (batch["labels"] != -100).sum(-1)
        assert bool((labelled[generated] <= 4).all()) and bool((labelled[generated] >= 1).all())
        if sampling:
            assert bool((batch["sample_logprobs"][generated] < 0).any())
            sampled = batch["target_source"] == 2
            assert bool((batch["greedy_reward"][sampled] != 0).all()) and bool((batch["greedy_reward"][~sampled] == 0).all())
            lengths = batch["greedy_length"]
            assert bool(((lengths[sampled] >= 1) & (lengths[sampled] <= 4)).all()) and bool((lengths[~sampled] == 0).all())
        assert torch.equal(batch["max_new_tokens"], torch.full((8,), 4.0))  # the budget max_length divides by


def test_a_self_critic_baseline_is_on_the_scale_of_the_normalised_returns() -> None:
    """The greedy output's cost is divided as the returns are: by the constant N, or by the greedy
    output's own length under sample_length; a whole-sequence cost against returns per token would
    be a baseline many times their scale."""
    from types import SimpleNamespace

    batch = {"greedy_reward": torch.tensor([-6.0, -2.0]), "greedy_length": torch.tensor([3.0, 4.0]),
             "max_new_tokens": torch.tensor([8.0, 8.0])}
    view = SimpleNamespace(batch=batch)
    expected = {"none": [6.0, 2.0], "batch_tokens": [6.0, 2.0], "sample_length": [2.0, 0.5],
                "max_length": [0.75, 0.25], 4.0: [1.5, 0.5]}
    for normalise, values in expected.items():
        got = ReinforceTerm(baseline="self_critic", normalise=normalise)._baseline(view)  # type: ignore[arg-type]
        assert torch.allclose(got, torch.tensor(values)), normalise
    with pytest.raises(ValueError, match="greedy_length"):
        ReinforceTerm(baseline="self_critic", normalise="sample_length")._baseline(
            SimpleNamespace(batch={"greedy_reward": batch["greedy_reward"]}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'max_new_tokens' \\(a targets stage writes"):
        ReinforceTerm(baseline="self_critic")._baseline(
            SimpleNamespace(batch={"greedy_reward": batch["greedy_reward"]}))  # type: ignore[arg-type]


def _on_policy_run(run_dir: Path, stop_after: int | None, resume: bool, cache: bool) -> None:
    sources = {"dataset": 0.2, "teacher": 0.3, "student": 0.5} if cache else {"dataset": 0.3, "student": 0.7}
    stage = TargetsStage(sources=sources, generation={"max_new_tokens": 4}, seed=11, cache=cache,
                         cache_dir=str(run_dir.parent / f"cache-{run_dir.name}"))
    d = Distiller(gpt2(seed=1, dropout=0.1), gpt2(seed=2, layers=2),
                  [OnPolicyTerm("jsd", params={"beta": 0.5}, sources=None), ReinforceTerm(baseline="moving_average")],
                  train_data=prompts("causal_lm", n=16), task="causal_lm",
                  config=TrainConfig(max_steps=6, batch_size=4, checkpoint_every=2), optim=OptimConfig(lr=3e-3),
                  run_dir=run_dir, progress=False, stop_after_steps=stop_after, stages=[stage])
    d.fit(resume=resume)


@pytest.mark.parametrize("cache", [False, True], ids=["student-samples", "with-cached-teacher-generations"])
def test_resume_of_an_on_policy_run_equals_the_uninterrupted_run(tmp_path: Path, cache: bool) -> None:
    _on_policy_run(tmp_path / "full", None, False, cache)
    _on_policy_run(tmp_path / "killed", 5, False, cache)  # killed after step 5; the newest checkpoint is step 4
    assert not (tmp_path / "killed" / "final").exists()
    _on_policy_run(tmp_path / "killed", None, True, cache)  # step 5's teacher generations now come from the cache
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    start = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in start)  # the steps after the checkpoint changed the weights


# ------------------------------------------------------------------------------ bad input, vocabularies
def word_tokenizer(words: list[str], name: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0])
    fast.name_or_path = name
    return fast


def test_teacher_and_student_with_different_tokenizers_stop_with_an_error_naming_both() -> None:
    student_tok = word_tokenizer(["<unk>", "</s>", "a", "b", "c"], "student-words")
    teacher_tok = word_tokenizer(["<unk>", "</s>", "b", "a", "c"], "teacher-words")
    check_same_tokenizer(student_tok, word_tokenizer(["<unk>", "</s>", "a", "b", "c"], "copy"))  # same: fine
    with pytest.raises(VocabularyError, match=r"student-words.*teacher-words.*needs one tokenizer"):
        check_same_tokenizer(student_tok, teacher_tok)
    stage = TargetsStage(sources={"teacher": 1.0}, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    ctx = StageContext(gpt2(), gpt2(seed=2), Task("causal_lm"), 0, torch.device("cpu"))
    with pytest.raises(VocabularyError, match="student-words"):
        stage(batch_of(prompts("causal_lm")), ctx)
    # models built for different special tokens are caught without tokenizers too
    other = gpt2(seed=2)
    other.config.eos_token_id = 7
    with pytest.raises(VocabularyError, match=r"eos_token_id \(1 vs 7\)"):
        TargetsStage(sources={"teacher": 1.0})(batch_of(prompts("causal_lm")),
                                               StageContext(gpt2(), other, Task("causal_lm"), 0, torch.device("cpu")))


def test_padded_embedding_rows_work_with_vocab_size() -> None:
    data = prompts("causal_lm")
    teacher, student = gpt2(vocab=24, seed=2), gpt2(vocab=20, seed=1)  # the teacher's matrix has 4 padded rows

    def distiller(vocab_size: int | None) -> Distiller:
        stage = TargetsStage(sources={"teacher": 0.5, "student": 0.5},
                             generation={"max_new_tokens": 4, "vocab_size": vocab_size}, seed=0)
        return Distiller(student, teacher, [OnPolicyTerm(vocab_size=vocab_size), ReinforceTerm(vocab_size=vocab_size)],
                         train_data=data, task="causal_lm", config=TrainConfig(max_steps=2, batch_size=8),
                         progress=False, stages=[stage])

    with pytest.raises(VocabularyError, match=r"student has vocabulary 20, teacher 24.*vocab_size"):
        distiller(None).fit()
    recorder = Recorder()
    d = distiller(20)
    d.stages.append(recorder)
    assert d.fit().step == 2
    assert all(int(b["labels"].max()) < 20 for b in recorder.batches)  # padded ids are never generated


def test_seq2seq_batch_without_decoder_targets_is_refused() -> None:
    batch = batch_of(prompts("seq2seq"))
    del batch["labels"]
    stage = TargetsStage(sources={"dataset": 0.5, "student": 0.5})
    ctx = StageContext(marian(), marian(seed=2), Task("seq2seq"), 0, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"seq2seq batch without decoder targets \('labels'\)"):
        stage(batch, ctx)
    model = marian()
    out = Task("seq2seq").forward(model, {**batch, "decoder_input_ids": torch.zeros(8, 3, dtype=torch.long)})
    view = StepView(batch=batch, student=out, teacher=out)
    for term in (OnPolicyTerm(sources=None), ReinforceTerm(sources=None)):
        with pytest.raises(ValueError, match=r"needs batches with decoder targets \('labels'\)"):
            term.loss(view)


def test_terms_are_registered_and_validate_their_options() -> None:
    assert {"on_policy", "reinforce"} <= set(TERMS.names())
    with pytest.raises(ValueError, match="baseline: invalid value 'greedy'"):
        ReinforceTerm(baseline="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown source 'teachr'"):
        OnPolicyTerm(sources=["teachr"])
    with pytest.raises(ValueError, match="teacher_mix samples from a mixed policy"):
        TargetsStage(generation={"teacher_mix": 0.2, "num_beams": 2, "do_sample": False})


def test_the_catalogue_assembles_every_term_and_the_knowledge_package_points_to_it() -> None:
    """The knowledge package never imports the sequence wing: `ktransfer.terms` joins their terms."""
    import ktransfer.knowledge as knowledge
    from ktransfer.registry import ConfigError
    from ktransfer.terms import build_terms

    assert set(TERMS.names()) == {*knowledge.KNOWLEDGE.names(), "on_policy", "reinforce", "cross_tokenizer",
                                 "cross_tokenizer_reinforce"}
    assert not {"on_policy", "reinforce", "cross_tokenizer"} & set(knowledge.KNOWLEDGE.names())
    built = build_terms([{"type": "on_policy"}, {"type": "reinforce", "weight": 0.5}, {"type": "labels"}])
    assert [type(t) for t in built] == [OnPolicyTerm, ReinforceTerm, LabelsTerm]
    with pytest.raises(ConfigError, match=r"knowledge\[0\]: 'on_policy' is a term of the sequence wing.*"
                                          r"use ktransfer.terms.build_terms"):
        knowledge.build_terms([{"type": "on_policy"}])
    with pytest.raises(AttributeError, match="use `from ktransfer.sequence import ReinforceTerm`"):
        knowledge.ReinforceTerm  # noqa: B018


def test_targets_are_chosen_in_the_run_config() -> None:
    from ktransfer.config import RunConfig
    from ktransfer.registry import ConfigError
    from ktransfer.runner import _stages

    base = {"task": "causal_lm", "data": {"name": "digits"}, "student": {"builder": "mlp"},
            "teacher": {"builder": "mlp"}, "knowledge": [{"type": "on_policy"}, {"type": "reinforce"}],
            "train": {"seed": 4}}
    cfg = RunConfig.from_dict({**base, "targets": {"sources": {"dataset": 0.5, "student": 0.5},
                                                   "generation": {"max_new_tokens": 8, "top_k": 4}}})
    (stage,) = _stages(cfg)
    assert isinstance(stage, TargetsStage) and stage.seed == 4 and stage.config.top_k == 4
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())).targets == cfg.targets  # kept in a run's config.yaml
    with pytest.raises(ConfigError, match=r"targets.generation.max_tokens: unknown key \(did you mean 'max_new_tokens'"):
        RunConfig.from_dict({**base, "targets": {"generation": {"max_tokens": 8}}})
    with pytest.raises(ConfigError, match="targets: generated targets need task causal_lm or seq2seq"):
        RunConfig.from_dict({**base, "task": "classification", "targets": {}})
    with pytest.raises(ConfigError, match="targets: the teacher generates targets"):
        RunConfig.from_dict({**base, "teacher": None, "knowledge": [{"type": "labels"}],
                             "targets": {"sources": {"teacher": 1.0}}})


# ------------------------------------------------------------------------------ teacher generations cached
def test_teacher_generations_are_cached_once_per_prompt_and_keyed_by_teacher_and_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.sequence.cache import GenerationCache

    student, teacher = gpt2(seed=1), gpt2(seed=2)
    calls: list[int] = []
    original = teacher.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher, "generate", counting)
    ctx = StageContext(student, teacher, Task("causal_lm"), 0, torch.device("cpu"))
    batch = batch_of(prompts("causal_lm"))

    def stage(seed: int, **generation: Any) -> TargetsStage:
        return TargetsStage(sources={"teacher": 1.0}, generation={"max_new_tokens": 4, **generation}, seed=seed,
                            cache=True, cache_dir=str(tmp_path))

    first = stage(0)(batch, ctx)
    assert calls == [8]
    second = stage(99)(batch, ctx)  # another seed, same prompts: every generation comes from the cache
    assert calls == [8]
    assert torch.equal(first["labels"], second["labels"]) and torch.equal(first["sample_logprobs"], second["sample_logprobs"])
    (entry,) = list(tmp_path.iterdir())
    (shard,) = list(entry.glob("shard-*.safetensors"))
    stage(0, temperature=0.5)(batch, ctx)  # other decoding: another entry
    assert calls == [8, 8] and len(list(tmp_path.iterdir())) == 2
    with torch.no_grad():
        teacher.lm_head.weight.mul_(1.01)  # other teacher weights: another entry
    assert GenerationCache(teacher, stage(0).config, "causal_lm", root=tmp_path).key != entry.name
    # a damaged shard is skipped (and regenerated), never read
    shard.write_bytes(shard.read_bytes()[:-7])
    cache = GenerationCache(gpt2(seed=2), stage(0).config, "causal_lm", root=tmp_path)
    assert cache.dir == entry and cache.skipped == [shard] and not cache.entries


def test_sampling_without_the_kv_cache_draws_the_same_targets() -> None:
    """generation.use_cache reaches generate: without the cache (float64) the same samples come out, and
    generate is really called with use_cache=False."""
    from ktransfer.sequence import StageContext

    model = gpt2(seed=3).double()
    calls: list[bool] = []
    generate = model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["use_cache"])
        return generate(*args, **kwargs)

    model.generate = spy  # type: ignore[method-assign]
    ctx = StageContext(student=model, teacher=None, task=Task("causal_lm"), step=0, device=torch.device("cpu"))
    outs = []
    for use_cache in (True, False):
        stage = TargetsStage(sources={"student": 1.0}, generation={"max_new_tokens": 5, "use_cache": use_cache}, seed=3)
        outs.append(stage(batch_of(prompts("causal_lm")), ctx))
    assert calls == [True, False]
    for key in ("labels", "input_ids"):
        assert torch.equal(outs[0][key], outs[1][key])
    torch.testing.assert_close(outs[0]["sample_logprobs"], outs[1]["sample_logprobs"])
