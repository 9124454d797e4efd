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

# What `evaluate_logits` reports, for every task. A task that gets an evaluator of its own
# (BLEU for seq2seq, say) lists the extra names in its spec below, and configs may then use them.
LOGIT_METRICS: tuple[str, ...] = ("accuracy", "loss", "perplexity")
# Metrics where lower is better; so is any metric whose name contains "loss".
MINIMISED_METRICS: tuple[str, ...] = ("loss", "perplexity", "teacher_kl")
# Sequence tasks with a teacher also report teacher_kl, KL(teacher || student) per target token of
# the evaluation data (ktransfer.sequence.heldout).
SEQUENCE_METRICS: tuple[str, ...] = (*LOGIT_METRICS, "teacher_kl")


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs from a dataset and what its evaluation reports, known without running it.

    `data_kinds` are the dataset kinds (`info["kind"]`: tabular, image, tokens) it can train on;
    `input_keys`, when set, are batch keys it needs besides `labels`; `metrics` are the names a
    run config may pick as `train.metric`.
    """

    data_kinds: tuple[str, ...]
    metrics: tuple[str, ...] = LOGIT_METRICS
    input_keys: tuple[str, ...] = ()


# Classification also reports macro-F1 and Matthews correlation, from the confusion matrix.
CLASS_METRICS: tuple[str, ...] = (*LOGIT_METRICS, "macro_f1", "mcc")

TASK_SPECS: dict[str, TaskSpec] = {
    "classification": TaskSpec(data_kinds=("tabular", "image", "tokens"), metrics=CLASS_METRICS),
    "causal_lm": TaskSpec(data_kinds=("tokens",), metrics=SEQUENCE_METRICS, input_keys=("input_ids",)),
    # BLEU and chrF (sacrebleu, 0-100) when the evaluation data keeps raw references (translation datasets)
    "seq2seq": TaskSpec(data_kinds=("tokens",), metrics=(*SEQUENCE_METRICS, "bleu", "chrf"), input_keys=("input_ids",)),
}


def metric_mode(metric: str) -> Literal["min", "max"]:
    """Whether a lower ("min": losses, perplexity) or a higher ("max": accuracy, BLEU) value is better."""
    name = metric.lower()
    return "min" if name in MINIMISED_METRICS or "loss" in name else "max"


def label_range_error(logits: Tensor, targets: Tensor, who: str = "the model") -> ValueError:
    """The error for labels outside the classes of a model, built once cross-entropy has refused them.

    Classes are the last dimension of `logits`; `IGNORE_INDEX` marks positions without a target.
    """
    num = logits.shape[-1]
    bad = targets[(targets != IGNORE_INDEX) & ((targets < 0) | (targets >= num))]
    found = sorted({int(v) for v in bad.flatten().tolist()})
    return ValueError(
        f"labels must be class indices from 0 to {num - 1}: {who} predicts {num} classes, but the data has labels "
        f"{', '.join(map(str, found[:5]))}{' ...' if len(found) > 5 else ''}; give the model as many outputs as "
        f"the data has classes (label {IGNORE_INDEX} marks a position without a target)"
    )


# Keys a sequence stage (`ktransfer.sequence`) adds to a batch: where each example's targets came
# from, the log-probability of each generated token under the policy that sampled it, and the
# reward of the student's greedy output (a self-critic baseline), the generation budget. Never model inputs.
SEQUENCE_KEYS = ("target_source", "sample_logprobs", "greedy_reward", "greedy_length", "max_new_tokens")
# Keys of a dataset that tokenises each text for a teacher with another tokenizer too: the character
# offsets of each tokenization (`ktransfer.data.corpus`; the teacher's arrive as `teacher_token_offsets`).
ALIGNMENT_KEYS = ("token_offsets",)
# The start of an end-of-sequence token's character offsets: (END_OF_SEQUENCE_OFFSET, c) is an end of sequence
# after the text that ends at character c (other special tokens and padding have (-1, -1)); the cross-tokenizer
# alignment pairs the two sides' ends of sequence at the same c (`ktransfer.cross_tokenizer.align`).
END_OF_SEQUENCE_OFFSET = -2
# Batch keys that hold targets, per-example loss weights or alignments, never model inputs.
TARGET_KEYS = ("labels", "sample_weight", *SEQUENCE_KEYS, *ALIGNMENT_KEYS)


class ForwardResult:
    """A model's output on one batch: aligned logits and targets, plus the raw output.

    With a fused output layer (`hidden` and `head` given, `logits` None), `hidden` holds the
    hidden states aligned with the targets and `head` the (weight, bias) that turns them into
    logits; a loss that takes `student_head` uses them without ever building the logits, and
    reading `logits` computes them (all at once) on first access.
    """

    def __init__(self, logits: Tensor | None, targets: Tensor | None, raw: Any, task: TaskKind = "classification",
                 *, hidden: Tensor | None = None, head: tuple[Tensor, Tensor | None] | None = None) -> None:
        if logits is None and (hidden is None or head is None):
            raise ValueError("a ForwardResult needs logits, or hidden states and the head that projects them")
        self._logits = logits
        self.targets = targets
        self.raw = raw
        self.task = task
        self.hidden = hidden
        self.head = head

    @property
    def logits(self) -> Tensor:
        """The logits (..., V); for a fused head computed from the hidden states on first access."""
        if self._logits is None:
            assert self.hidden is not None and self.head is not None
            self._logits = nn.functional.linear(self.hidden, *self.head)
        return self._logits

    @property
    def fused(self) -> bool:
        """Whether the logits were left to the loss (hidden states + output layer) and not built yet."""
        return self._logits is None

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


def model_kwargs(batch: dict[str, Any], task: TaskKind) -> dict[str, Any]:
    """The keyword arguments a batch dict gives a (Hugging Face style) model: every non-target key.

    Seq2seq models also get `labels`, from which Hugging Face builds the decoder inputs.
    """
    kwargs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if task == "seq2seq" and "decoder_input_ids" not in batch:
        if "labels" not in batch:
            raise ValueError(
                f"a seq2seq batch without decoder targets: it has {', '.join(sorted(batch))} but neither 'labels' "
                "(the target ids, from which the decoder inputs are built) nor 'decoder_input_ids'; a seq2seq "
                "dataset must give each example its target sequence as 'labels'")
        kwargs["labels"] = batch["labels"]
    if not kwargs:
        raise ValueError(f"batch has no model inputs: keys are {sorted(batch)}")
    return kwargs


def call_model(model: nn.Module, batch: dict[str, Any], task: TaskKind) -> Any:
    """Call `model` on a batch dict.

    A batch with an `inputs` key calls `model(batch["inputs"])` (plain modules); otherwise every
    non-target key is passed as a keyword (Hugging Face style: input_ids, attention_mask, ...).
    Seq2seq models also get `labels`, from which Hugging Face builds the decoder inputs.
    """
    if "inputs" in batch:
        return model(batch["inputs"])
    return model(**model_kwargs(batch, task))


@dataclass(frozen=True)
class Task:
    """Calls models and aligns logits with targets for one kind of task."""

    kind: TaskKind = "classification"

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task '{self.kind}'; valid choices: {', '.join(TASK_KINDS)}")

    @property
    def spec(self) -> TaskSpec:
        """What this task needs from the data and which metrics its evaluation reports."""
        return TASK_SPECS[self.kind]

    def forward(self, model: nn.Module, batch: dict[str, Any], *, fused_head: bool = False,
                check_head: bool = False) -> ForwardResult:
        """Call `model` and align its logits with the targets.

        With `fused_head` (sequence tasks, Hugging Face models; see `ktransfer.fused_head`) the
        model computes no logits for the positions: the result holds its hidden states and output
        layer instead, and `check_head` verifies once that they give the model's own logits.
        """
        hidden = head = None
        if fused_head:
            from ktransfer.fused_head import FusedHeadError, fused_forward

            if self.kind == "classification" or "inputs" in batch:
                raise FusedHeadError(f"fused_head needs a sequence task (causal_lm, seq2seq) and a Hugging Face "
                                     f"model called with keywords; this is task '{self.kind}'")
            raw, hidden, head = fused_forward(model, model_kwargs(batch, self.kind), check=check_head)
            aligned = hidden
        else:
            raw = call_model(model, batch, self.kind)
            aligned = extract_logits(raw)
        targets = batch.get("labels")
        if self.kind == "causal_lm":
            # position t predicts token t+1
            aligned = aligned[..., :-1, :]
            targets = None if targets is None else targets[..., 1:]
        if targets is not None and targets.shape != aligned.shape[:-1]:
            what = "hidden states" if fused_head else "logits"
            raise ValueError(
                f"labels of shape {tuple(targets.shape)} do not match {what} of shape "
                f"{tuple(aligned.shape)} for task '{self.kind}' (expected labels of shape "
                f"{tuple(aligned.shape[:-1])})"
            )
        if fused_head:
            return ForwardResult(None, targets, raw, self.kind, hidden=aligned, head=head)
        return ForwardResult(logits=aligned, targets=targets, raw=raw, task=self.kind)

    def targets_per_example(self, batch: dict[str, Any]) -> Tensor | None:
        """Each example's target positions (B,), aligned as in `forward` (causal LMs: position t predicts token
        t + 1); None for a batch without labels."""
        labels = batch.get("labels")
        if not isinstance(labels, Tensor):
            return None
        if self.kind == "causal_lm":
            labels = labels[..., 1:]
        return (labels != IGNORE_INDEX).reshape(labels.shape[0], -1).sum(-1)

    def count_targets(self, batch: dict[str, Any]) -> float:
        """Positions of `batch` that a loss averages over: its targets, aligned as in `forward`.

        Without labels every position counts (rows for classification, tokens for sequences),
        which is what the knowledge terms average over then; with a `sample_weight` per example,
        each position counts its example's weight, as the weighted terms divide by that sum. The engine divides a step's loss
        by this count summed over the step's micro-batches and processes.
        """
        per_example = self.targets_per_example(batch)
        if per_example is not None:
            weights = batch.get("sample_weight")
            if isinstance(weights, Tensor):  # weighted terms divide by the summed weights of their positions
                return float((weights.reshape(-1) * per_example.to(weights.dtype)).sum())
            return int(per_example.sum())
        first = batch.get("inputs", batch.get("input_ids"))
        if not isinstance(first, Tensor):
            first = next((v for v in batch.values() if isinstance(v, Tensor)), None)
        if first is None:
            raise ValueError(f"cannot count the examples of a batch with keys {sorted(batch)}")
        if self.kind == "classification" or first.dim() < 2:
            return int(first.shape[0])
        positions = first.shape[-1] - (1 if self.kind == "causal_lm" else 0)
        return int(first.shape[0] * positions)


def evaluate_sums(model: nn.Module, batches: Any, task: Task) -> tuple[float, float, float]:
    """(correct predictions, summed cross-entropy in nats, labelled positions) over `batches`.

    Sums rather than means, so that shards evaluated by several processes add up exactly.
    """
    correct, nll, total = _sums(model, batches, task, confusion=False)
    return correct, nll, total


def evaluation_sums(model: nn.Module, batches: Any, task: Task) -> tuple[float, ...]:
    """`evaluate_sums`' totals, followed for classification by the confusion counts (true class x
    predicted class, flattened: K x K for K outputs), in one pass: everything `metrics_from_sums`
    needs, as sums that add up over the shards of several processes."""
    return _sums(model, batches, task, confusion=task.kind == "classification")


@torch.no_grad()
def _sums(model: nn.Module, batches: Any, task: Task, confusion: bool) -> tuple[float, ...]:
    was_training = model.training
    model.eval()
    correct = 0
    total = 0
    nll = 0.0
    counts: Tensor | None = None
    try:
        for batch in batches:
            out = task.forward(model, batch)
            if out.targets is None:
                raise ValueError("evaluation batches need 'labels'")
            mask = out.mask
            logits = out.logits[mask].float()
            targets = out.targets[mask]
            predicted = logits.argmax(-1)
            correct += int((predicted == targets).sum())
            try:
                nll += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            except IndexError as e:  # a label beyond the model's classes (the CPU kernel says "Target N is out of bounds")
                raise label_range_error(logits, targets) from e
            total += int(targets.numel())
            if confusion:
                k = logits.shape[-1]
                batch_counts = torch.bincount((targets * k + predicted).cpu(), minlength=k * k).double()
                counts = batch_counts if counts is None else counts + batch_counts
    finally:
        model.train(was_training)
    return (float(correct), nll, float(total), *(counts.tolist() if counts is not None else []))


def metrics_from_sums(correct: float, nll: float, total: float, *confusion: float) -> dict[str, float]:
    """Accuracy, mean cross-entropy (nats) and perplexity from `evaluate_sums`' totals; with the
    flattened confusion counts of `evaluation_sums`, macro-F1 and MCC too."""
    if total == 0:
        raise ValueError("evaluation data has no labelled positions")
    loss = nll / total
    perplexity = math.exp(min(loss, 700.0)) if math.isfinite(loss) else loss
    metrics = {"accuracy": correct / total, "loss": loss, "perplexity": perplexity}
    if confusion:
        k = math.isqrt(len(confusion))
        metrics.update(classification_metrics(torch.tensor(confusion, dtype=torch.float64).reshape(k, k)))
    return metrics


def classification_metrics(confusion: Tensor) -> dict[str, float]:
    """Macro-F1 and Matthews correlation from a confusion matrix (rows: true class, columns: predicted).

    Macro-F1 averages the per-class F1 = 2 TP / (2 TP + FP + FN) over every class of the matrix, a
    class neither present nor predicted scoring 0 (scikit-learn's zero_division=0). MCC is the
    multi-class (Gorodkin) form (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)),
    c correct, s total, t_k / p_k true / predicted counts of class k; 0 when undefined.
    """
    m = confusion.double()
    tp, t, p = m.diagonal(), m.sum(1), m.sum(0)
    denominators = t + p  # 2 TP + FP + FN
    f1 = torch.where(denominators > 0, 2 * tp / denominators.clamp_min(1e-300), torch.zeros_like(tp))
    s, c = float(m.sum()), float(tp.sum())
    cov = c * s - float((p * t).sum())
    scale = (s * s - float((p * p).sum())) * (s * s - float((t * t).sum()))
    return {"macro_f1": float(f1.mean()), "mcc": cov / math.sqrt(scale) if scale > 0 else 0.0}


def evaluate_logits(model: nn.Module, batches: Any, task: Task) -> dict[str, float]:
    """Accuracy, mean cross-entropy (nats), perplexity (and for classification macro-F1 and MCC) over all
    targeted positions of `batches`."""
    return metrics_from_sums(*evaluation_sums(model, batches, task))
