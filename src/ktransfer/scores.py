"""Classification scores beyond accuracy: macro-F1 and Matthews correlation, from a model's predictions.

Accuracy hides what a skewed label distribution does to a classifier (tweet sentiment, paraphrase
pairs); macro-F1 weighs every class equally and MCC stays near 0 for a constant prediction.
Both come from scikit-learn on the predicted and true classes of a whole split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ktransfer.tasks import Task


@torch.no_grad()
def predict_classes(
    model: nn.Module, dataset: Dataset, task: Task, batch_size: int = 128, collate_fn: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) class indices of every labelled example of `dataset`, in order."""
    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    device = next(model.parameters()).device
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = task.forward(model, batch)
            if out.targets is None:
                raise ValueError("scoring needs labelled data (the batch has no 'labels')")
            mask = out.mask
            preds.append(out.logits[mask].argmax(-1).cpu().numpy())
            labels.append(out.targets[mask].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(preds), np.concatenate(labels)


def classification_scores(predicted: np.ndarray, true: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy, macro-F1 (every class weighs the same; a class never predicted scores 0) and MCC."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.size == 0:
        raise ValueError(f"need equally long, non-empty predictions and labels, got {predicted.shape} and {true.shape}")
    classes = list(range(num_classes)) if num_classes is not None else sorted(set(true.tolist()) | set(predicted.tolist()))
    return {
        "accuracy": float((predicted == true).mean()),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(true, predicted)),
    }
