"""Datasets, registered by name for run configs: ours (prepared offline) and Hugging Face `datasets` sources."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ktransfer.data.base import DataSplits, TensorDictDataset, collate_dicts
from ktransfer.data.corpus import BlockCollator, bbc_news_text, text_corpus
from ktransfer.data.hf_datasets import hf_dataset
from ktransfer.data.images import fashion_mnist, prepare_fashion_mnist
from ktransfer.data.tabular import csv_splits, sklearn_splits
from ktransfer.data.text import (
    PadCollator, TokenizedDataset, bbc_news, bible_paraphrase, prepare_bbc_news, prepare_bible, prepare_minilm,
    prepare_tweets, text_csv, text_jsonl, tweets,
)
from ktransfer.data.translation import (
    bible_translation, parallel_jsonl, parallel_tsv, prepare_bible_all, prepare_bible_translation,
)
from ktransfer.pretrained import prepare_smollm2
from ktransfer.registry import Registry

DATASETS: Registry[DataSplits] = Registry("dataset")


@DATASETS.register("digits")
def digits(val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes."""
    return sklearn_splits("digits", val_fraction, test_fraction, split_seed)


_SKLEARN = {
    "wine": "scikit-learn's bundled wine recognition data: 178 samples, 13 features, 3 classes.",
    "breast_cancer": "scikit-learn's bundled breast cancer data: 569 samples, 30 features, 2 classes.",
    "iris": "scikit-learn's bundled iris flowers: 150 samples, 4 features, 3 classes.",
}
for _name, _summary in _SKLEARN.items():
    _factory = partial(sklearn_splits, _name)
    _factory.__doc__ = _summary  # what `ktransfer list datasets` shows
    DATASETS.register(_name)(_factory)

DATASETS.register("fashion_mnist")(fashion_mnist)
DATASETS.register("csv")(csv_splits)
DATASETS.register("bbc_news")(bbc_news)
DATASETS.register("tweets")(tweets)
DATASETS.register("bible_paraphrase")(bible_paraphrase)
DATASETS.register("text_csv")(text_csv)
DATASETS.register("text_jsonl")(text_jsonl)
DATASETS.register("bible_translation")(bible_translation)
DATASETS.register("parallel_tsv")(parallel_tsv)
DATASETS.register("parallel_jsonl")(parallel_jsonl)
DATASETS.register("text_corpus")(text_corpus)
DATASETS.register("bbc_news_text")(bbc_news_text)
DATASETS.register("hf_dataset")(hf_dataset)


# Data and pretrained models that `ktransfer data prepare NAME` obtains once into the cache (a teacher,
# trained by a run, is prepared by `ktransfer.prepare`, which knows the runner).
PREPARERS: dict[str, Callable[[Any], Path]] = {
    "fashion-mnist": prepare_fashion_mnist, "bbc-news": prepare_bbc_news, "tweets": prepare_tweets,
    "bible-paraphrase": prepare_bible, "minilm": prepare_minilm, "smollm2": prepare_smollm2,
    "bible-de-en": partial(prepare_bible_translation, "bible-de-en"), "bible-all": prepare_bible_all,
}


def find_preparer(name: str) -> Callable[[Any], Path]:
    """The preparer of `ktransfer data prepare NAME`; any `bible-SRC-TGT` translation pair is one too."""
    if name in PREPARERS:
        return PREPARERS[name]
    if name.startswith("bible-") and name.count("-") == 2:
        return partial(prepare_bible_translation, name)
    if name == "teacher":
        raise ValueError("teacher: a teacher is trained by a run, which ktransfer.data does not know: use "
                         "ktransfer.prepare.find_preparer('teacher') (deprecated here), or "
                         "`ktransfer data prepare teacher --config FILE`")
    raise ValueError(f"unknown dataset to prepare '{name}'; valid choices: {', '.join(sorted(PREPARERS))}, "
                     "bible-SRC-TGT (two translation codes of the Bible corpus)")

__all__ = ["DATASETS", "DataSplits", "TensorDictDataset", "collate_dicts", "sklearn_splits", "csv_splits",
           "fashion_mnist", "prepare_fashion_mnist", "PREPARERS", "find_preparer", "PadCollator", "TokenizedDataset",
           "BlockCollator"]
