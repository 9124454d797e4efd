"""Offline datasets, registered by name for run configs. Nothing here downloads."""

from __future__ import annotations

from functools import partial

from ktransfer.data.base import DataSplits, TensorDictDataset, collate_dicts
from ktransfer.data.tabular import sklearn_splits
from ktransfer.registry import Registry

DATASETS: Registry[DataSplits] = Registry("dataset")


@DATASETS.register("digits")
def digits(val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes."""
    return sklearn_splits("digits", val_fraction, test_fraction, split_seed)


for _name in ("wine", "breast_cancer", "iris"):
    DATASETS.register(_name)(partial(sklearn_splits, _name))

__all__ = ["DATASETS", "DataSplits", "TensorDictDataset", "collate_dicts", "sklearn_splits"]
