"""A mapping between two vocabularies: tokens that stand for the same text, plus one "rest" bucket.

Every vocabulary entry is normalised to the bytes of text it stands for, undoing its
tokenizer's marker convention:

* byte-level BPE (GPT-2, SmolLM2): each character is one byte (the GPT-2 byte-to-unicode table),
  so 'Ġworld' -> b' world' and a token of half a character -> its bytes;
* SentencePiece: '▁' -> b' ', and the byte-fallback tokens '<0xNN>' -> that byte;
* WordPiece: '##ing' (inside a word) -> b'ing'; a word-initial 'world' -> b' world' (a word in
  running text follows a space; WordPiece cannot say whether it did);
* anything else: the token's UTF-8 text.

Special tokens (and added special tokens) stand for no text and have no normalised form.
A *bucket* is a normalised text that both vocabularies hold; on each side a bucket's
probability is the sum over that side's ids with that text (usually one). The two
end-of-sequence tokens, when both tokenizers have one, are one more shared bucket (after the
texts): "the text ends here" is the same outcome on both sides (`end_of_sequence=False` leaves
them in rest). Every other id of a side (texts only it has, other special tokens, padded
embedding rows) falls into the last bucket, "rest". So each side's distribution over its own vocabulary becomes a distribution over
(shared texts + rest), and the two can be compared with any divergence.
When both tokenizers have the same vocabulary (same strings, same ids), the mapping is the
identity: every id is its own bucket, rest is empty, and the loss equals the same-vocabulary loss.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Convention = Literal["byte_level", "sentencepiece", "wordpiece", "plain"]
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def _component_types(node: Any) -> set[str]:
    """The `type` names in a tokenizer.json component (sequences included)."""
    if isinstance(node, dict):
        found = {str(node["type"])} if "type" in node else set()
        for value in node.values():
            found |= _component_types(value)
        return found
    if isinstance(node, list):
        return {t for item in node for t in _component_types(item)}
    return set()


def marker_convention(tokenizer: Any) -> Convention:
    """How a (fast, Hugging Face) tokenizer marks spaces and bytes in its vocabulary strings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} is not a fast "
                         "(Rust) tokenizer: its vocabulary conventions and character offsets cannot be read; load it "
                         "from a folder with tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    types = _component_types({k: spec.get(k) for k in ("pre_tokenizer", "decoder", "normalizer")})
    if model.get("type") == "WordPiece":
        return "wordpiece"
    if "ByteLevel" in types:
        return "byte_level"
    if "Metaspace" in types or model.get("byte_fallback") or "ByteFallback" in types:
        return "sentencepiece"
    return "plain"


def token_text(token: str, convention: Convention, prefix: str = "##") -> bytes:
    """The bytes of text one vocabulary string stands for (see the module docstring)."""
    if convention == "byte_level":
        table = _byte_decoder()
        if all(ch in table for ch in token):
            return bytes(table[ch] for ch in token)
        return token.encode("utf-8")  # an added token written as plain text
    if convention == "sentencepiece":
        match = _BYTE_TOKEN.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("▁", " ").encode("utf-8")
    if convention == "wordpiece":
        return token[len(prefix):].encode("utf-8") if token.startswith(prefix) else b" " + token.encode("utf-8")
    return token.encode("utf-8")


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def vocabulary_texts(tokenizer: Any) -> dict[int, bytes]:
    """Every non-special id of `tokenizer` with the text it stands for."""
    convention = marker_convention(tokenizer)
    prefix = "##"
    if convention == "wordpiece":
        prefix = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("continuing_subword_prefix", "##")
    special = _special_ids(tokenizer)
    return {int(i): token_text(t, convention, prefix) for t, i in tokenizer.get_vocab().items() if int(i) not in special}


@dataclass(frozen=True)
class VocabMapping:
    """Bucket of every student id and every teacher id; bucket `shared` (the last) is "rest".

    `student_bucket` / `teacher_bucket` hold one bucket per id of the tokenizer; ids beyond them
    (padded embedding rows) belong to rest (`buckets`). `end_of_sequence`: bucket `shared - 1`
    holds the two ends of sequence (not a token text).
    """

    student_bucket: Tensor
    teacher_bucket: Tensor
    shared: int
    identity: bool = False
    end_of_sequence: bool = False

    @property
    def shared_texts(self) -> int:
        """How many buckets are token texts both vocabularies hold."""
        return self.shared - int(self.end_of_sequence)

    @property
    def rest(self) -> int:
        return self.shared

    def buckets(self, side: Literal["student", "teacher"], size: int, device: torch.device) -> Tensor:
        """The bucket of each of `size` output rows of `side` (extra rows: rest)."""
        base = self.student_bucket if side == "student" else self.teacher_bucket
        if size < base.numel():
            raise ValueError(f"the {side} predicts {size} tokens, fewer than its tokenizer's {base.numel()}: "
                             "the model and the tokenizer do not belong together")
        out = torch.full((size,), self.rest, dtype=torch.long)
        out[: base.numel()] = base
        return out.to(device)


def identity_mapping(size: int) -> VocabMapping:
    """One bucket per id: two models with the same tokenizer."""
    ids = torch.arange(size)
    return VocabMapping(ids, ids.clone(), size, identity=True)


def vocab_mapping(student_tokenizer: Any, teacher_tokenizer: Any, end_of_sequence: bool = True,
                  ends: tuple[int | None, int | None] | None = None) -> VocabMapping:
    """The buckets of two tokenizers: identity for the same vocabulary, else the texts both hold, the two ends of
    sequence (`end_of_sequence` and both sides have one), and rest.

    `ends`: the (student, teacher) end-of-sequence ids, where the data knows them better than a tokenizer
    file does (a trained tokenizer.json names none; the dataset gives it its end of sequence); an entry
    None is that tokenizer's own."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return identity_mapping(max(len(student_tokenizer), max(s_vocab.values()) + 1))
    s_text, t_text = vocabulary_texts(student_tokenizer), vocabulary_texts(teacher_tokenizer)
    shared = sorted(set(s_text.values()) & set(t_text.values()))
    if not shared:
        raise ValueError("the student's and the teacher's vocabularies share no token text: the span method's "
                         "mapping would hold only the rest bucket; use method: uld, which needs no mapping")
    index = {text: k for k, text in enumerate(shared)}
    given = ends or (None, None)
    eos = (given[0] if given[0] is not None else student_tokenizer.eos_token_id,
           given[1] if given[1] is not None else teacher_tokenizer.eos_token_id)
    with_eos = end_of_sequence and None not in eos
    rest = len(shared) + int(with_eos)

    def buckets(tokenizer: Any, texts: dict[int, bytes], eos_id: int | None) -> Tensor:
        size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        out = torch.full((size,), rest, dtype=torch.long)
        for i, text in texts.items():
            out[i] = index.get(text, rest)
        if with_eos:
            out[int(eos_id)] = len(shared)  # type: ignore[arg-type]
        return out

    return VocabMapping(buckets(student_tokenizer, s_text, eos[0]), buckets(teacher_tokenizer, t_text, eos[1]), rest,
                        end_of_sequence=with_eos)


__all__ = ["Convention", "VocabMapping", "identity_mapping", "marker_convention", "token_text", "vocab_mapping",
           "vocabulary_texts"]
