"""How a model is called on a batch, and how its logits line up with the targets.

Knowledge terms never see task details: they get logits of shape (..., V) and targets of shape
(...) that are already aligned (for a causal LM the shift by one position is done here), with
`IGNORE_INDEX` where a position has no target (padding, prompt tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100
TaskKind = Literal["classification", "causal_lm", "seq2seq"]
TASK_KINDS: tuple[str, ...] = ("classification", "causal_lm", "seq2seq")

# Batch keys that hold targets or per-example loss weights, never model inputs.
TARGET_KEYS = ("labels", "sample_weight")


@dataclass
class ForwardResult:
    """A model's output on one batch: aligned logits and targets, plus the raw output."""

    logits: Tensor
    targets: Tensor | None
    raw: Any

    @property
    def mask(self) -> Tensor | None:
        """True where a position has a target; None when there are no targets."""
        return None if self.targets is None else self.targets != IGNORE_INDEX


def extract_logits(output: Any) -> Tensor:
    """The logits in a model's output: a tensor, `.logits` (Hugging Face), or a tuple's first item."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: return a tensor, "
        "a tuple whose first item is the logits, or an object with a `.logits` attribute"
    )


def call_model(model: nn.Module, batch: dict[str, Any], task: TaskKind) -> Any:
    """Call `model` on a batch dict.

    A batch with an `inputs` key calls `model(batch["inputs"])` (plain modules); otherwise every
    non-target key is passed as a keyword (Hugging Face style: input_ids, attention_mask, ...).
    Seq2seq models also get `labels`, from which Hugging Face builds the decoder inputs.
    """
    if "inputs" in batch:
        return model(batch["inputs"])
    kwargs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if task == "seq2seq" and "labels" in batch and "decoder_input_ids" not in batch:
        kwargs["labels"] = batch["labels"]
    if not kwargs:
        raise ValueError(f"batch has no model inputs: keys are {sorted(batch)}")
    return model(**kwargs)


@dataclass(frozen=True)
class Task:
    """Calls models and aligns logits with targets for one kind of task."""

    kind: TaskKind = "classification"

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task '{self.kind}'; valid choices: {', '.join(TASK_KINDS)}")

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> ForwardResult:
        raw = call_model(model, batch, self.kind)
        logits = extract_logits(raw)
        targets = batch.get("labels")
        if self.kind == "causal_lm":
            # position t predicts token t+1
            logits = logits[..., :-1, :]
            targets = None if targets is None else targets[..., 1:]
        if targets is not None and targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"labels of shape {tuple(targets.shape)} do not match logits of shape "
                f"{tuple(logits.shape)} for task '{self.kind}' (expected labels of shape "
                f"{tuple(logits.shape[:-1])})"
            )
        return ForwardResult(logits=logits, targets=targets, raw=raw)


@torch.no_grad()
def evaluate_logits(
    model: nn.Module, batches: Any, task: Task
) -> dict[str, float]:
    """Accuracy, mean cross-entropy (nats) and perplexity over all targeted positions of `batches`."""
    was_training = model.training
    model.eval()
    correct = 0
    total = 0
    nll = 0.0
    try:
        for batch in batches:
            out = task.forward(model, batch)
            if out.targets is None:
                raise ValueError("evaluation batches need 'labels'")
            mask = out.mask
            logits = out.logits[mask].float()
            targets = out.targets[mask]
            correct += int((logits.argmax(-1) == targets).sum())
            nll += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            total += int(targets.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation data has no labelled positions")
    return {"accuracy": correct / total, "loss": nll / total, "perplexity": math.exp(min(nll / total, 700.0))}
