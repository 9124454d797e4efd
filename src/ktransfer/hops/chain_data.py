"""A chain's dataset as arrays, its training pool split into the teacher's part and the students' part."""

from __future__ import annotations

from typing import Any

import numpy as np

from ktransfer.data import DATASETS
from ktransfer.hops.config import ChainConfig
from ktransfer.hops.fitting import ChainData
from ktransfer.hops.models import stable_seed


def load_chain_data(cfg: ChainConfig) -> ChainData:
    """The dataset as arrays, the training pool split into the teacher's and the students' parts."""
    spec = dict(cfg.data)
    splits = DATASETS.build(spec.pop("name"), spec, "data")

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        t = ds.tensors
        return t["inputs"].numpy().astype(np.float32), t["labels"].numpy().astype(np.int64)

    x, y = arrays(splits.train)
    x_val, y_val = arrays(splits.val)
    x_test, y_test = arrays(splits.test)
    every = np.arange(len(y))
    if cfg.confidence_split == "holdout":
        from sklearn.model_selection import train_test_split

        stratify = y if np.bincount(y).min() >= 2 else None
        t_idx, s_idx = train_test_split(every, train_size=cfg.teacher_fraction, stratify=stratify,
                                        random_state=stable_seed(cfg.seed, "pool-split"))
        t_idx, s_idx = np.sort(t_idx), np.sort(s_idx)
    else:
        t_idx, s_idx = every, every
    return ChainData(x, y, x_val, y_val, x_test, y_test, t_idx, s_idx, dict(splits.info),
                     split=cfg.confidence_split, folds=cfg.folds)
