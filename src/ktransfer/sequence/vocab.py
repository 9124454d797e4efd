"""Teacher and student must read and write the same tokens for token-level sequence distillation.

Two cases are told apart: one tokenizer whose embedding matrix is padded in one model (works:
the padded rows are dropped with `vocab_size`), and two different tokenizers (stops: the
teacher's token i is not the student's token i, so per-token log-probabilities cannot be
compared; the `cross_tokenizer` term, on a dataset with `teacher_tokenizer`, aligns the two
tokenizations instead, see `ktransfer.cross_tokenizer`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ktransfer.data.corpus import load_tokenizer
from ktransfer.models.causal import TOKENIZER_ATTR


class VocabularyError(ValueError):
    """Teacher and student do not share one vocabulary."""


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}" + (f" '{name}'" if name else "")


def _output_size(model: nn.Module) -> int | None:
    head = getattr(model, "get_output_embeddings", None)
    layer = head() if callable(head) else None
    weight = getattr(layer, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def check_same_tokenizer(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Raise `VocabularyError` naming both tokenizers unless they map the same strings to the same ids."""
    if student_tokenizer is None or teacher_tokenizer is None or student_tokenizer is teacher_tokenizer:
        return
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return
    differing = sorted(tok for tok in set(s_vocab) | set(t_vocab) if s_vocab.get(tok) != t_vocab.get(tok))
    example = differing[0]
    raise VocabularyError(
        f"the student's tokenizer ({_tokenizer_name(student_tokenizer)}, {len(s_vocab)} tokens) and the teacher's "
        f"({_tokenizer_name(teacher_tokenizer)}, {len(t_vocab)} tokens) differ (e.g. token {example!r}: student id "
        f"{s_vocab.get(example)}, teacher id {t_vocab.get(example)}; {len(differing)} tokens differ). Token-level "
        "distillation compares the two models' probabilities of the same token ids, so it needs one tokenizer: "
        "use a teacher and student trained with the same tokenizer (padded embedding rows are fine, set "
        "vocab_size), or let the teacher read its own tokens: set data.teacher_tokenizer to the teacher's tokenizer "
        "and distil with a knowledge term of type cross_tokenizer (it aligns the two tokenizations through "
        "character offsets)"
    )


def check_vocabularies(student: nn.Module, teacher: nn.Module | None, vocab_size: int | None = None,
                       student_tokenizer: Any = None, teacher_tokenizer: Any = None) -> None:
    """Teacher and student share one vocabulary: the same tokenizer and, unless `vocab_size` drops padded
    rows, output layers of one size; and special tokens (eos, bos, pad) with the same ids."""
    check_same_tokenizer(student_tokenizer, teacher_tokenizer)
    if teacher is None:
        return
    v_s, v_t = _output_size(student), _output_size(teacher)
    if v_s is not None and v_t is not None:
        if vocab_size is None and v_s != v_t:
            raise VocabularyError(
                f"student has vocabulary {v_s}, teacher {v_t}: if they share a tokenizer and one embedding matrix is "
                "padded, set generation.vocab_size (and the terms' vocab_size) to the real vocabulary size; if "
                "their tokenizers differ, token-level distillation cannot compare them")
        if vocab_size is not None and vocab_size > min(v_s, v_t):
            raise VocabularyError(f"vocab_size={vocab_size} is larger than the student's ({v_s}) or the teacher's "
                                  f"({v_t}) vocabulary")
    for key in ("eos_token_id", "bos_token_id", "pad_token_id", "decoder_start_token_id"):
        s_id = getattr(getattr(student, "config", None), key, None)
        t_id = getattr(getattr(teacher, "config", None), key, None)
        if s_id is not None and t_id is not None and s_id != t_id:
            raise VocabularyError(
                f"student and teacher disagree on {key} ({s_id} vs {t_id}): they were built with different "
                "tokenizers (or special tokens); token-level distillation needs one tokenizer for both")


def model_tokenizer(model: nn.Module | None) -> str | None:
    """The tokenizer folder a builder recorded on `model` (e.g. the SmolLM2 teacher's), if any."""
    return getattr(model, TOKENIZER_ATTR, None) if model is not None else None


def check_data_tokenizer(info: dict[str, Any], teacher: nn.Module | None) -> None:
    """The dataset's tokens are the teacher's tokens: when both the dataset (`info["tokenizer"]`, or
    `info["teacher_tokenizer"]` when it tokenises each text for the teacher too) and the teacher
    (`model_tokenizer`) name their tokenizer, the two must map the same strings to the same ids."""
    own = isinstance(info.get("teacher_tokenizer"), str)  # the dataset tokenises each text for the teacher too
    data_path, teacher_path = info.get("teacher_tokenizer" if own else "tokenizer"), model_tokenizer(teacher)
    if not isinstance(data_path, str) or teacher_path is None or data_path == teacher_path:
        return
    data_tok, teacher_tok = load_tokenizer(data_path), load_tokenizer(teacher_path)
    try:
        check_same_tokenizer(data_tok, teacher_tok)
    except VocabularyError as e:
        if own:
            raise VocabularyError(f"data.teacher_tokenizer ({data_path}) is not the teacher's tokenizer (from "
                                  f"{teacher_path}): the teacher would read ids of another vocabulary; set "
                                  f"data.teacher_tokenizer to {teacher_path}") from None
        raise VocabularyError(f"the dataset's tokens (the student's tokenizer, from {data_path}) are not the "
                              f"teacher's (tokenizer from {teacher_path}): {e}") from None
