"""Linear probes on a teacher's intermediate representations, and the ProfWeight / SRatio weights.

ProfWeight (Dhurandhar et al., 2018): a logistic-regression probe per intermediate layer,
trained on the teacher's part of the data; a probe is kept when its validation accuracy beats
the simple model's by `margin`; a point's weight is its true-label probability averaged over
the kept probes. SRatio (Dhurandhar et al., 2020): weight = complex model's true-label
probability / the simple model's own, with points above a threshold dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Probe:
    """A fitted linear probe on one representation (standardised features, logistic regression)."""

    mean: np.ndarray
    scale: np.ndarray
    classifier: Any
    num_classes: int

    def predict_proba(self, rep: np.ndarray) -> np.ndarray:
        z = (rep - self.mean) / self.scale
        out = np.zeros((len(rep), self.num_classes))
        out[:, np.asarray(self.classifier.classes_, dtype=np.int64)] = self.classifier.predict_proba(z)
        return out


def fit_probe(rep: np.ndarray, y: np.ndarray, num_classes: int, seed: int, max_iter: int = 100) -> Probe:
    """A logistic-regression probe on `rep` (rows = points) for labels `y`.

    Iterations are capped for speed (probes only rank layers and give probabilities); the
    resulting convergence warnings are silenced.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean, scale = rep.mean(0), rep.std(0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs at least two classes in its training data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((rep - mean) / scale, y)
    return Probe(mean, scale, clf, num_classes)


def true_label_probs(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p(y_i | x_i) for each row of a (n, C) probability matrix."""
    return proba[np.arange(len(y)), y]


def keep_probes(probe_accuracies: np.ndarray | list[float], simple_accuracy: float, margin: float) -> np.ndarray:
    """Which probes ProfWeight keeps: validation accuracy > simple model's accuracy + margin."""
    return np.asarray(probe_accuracies, dtype=float) > simple_accuracy + margin


def profweight_weights(probe_true_probs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean true-label probability over the kept probes (columns of a (n, P) matrix)."""
    keep = np.asarray(keep, dtype=bool)
    if probe_true_probs.ndim != 2 or probe_true_probs.shape[1] != keep.size:
        raise ValueError(f"expected a (n, {keep.size}) matrix of probe probabilities, got {probe_true_probs.shape}")
    if not keep.any():
        raise ValueError("no probe is kept: ProfWeight has nothing to average")
    return probe_true_probs[:, keep].mean(axis=1)


def sratio_weights(complex_probs: np.ndarray, simple_probs: np.ndarray, threshold: float,
                   floor: float = 1e-6) -> np.ndarray:
    """SRatio weights: complex / simple true-label probability, 0 where that ratio exceeds `threshold`."""
    ratio = np.asarray(complex_probs, dtype=float) / np.maximum(np.asarray(simple_probs, dtype=float), floor)
    return np.where(ratio > threshold, 0.0, ratio)


def normalise_weights(weights: np.ndarray) -> np.ndarray:
    """Scale non-negative weights to mean 1 over the kept (non-zero) points, so step sizes compare."""
    w = np.asarray(weights, dtype=float)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("sample weights must be finite and >= 0")
    kept = w > 0
    if not kept.any():
        raise ValueError("every sample weight is 0: nothing left to train on")
    return w / w[kept].mean()
