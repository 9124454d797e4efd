"""Helpers for one or several processes: the Accelerator of a run, data shards, sums over processes, messages."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ktransfer.engine.batches import split_batch
from ktransfer.engine.configs import TrainConfig


def shard_batches(
    data: Dataset, batch_size: int, collate_fn: Callable[[list[Any]], dict[str, Any]], device: torch.device,
) -> tuple[Iterator[dict[str, Any]], int]:
    """This process's shard of `data` (every world_size-th example) as student batches on `device`, and the world size."""
    shard: Dataset = data
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if world > 1:
        shard = Subset(data, range(torch.distributed.get_rank(), len(data), world))  # type: ignore[arg-type]
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    batches = ({k: v.to(device) if isinstance(v, Tensor) else v for k, v in split_batch(b)[0].items()}
               for b in loader)
    return batches, world


def sum_over_processes(values: Sequence[float], world: int, device: torch.device) -> tuple[float, ...]:
    """`values` added up over all processes (as float64), or unchanged in a single process."""
    if world <= 1:
        return tuple(float(v) for v in values)
    reduced = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(reduced)
    return tuple(float(v) for v in reduced.tolist())


LEAVING_WAIT_S = 300  # how long a finished process waits at the end for the others


def leave_process_group(wait_for_others: bool = True) -> None:
    """Leave the default process group, if this process is in one: after a barrier, unless told not to.

    A gloo group left to the interpreter's exit can abort the process ("terminate called without an
    active exception"): its worker threads still hold finished work whose tensors are freed while the
    interpreter is torn down. The barrier keeps a process that finished first from closing its
    connections while another still completes its last collective; leave it out on an error path,
    where the others may never arrive.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait_for_others:
        arrived = torch.distributed.barrier(async_op=True)
        try:
            arrived.wait(timeout=timedelta(seconds=LEAVING_WAIT_S))
        except RuntimeError:  # a process that never arrives (it failed) must not hold this one for gloo's 30 min
            print(f"ktransfer: not every process arrived at the end within {LEAVING_WAIT_S} s; leaving anyway",
                  file=sys.stderr, flush=True)
    torch.distributed.destroy_process_group()


_LEAVING_AT_EXIT = False


def leave_process_group_at_exit() -> None:
    """Make sure the process group is left before the interpreter shuts down (once per process).

    Commands and scripts that end normally leave it themselves (`leave_process_group`, with a
    barrier); this catches every other way out, such as a library user's script that never does.
    """
    global _LEAVING_AT_EXIT
    if not _LEAVING_AT_EXIT:
        atexit.register(leave_process_group, wait_for_others=False)
        _LEAVING_AT_EXIT = True


def new_accelerator(cfg: TrainConfig, run_dir: Path | None) -> Any:
    """A fresh Accelerator for one run: precision, process group, trackers (written under RUN_DIR/tracking)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision='fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'no'")
    if cfg.report_to and run_dir is None:
        raise ValueError("train.report_to needs a run directory: the trackers write under RUN_DIR/tracking")
    # Accelerate keeps one global state; a new run in the same process may use another precision.
    AcceleratorState._reset_state()
    # Under torchrun / accelerate launch on a machine without a GPU, Accelerate only sets up
    # multi-process CPU training (gloo) when told `cpu=True`.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Accumulation is done by the engine (it must know a whole step's target count before the
    # first backward), so Accelerate sees one micro-batch per step and never rescales the loss.
    # split_batches: the loader's batch is the global batch, each process takes its slice.
    accelerator = Accelerator(
        gradient_accumulation_steps=1, mixed_precision=cfg.mixed_precision, cpu=multi_cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=list(cfg.report_to) or None,
        project_dir=str(run_dir / "tracking") if cfg.report_to and run_dir is not None else None,
    )
    if accelerator.num_processes > 1:
        leave_process_group_at_exit()
    return accelerator


def say(accelerator: Any, message: str) -> None:
    """A message for the user, on the main process only (stderr: stdout may carry JSON)."""
    if accelerator.is_main_process:
        print(f"ktransfer: {message}", file=sys.stderr, flush=True)
