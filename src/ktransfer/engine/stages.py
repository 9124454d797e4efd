"""Batch stages: steps of the training loop that rewrite a batch before the knowledge terms see it.

A stage is the loop's extension point that sequence distillation plugs into: it may replace a batch's targets
by the teacher's generations or the student's own samples. The engine applies every stage to
each micro-batch of a step *before* it counts the step's targets, so the loss normalisation
sees the rewritten labels. A stage's state (above all the RNG that drives sampling) goes into
every checkpoint, so a resumed run samples exactly what the uninterrupted run sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ktransfer.tasks import Task


@dataclass
class StageContext:
    """What a stage may use: the unwrapped student (training) and teacher (frozen), the task,
    the optimizer step about to be taken (0-based count of finished steps), the device, and
    this process's index among `num_processes` (each process sees its own slice of the batch).

    Accelerate checkpoints a stage's state from the main process only, so a stage's RNG must
    advance identically on every process (draw for all processes, use this process's share).
    """

    student: nn.Module
    teacher: nn.Module | None
    task: Task
    step: int
    device: torch.device
    process_index: int = 0
    num_processes: int = 1


@runtime_checkable
class BatchStage(Protocol):
    """`stage(batch, ctx) -> batch`, plus `state_dict` / `load_state_dict` for checkpoints.

    A stage must not keep autograd graphs; it runs under whatever grad mode the engine has,
    so generation inside it should use `torch.no_grad()`.
    """

    def __call__(self, batch: dict[str, Any], ctx: StageContext) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StageStates:
    """The states of a run's stages as one object Accelerate checkpoints (keyed by position)."""

    def __init__(self, stages: list[BatchStage]) -> None:
        self.stages = stages

    def state_dict(self) -> dict[str, Any]:
        return {str(i): stage.state_dict() for i, stage in enumerate(self.stages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state) != len(self.stages):
            raise ValueError(f"the checkpoint holds the state of {len(state)} batch stage(s), this run has "
                             f"{len(self.stages)}: resume with the stages the run was started with")
        for i, stage in enumerate(self.stages):
            stage.load_state_dict(state[str(i)])
