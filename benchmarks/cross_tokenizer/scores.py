"""Scores of the cross-tokenizer benchmark that compare across tokenizers: bits per byte of held-out text, and
chrF of greedy continuations of text prompts against their references, truncated to the reference's length.

Both are measured on text, not on tokens, so that students with different tokenizers (and the teacher) are
scored on exactly the same characters. Each document is read as its model reads a document in training: after
a start token (the end-of-sequence token the packed training stream puts between documents), in windows of at
most `max_length` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def windows(ids: Sequence[int], start_id: int, max_length: int) -> list[list[int]]:
    """`[start_id] + ids` cut into windows of at most `max_length` tokens that overlap by one token, so that every
    id of `ids` is predicted exactly once, from the window's earlier tokens (each window's first token is context
    only)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    seq = [start_id, *ids]
    step = max_length - 1
    return [seq[i:i + max_length] for i in range(0, len(seq) - 1, step)]


def covered_bytes(tok: Any, ids: Sequence[int]) -> int:
    """UTF-8 bytes that the tokens `ids` spell: their decoded text (no clean-up of spaces, special tokens left out:
    they spell no text)."""
    text = tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return len(text.encode("utf-8"))


def bits_per_byte(model: torch.nn.Module, tok: Any, texts: Sequence[str], start_id: int, max_length: int,
                  batch_size: int = 32) -> dict[str, Any]:
    """The model's negative log2-likelihood of `texts`, summed over every token of their tokenization (`tok`, no
    special tokens added; `windows`), divided by the UTF-8 bytes those tokens spell (`covered_bytes`).

    Also returned: the token and byte counts, and `bytes_not_covered`, the bytes of the texts the tokens do not
    spell back (0 for a byte-level BPE; a tokenizer that normalises or drops characters scores fewer bytes, and
    this says how many)."""
    if not texts:
        raise ValueError("bits_per_byte needs at least one text")
    rows: list[list[int]] = []
    tokens = covered = total_bytes = 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the tokenizer gives no token for the text {text[:40]!r}")
        rows += windows(ids, start_id, max_length)
        tokens += len(ids)
        covered += covered_bytes(tok, ids)
        total_bytes += len(text.encode("utf-8"))
    nll_nats = 0.0
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].double()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        nll_nats -= float((logp * mask[:, 1:].to(device)).sum())
    return {"bits_per_byte": nll_nats / math.log(2) / covered, "tokens": tokens, "bytes": covered,
            "bytes_not_covered": total_bytes - covered, "bytes_per_token": covered / tokens, "texts": len(texts)}


def prompts_and_references(texts: Sequence[str], prompt_words: int, reference_chars: int,
                           count: int) -> list[tuple[str, str]]:
    """(prompt, reference) of the first `count` texts long enough: the prompt is a text's first `prompt_words`
    words (up to the end of the last one, no space after it), the reference the next `reference_chars`
    characters."""
    out = []
    for text in texts:
        words = text.split()
        if len(words) <= prompt_words:
            continue
        end = 0
        for word in words[:prompt_words]:
            end = text.index(word, end) + len(word)
        reference = text[end:end + reference_chars]
        if len(reference) < reference_chars:
            continue
        out.append((text[:end], reference))
        if len(out) == count:
            break
    if not out:
        raise ValueError(f"no text has more than {prompt_words} words and {reference_chars} characters after them")
    return out


def continuations(model: torch.nn.Module, tok: Any, prompts: Sequence[str], start_id: int, eos_id: int | None,
                  pad_id: int, new_tokens: int) -> list[str]:
    """The model's greedy continuation of each prompt (read after `start_id`, one prompt at a time), decoded up to
    its first end of sequence."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for prompt in prompts:
        ids = torch.tensor([[start_id, *tok(prompt, add_special_tokens=False)["input_ids"]]], device=device)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
        cont = gen[0, ids.shape[1]:].tolist()
        if eos_id is not None and eos_id in cont:
            cont = cont[:cont.index(eos_id)]
        out.append(tok.decode(cont, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return out


def truncated_to(hypotheses: Sequence[str], references: Sequence[str]) -> list[str]:
    """Each hypothesis cut to its reference's length in characters: tokenizers that spell more characters per token
    do not get a longer continuation to score."""
    return [h[:len(r)] for h, r in zip(hypotheses, references, strict=True)]
