"""Per-example weights in the batch (`sample_weight`), honoured by the labels and response terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import LabelsTerm, ResponseTerm, StepView
from ktransfer.models import MLP
from ktransfer.tasks import Task
from ktransfer.train import Distiller, TrainConfig


def _view(batch: dict, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> StepView:
    from ktransfer.tasks import ForwardResult

    s = ForwardResult(student_logits, batch.get("labels"), None)
    t = None if teacher_logits is None else ForwardResult(teacher_logits, batch.get("labels"), None)
    return StepView(batch=batch, student=s, teacher=t)


def test_labels_term_weighted_mean_equals_duplicated_examples() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 2, 3])
    weighted = LabelsTerm().loss(_view({"labels": labels, "sample_weight": torch.tensor([2.0, 1.0, 0.0])}, logits))
    duplicated = F.cross_entropy(logits[[0, 0, 1]], labels[[0, 0, 1]])
    torch.testing.assert_close(weighted, duplicated)
    uniform = LabelsTerm().loss(_view({"labels": labels, "sample_weight": torch.full((3,), 0.3)}, logits))
    torch.testing.assert_close(uniform, F.cross_entropy(logits, labels))


def test_response_term_weighted_mean_and_zero_weights() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    labels = torch.zeros(4, dtype=torch.long)
    w = torch.tensor([1.0, 3.0, 0.0, 0.0])
    term = ResponseTerm(temperature=2.0)
    got = term.loss(_view({"labels": labels, "sample_weight": w}, s, t))
    per_row = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1)
    torch.testing.assert_close(got, (per_row * w).sum() / w.sum())
    zero = term.loss(_view({"labels": labels, "sample_weight": torch.zeros(4)}, s, t))
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert torch.isfinite(s.grad).all()


def test_bad_sample_weight_is_a_clear_error() -> None:
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="one weight per example"):
        LabelsTerm().loss(_view({"labels": labels, "sample_weight": torch.ones(2)}, logits))
    with pytest.raises(ValueError, match=">= 0"):
        LabelsTerm().loss(_view({"labels": labels, "sample_weight": torch.tensor([1.0, -1.0, 1.0])}, logits))


def test_engine_trains_with_sample_weights_and_zero_weight_rows_have_no_effect() -> None:
    """Rows of weight 0 change nothing the student learns (batch size = whole data, so batches match)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    noise_x, noise_y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    cfg = TrainConfig(max_steps=5, batch_size=64, seed=3, eval_every=5, log_every=5)

    def train(data: TensorDictDataset) -> torch.Tensor:
        torch.manual_seed(7)
        model = MLP(6, 3, hidden=(8,))
        Distiller(model, None, [LabelsTerm()], train_data=data, config=cfg, progress=False, task=Task()).fit()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = train(TensorDictDataset(inputs=x, labels=y, sample_weight=torch.ones(32)))
    padded = train(TensorDictDataset(
        inputs=torch.cat([x, noise_x]), labels=torch.cat([y, noise_y]),
        sample_weight=torch.cat([torch.ones(32), torch.zeros(8)]),
    ))
    torch.testing.assert_close(plain, padded)
