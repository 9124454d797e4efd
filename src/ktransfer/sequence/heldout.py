"""The student's divergence from the teacher on held-out text, as an evaluation metric.

`teacher_kl` = KL(teacher || student) = sum_v p_T(v) (log p_T(v) - log p_S(v)), per target token
of the evaluation data (positions with a label, after the causal shift), averaged over all of
them, in nats. It is what word-level distillation minimises, measured on text neither model
generated, so runs trained in different ways (on-policy, on the text alone) compare on it.
When one embedding matrix is padded (same tokenizer), the distributions are compared over the
first min(V_student, V_teacher) ids, the real vocabulary of both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ktransfer.divergences import forward_kl
from ktransfer.engine.batches import split_batch
from ktransfer.engine.distributed import shard_batches, sum_over_processes
from ktransfer.engine.sharding import is_sharded, missing_passes, run_spare_passes
from ktransfer.tasks import Task

TEACHER_KL = "teacher_kl"


def _vocab(logits_s: Tensor, logits_t: Tensor, vocab_size: int | None) -> int:
    return vocab_size if vocab_size is not None else min(logits_s.shape[-1], logits_t.shape[-1])


@torch.no_grad()
def teacher_kl_sums(student: nn.Module, teacher: nn.Module, batches: Iterable[dict[str, Any]], task: Task,
                    vocab_size: int | None = None, chunk_size: int | None = 1024) -> tuple[float, float]:
    """(summed KL(teacher || student) in nats, number of target tokens) over `batches`; both models in eval mode."""
    was = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, count = 0.0, 0.0
    try:
        for batch in batches:
            s_out = task.forward(student, batch)
            t_device = next(teacher.parameters()).device
            t_out = task.forward(teacher, {k: v.to(t_device) if isinstance(v, Tensor) else v for k, v in batch.items()})
            mask = s_out.mask
            if mask is None:
                raise ValueError(f"{TEACHER_KL}: evaluation batches need 'labels'")
            s_logits, t_logits = s_out.logits, t_out.logits.to(s_out.logits.device)
            vocab = _vocab(s_logits, t_logits, vocab_size)
            value = forward_kl(s_logits[..., :vocab], t_logits[..., :vocab], mask=mask, reduction="sum",
                               chunk_size=chunk_size)
            total += float(value)
            count += float(mask.sum())
    finally:
        student.train(was[0])
        teacher.train(was[1])
    return total, count


def with_teacher_kl(
    evaluate: Callable[[nn.Module], dict[str, float]], data: Dataset, task: Task, teacher: nn.Module,
    batch_size: int, collate_fn: Callable[[list[Any]], dict[str, Any]], vocab_size: int | None = None,
) -> Callable[[nn.Module], dict[str, float]]:
    """`evaluate` plus `teacher_kl` on `data` (under several processes, each its shard; sums are added up)."""
    def evaluator(model: nn.Module) -> dict[str, float]:
        metrics = dict(evaluate(model))
        device = next(model.parameters()).device
        if next(teacher.parameters()).device != device:
            teacher.to(device)  # frozen: evaluation only moves it where the student is
        batches, world = shard_batches(data, batch_size, collate_fn, device)
        if world > 1 and is_sharded(model):  # shards of uneven length: every process runs as many forwards
            sums = teacher_kl_sums(model, teacher, batches, task, vocab_size)
            run_spare_passes([model, teacher], missing_passes(len(data), batch_size),  # type: ignore[arg-type]
                             split_batch(collate_fn([data[0]]))[0],
                             lambda b: (task.forward(model, b), task.forward(teacher, b)), device)
        else:
            sums = teacher_kl_sums(model, teacher, batches, task, vocab_size)
        total, count = sum_over_processes(sums, world, device)
        if count == 0:
            raise ValueError(f"{TEACHER_KL}: evaluation data has no labelled positions")
        metrics[TEACHER_KL] = total / count
        return metrics

    return evaluator


__all__ = ["TEACHER_KL", "teacher_kl_sums", "with_teacher_kl"]
