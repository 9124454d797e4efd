"""How the loop draws its batches (a resumable per-epoch order) and splits them into student and teacher views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from ktransfer.batching import length_grouped_order

TEACHER_PREFIX = "teacher_"


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch that depends only on (seed, epoch), so a resumed run sees the same order.

    Given per-example `lengths`, consecutive `batch_size` examples of the permutation are grouped
    by similar length (`ktransfer.batching.length_grouped_order`), so batches carry little padding.
    """

    def __init__(self, n: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int = 1) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.lengths = lengths
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[override]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.lengths is None:
            return iter(order.tolist())
        return iter(length_grouped_order(order, self.lengths, self.batch_size, g))


def split_batch(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Student and teacher views of a batch: keys `teacher_X` replace `X` for the teacher only.

    This lets teacher and student take different inputs (other tokenizers, image sizes).
    """
    student = {k: v for k, v in batch.items() if not k.startswith(TEACHER_PREFIX)}
    teacher = dict(student)
    teacher.update({k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)})
    return student, teacher
