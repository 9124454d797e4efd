"""Validation metrics of a model on a dataset, split over processes and summed: the engine's evaluator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ktransfer.batching import length_sorted
from ktransfer.bleu import generation_metrics, has_references
from ktransfer.data.base import collate_dicts
from ktransfer.engine.batches import split_batch
from ktransfer.engine.distributed import shard_batches, sum_over_processes
from ktransfer.engine.sharding import is_sharded, missing_passes, run_spare_passes
from ktransfer.tasks import Task, TaskKind, evaluation_sums, metrics_from_sums

Evaluator = Callable[[nn.Module], dict[str, float]]


def make_evaluator(
    data: Dataset, task: Task | TaskKind = "classification", batch_size: int = 512,
    collate_fn: Callable[[list[Any]], dict[str, Any]] = collate_dicts,
) -> Evaluator:
    """An evaluator computing accuracy, cross-entropy and perplexity of a model on `data`, for
    classification macro-F1 and MCC, and for a seq2seq split that keeps its references
    (translation data) BLEU and chrF of generated output.

    Under several processes each evaluates its own shard (every world_size-th example) and the
    sums are added up across processes, so the work is split and the metrics cover all of `data`.
    """
    task = task if isinstance(task, Task) else Task(task)
    scores_translations = task.kind == "seq2seq" and has_references(data)

    by_length = length_sorted(data)  # order does not change the sums; less padding makes them cheaper

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        batches, world = shard_batches(by_length, batch_size, collate_fn, device)
        if world > 1 and is_sharded(model):  # shards of uneven length: every process runs as many forwards
            sums = evaluation_sums(model, batches, task)
            run_spare_passes([model], missing_passes(len(by_length), batch_size),  # type: ignore[arg-type]
                             split_batch(collate_fn([by_length[0]]))[0], lambda b: task.forward(model, b), device)
        else:
            sums = evaluation_sums(model, batches, task)
        metrics = metrics_from_sums(*sum_over_processes(sums, world, device))
        if scores_translations:  # every process decodes the same bounded subset: the scores agree everywhere
            metrics.update(generation_metrics(model, data, collate_fn))
        return metrics

    return evaluate

