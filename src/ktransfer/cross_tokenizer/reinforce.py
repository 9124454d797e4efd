"""The REINFORCE estimator of the backward KL for a teacher with another tokenizer (`type: cross_tokenizer_reinforce`).

Notation as in `ktransfer.sequence.estimators`: q = student, p = teacher, y a target sequence
the student sampled (its tokens y_1..y_L after a prompt). The teacher reads its own tokens of the
same text (`RetokenizedTargets` turns the student's samples back into text and tokenises them
again, with the character offsets of both tokenizations). The two tokenizations of each sample
are aligned into spans (`align.align_offsets`: student tokens [i0, i1) and teacher tokens
[k0, k1) covering the same characters). A span's reward is the difference of the two sides'
chain-rule log-probabilities of its text, given the same text before it:

    r_span = log p(span) - log q(span) = sum_{k0<=k<k1} log p(z_k | z_<k) - sum_{i0<=i<i1} log q(y_i | y_<i)

(no gradient). It is placed at the span's last student token, 0 at its other tokens: every
student token of the span and before it has it in its return-to-go, and it depends on all of the
span's tokens. Equivalently the estimator is `ReinforceTerm` with the per-token log-probability

    log p_eff_t = log q_t + r_span   at the last student token t of a span,   log q_t elsewhere,

so the per-token reward r_t = log p_eff_t - log q_t, the returns, baselines, normalisations and
importance weights are those of `ReinforceTerm` (this class is one, with `teacher_logprobs`
replaced). With the same tokenizer on both sides every span is one token and log p_eff = log p:
the loss and its gradient are `ReinforceTerm`'s.

What it is the gradient of: when every target token lies in a counted span, the sum of the span
rewards of a sample is log p~(y) - log q(y), where p~(y) is the teacher's probability of its own
tokenization of y's text (given the prompt's text), so the sequence-level estimate
log q(y) - log p~(y) of KL(q || p~) is exact, and with whole returns the surrogate's gradient is
an unbiased estimate of grad E_q[log q(y) - log p~(y)] (scaled as `normalise` says). The
per-token truncation of the returns (a reward before t is left out of t's return) assumes a
span's reward does not depend on the tokens after it; the alignment and the teacher's
tokenization of a text before a cut depend on the text after it only within a word the teacher
would tokenise differently once continued, where the truncation leaves out a small term.
p~ is the probability of the teacher's one tokenization of the text, not the sum over every way
the teacher could spell it.

End of sequence (`end_of_sequence: true`, the default). A sample that ends with the student's
end-of-sequence token is read by the teacher with its own end of sequence after the same text
(`retokenize`), and the two form one more span (`align`, 4.) whose reward, at the student's end
of sequence, is

    r_eos = log p(eos | text) - log q(eos | text),

as `ReinforceTerm` rewards an end of sequence on one vocabulary. The sum of a sample's rewards is
then log p~(y, eos) - log q(y, eos): the teacher's probability of the text *as a whole sequence*,
so stopping early costs what the teacher thinks of ending there (without it, ending is free and
every further span adds its, mostly negative, reward: samples shrink). A sample cut at the
generation budget has no end of sequence, hence no such span, as in `ReinforceTerm`, where the
budget's last token simply is the last reward. An end of sequence inside a row (a document
boundary of a dataset row) is paired the same way; in the prompt it is no target and counts not.
`end_of_sequence: false` leaves the ends of sequence unrewarded, for a teacher whose end of
sequence does not mean the end of the student's text (a chat teacher's end of turn).

Target tokens of the student that no counted span holds (tokens only one side covers, other
special tokens, an end of sequence the teacher has no partner for, spans that begin in the prompt
or on a side's first token) get reward 0: they still carry the returns of the spans after them.
`counts` reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ktransfer.cross_tokenizer.align import align_offsets, append_span_positions
from ktransfer.cross_tokenizer.span import span_sums, token_log_probs
from ktransfer.cross_tokenizer.term import OFFSETS_KEY, TEACHER_OFFSETS_KEY
from ktransfer.knowledge.base import StepView
from ktransfer.sequence.estimators import ReinforceTerm


@dataclass(frozen=True)
class SpanIndex:
    """The counted spans of a batch: each span's example and last student position; each token's span.

    Positions are those of the shifted causal-LM outputs (position j predicts token j + 1).
    """

    last_b: Tensor
    last_pos: Tensor
    s_b: Tensor
    s_pos: Tensor
    s_span: Tensor
    t_b: Tensor
    t_pos: Tensor
    t_span: Tensor

    @property
    def n(self) -> int:
        return int(self.last_b.numel())


def span_rewards(log_q: Tensor, t_logprobs: Tensor, index: SpanIndex) -> Tensor:
    """Per-span rewards (n,): the teacher's span log-probability minus the student's (sums of per-token values).

    `log_q` (B, L) are the student's per-position log-probabilities, `t_logprobs` (M,) the
    teacher's at the positions `index.t_b`, `index.t_pos` (in that order).
    """
    student = span_sums(log_q[index.s_b, index.s_pos], index.s_span, index.n)
    teacher = span_sums(t_logprobs.to(student.dtype), index.t_span, index.n)
    return teacher - student


def effective_logprobs(log_q: Tensor, rewards: Tensor, index: SpanIndex) -> Tensor:
    """log q (B, L) (detached) plus each span's reward at its last student position: log p_eff (module docstring)."""
    out = log_q.detach().clone()
    return out.index_put((index.last_b, index.last_pos), rewards.to(out.dtype), accumulate=True)


