"""The REINFORCE estimator across tokenizers (`cross_tokenizer_reinforce`): span rewards carried back to the
student's tokens.

Checked: with one tokenizer on both sides it is `ReinforceTerm` (loss and gradient, every baseline and
normalisation, importance weights); on a two-tokenizer example worked out by hand the span rewards land
on each span's last student token and the gradient matches a float64 reference written without
autograd; by enumeration of every sample, the estimate is unbiased for a teacher that reads characters
(every student token a span); an on-policy run from YAML (student samples tokenised again for a WordPiece teacher); bad
settings stop with the reason.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_cross_tokenizer import SENTENCES, _minilm_folder, sentencepiece_tokenizer, xtok_config  # noqa: E402

from ktransfer.cross_tokenizer import CrossTokenizerReinforceTerm  # noqa: E402
from ktransfer.knowledge.base import StepView  # noqa: E402
from ktransfer.sequence import ReinforceTerm  # noqa: E402
from ktransfer.sequence.targets import MAX_LENGTH_KEY, SOURCE_IDS  # noqa: E402
from ktransfer.tasks import ForwardResult  # noqa: E402


def _views(s_logits: torch.Tensor, t_logits: torch.Tensor, batch: dict[str, Any]) -> tuple[StepView, StepView]:
    """A causal-LM step as the same-tokenizer term sees it (teacher on the student's targets) and as the
    cross-tokenizer term sees it (teacher on its own targets)."""
    s_targets = batch["labels"][:, 1:]
    same = StepView(batch=batch, student=ForwardResult(s_logits, s_targets, None, "causal_lm"),
                    teacher=ForwardResult(t_logits, s_targets, None, "causal_lm"))
    cross = StepView(batch=batch, student=ForwardResult(s_logits, s_targets, None, "causal_lm"),
                     teacher=ForwardResult(t_logits, batch["teacher_labels"][:, 1:], None, "causal_lm"))
    return same, cross


EOS = 10  # the end-of-sequence id of `_one_tokenizer_batch`


def _one_tokenizer_batch(seed: int, ends: bool = False) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Three student samples after a 3-token prompt, one shorter (padding), the teacher on the same tokens.

    `ends`: row 0 ends with its end of sequence, row 1 (the shorter) too, row 2 is cut by the budget
    without one but holds one inside (a document boundary at token 4) and one in its prompt (token 1);
    each has the offsets (-2, c), c the end of the text before it."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 8, 11
    ids = torch.randint(0, V - 1, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    labels[1, 6:] = -100  # a shorter sample
    offsets = torch.tensor([[(2 * i, 2 * i + 1) for i in range(T)]] * B)
    offsets[1, 6:] = -1
    if ends:
        for b, i in ((0, 7), (1, 5), (2, 4), (2, 1)):
            ids[b, i] = EOS
            offsets[b, i] = torch.tensor([-2, 2 * i - 1])
        labels = torch.where(labels != -100, ids, labels)
    teacher_labels = ids.clone()
    teacher_labels[1, 6:] = -100
    batch = {"input_ids": ids, "labels": labels, "teacher_input_ids": ids, "teacher_labels": teacher_labels,
             "token_offsets": offsets, "teacher_token_offsets": offsets,
             "target_source": torch.full((B,), SOURCE_IDS["student"]), MAX_LENGTH_KEY: 6,
             "sample_logprobs": torch.randn(B, T, generator=g, dtype=torch.float64) - 2.0}
    s = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64)
    t = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64)
    return batch, s, t


@pytest.mark.parametrize("ends", [False, True])
@pytest.mark.parametrize("normalise", ["max_length", "none", "sample_length", "batch_tokens", 4.0])
@pytest.mark.parametrize("baseline", ["none", "moving_average"])
def test_with_one_tokenizer_it_is_the_reinforce_term(normalise: str | float, baseline: str, ends: bool) -> None:
    """Same loss and gradient as `reinforce` at every step (the moving average carries over steps), samples that
    end with their end of sequence included: `reinforce` rewards it log p(eos) - log q(eos), and so does the
    cross-tokenizer term through the span of the two ends of sequence."""
    settings: dict[str, Any] = {"baseline": baseline, "normalise": normalise}
    if normalise == "none":
        settings.update(importance_weights=True, clip_weight=3.0)
    same_term, cross_term = ReinforceTerm(**settings), CrossTokenizerReinforceTerm(**settings)
    for step in range(3):
        batch, s, t = _one_tokenizer_batch(step, ends)
        if step == 2:
            batch["sample_weight"] = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
        grads, values = [], []
        for term in (same_term, cross_term):
            leaf = s.clone().requires_grad_(True)
            view = _views(leaf, t, batch)[0 if term is same_term else 1]
            loss = term.loss(view)
            loss.backward()
            grads.append(leaf.grad)
            values.append(float(loss.detach()))
        assert abs(values[0] - values[1]) < 1e-6
        torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)
        assert grads[0].abs().sum() > 0
        if baseline == "moving_average":
            assert same_term._average is not None and abs(same_term._average - cross_term._average) < 1e-9
    # every target token is a one-token span with its reward
    assert cross_term.counts["student_targets_unrewarded"] == 0
    assert cross_term.counts["spans_counted"] == cross_term.counts["student_targets"] == 3 * (5 + 3 + 5)
    # three target ends of sequence per batch (rows 0 and 1 at their ends, row 2 at a document boundary);
    # the one in row 2's prompt is aligned but not counted
    assert cross_term.counts["end_of_sequence_spans_counted"] == (3 * 3 if ends else 0)
    assert cross_term.counts["end_of_sequence_spans"] == (3 * 4 if ends else 0)


def test_the_end_of_sequence_reward_is_the_one_reinforce_gives_and_can_be_turned_off() -> None:
    """At each target end of sequence both terms reward log p(eos) - log q(eos) (float64, by hand); with
    `end_of_sequence: false` the cross-tokenizer term gives it 0, as before ends of sequence were paired."""
    batch, s, t = _one_tokenizer_batch(5, ends=True)
    same, cross = _views(s, t, batch)
    mask = batch["labels"][:, 1:] != -100
    log_q = torch.log_softmax(s, -1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    log_q = torch.where(mask, log_q, 0.0)
    for b, i in ((0, 7), (1, 5), (2, 4)):
        want = math.log(float(torch.softmax(t[b, i - 1], -1)[EOS])) - math.log(float(torch.softmax(s[b, i - 1], -1)[EOS]))
        for term, view in ((ReinforceTerm(), same), (CrossTokenizerReinforceTerm(), cross)):
            reward = term.teacher_logprobs(view, log_q, mask) - log_q
            assert abs(float(reward[b, i - 1]) - want) < 1e-12
        off = CrossTokenizerReinforceTerm(end_of_sequence=False)
        assert float((off.teacher_logprobs(cross, log_q, mask) - log_q)[b, i - 1]) == 0.0
        assert off.counts["end_of_sequence_spans"] == 0


# ------------------------------------------------------------------------------------------- two tokenizers
def _two_tokenizer_batch(ends: bool = False) -> dict[str, Any]:
    """Two samples of text, each after a one-token prompt 'x', worked out by hand:

    row 0, "xabcdef": student x|ab|c|d|ef (+ padding), teacher x|a|bcd|e|f. Spans: 'x' (a first token: not
    counted), 'abcd' = student ab,c,d / teacher a,bcd, 'ef' = student ef / teacher e,f.
    row 1, "xab  c": student x|a|b|'  '|c|</s>, teacher x|ab|c|</s> (a teacher that skips spaces). Spans: 'ab' =
    student a,b / teacher ab, 'c' = c / c; the student's spaces are in no span. Without `ends` the two ends of
    sequence are plain special tokens (-1, -1), in no span; with `ends` they carry the end-of-sequence offsets
    (-2, 6) and form one more span, student </s> / teacher </s>. Row 0 was cut by the budget: no end of sequence.
    """
    eos = (-2, 6) if ends else (-1, -1)
    s_off = torch.tensor([[(0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (-1, -1)],
                          [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6), eos]])
    t_off = torch.tensor([[(0, 1), (1, 2), (2, 5), (5, 6), (6, 7)],
                          [(0, 1), (1, 3), (5, 6), eos, (-1, -1)]])
    s_ids = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 6, 7, 8, 3, 9]])
    labels = s_ids.clone()
    labels[:, 0] = -100  # the prompt
    labels[0, 5] = -100  # padding
    t_ids = torch.tensor([[1, 2, 3, 4, 5], [1, 6, 7, 8, 0]])
    t_labels = t_ids.clone()
    t_labels[1, 4] = -100
    return {"input_ids": s_ids, "labels": labels, "teacher_input_ids": t_ids, "teacher_labels": t_labels,
            "token_offsets": s_off, "teacher_token_offsets": t_off,
            "target_source": torch.full((2,), SOURCE_IDS["student"]), MAX_LENGTH_KEY: 5}


def _span_rewards(s: torch.Tensor, t: torch.Tensor, batch: dict[str, torch.Tensor],
                  log_q: torch.Tensor) -> tuple[CrossTokenizerReinforceTerm, torch.Tensor, torch.Tensor]:
    """A fresh term (no baseline, no normalisation), its per-token rewards log p_eff - log q on `batch`, and the
    target mask."""
    term = CrossTokenizerReinforceTerm(baseline="none", normalise="none")
    mask = batch["labels"][:, 1:] != -100
    return term, term.teacher_logprobs(_views(s, t, batch)[1], log_q, mask) - log_q, mask


def test_span_rewards_land_on_the_last_student_token_of_each_span() -> None:
    g = torch.Generator().manual_seed(7)
    batch = _two_tokenizer_batch()
    s = torch.randn(2, 5, 10, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    # float64 references: log q of each student target, log p of each teacher target (position j predicts j + 1)
    lq = [[float(torch.log_softmax(s[b, j], -1)[batch["input_ids"][b, j + 1]]) for j in range(5)] for b in range(2)]
    lp = [[float(torch.log_softmax(t[b, k], -1)[batch["teacher_input_ids"][b, k + 1]]) for k in range(4)]
          for b in range(2)]
    want = [[0.0, 0.0, (lp[0][0] + lp[0][1]) - (lq[0][0] + lq[0][1] + lq[0][2]), (lp[0][2] + lp[0][3]) - lq[0][3], 0.0],
            [0.0, lp[1][0] - (lq[1][0] + lq[1][1]), 0.0, lp[1][1] - lq[1][3], 0.0]]
    log_q = torch.tensor(lq, dtype=torch.float64)
    term, rewards, mask = _span_rewards(s, t, batch, log_q)
    torch.testing.assert_close(torch.where(mask, rewards, 0.0), torch.tensor(want, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert term.counts == {"spans": 6, "spans_counted": 4, "end_of_sequence_spans": 0,
                           "end_of_sequence_spans_counted": 0, "student_targets": 9, "student_targets_unrewarded": 2}


def test_the_two_ends_of_sequence_are_a_span_rewarded_log_p_eos_minus_log_q_eos() -> None:
    """Row 1 ends with both sides' ends of sequence after "xab  c": the student's </s> (position 4 predicts it)
    gets log p_t(</s> | "xab  c") - log q_s(</s> | "xab  c"), from the teacher's position 2 (its x, ab, c
    before it), worked out in float64 from the logits; row 0, cut without one, gets nothing more."""
    g = torch.Generator().manual_seed(7)
    batch = _two_tokenizer_batch(ends=True)
    s = torch.randn(2, 5, 10, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)

    def log_softmax(row: torch.Tensor, i: int) -> float:
        return float(row[i]) - math.log(sum(math.exp(float(v)) for v in row))

    lq = [[log_softmax(s[b, j], int(batch["input_ids"][b, j + 1])) for j in range(5)] for b in range(2)]
    lp = [[log_softmax(t[b, k], int(batch["teacher_input_ids"][b, k + 1])) for k in range(4)] for b in range(2)]
    assert int(batch["input_ids"][1, 5]) == 9 and int(batch["teacher_input_ids"][1, 3]) == 8  # the two </s>
    r_eos = log_softmax(t[1, 2], 8) - log_softmax(s[1, 4], 9)
    want = [[0.0, 0.0, (lp[0][0] + lp[0][1]) - (lq[0][0] + lq[0][1] + lq[0][2]), (lp[0][2] + lp[0][3]) - lq[0][3], 0.0],
            [0.0, lp[1][0] - (lq[1][0] + lq[1][1]), 0.0, lp[1][1] - lq[1][3], r_eos]]
    log_q = torch.tensor(lq, dtype=torch.float64)
    term, rewards, mask = _span_rewards(s, t, batch, log_q)
    torch.testing.assert_close(torch.where(mask, rewards, 0.0), torch.tensor(want, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert term.counts == {"spans": 7, "spans_counted": 5, "end_of_sequence_spans": 1,
                           "end_of_sequence_spans_counted": 1, "student_targets": 9, "student_targets_unrewarded": 1}
    # the teacher's end of sequence without a target (a stored row whose last label is cut): no span counted
    batch["teacher_labels"][1, 3] = -100
    term, rewards, _ = _span_rewards(s, t, batch, log_q)
    assert float(rewards[1, 4]) == 0.0 and term.counts["end_of_sequence_spans_counted"] == 0


def test_a_sample_that_ends_is_rewarded_at_its_end_of_sequence_and_a_cut_one_is_not(tmp_path: Path) -> None:
    """Two student samples after the prompt "Rain fell" (a byte-level BPE student), tokenised again for a
    SentencePiece-style teacher with </s>: " on the town" + the student's end of sequence, and " on the" cut by
    the budget (padding after it). The first gets the teacher's </s> after the same text and the reward
    log p_t(</s> | "Rain fell on the town") - log q_s(eos | "Rain fell on the town") at its end of sequence,
    worked out in float64 from the logits; the second gets no teacher </s> and no such span."""
    from ktransfer.cross_tokenizer.retokenize import RetokenizedTargets
    from ktransfer.data.corpus import train_bpe_tokenizer
    from transformers import PreTrainedTokenizerFast

    student = PreTrainedTokenizerFast(tokenizer_file=str(train_bpe_tokenizer(SENTENCES, 300)))
    student.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<pad>"})
    teacher = sentencepiece_tokenizer(tmp_path)
    s_eos, t_eos = student.eos_token_id, teacher.eos_token_id

    def enc(text: str) -> list[int]:
        return student(text, add_special_tokens=False)["input_ids"]

    prompt = enc("Rain fell")
    rows = [prompt + enc(" on the town") + [s_eos], prompt + enc(" on the")]
    width = max(len(r) for r in rows)
    ids = torch.full((2, width), student.pad_token_id)
    attention = torch.zeros(2, width, dtype=torch.long)
    labels = torch.full((2, width), -100)
    for b, r in enumerate(rows):
        ids[b, :len(r)], attention[b, :len(r)] = torch.tensor(r), 1
        labels[b, len(prompt):len(r)] = torch.tensor(r[len(prompt):])
    batch = RetokenizedTargets(None, student, teacher).retokenize(
        {"input_ids": ids, "attention_mask": attention, "labels": labels,
         "target_source": torch.full((2,), SOURCE_IDS["student"]), MAX_LENGTH_KEY: 6})
    t_ids, t_mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
    k = int(t_mask[0].sum()) - 1  # the teacher's last token of row 0
    assert int(t_ids[0, k]) == t_eos and int((t_ids[1][t_mask[1].bool()] == t_eos).sum()) == 0
    i = len(rows[0]) - 1
    c = len("Rain fell on the town")
    assert batch["token_offsets"][0, i].tolist() == batch["teacher_token_offsets"][0, k].tolist() == [-2, c]
    assert int((batch["token_offsets"][1, :, 0] == -2).sum()) == 0

    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, width - 1, len(student), generator=g, dtype=torch.float64)
    t = torch.randn(2, t_ids.shape[1] - 1, len(teacher), generator=g, dtype=torch.float64)

    def log_softmax(row: torch.Tensor, j: int) -> float:
        return float(row[j]) - math.log(sum(math.exp(float(v)) for v in row))

    want = log_softmax(t[0, k - 1], t_eos) - log_softmax(s[0, i - 1], s_eos)
    term = CrossTokenizerReinforceTerm(baseline="none", normalise="none")
    view = _views(s, t, batch)[1]
    mask = batch["labels"][:, 1:] != -100
    log_q = torch.log_softmax(s, -1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    rewards = term.teacher_logprobs(view, log_q, mask) - log_q
    assert abs(float(rewards[0, i - 1]) - want) < 1e-12
    assert term.counts["end_of_sequence_spans"] == term.counts["end_of_sequence_spans_counted"] == 1
    # the loss runs on the retokenised batch and is finite
    assert math.isfinite(float(CrossTokenizerReinforceTerm(baseline="none", normalise="none").loss(view)))


@pytest.mark.parametrize("ends", [False, True])
@pytest.mark.parametrize("normalise", ["none", "max_length", "sample_length"])
def test_gradient_and_value_against_a_float64_reference(normalise: str, ends: bool) -> None:
    """grad = sum_i sum_t A_it (onehot(y_it) - softmax(s_it)) / D with A_it = -(sum_{s>=t} r_is) / N_i - b, written
    without autograd; the value is the sum of the span costs over the target-token count."""
    g = torch.Generator().manual_seed(3)
    batch = _two_tokenizer_batch(ends)
    s = torch.randn(2, 5, 10, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    term = CrossTokenizerReinforceTerm(baseline="moving_average", normalise=normalise)
    term._average = 0.3  # a baseline from earlier steps
    leaf = s.clone().requires_grad_(True)
    loss = term.loss(_views(leaf, t, batch)[1])
    loss.backward()
    assert leaf.grad is not None

    ids, mask = batch["input_ids"], (batch["labels"][:, 1:] != -100)
    lengths = [4, 5]
    q = torch.softmax(s, -1)
    lq = [[math.log(float(q[b, j, ids[b, j + 1]])) for j in range(5)] for b in range(2)]
    lp = [[float(torch.log_softmax(t[b, k], -1)[batch["teacher_input_ids"][b, k + 1]]) for k in range(4)]
          for b in range(2)]
    r = [[0.0, 0.0, lp[0][0] + lp[0][1] - lq[0][0] - lq[0][1] - lq[0][2], lp[0][2] + lp[0][3] - lq[0][3], 0.0],
         [0.0, lp[1][0] - lq[1][0] - lq[1][1], 0.0, lp[1][1] - lq[1][3], lp[1][2] - lq[1][4] if ends else 0.0]]
    want = torch.zeros_like(s)
    for b in range(2):
        n = {"none": 1.0, "max_length": 5.0, "sample_length": float(lengths[b])}[normalise]
        for j in range(lengths[b]):
            advantage = -sum(r[b][j:]) / n - 0.3
            onehot = torch.zeros(10, dtype=torch.float64)
            onehot[ids[b, j + 1]] = 1.0
            want[b, j] = advantage * (onehot - q[b, j])
    want /= 2 if normalise != "sample_length" else sum(lengths)  # mean over sequences, or over target tokens
    torch.testing.assert_close(leaf.grad, want, atol=1e-10, rtol=0)
    cost = -sum(sum(row) for row in r)
    assert abs(float(loss.detach()) - cost / int(mask.sum())) < 1e-6  # the reported estimate is a float32 mean


def test_the_estimate_is_unbiased_by_enumeration_for_a_teacher_reading_characters() -> None:
    """Student tokens a, b, ab after a prompt x; a teacher reading characters (a, b), so each student token is one
    span. Over every two-token sample y, sum_y q(y) * (the term's gradient on y) equals the exact gradient of
    E_q[log q(y) - log p(text(y))] (p: the teacher's probability of its tokens of the text), with and without a
    constant baseline."""
    import itertools

    g = torch.Generator().manual_seed(11)
    texts = {0: "a", 1: "b", 2: "ab"}
    # the student: logits over a, b, ab from the previous token (x the prompt's), plus a bias per position
    W = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    U, Q = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    samples = list(itertools.product(range(3), repeat=2))
    s_ids = torch.tensor([[3, *y] for y in samples])
    t_ids = torch.zeros(len(samples), 5, dtype=torch.long)
    t_labels = torch.full((len(samples), 5), -100)
    s_off = torch.zeros(len(samples), 3, 2, dtype=torch.long)
    t_off = torch.full((len(samples), 5, 2), -1, dtype=torch.long)
    for b, y in enumerate(samples):
        text = "x" + "".join(texts[i] for i in y)
        t_row = [2] + [{"a": 0, "b": 1}[c] for c in text[1:]]
        t_ids[b, :len(t_row)], t_labels[b, :len(t_row)] = torch.tensor(t_row), torch.tensor(t_row)
        t_off[b, :len(t_row)] = torch.tensor([(k, k + 1) for k in range(len(text))])
        ends = [1, 1 + len(texts[y[0]]), len(text)]
        s_off[b] = torch.tensor([(0, 1), (ends[0], ends[1]), (ends[1], ends[2])])
    labels = s_ids.clone()
    labels[:, 0] = -100

    def student_logits() -> torch.Tensor:
        return W[s_ids[:, :2]] + P

    t_logits = U[t_ids[:, :4]] + Q
    t_lp = torch.log_softmax(t_logits, -1).gather(-1, t_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    log_p_text = torch.where(t_labels[:, 1:] != -100, t_lp, 0.0).sum(-1)
    log_q_seq = torch.log_softmax(student_logits(), -1).gather(-1, s_ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
    q = log_q_seq.exp()
    assert abs(float(q.detach().sum()) - 1.0) < 1e-12
    exact = torch.autograd.grad((q * (log_q_seq - log_p_text)).sum(), (W, P))
    for baseline in ("none", "moving_average"):
        term = CrossTokenizerReinforceTerm(baseline=baseline, normalise="none")  # type: ignore[arg-type]
        term._average = 0.7 if baseline == "moving_average" else None
        batch = {"input_ids": s_ids, "labels": labels, "teacher_input_ids": t_ids, "teacher_labels": t_labels,
                 "token_offsets": s_off, "teacher_token_offsets": t_off,
                 "target_source": torch.full((len(samples),), SOURCE_IDS["student"]),
                 "sample_weight": q.detach()}  # the batch's weighted mean is the expectation over samples
        loss = term.loss(_views(student_logits(), t_logits, batch)[1])
        estimate = torch.autograd.grad(loss, (W, P))
        for got, want in zip(estimate, exact, strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert term.counts["student_targets_unrewarded"] == 0


def test_bad_settings_and_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="'self_critic'.*valid choices here: none, moving_average"):
        CrossTokenizerReinforceTerm(baseline="self_critic")
    with pytest.raises(ValueError, match="normalise: invalid value"):
        CrossTokenizerReinforceTerm(normalise="tokens")
    with pytest.raises(ValueError, match="end_of_sequence must be true or false"):
        CrossTokenizerReinforceTerm(end_of_sequence="no")  # type: ignore[arg-type]
    batch = _two_tokenizer_batch()
    s, t = torch.zeros(2, 5, 10), torch.zeros(2, 4, 9)
    del batch["teacher_token_offsets"]
    with pytest.raises(ValueError, match="batch key 'teacher_token_offsets'.*set data.teacher_tokenizer"):
        CrossTokenizerReinforceTerm().loss(_views(s, t, batch)[1])
    batch = _two_tokenizer_batch()
    view = _views(s, t, batch)[1]
    view.student.task = "seq2seq"
    with pytest.raises(ValueError, match="valid: causal_lm"):
        CrossTokenizerReinforceTerm().loss(view)


# ------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xtok_reinforce") / "corpus.txt"
    path.write_text("\n".join(f"{s} Line {i} ends here." for i, s in enumerate(SENTENCES * 2)) + "\n", encoding="utf-8")
    return path


def _reinforce_config(corpus_file: Path, **term: Any) -> dict[str, Any]:
    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    cfg = xtok_config(corpus_file, _minilm_folder(), teacher,
                      knowledge=[{"type": "cross_tokenizer_reinforce", "baseline": "moving_average", **term}],
                      targets={"sources": {"student": 1.0}, "generation": {"max_new_tokens": 6}})
    cfg["data"]["prompt_length"] = 4
    return cfg


def test_on_policy_run_with_span_rewards_from_a_teacher_with_another_tokenizer(corpus_file: Path,
                                                                               tmp_path: Path) -> None:
    """Student samples, tokenised again for a WordPiece teacher (RetokenizedTargets), through the CLI. The
    term's value is the sum of the span costs over the sampled tokens: 0 exactly if no span were rewarded."""
    from ktransfer.cli import main

    path = tmp_path / "reinforce.yaml"
    path.write_text(yaml.safe_dump(_reinforce_config(corpus_file)))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["terms"]["cross_tokenizer_reinforce"] for r in records if r.get("split") == "train"]
    assert len(values) == 4 and all(math.isfinite(v) and v != 0.0 for v in values)


def test_bad_cross_tokenizer_reinforce_configs_stop_before_training(corpus_file: Path) -> None:
    from ktransfer.config import RunConfig
    from ktransfer.registry import ConfigError

    cfg = _reinforce_config(corpus_file)  # with the span term beside it, as the guide shows: valid
    cfg["knowledge"].append({"type": "cross_tokenizer", "method": "span", "divergence": "backward_kl"})
    RunConfig.from_dict(cfg)
    cfg["knowledge"].append({"type": "reinforce"})
    with pytest.raises(ConfigError, match=r"knowledge\[2\] \(reinforce\).*cross_tokenizer_reinforce"):
        RunConfig.from_dict(cfg)
    cfg = _reinforce_config(corpus_file)
    del cfg["data"]["teacher_tokenizer"]
    with pytest.raises(ConfigError, match=r"type cross_tokenizer_reinforce\): set data.teacher_tokenizer"):
        RunConfig.from_dict(cfg)
    cfg = _reinforce_config(corpus_file)
    cfg.update(task="classification", data={"name": "digits"})
    del cfg["targets"]
    with pytest.raises(ConfigError, match="valid: causal_lm"):
        RunConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="self_critic"):
        RunConfig.from_dict(_reinforce_config(corpus_file, baseline="self_critic"))
    cfg = _reinforce_config(corpus_file)
    cfg["targets"]["greedy_baseline"] = True
    with pytest.raises(ConfigError, match="dataset and student sources only"):
        RunConfig.from_dict(cfg)
