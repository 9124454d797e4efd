"""Classification scores (macro-F1, MCC) against hand-computed values and scikit-learn, predictions through a
model, and the evaluator that selects a run's best checkpoint by them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ktransfer.registry import ConfigError
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


# ------------------------------------------------------------------ the evaluator used during training
def test_the_training_evaluator_reports_macro_f1_and_mcc_as_scikit_learn_computes_them() -> None:
    from ktransfer.data import TensorDictDataset
    from ktransfer.train import make_evaluator

    g = torch.Generator().manual_seed(3)
    x = torch.randn(103, 5, generator=g)
    y = torch.randint(0, 4, (103,), generator=g)
    model = nn.Linear(5, 4)
    with torch.no_grad():
        model.bias[3] = -50.0  # class 3 is never predicted: it scores F1 0, as in scikit-learn
    data = TensorDictDataset(inputs=x, labels=y)
    metrics = make_evaluator(data, batch_size=10)(model)  # 11 batches: the confusion counts add up
    predicted = model(x).argmax(-1).numpy()
    assert 3 not in predicted
    reference = classification_scores(predicted, y.numpy(), 4)
    for name in ("accuracy", "macro_f1", "mcc"):
        assert metrics[name] == pytest.approx(reference[name], rel=1e-12, abs=1e-15), name


def test_classification_metrics_from_a_confusion_matrix_in_float64() -> None:
    from ktransfer.tasks import classification_metrics

    # the hand-computed example above as a confusion matrix (rows true, columns predicted)
    confusion = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]], dtype=torch.float64)
    got = classification_metrics(confusion)
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, rel=1e-14)
    assert got["mcc"] == pytest.approx(12 / math.sqrt(22 * 24), rel=1e-14)
    constant = torch.tensor([[4, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)
    assert classification_metrics(constant)["mcc"] == 0.0  # undefined: 0, not NaN


@pytest.mark.parametrize("metric", ["macro_f1", "mcc"])
def test_a_classification_run_selects_its_best_checkpoint_by_macro_f1_or_mcc(metric: str, tmp_path: Path) -> None:
    import json

    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [8]},
                               "knowledge": [{"type": "labels"}],
                               "train": {"max_steps": 12, "batch_size": 32, "eval_every": 3, "metric": metric},
                               "optim": {"lr": 0.01}})
    result = run(cfg, tmp_path / "r", progress=False)
    evaluations = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in evaluations if e.get("split") == "val"]
    assert len(evaluations) == 4 and all(metric in e for e in evaluations)
    best = max(evaluations, key=lambda e: e[metric])
    assert result.train.best_step == best["step"] and result.train.best_metrics[metric] == best[metric]
    with pytest.raises(ConfigError, match="the evaluation of task 'causal_lm' reports"):
        RunConfig.from_dict({"task": "causal_lm", "data": {"name": "digits"}, "student": {"builder": "mlp"},
                             "train": {"metric": metric}})
