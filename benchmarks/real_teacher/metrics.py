"""Generation scores of the real-teacher benchmark: chrF against the references, the repetition rate of a
continuation, and the teacher's mean log-probability per token of the student's continuations.

chrF (sacrebleu, character 6-grams, beta 2) stands in for ROUGE-L: `rouge-score` is not installed here and
sacrebleu already is a dependency of the project.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) of the hypotheses against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"chrF needs one reference per hypothesis, got {len(hypotheses)} and {len(references)}")
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def repetition_rate(tokens: Sequence[int | str], n: int = 3) -> float:
    """Share of a sequence's n-grams that repeat an n-gram seen earlier in it (0: none repeats; 0.0 for a
    sequence shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def mean_repetition_rate(sequences: Sequence[Sequence[int | str]], n: int = 3) -> float:
    """`repetition_rate` over all sequences pooled: repeated n-grams / all n-grams."""
    total = repeated = 0
    for seq in sequences:
        grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def teacher_logprob_per_token(teacher: torch.nn.Module, prompts: torch.Tensor, continuations: torch.Tensor,
                              continuation_mask: torch.Tensor) -> float:
    """The teacher's mean log-probability per token of the continuations given their prompts: sum over the
    kept tokens (`continuation_mask`) of log p_T(token | prompt, earlier tokens), divided by their count."""
    ids = torch.cat([prompts, continuations], dim=1)
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits[:, prompts.shape[1] - 1:-1].double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, continuations.unsqueeze(-1)).squeeze(-1)
    mask = continuation_mask.to(logp.dtype)
    count = float(mask.sum())
    if count == 0:
        raise ValueError("no continuation token to score")
    return float((logp * mask).sum()) / count
