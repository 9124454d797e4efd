"""Classification scores (macro-F1, MCC) against hand-computed values, and predictions through a model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ktransfer.scores import classification_scores, predict_classes
from ktransfer.tasks import Task


def test_scores_match_the_hand_computed_values() -> None:
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    s = classification_scores(pred, true, 3)
    # per-class F1: 0.5, 0.8, 2/3; MCC = (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = 12 / sqrt(22*24)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["mcc"] == pytest.approx(12 / math.sqrt(22 * 24))


def test_a_constant_prediction_scores_zero_mcc_and_a_low_macro_f1() -> None:
    true = np.array([0, 0, 0, 1, 2, 0])
    s = classification_scores(np.zeros(6, dtype=int), true, 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["mcc"] == 0.0
    assert s["macro_f1"] == pytest.approx((2 * 4 / 6 / (1 + 4 / 6)) / 3)  # a class never predicted scores 0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="equally long"):
        classification_scores(np.array([0, 1]), np.array([0]))


def test_predict_classes_returns_the_argmax_in_order() -> None:
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    model = nn.Linear(4, 3)

    def collate(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"inputs": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}

    pred, true = predict_classes(model, TensorDataset(x, y), Task("classification"), batch_size=3, collate_fn=collate)
    np.testing.assert_array_equal(true, y.numpy())
    np.testing.assert_array_equal(pred, model(x).argmax(-1).numpy())
