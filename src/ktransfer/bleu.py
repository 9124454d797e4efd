"""BLEU and chrF of a seq2seq model's translations, with sacrebleu on detokenised text.

A split that carries raw references (`ktransfer.data.translation.ParallelDataset`) is evaluated
by decoding a fixed subset of it (`evaluation.examples`, evenly spaced over the split, so the
cost is bounded and the same examples are scored at every evaluation) greedily or with beams,
turning ids back into text with the data's tokenizer, and scoring against the untokenised
references. Scores are on sacrebleu's 0-100 scale; `evaluation.bleu_tokenize` is the tokenizer
sacrebleu applies (13a; zh, ja-mecab or char for scripts without spaces between words; the data
chooses it from the target language).

Hypotheses and references are compared under one normalisation: both are NFKC-normalised and
their runs of whitespace made single spaces (`score_text`) before sacrebleu sees them. A trained
tokenizer NFKC-normalises what it encodes, so its output writes full-width punctuation ("：")
in the standard form (":"); scoring the raw reference would count every such character as an
error, and a perfect translation would score far below 100. The normalisation is the same for
every tokenizer, so scores of systems with different tokenizers stay comparable; a tokenizer
that loses more (lower case, accents) is not excused by it.

The raw reference is scored in full even where the split's token ids were cut to `max_length`
(validation and test examples are truncated, never dropped): a translation of a cut source is
scored against the whole reference, so long sentences cost what they cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import unicodedata

import numpy as np
import torch
from torch import nn


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, one reference per hypothesis)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


SCORE_NORMALIZATION = "NFKC"  # applied to hypotheses and references alike (see the module docstring)


def score_text(text: str) -> str:
    """A text as it is scored: NFKC-normalised, runs of whitespace as one space, trimmed."""
    return " ".join(unicodedata.normalize(SCORE_NORMALIZATION, text).split())


def evaluation_indices(size: int, examples: int | None) -> list[int]:
    """`examples` indices spread evenly over a split of `size` (all of it for None or more than it has)."""
    if examples is None or examples >= size:
        return list(range(size))
    return sorted({int(i) for i in np.linspace(0, size - 1, examples).round()})


@torch.no_grad()
def translate(
    model: nn.Module, data: Any, indices: Sequence[int], collate_fn: Callable[[list[Any]], dict[str, Any]], *,
    max_new_tokens: int, num_beams: int = 1, batch_size: int = 64,
) -> list[str]:
    """Greedy (num_beams 1) or beam-search translations of `data[indices]`, detokenised."""
    tok = data.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(indices), batch_size):
            batch = collate_fn([data[i] for i in indices[start:start + batch_size]])
            generated = model.generate(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, eos_token_id=tok.eos_id,
                pad_token_id=tok.pad_id, decoder_start_token_id=_start_id(model, tok.pad_id))
            out += tok.decode(generated[:, 1:].tolist())
    finally:
        model.train(was_training)
    return out


def _start_id(model: nn.Module, default: int) -> int:
    value = getattr(getattr(model, "config", None), "decoder_start_token_id", None)
    return int(value) if value is not None else default


def generation_metrics(model: nn.Module, data: Any, collate_fn: Callable[[list[Any]], dict[str, Any]]) -> dict[str, float]:
    """BLEU and chrF on the evaluation subset of a split with references (see the module docstring)."""
    ev = data.evaluation
    indices = evaluation_indices(len(data), ev.examples)
    if not indices:
        raise ValueError("the evaluation split is empty: no translations to score")
    hyps = translate(model, data, indices, collate_fn, max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams,
                     batch_size=ev.batch_size)
    refs = [score_text(data.references[i]) for i in indices]
    return corpus_scores([score_text(h) for h in hyps], refs, ev.bleu_tokenize)


def has_references(data: Any) -> bool:
    """Whether a split can be scored by BLEU / chrF (it keeps raw references, a tokenizer and settings)."""
    return all(hasattr(data, key) for key in ("references", "tokenizer", "evaluation"))
