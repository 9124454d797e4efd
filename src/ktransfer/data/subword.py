"""Subword tokenizers for sequence-to-sequence data: trained on a training split, or the user's own.

A trained tokenizer is a Hugging Face `tokenizers` BPE or Unigram model behind a Metaspace
pre-tokenizer: words are split at spaces with the space kept as a visible marker, so decoding
restores the text, and a script written without spaces between words (Chinese, Japanese, Thai)
is simply one long pre-token that the subword model cuts. Text is NFKC-normalised before it is
cut (full-width letters and punctuation become their standard forms: "：" -> ":").

Every text round-trips: 256 byte pieces (<0x00> .. <0xFF>, SentencePiece's byte fallback) spell
out, as UTF-8 bytes, any character the training split never showed (a rare name in a held-out
book), and decoding joins them back into that character, so no id is <unk>. They count towards
`vocab_size` (a vocabulary of 8,000 learns 7,740 pieces). A trained tokenizer is cached under a
key made of the training texts, the settings, the `tokenizers` version and the code that trains
it, so a change of data, settings or code trains another one and an unchanged one is never retrained.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ktransfer.cache import cached_entry
from ktransfer.fingerprint import source_digest

SubwordModel = Literal["bpe", "unigram"]
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0..3 in a trained tokenizer
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))  # the last ids of a trained tokenizer
MIN_LEARNED = 8  # pieces a trained vocabulary learns at the least
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class SubwordTokenizer:
    """Encodes text to ids and decodes ids to text, with the special ids a seq2seq model needs.

    `backend` is a `tokenizers.Tokenizer` or a Hugging Face (`transformers`) tokenizer; `encode`
    never adds special tokens (the dataset appends `eos_id` to targets itself).
    """

    backend: Any
    pad_id: int
    eos_id: int
    bos_id: int | None
    unk_id: int | None
    vocab_size: int
    origin: str

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if hasattr(self.backend, "encode_batch"):  # tokenizers.Tokenizer
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
        return [list(ids) for ids in self.backend(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Text of each row, stopping at the first end-of-sequence id; special tokens dropped."""
        cut = [list(r[: list(r).index(self.eos_id)] if self.eos_id in r else r) for r in rows]
        if hasattr(self.backend, "decode_batch"):
            return [t.strip() for t in self.backend.decode_batch(cut, skip_special_tokens=True)]
        return [t.strip() for t in self.backend.batch_decode(cut, skip_special_tokens=True)]


def _key(texts: Sequence[str], settings: dict[str, Any]) -> str:
    import tokenizers

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    digest.update(json.dumps({**settings, "tokenizers": tokenizers.__version__, "code": source_digest([sys.modules[__name__]])},
                             sort_keys=True).encode())
    return f"subword-{settings['model']}-{settings['vocab_size']}-{digest.hexdigest()[:16]}"


def train_subword(texts: Sequence[str], vocab_size: int = 8000, model: SubwordModel = "bpe") -> Path:
    """A tokenizer trained on `texts` (cached: the same texts and settings give the same file); its path.

    `vocab_size` counts the special tokens and the 256 byte pieces (see the module docstring).
    """
    least = len(SPECIALS) + len(BYTE_PIECES) + MIN_LEARNED
    if vocab_size < least:
        raise ValueError(f"vocab_size must be >= {least} ({len(SPECIALS)} special tokens, {len(BYTE_PIECES)} byte "
                         f"pieces that spell any character, {MIN_LEARNED} learned pieces), got {vocab_size}")
    if model not in ("bpe", "unigram"):
        raise ValueError(f"tokenizer model must be 'bpe' or 'unigram', got {model!r}")
    if not texts:
        raise ValueError("cannot train a tokenizer on no texts")

    def build(out: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        learned = vocab_size - len(BYTE_PIECES)
        if model == "bpe":
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            trainer: Any = trainers.BpeTrainer(vocab_size=learned, special_tokens=list(SPECIALS), min_frequency=2,
                                               show_progress=False)
        else:
            tok = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(vocab_size=learned, special_tokens=list(SPECIALS), unk_token="<unk>",
                                              show_progress=False)
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(list(texts), trainer)
        (out / TOKENIZER_FILE).write_text(with_byte_fallback(tok.to_str()), encoding="utf-8")

    settings = {"vocab_size": vocab_size, "model": model, "byte_fallback": True}
    return cached_entry(_key(texts, settings), build) / TOKENIZER_FILE


def with_byte_fallback(spec_json: str) -> str:
    """A trained BPE / Unigram tokenizer (its JSON) with the 256 byte pieces appended to its vocabulary,
    byte fallback on, and a decoder that joins byte pieces back into characters."""
    spec = json.loads(spec_json)
    model = spec["model"]
    if model["type"] == "BPE":
        taken = set(model["vocab"])
        for piece in BYTE_PIECES:
            if piece not in taken:
                model["vocab"][piece] = len(model["vocab"])
    elif model["type"] == "Unigram":
        taken = {piece for piece, _ in model["vocab"]}
        floor = min((score for _, score in model["vocab"]), default=0.0) - 1.0  # never preferred to a learned piece
        model["vocab"] += [[piece, floor] for piece in BYTE_PIECES if piece not in taken]
    else:
        raise ValueError(f"byte fallback needs a BPE or Unigram model, got {model['type']}")
    model["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, spec["decoder"]]}
    return json.dumps(spec, ensure_ascii=False)


def from_tokenizers_file(path: Path, origin: str) -> SubwordTokenizer:
    """A `tokenizer.json` (Hugging Face `tokenizers`) with <pad> and </s> tokens (or [PAD] / [SEP])."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    ids = {name: tok.token_to_id(name) for name in ("<pad>", "[PAD]", "</s>", "[SEP]", "<s>", "[CLS]", "<unk>", "[UNK]")}
    pad = ids["<pad>"] if ids["<pad>"] is not None else ids["[PAD]"]
    eos = ids["</s>"] if ids["</s>"] is not None else ids["[SEP]"]
    if pad is None or eos is None:
        raise ValueError(f"{path}: a seq2seq tokenizer needs a padding token (<pad> or [PAD]) and an end-of-sequence "
                         "token (</s> or [SEP]); this one has neither or only one of them")
    bos = ids["<s>"] if ids["<s>"] is not None else ids["[CLS]"]
    unk = ids["<unk>"] if ids["<unk>"] is not None else ids["[UNK]"]
    return SubwordTokenizer(tok, pad, eos, bos, unk, tok.get_vocab_size(), origin)


def load_subword(path: str | Path) -> SubwordTokenizer:
    """The user's tokenizer: a `tokenizer.json` file, or a local Hugging Face tokenizer folder (never the hub)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path} (give a tokenizer.json file or a tokenizer folder)")
    if path.is_file():
        return from_tokenizers_file(path, str(path))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if tok.pad_token_id is None or eos is None:
        raise ValueError(f"{path}: a seq2seq tokenizer needs pad and end-of-sequence tokens; this one has "
                         f"pad={tok.pad_token!r}, eos={tok.eos_token!r}")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    return SubwordTokenizer(tok, int(tok.pad_token_id), int(eos), bos, tok.unk_token_id, len(tok), str(path))
