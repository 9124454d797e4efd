"""scikit-learn's bundled datasets (no download), split by a fixed seed into train/val/test."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ktransfer.data.base import DataSplits, TensorDictDataset

_LOADERS = ("digits", "wine", "breast_cancer", "iris")


def sklearn_splits(
    name: str, val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0,
    standardize: bool = True,
) -> DataSplits:
    """Stratified train/val/test split of a bundled scikit-learn dataset.

    Features are standardised with statistics of the training split only, so no information
    from validation or test leaks into training.
    """
    import sklearn.datasets as skd

    if name not in _LOADERS:
        raise ValueError(f"unknown scikit-learn dataset '{name}'; valid choices: {', '.join(_LOADERS)}")
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    bunch = getattr(skd, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), random_state=split_seed, stratify=y_rest
    )
    if standardize:
        mean = x_train.mean(0)
        std = x_train.std(0)
        std[std == 0] = 1.0
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))

    def ds(a: np.ndarray, b: np.ndarray) -> TensorDictDataset:
        return TensorDictDataset(inputs=torch.from_numpy(np.ascontiguousarray(a)), labels=torch.from_numpy(b))

    return DataSplits(
        train=ds(x_train, y_train),
        val=ds(x_val, y_val),
        test=ds(x_test, y_test),
        info={"num_features": x.shape[1], "num_classes": int(y.max()) + 1, "name": name,
              "kind": "image" if name == "digits" else "tabular", "input_keys": ["inputs"],
              "sizes": {"train": len(y_train), "val": len(y_val), "test": len(y_test)}},
    )
