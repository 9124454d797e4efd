"""The cross-tokenizer knowledge term: a teacher with another tokenizer than the student's.

The teacher runs on its own tokens of the same text (the dataset's `teacher_tokenizer`: batch keys
`teacher_input_ids`, `teacher_attention_mask`, `teacher_labels`), and both tokenizations carry the
character offsets of their tokens (`token_offsets`, `teacher_token_offsets`: (B, T, 2), -1 for
special and padding tokens). Each step the term aligns the two tokenizations of every example
through those offsets (`align.align_offsets`) and compares the models on the aligned spans:

* `method: span` (`span.span_loss`): the next-token distributions at each span's start over the
  token texts both vocabularies hold plus a "rest" bucket, and (`likelihood_weight`) the two
  sides' chain-rule probabilities of the whole span;
* `method: uld` (`uld.uld_distance`): the Wasserstein-1 distance between the sorted probability
  vectors at each span's start; no vocabulary mapping needed.

A run from a teacher output store built on the teacher's own tokens (`ktransfer.store`) gives the
term the teacher's stored top-k, tail and next-token log-probabilities on the teacher's positions
(`view.teacher_sparse`, a `sparse.TeacherTokensSparse`) instead of its logits; `sparse` says how
the tail enters each method.

End of sequence (`end_of_sequence: true`, the default): where the student's end-of-sequence token
and the teacher's follow the same text (a sample or a document that ends there; `align`, 4.), the
pair is one more span, of no width: the next-token part compares the two distributions at the
position that predicts it, where the two ends of sequence are one shared bucket (`vocab`; at every
other span start too: "the text ends here" is the same outcome on both sides), and the likelihood
part log p(eos) with log q(eos). A sample cut without its end of sequence has no such span.
`end_of_sequence: false` leaves the ends of sequence out (in the rest bucket, in no span), for a
teacher whose end of sequence does not mean the end of the student's text (a chat teacher's
end of turn, a teacher never trained to end documents).

The loss is the mean over the counted spans (weighted by the batch's `sample_weight` when it has
one). A span counts when both sides have a token before it (the first span of a block has no
prediction on one side) and every student token in it has a target (prompt tokens do not).
`counts` holds the spans and tokens seen, counted and left out, summed over the run's steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ktransfer.cross_tokenizer.align import align_offsets, append_span_positions
from ktransfer.cross_tokenizer.sparse import (
    TeacherTokensSparse,
    sparse_bucket_log_probs,
    sparse_next_log_probs,
    sparse_uld_distance,
)
from ktransfer.cross_tokenizer.span import bucket_span_loss, project_log_probs, span_loss, span_sums, token_log_probs
from ktransfer.cross_tokenizer.uld import uld_distance
from ktransfer.cross_tokenizer.vocab import VocabMapping, vocab_mapping
from ktransfer.divergences import get_divergence
from ktransfer.knowledge.base import SAMPLE_WEIGHT_KEY, STORED_TEACHER_KEY, StepView
from ktransfer.knowledge.response import divergence_params
from ktransfer.tasks import IGNORE_INDEX

METHODS = ("span", "uld")
OFFSETS_KEY = "token_offsets"
TEACHER_OFFSETS_KEY = "teacher_token_offsets"
ALIGNMENTS_KEPT = 64  # batches aligned by `count_units` and not yet by `loss` (a step's micro-batches)


@dataclass
class CrossTokenizerTerm:
    """Distillation from a teacher whose tokenizer differs from the student's (the dataset's `teacher_tokenizer`).

    The teacher reads its own tokens of each text; the two tokenizations are aligned through
    character offsets into spans (tokens of both sides covering the same characters). At each
    span's start, `method: span` compares the next-token distributions over the token texts both
    vocabularies hold plus one "rest" bucket (every other token of a side) with `divergence`
    (forward_kl is KL(teacher || student); `params`: its beta / alpha), plus, weighted by
    `likelihood_weight`, the two sides' chain-rule probabilities of the whole span ({span, not
    span}; 0 = next-token part only). `method: uld` takes the Wasserstein-1 distance between the
    sorted probability vectors instead (Boizard et al. 2024; no mapping; no divergence). `temperature`
    T: softmax(logits / T) on both sides. The loss is the mean over aligned spans. `end_of_sequence`:
    the two ends of sequence after the same text are a span too, and one shared bucket (module
    docstring). `student_tokenizer` / `teacher_tokenizer` (folders or tokenizer.json files) build the
    span method's mapping; a run takes them from its dataset.
    """

    method: Literal["span", "uld"] = "span"
    divergence: str = "forward_kl"
    temperature: float = 1.0
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    likelihood_weight: float = 1.0
    end_of_sequence: bool = True
    student_tokenizer: str | None = None
    teacher_tokenizer: str | None = None
    name: str = "cross_tokenizer"
    requires_teacher: bool = field(default=True, init=False)
    student_modules: tuple[str, ...] = field(default=(), init=False)
    teacher_modules: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: invalid value {self.method!r}; valid choices: {', '.join(METHODS)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not isinstance(self.end_of_sequence, bool):
            raise ValueError(f"end_of_sequence must be true or false, got {self.end_of_sequence!r}")
        if not self.likelihood_weight >= 0 or self.likelihood_weight == float("inf"):
            raise ValueError(f"likelihood_weight must be a finite number >= 0, got {self.likelihood_weight}")
        self._fn = get_divergence(self.divergence)
        valid = divergence_params(self.divergence)
        for key in self.params:
            if key not in valid:
                raise ValueError(f"params.{key}: divergence '{self.divergence}' takes "
                                 f"{', '.join(valid) if valid else 'no params'}")
        if self.method == "uld" and (self.divergence != "forward_kl" or self.params or self.likelihood_weight != 1.0):
            raise ValueError("method uld compares sorted probabilities with its own distance (Wasserstein-1): "
                             "divergence, params and likelihood_weight apply to method span only; leave them out")
        self._mapping: VocabMapping | None = None
        self._ends: tuple[int | None, int | None] | None = None  # the data's end-of-sequence ids (bind_data)
        self._aligned: list[tuple[Tensor, Tensor, list[Any]]] = []  # alignments of counted, not yet seen, batches
        self.counts = {"spans": 0, "spans_counted": 0, "end_of_sequence_spans": 0,
                       "end_of_sequence_spans_counted": 0, "student_tokens": 0, "student_tokens_unaligned": 0,
                       "teacher_tokens": 0, "teacher_tokens_unaligned": 0}

    # --------------------------------------------------------------------------------- set-up
    def bind_data(self, info: dict[str, Any]) -> None:
        """Take the tokenizers the dataset used (`info['tokenizer']`, `info['teacher_tokenizer']`) unless given, and
        its two end-of-sequence ids (`eos_token_id`, `teacher_eos_token_id`: a trained tokenizer file names none)."""
        if self.student_tokenizer is None:
            self.student_tokenizer = info.get("tokenizer")
        if self.teacher_tokenizer is None:
            self.teacher_tokenizer = info.get("teacher_tokenizer")
        self._ends = (info.get("eos_token_id"), info.get("teacher_eos_token_id"))

    def mapping(self) -> VocabMapping:
        """The vocabulary mapping of the span method (built once from the two tokenizers)."""
        if self._mapping is None:
            from ktransfer.data.corpus import load_tokenizer

            missing = [k for k in ("student_tokenizer", "teacher_tokenizer") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"knowledge term '{self.name}' (method span) maps the two vocabularies onto each "
                                 f"other and needs {' and '.join(missing)}: give them, or train on a dataset with "
                                 "teacher_tokenizer set")
            self._mapping = vocab_mapping(load_tokenizer(str(self.student_tokenizer)),
                                          load_tokenizer(str(self.teacher_tokenizer)), self.end_of_sequence, self._ends)
        return self._mapping

    def set_mapping(self, mapping: VocabMapping) -> None:
        """Use `mapping` instead of one built from the tokenizers (Python callers, tests)."""
        self._mapping = mapping

    # --------------------------------------------------------------------------------- loss
    def _alignments(self, batch: dict[str, Any], keep: bool) -> list[Any]:
        """Each example's alignment of the two tokenizations (`align_offsets`), computed once per batch.

        `count_units` aligns a batch before the forward and keeps the result (`keep`) for `loss`,
        which takes it back; the offsets tensors themselves identify the batch.
        """
        for key in (OFFSETS_KEY, TEACHER_OFFSETS_KEY, "input_ids", "teacher_input_ids"):
            if key not in batch:
                raise ValueError(f"knowledge term '{self.name}' needs the batch key '{key}': the dataset must "
                                 "tokenise each text for the teacher too (set data.teacher_tokenizer)")
        s_off, t_off = batch[OFFSETS_KEY], batch[TEACHER_OFFSETS_KEY]
        for i, (s_key, t_key, found) in enumerate(self._aligned):
            if s_key is s_off and t_key is t_off:
                if not keep:
                    del self._aligned[i]
                return found
        alignments = [align_offsets(so, to, self.end_of_sequence)
                      for so, to in zip(s_off.tolist(), t_off.tolist(), strict=True)]
        if keep:
            self._aligned.append((s_off, t_off, alignments))
            del self._aligned[:-ALIGNMENTS_KEPT]
        return alignments

    def _counted(self, batch: dict[str, Any], alignments: list[Any], s_mask: Tensor | None,
                 t_mask: Tensor | None) -> list[tuple[int, Any]]:
        """The counted spans, as (example, span): both sides predict the span's first token, and every token has a target."""
        s_ok = s_mask.tolist() if s_mask is not None else None
        t_ok = t_mask.tolist() if t_mask is not None else None
        counted = []
        for b, alignment in enumerate(alignments):
            for span in alignment.spans:
                i0, i1, k0, k1 = span.student_start, span.student_stop, span.teacher_start, span.teacher_stop
                if i0 < 1 or k0 < 1:
                    continue  # no prediction of the span's first token on one side
                if s_ok is not None and not all(s_ok[b][i0 - 1:i1 - 1]):
                    continue
                if t_ok is not None and not all(t_ok[b][k0 - 1:k1 - 1]):
                    continue
                counted.append((b, span))
        return counted

    def count_units(self, batch: dict[str, Any], task: Any) -> float:
        """The counted spans of `batch` (with a `sample_weight`, their examples' summed weights): the loss's denominator.

        The targets are read from the batch as the forward aligns them: the student's `labels`,
        the teacher's `teacher_labels` (a live teacher without them reads the student's), each
        shifted by one position (position t predicts token t + 1).
        """
        s_labels = batch.get("labels")
        t_labels = batch.get("teacher_labels")
        if not isinstance(t_labels, Tensor) and batch.get(STORED_TEACHER_KEY) is None:
            t_labels = s_labels  # a live teacher reads the student's labels then
        s_mask = s_labels[..., 1:] != IGNORE_INDEX if isinstance(s_labels, Tensor) else None
        t_mask = t_labels[..., 1:] != IGNORE_INDEX if isinstance(t_labels, Tensor) else None
        counted = self._counted(batch, self._alignments(batch, keep=True), s_mask, t_mask)
        weights = batch.get(SAMPLE_WEIGHT_KEY)
        if weights is None:
            return float(len(counted))
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1).cpu()
        return float(sum(float(w[b]) for b, _ in counted))

    def _gather(self, view: StepView) -> dict[str, Tensor] | None:
        """Index tensors of the counted spans of a batch: example, first positions, and each token's span."""
        batch = view.batch
        alignments = self._alignments(batch, keep=False)
        s_mask = view.student.mask
        if view.teacher is not None:
            t_mask = view.teacher.mask
        else:  # a stored teacher: its positions are those of the teacher's labels (position t predicts t + 1)
            t_labels = batch.get("teacher_labels")
            t_mask = t_labels[..., 1:] != IGNORE_INDEX if isinstance(t_labels, Tensor) else None
        c = self.counts
        for alignment, so, to in zip(alignments, batch[OFFSETS_KEY].tolist(), batch[TEACHER_OFFSETS_KEY].tolist(),
                                     strict=True):
            c["spans"] += len(alignment.spans)
            c["end_of_sequence_spans"] += alignment.end_of_sequence_spans
            c["student_tokens_unaligned"] += alignment.student_unaligned
            c["teacher_tokens_unaligned"] += alignment.teacher_unaligned
            c["student_tokens"] += sum(1 for s, _ in so if s >= 0)
            c["teacher_tokens"] += sum(1 for s, _ in to if s >= 0)
        rows: dict[str, list[int]] = {k: [] for k in ("b", "s", "t", "s_tok_b", "s_tok", "s_span", "t_tok_b", "t_tok", "t_span")}
        counted = self._counted(batch, alignments, s_mask, t_mask)
        for n, (b, span) in enumerate(counted):
            rows["b"].append(b)
            rows["s"].append(span.student_start - 1)
            rows["t"].append(span.teacher_start - 1)
            append_span_positions(rows, b, span, n, ("s_tok_b", "s_tok", "s_span"), ("t_tok_b", "t_tok", "t_span"))
        self.counts["spans_counted"] += len(counted)
        self.counts["end_of_sequence_spans_counted"] += sum(1 for _, span in counted if span.end_of_sequence)
        if not counted:
            return None
        device = view.student.logits.device
        return {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in rows.items()}

    def _stored_teacher(self, view: StepView) -> TeacherTokensSparse | None:
        """The stored teacher on its own tokens, or None with a live teacher; any other case is an error."""
        sparse = view.teacher_sparse
        if sparse is None:
            if view.teacher is None:
                raise ValueError(f"knowledge term '{self.name}' needs the teacher's outputs: a teacher model, or a "
                                 "store built on the teacher's own tokens (`ktransfer teacher-outputs build` on a "
                                 "config with data.teacher_tokenizer)")
            return None
        if not isinstance(sparse, TeacherTokensSparse):
            raise ValueError(f"knowledge term '{self.name}': the stored teacher holds outputs on the student's "
                             "tokens; the term compares the teacher on its own tokens: build the store from a config "
                             "with data.teacher_tokenizer")
        t_ids = view.batch.get("teacher_input_ids")
        if isinstance(t_ids, Tensor) and tuple(sparse.shape) != (t_ids.shape[0], t_ids.shape[1] - 1):
            raise ValueError(f"knowledge term '{self.name}': the stored teacher covers positions of shape "
                             f"{tuple(sparse.shape)}, the batch's teacher tokens give "
                             f"{(t_ids.shape[0], t_ids.shape[1] - 1)}")
        return sparse

    def loss(self, view: StepView) -> Tensor:
        stored = self._stored_teacher(view)
        s_logits = view.student.logits
        index = self._gather(view)
        if index is None:  # nothing aligned here: a zero that keeps the graph
            return s_logits.sum() * 0.0
        s_first = s_logits[index["b"], index["s"]]
        if stored is not None:
            if stored.device != s_logits.device:
                stored = stored.to(s_logits.device)
            values = self._stored_values(view, stored, index, s_first)
        elif self.method == "uld":
            assert view.teacher is not None
            values = uld_distance(s_first, view.teacher.logits[index["b"], index["t"]], self.temperature)
        else:
            assert view.teacher is not None
            t_logits = view.teacher.logits
            mapping = self.mapping()
            s_lp = t_lp = None
            if self.likelihood_weight != 0.0:
                t_ids = view.batch["teacher_input_ids"][index["t_tok_b"], index["t_tok"] + 1]
                t_tok = token_log_probs(t_logits[index["t_tok_b"], index["t_tok"]], t_ids, self.temperature)
                s_lp = self._student_span_log_probs(view, index)
                t_lp = span_sums(t_tok.to(s_logits.device), index["t_span"], index["b"].numel())
            values = span_loss(
                self._fn, s_first, t_logits[index["b"], index["t"]].to(s_first.device),
                mapping.buckets("student", s_logits.shape[-1], s_logits.device),
                mapping.buckets("teacher", t_logits.shape[-1], s_logits.device),
                mapping.shared + 1, temperature=self.temperature, student_span_log_probs=s_lp,
                teacher_span_log_probs=t_lp, likelihood_weight=self.likelihood_weight, params=self.params)
        weights = view.batch.get(SAMPLE_WEIGHT_KEY)
        if weights is None:
            return values.mean()
        w = torch.as_tensor(weights, dtype=values.dtype, device=values.device)[index["b"]]
        total = w.sum()
        return (values * w).sum() / total if bool(total > 0) else values.sum() * 0.0

    def _student_span_log_probs(self, view: StepView, index: dict[str, Tensor]) -> Tensor:
        """The student's log-probability of each counted span (the sum over its tokens), at the temperature."""
        s_logits = view.student.logits
        s_ids = view.batch["input_ids"][index["s_tok_b"], index["s_tok"] + 1]
        s_tok = token_log_probs(s_logits[index["s_tok_b"], index["s_tok"]], s_ids, self.temperature)
        return span_sums(s_tok, index["s_span"], index["b"].numel())

    def _stored_values(self, view: StepView, stored: TeacherTokensSparse, index: dict[str, Tensor],
                       s_first: Tensor) -> Tensor:
        """Per-span values against a stored top-k teacher on its own tokens (`sparse` module docstring)."""
        b, t = index["b"], index["t"]
        vocab = stored.vocab_size
        if self.method == "uld":
            return sparse_uld_distance(s_first, stored.logprobs[b, t], stored.tail_logprob[b, t], vocab,
                                       self.temperature)
        mapping = self.mapping()
        dtype = torch.promote_types(s_first.dtype, torch.float32)
        n_buckets = mapping.shared + 1
        q = project_log_probs(torch.log_softmax(s_first.to(dtype) / self.temperature, dim=-1),
                              mapping.buckets("student", s_first.shape[-1], s_first.device), n_buckets)
        p = sparse_bucket_log_probs(stored.ids[b, t], stored.logprobs[b, t], stored.tail_logprob[b, t],
                                    mapping.buckets("teacher", vocab, s_first.device), n_buckets, vocab,
                                    self.temperature, dtype)
        s_lp = t_lp = None
        if self.likelihood_weight != 0.0:
            tb, tt = index["t_tok_b"], index["t_tok"]
            t_tok = sparse_next_log_probs(stored.next_logprob[tb, tt], stored.logprobs[tb, tt],
                                          stored.tail_logprob[tb, tt], vocab, self.temperature, dtype)
            s_lp = self._student_span_log_probs(view, index)
            t_lp = span_sums(t_tok, index["t_span"], b.numel())
        return bucket_span_loss(self._fn, q, p, student_span_log_probs=s_lp, teacher_span_log_probs=t_lp,
                                likelihood_weight=self.likelihood_weight, params=self.params)

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update(state.get("counts", {}))


__all__ = ["METHODS", "OFFSETS_KEY", "TEACHER_OFFSETS_KEY", "CrossTokenizerTerm"]
