"""A store build across several processes (torchrun, accelerate launch): who runs which batch, who writes.

The examples to compute are cut into the batches a one-process build makes, and the batches are
dealt in rounds: in round r process p runs batch r * N + p. With `train.sharding: fsdp` the teacher
is sharded per layer (`ktransfer.engine.sharding`), and a sharded layer gathers its parameters from
every process at each forward pass, so every process makes a pass in every round: one with no batch
left repeats the round's first batch and drops the result. After each round the results go to the
main process (rank 0), the only one that writes the store, batch by batch as one process would, so
the store has the same bytes, checksums, atomic writes and resumability as a one-process build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ktransfer.engine import sharding
from ktransfer.engine.distributed import leave_process_group_at_exit

T = TypeVar("T")


@dataclass(frozen=True)
class BuildProcesses:
    """The processes of one build: how many, which one this is, its device, whether the teacher is sharded."""

    world: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        """A message for the user, from the main process only (stderr)."""
        if self.is_main:
            print(f"ktransfer: {message}", file=sys.stderr, flush=True)

    def rounds(self, batches: Sequence[T]) -> list[list[T]]:
        """`batches` in rounds of `world`, one per process in rank order (the last round may be shorter)."""
        return [list(batches[start:start + self.world]) for start in range(0, len(batches), self.world)]

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's `value` on the main process, in rank order (None elsewhere). Collective."""
        if self.world == 1:
            return [value]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        torch.distributed.gather_object(value, out, dst=0)
        return out

    def from_main(self, value: Any) -> Any:
        """The main process's `value`, on every process. Collective."""
        if self.world == 1:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def join_processes(sharding_mode: str) -> BuildProcesses:
    """The processes of this build, from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK).

    One process (no launcher): the CPU, nothing shared. Several: the process group is joined (gloo
    on the CPU, nccl with a GPU per process, `cuda:LOCAL_RANK`) unless the caller has joined it, and
    stays joined, so that further builds in the process reuse it (joining again after leaving can
    meet the stale rendezvous of the group left); the command line leaves it at its end
    (`engine.distributed.leave_process_group`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if sharding_mode == "fsdp":
            BuildProcesses().say("train.sharding=fsdp: one process, nothing to shard; building unsharded")
        return BuildProcesses()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    leave_process_group_at_exit()
    return BuildProcesses(world=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(),
                          device=device, sharded=sharding_mode == "fsdp")


def place_teacher(teacher: nn.Module, processes: BuildProcesses, shard_layers: Sequence[str]) -> nn.Module:
    """The frozen teacher on this process's device; sharded per layer across the processes when asked.

    A sharded teacher is not moved whole: `fully_shard` moves each layer to the device as it shards
    it, so the device never holds more of the teacher than one layer beside its shards.
    """
    if not processes.sharded:
        return teacher.to(processes.device)
    names = sharding.layer_class_names(teacher, shard_layers, "teacher")
    layers = sharding.shard_model(teacher, names, sharding.device_mesh(processes.device, processes.world),
                                  frozen=True)
    processes.say(f"teacher sharded across {processes.world} processes (FSDP2) in {layers} x {'/'.join(names)}")
    return teacher
