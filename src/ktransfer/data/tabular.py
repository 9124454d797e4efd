"""scikit-learn's bundled datasets (no download), split by a fixed seed into train/val/test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ktransfer.data.base import DataSplits, TensorDictDataset
from ktransfer.data.files import cell_problem, read_csv_rows
from ktransfer.registry import LocalPath

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
    bunch = getattr(skd, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return split_arrays(x, y, name, val_fraction, test_fraction, split_seed, standardize)


def split_arrays(
    x: np.ndarray, y: np.ndarray, name: str, val_fraction: float = 0.15, test_fraction: float = 0.2,
    split_seed: int = 0, standardize: bool = True, extra_info: dict[str, Any] | None = None,
) -> DataSplits:
    """Stratified train/val/test split of feature rows `x` and integer labels `y` in [0, C)."""
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    from sklearn.model_selection import train_test_split  # here: importing scikit-learn costs every run ~2.5 s

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
              "sizes": {"train": len(y_train), "val": len(y_val), "test": len(y_test)}, **(extra_info or {})},
    )


def csv_splits(
    path: LocalPath, label: str, features: Sequence[str] | None = None, val_fraction: float = 0.15,
    test_fraction: float = 0.2, split_seed: int = 0, standardize: bool = True,
) -> DataSplits:
    """A user's tabular CSV (header row): numeric `features` columns (default: all but `label`).

    Label values of any kind are mapped to classes 0..C-1 in sorted order (kept in
    `info["classes"]`). A missing column, a file that is not UTF-8 or is empty, a non-numeric or
    non-finite feature (`nan`, `inf`) and an empty or `nan` label are errors naming the file, line and column.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"csv: file not found: {file}")
    columns, numbered = read_csv_rows(file)
    rows = [row for _, row in numbered]
    if label not in columns:
        raise ValueError(f"csv: label column '{label}' not found in {file}; columns are: {', '.join(columns)}")
    names = list(features) if features is not None else [c for c in columns if c != label]
    missing = [c for c in names if c not in columns]
    if missing:
        raise ValueError(f"csv: feature column '{missing[0]}' not found in {file}; columns are: {', '.join(columns)}")
    if label in names:
        raise ValueError(f"csv: the label column '{label}' is also listed as a feature")
    if not names:
        raise ValueError(f"csv: {file} has no feature columns (only the label column '{label}')")
    x = np.empty((len(rows), len(names)), dtype=np.float32)
    for i, (line, row) in enumerate(numbered):
        problem = cell_problem(row[label])
        if problem:
            raise ValueError(f"csv: {file} line {line}, column '{label}' (the label): {problem}; every row needs a label")
        for j, c in enumerate(names):
            try:
                value = float(row[c])
            except (TypeError, ValueError):
                raise ValueError(f"csv: {file} line {line}, column '{c}': not a number: {row[c]!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"csv: {file} line {line}, column '{c}': {row[c].strip()!r} is not a finite number "
                                 "(features must be finite: fill or drop missing values first)")
            x[i, j] = value
    raw = [row[label] for row in rows]
    classes = sorted(set(raw), key=lambda v: (_as_number(v) is None, _as_number(v) or 0.0, v))
    if len(classes) < 2:
        raise ValueError(f"csv: label column '{label}' has fewer than two classes")
    index = {c: k for k, c in enumerate(classes)}
    y = np.asarray([index[v] for v in raw], dtype=np.int64)
    return split_arrays(x, y, file.stem, val_fraction, test_fraction, split_seed, standardize,
                        {"classes": classes, "features": names})


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