@dataclass
class CrossTokenizerReinforceTerm(ReinforceTerm):
    """`ReinforceTerm` for a teacher with another tokenizer: span rewards carried back to the student's tokens.

    Each span of aligned student and teacher tokens (character offsets, as the `cross_tokenizer`
    term aligns them) gets the reward log p(span) - log q(span), the two sides' chain-rule
    log-probabilities of its text, at its last student token (see the module docstring). The
    baseline (`none` or `moving_average`; `self_critic` needs the teacher's reward of a greedy
    output on the student's tokens and is not available), `normalise`, `importance_weights`,
    `clip_weight` and `sources` are those of `reinforce`. `vocab_size` is the student's real
    vocabulary (padded embedding rows); the teacher's log-probabilities are over all its outputs.
    `end_of_sequence`: the student's end of sequence and the teacher's after the same text are a span
    too, rewarded log p(eos | text) - log q(eos | text) (module docstring).
    A run needs a causal-LM dataset with `teacher_tokenizer` and a targets section with a
    student source. `counts` holds the spans (and those of them that pair two ends of sequence),
    target tokens and target tokens without a reward (in no counted span), summed over the run's steps.
    """

    end_of_sequence: bool = True
    name: str = "cross_tokenizer_reinforce"

    def __post_init__(self) -> None:
        if self.baseline == "self_critic":
            raise ValueError("baseline: 'self_critic' needs the teacher's reward of the student's greedy output on the "
                             "student's tokens, which a teacher with its own tokenizer does not give; valid choices "
                             "here: none, moving_average")
        if not isinstance(self.end_of_sequence, bool):
            raise ValueError(f"end_of_sequence must be true or false, got {self.end_of_sequence!r}")
        super().__post_init__()
        self.counts = {"spans": 0, "spans_counted": 0, "end_of_sequence_spans": 0,
                       "end_of_sequence_spans_counted": 0, "student_targets": 0, "student_targets_unrewarded": 0}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts.update(state.get("counts", {}))

    def teacher_logprobs(self, view: StepView, log_q: Tensor, mask: Tensor) -> Tensor:
        """log p_eff (B, L): log q plus each counted span's reward at its last student token."""
        if view.student.task != "causal_lm":
            raise ValueError(f"knowledge term '{self.name}' aligns two tokenizations of causal-LM text; this batch is "
                             f"{view.student.task} (valid: causal_lm)")
        assert view.teacher is not None
        index = self.span_index(view, mask)
        if index is None:
            return log_q.detach().clone()
        t_logits = view.teacher.logits.detach()
        t_b, t_pos = index.t_b.to(t_logits.device), index.t_pos.to(t_logits.device)
        t_ids = view.batch["teacher_input_ids"].to(t_logits.device)[t_b, t_pos + 1]
        t_lp = token_log_probs(t_logits[t_b, t_pos], t_ids)
        return effective_logprobs(log_q, span_rewards(log_q.detach(), t_lp.to(log_q.device), index), index)

    def span_index(self, view: StepView, mask: Tensor) -> SpanIndex | None:
        """The spans of the batch whose student tokens are all target tokens under `mask` (B, L) and whose teacher
        tokens all have teacher targets; None when there is none. Updates `counts`."""
        batch = view.batch
        for key in (OFFSETS_KEY, TEACHER_OFFSETS_KEY, "teacher_input_ids"):
            if key not in batch:
                raise ValueError(f"knowledge term '{self.name}' needs the batch key '{key}': the dataset must "
                                 "tokenise each text for the teacher too (set data.teacher_tokenizer)")
        assert view.teacher is not None
        t_mask = view.teacher.mask
        s_ok = mask.tolist()
        t_ok = t_mask.tolist() if t_mask is not None else None
        rows: dict[str, list[int]] = {k: [] for k in ("last_b", "last_pos", "s_b", "s_pos", "s_span", "t_b", "t_pos",
                                                      "t_span")}
        s_off, t_off = batch[OFFSETS_KEY], batch[TEACHER_OFFSETS_KEY]
        counted = rewarded = ends = 0
        for b in range(len(s_ok)):
            targets = sum(s_ok[b])
            if targets == 0:
                continue  # not a row of the term's sources: nothing to align
            self.counts["student_targets"] += targets
            alignment = align_offsets(s_off[b].tolist(), t_off[b].tolist(), self.end_of_sequence)
            self.counts["spans"] += len(alignment.spans)
            self.counts["end_of_sequence_spans"] += alignment.end_of_sequence_spans
            for span in alignment.spans:
                i0, i1, k0, k1 = span.student_start, span.student_stop, span.teacher_start, span.teacher_stop
                if i0 < 1 or k0 < 1:
                    continue  # a side's first token: no prediction of it
                if not all(s_ok[b][i0 - 1:i1 - 1]):
                    continue  # a span that begins in the prompt (or a row outside the term's sources)
                if t_ok is not None and not all(t_ok[b][k0 - 1:k1 - 1]):
                    continue
                rows["last_b"].append(b)
                rows["last_pos"].append(i1 - 2)
                append_span_positions(rows, b, span, counted)
                rewarded += i1 - i0
                counted += 1
                ends += int(span.end_of_sequence)
        self.counts["spans_counted"] += counted
        self.counts["end_of_sequence_spans_counted"] += ends
        self.counts["student_targets_unrewarded"] += int(mask.sum()) - rewarded
        if counted == 0:
            return None
        device = mask.device
        return SpanIndex(**{k: torch.tensor(v, dtype=torch.long, device=device) for k, v in rows.items()})


__all__ = ["CrossTokenizerReinforceTerm", "SpanIndex", "effective_logprobs", "span_rewards"]
