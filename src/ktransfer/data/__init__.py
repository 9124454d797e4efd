"""Offline datasets, registered by name for run configs. Nothing here downloads."""

from __future__ import annotations

from functools import partial

from ktransfer.data.base import DataSplits, TensorDictDataset, collate_dicts
from ktransfer.data.images import fashion_mnist, prepare_fashion_mnist
from ktransfer.data.tabular import csv_splits, sklearn_splits
from ktransfer.registry import Registry

DATASETS: Registry[DataSplits] = Registry("dataset")


@DATASETS.register("digits")
def digits(val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes."""
    return sklearn_splits("digits", val_fraction, test_fraction, split_seed)


for _name in ("wine", "breast_cancer", "iris"):
    DATASETS.register(_name)(partial(sklearn_splits, _name))

DATASETS.register("fashion_mnist")(fashion_mnist)
DATASETS.register("csv")(csv_splits)

# Datasets that `ktransfer data prepare NAME` obtains once into the cache.
PREPARERS = {"fashion-mnist": prepare_fashion_mnist}

__all__ = ["DATASETS", "DataSplits", "TensorDictDataset", "collate_dicts", "sklearn_splits", "csv_splits", "fashion_mnist", "prepare_fashion_mnist", "PREPARERS"]
