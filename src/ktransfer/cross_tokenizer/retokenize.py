"""On-policy distillation across tokenizers: the student's samples, tokenised again for the teacher.

A targets stage (`ktransfer.sequence.TargetsStage`) rewrites each training row's tokens with the
student's own continuations; the teacher's tokens of the dataset no longer describe the same
text then. `RetokenizedTargets` wraps that stage: it sets the teacher's tokens aside, lets the
stage rewrite the student's tokens, then turns every row back into text and tokenises it for
the teacher again, with the character offsets of both tokenizations, so the `cross_tokenizer`
term aligns and compares them as on dataset text (with `divergence: backward_kl` this is the
on-policy, mode-seeking objective; its gradient reaches the student's sampled tokens through
their log-probabilities in the aligned spans).

Turning ids into text: each student id stands for the bytes of its vocabulary text
(`vocab.vocabulary_texts`: byte-level BPE bytes, SentencePiece '▁' as a space and <0xNN> bytes,
WordPiece '##' pieces glued and word-initial pieces after a space); the bytes are decoded as
UTF-8 one token at a time (invalid bytes become U+FFFD), so each token's characters are known.
A token ending inside a multi-byte character covers no character of its own and joins the next
one in the alignment. Special tokens cover nothing; the text after one is tokenised apart, as the
dataset does with documents, and the teacher's end of sequence stands where the student's special
token stands. WordPiece students write lowercase text without accents: the teacher reads what the
student writes.

End of sequence: a sample that ends with the student's end-of-sequence token (the targets stage
keeps it, labelled, and nothing after it) gets the teacher's end of sequence after the same text,
and the two carry the offsets (-2, c) that `align` pairs into a span of their own: the teacher's
log p(eos | text) is compared with the student's log q(eos | text). A sample cut at the
generation budget ends without one: nothing is appended and there is nothing to pair. The same
holds for an end of sequence inside a row (a document separator in a dataset row or its prompt).
A teacher without an end-of-sequence token (or `add_eos: false`) gets nothing there, and the
student's stays unpaired.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ktransfer.cross_tokenizer.vocab import vocabulary_texts
from ktransfer.data.corpus import teacher_tokenize_blocks
from ktransfer.tasks import IGNORE_INDEX

OFFSET_KEYS = ("token_offsets",)


def _row_text(ids: list[int], texts: dict[int, bytes]) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """(items: id, stretch, start, end per token; start -1 for a special token), the text of each stretch."""
    items: list[tuple[int, int, int, int]] = []
    stretches: list[str] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    current: list[str] = []
    length = 0

    def close() -> None:
        nonlocal current, length, decoder
        current.append(decoder.decode(b"", final=True))
        stretches.append("".join(current))
        current, length = [], 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    for tid in ids:
        piece = texts.get(tid)
        if piece is None:  # special: ends the stretch
            items.append((tid, len(stretches), -1, -1))
            close()
            continue
        chars = decoder.decode(piece)
        current.append(chars)
        items.append((tid, len(stretches), length, length + len(chars)))
        length += len(chars)
    close()
    return items, stretches


@dataclass
class RetokenizedTargets:
    """`inner` (a targets stage) on the student's tokens, then every row tokenised again for the teacher.

    `student_tokenizer` / `teacher_tokenizer`: loaded (fast) tokenizers. The teacher's rows are padded
    with its pad id (else its end of sequence, else 0); `add_eos`: put the teacher's end of sequence
    where the student has a special token (module docstring). `student_eos`: the student's
    end-of-sequence id (the dataset's `eos_token_id`: a trained tokenizer file names none; None: the
    tokenizer's own).
    """

    inner: Any
    student_tokenizer: Any
    teacher_tokenizer: Any
    add_eos: bool = True
    student_eos: int | None = None
    requires_teacher: bool = field(init=False)

    def __post_init__(self) -> None:
        self.requires_teacher = bool(getattr(self.inner, "requires_teacher", False))
        self._texts = vocabulary_texts(self.student_tokenizer)
        t = self.teacher_tokenizer
        self._teacher_eos = t.eos_token_id if self.add_eos else None
        self._student_eos = self.student_eos if self.student_eos is not None else self.student_tokenizer.eos_token_id
        self._teacher_pad = int(t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0))

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __call__(self, batch: dict[str, Any], ctx: Any) -> dict[str, Any]:
        own = {k: v for k, v in batch.items() if not k.startswith("teacher_") and k not in OFFSET_KEYS}
        return self.retokenize(self.inner(own, ctx))

    def retokenize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` plus the teacher's ids, mask, labels and both tokenizations' offsets of each row's text."""
        ids: Tensor = batch["input_ids"]
        attention = batch.get("attention_mask", torch.ones_like(ids))
        rows = []
        for b in range(ids.shape[0]):
            row = ids[b][attention[b].bool()].tolist()
            items, stretches = _row_text(row, self._texts)
            rows.append(teacher_tokenize_blocks([items], stretches, self.teacher_tokenizer, self._teacher_eos,
                                                self._student_eos)[0])
        width = max(1, max(len(r.ids) for r in rows))
        device = ids.device
        t_ids = torch.full((len(rows), width), self._teacher_pad, dtype=torch.long)
        t_mask = torch.zeros_like(t_ids)
        t_off = torch.full((len(rows), width, 2), -1, dtype=torch.long)
        s_off = torch.full((*ids.shape, 2), -1, dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r.ids)
            if n:
                t_ids[b, :n], t_mask[b, :n] = torch.tensor(r.ids), 1
                t_off[b, :n] = torch.tensor(r.offsets).reshape(-1, 2)
            keep = attention[b].bool().cpu()
            s_off[b, keep] = torch.tensor(r.student_offsets, dtype=torch.long).reshape(-1, 2)
        labels = t_ids.masked_fill(t_mask == 0, IGNORE_INDEX)
        return {**batch, "teacher_input_ids": t_ids.to(device), "teacher_attention_mask": t_mask.to(device),
                "teacher_labels": labels.to(device), "token_offsets": s_off.to(device),
                "teacher_token_offsets": t_off.to(device)}


__all__ = ["RetokenizedTargets"]
