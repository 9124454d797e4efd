"""Checkpoints of the whole training state: when one is due, writing it aside and swapping it in, resuming.

A checkpoint is written into a temporary directory by Accelerate, given a manifest last
(`ktransfer.io`) and renamed into place; older ones beyond `keep_checkpoints` are removed.
Resuming picks the newest checkpoint whose manifest verifies, refuses one written by another
number of processes unless forced, and drops the log lines written after it. A run whose models
are sharded across processes (`train.sharding: fsdp`) adds each process's shards of the student
and of its optimizer state (`shards/rank-N.pt`) next to Accelerate's files (which then hold the
rest: schedule, progress, selector, every process's RNG states); such a checkpoint resumes only
with the same number of processes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.checkpoint import (
    CorruptFileError,
    checkpoints_newest_first,
    find_intact_checkpoint,
    read_manifest,
    read_weights,
)
from ktransfer.engine.configs import TrainConfig
from ktransfer.engine.sharding import (
    load_local_shards,
    local_shards,
)
from ktransfer.engine.distributed import say
from ktransfer.engine.errors import WorldSizeError
from ktransfer.engine.evaluation import Evaluator
from ktransfer.engine.state import TrainResult, TrainState
from ktransfer.io import current_umask, replace_dir, verify_manifest, write_manifest
from ktransfer.runlog import MetricsLog


def _clock() -> float:
    """Seconds on a monotonic clock: what checkpoints by wall time are timed with."""
    return time.monotonic()


def _weights_ok(path: Path) -> bool:
    try:
        read_weights(path)
    except (FileNotFoundError, CorruptFileError):
        return False
    return True


class CheckpointingMixin:
    """The `Distiller`'s checkpoint writing and resuming (it provides the attributes annotated here)."""

    config: TrainConfig
    state: TrainState
    run_dir: Path | None
    log: MetricsLog | None
    evaluate: Evaluator | None
    skipped_checkpoints: list[tuple[Path, str]]
    _saved_world: int
    _checkpointed_step: int | None
    _checkpointed_at: float
    _save_term_weights: Callable[[str], None]  # the terms' own weights (ktransfer.engine.wiring)
    _save_student: Callable[[nn.Module, Path], None]  # whole weights, gathered if sharded (collective)
    _sharded: bool
    _optimizer: Any
    student: nn.Module

    def _start_checkpoint_clock(self) -> None:
        """Time checkpoints by wall time from now (the start of `fit`)."""
        self._checkpointed_step = None
        self._checkpointed_at = _clock()

    def _restore(self, accelerator: Any, resume: bool | str | Path, ckpt_root: Path | None,
                 force_world_size: bool) -> None:
        """Load the newest intact checkpoint (and drop later log lines), or start a fresh log."""
        if not resume:
            if self.log and accelerator.is_main_process and self.log.path.exists():
                self.log.path.unlink()
            return
        if isinstance(resume, bool):
            if ckpt_root is None:
                raise FileNotFoundError("resume=True needs a run directory (or pass a checkpoint path)")
            path, self.skipped_checkpoints = find_intact_checkpoint(ckpt_root)
            for skipped, why in self.skipped_checkpoints:
                say(accelerator, f"skipping checkpoint {skipped.name}: {why}")
            if path is None:
                tried = "; ".join(f"{p.name}: {why}" for p, why in self.skipped_checkpoints)
                raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_root}" + (f" (damaged: {tried})" if tried else ""))
            newest = ", the newest intact checkpoint" if self.skipped_checkpoints else ""
        else:
            path = Path(resume)
            if not path.is_dir():
                raise FileNotFoundError(f"no checkpoint to resume from at {path}")
            reason = verify_manifest(path)
            if reason is not None:
                raise CorruptFileError(f"checkpoint {path} cannot be resumed: {reason}")
            newest = ""
        manifest = read_manifest(path)
        saved_world = self._saved_world = int(manifest.get("world_size", 1))
        saved_sharding = str(manifest.get("sharding", "none"))
        this_sharding = "fsdp" if self._sharded else "none"
        if saved_sharding == "fsdp" and saved_world != accelerator.num_processes:
            raise WorldSizeError(
                f"checkpoint {path.name} holds models sharded across {saved_world} processes and this run has "
                f"{accelerator.num_processes}: its shards fit only {saved_world} processes (even with "
                f"--force-world-size). Resume with {saved_world} processes."
            )
        if saved_sharding != this_sharding:
            raise WorldSizeError(
                f"checkpoint {path.name} holds {'sharded' if saved_sharding == 'fsdp' else 'whole'} models "
                f"(sharding {saved_sharding}, {saved_world} process(es)) and this run's are "
                f"{'sharded' if self._sharded else 'whole'} (sharding {this_sharding}, {accelerator.num_processes} "
                f"process(es)): resume it with train.sharding={saved_sharding} and {saved_world} process(es)"
            )
        if saved_world != accelerator.num_processes and not force_world_size:
            raise WorldSizeError(
                f"checkpoint {path.name} was written by {saved_world} process(es) and this run has "
                f"{accelerator.num_processes}: the data order, batch split and RNG streams would differ from "
                f"the original run. Resume with {saved_world} process(es), or force it (--force-world-size; "
                "fit(resume=..., force_world_size=True)) to continue with a different result."
            )
        try:
            accelerator.load_state(str(path))
            if self._sharded:
                shards = torch.load(path / "shards" / f"rank-{accelerator.process_index:05d}.pt",
                                    map_location="cpu", weights_only=True)
                load_local_shards(self.student, self._optimizer, shards)
        except Exception as e:  # a file that verified but still cannot be read: name it
            raise CorruptFileError(f"checkpoint {path} cannot be loaded: {e}") from e
        say(accelerator, f"resuming from checkpoint {path}{newest} (step {self.state.step} of {self.config.max_steps})")
        if self.log and accelerator.is_main_process:
            self.log.truncate_after(self.state.step)

    def _already_finished(self, accelerator: Any, student: nn.Module) -> TrainResult:
        """The result of a run that had finished; only outputs a kill prevented are completed."""
        state = self.state
        say(accelerator, f"the run is finished (step {state.step} of {self.config.max_steps}"
             + (", stopped early" if state.stopped_early else "") + "); nothing to do. "
             "To train further, give a larger train.max_steps.")
        if self.run_dir:
            for which in ("final", "best"):
                path = self.run_dir / which / "model.safetensors"
                if which == "best" and self.evaluate is not None:
                    continue  # best weights come from evaluations; never rewritten from the final state
                missing = not _weights_ok(path)
                accelerator.wait_for_everyone()  # every process decided before the main one writes
                if missing:
                    self._save_student(student, path)
                    if accelerator.is_main_process:
                        self._save_term_weights(which)
        return TrainResult(
            step=state.step, stopped_early=state.stopped_early, best_step=state.best_step,
            best_metrics=dict(state.best_metrics), final_metrics=dict(state.last_metrics),
            wall_time_s=state.elapsed_s, run_dir=self.run_dir, already_finished=True, world_size=state.world_size,
        )

    def _checkpoint_due(self, accelerator: Any) -> bool:
        """Whether this step ends with a checkpoint: by steps, or by wall time since the last one.

        The wall-time decision is the main process's, shared with every process (one scalar per
        step), so that all of them save the same step.
        """
        cfg = self.config
        if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
            return True
        if not cfg.checkpoint_minutes:
            return False
        due = _clock() - self._checkpointed_at >= 60.0 * cfg.checkpoint_minutes
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            flag = torch.tensor([1.0 if due else 0.0], device=accelerator.device)
            due = bool(broadcast(flag, from_process=0).item())
        return due

    def _checkpoint(self, accelerator: Any, root: Path | None) -> None:
        """Save the whole training state to root/step-N: written aside, manifest last, swapped in."""
        if root is None:
            return
        final = root / f"step-{self.state.step:08d}"
        tmp = root / f".tmp-step-{self.state.step:08d}"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            for leftover in root.glob(".tmp-step-*"):  # from a write that a kill cut short
                shutil.rmtree(leftover, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if self._sharded:  # each process its own shards of the student and of the optimizer state
            shards = tmp / "shards" / f"rank-{accelerator.process_index:05d}.pt"
            shards.parent.mkdir(parents=True, exist_ok=True)
            torch.save(local_shards(self.student, self._optimizer), shards)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in tmp.rglob("*"):  # Accelerate writes some files 0600; give them the usual permissions
                if path.is_file():
                    os.chmod(path, 0o666 & ~current_umask())
            write_manifest(tmp, step=self.state.step, world_size=accelerator.num_processes,
                           sharding="fsdp" if self._sharded else "none")
            replace_dir(tmp, final)
            kept = checkpoints_newest_first(root)
            for old in kept[self.config.keep_checkpoints:]:
                # renamed before deletion, so a kill mid-delete never leaves a partial step-N behind
                doomed = old.with_name(f".old-{old.name}")
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        self._checkpointed_step = self.state.step
        self._checkpointed_at = _clock()
        accelerator.wait_for_everyone()
