"""The run directory: what a run writes there, refusing to train over an earlier run, its config and summary.

A run directory holds: config.yaml (resolved), metrics.jsonl, checkpoints/step-N/,
best/model.safetensors, final/model.safetensors, curves.png and summary.json (with the
machine and library versions of `environment`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ktransfer.checkpoint import latest_checkpoint
from ktransfer.config import RunConfig
from ktransfer.data.base import describe_examples, example_warnings
from ktransfer.engine import TrainResult
from ktransfer.environment import environment
from ktransfer.io import write_json_atomic


def write_summary(run_dir: Path, cfg: RunConfig, result: TrainResult, student_parameters: int,
                  teacher_parameters: int | None, data_info: dict[str, Any] | None = None) -> None:
    """summary.json of a finished (or interrupted) run: results, sizes, machine, batching, data counts, warnings."""
    cfg_train = cfg.train
    write_json_atomic(run_dir / "summary.json", {
        "step": result.step, "max_steps": cfg.train.max_steps, "stopped_early": result.stopped_early,
        "best_step": result.best_step, "best_val": result.best_metrics, "final_val": result.final_metrics,
        "wall_time_s": round(result.wall_time_s, 3), "seed": cfg.train.seed,
        "student_parameters": student_parameters, "teacher_parameters": teacher_parameters,
        "environment": environment(), "finished": result.step >= cfg.train.max_steps or result.stopped_early,
        "world_size": result.world_size, "batch_size": cfg_train.batch_size,
        "per_process_batch_size": cfg_train.batch_size // max(1, result.world_size),
        "grad_accum_steps": cfg_train.grad_accum_steps,
        "warnings": example_warnings(data_info or {}) + result.warnings,
        "examples": (data_info or {}).get("examples"), "examples_rule": (data_info or {}).get("examples_rule"),
        "tokenizer_sha256": (data_info or {}).get("tokenizer_sha256"),
        # the label order, compared when this run's model is one of several teachers
        "classes": (data_info or {}).get("classes"),
    })


# What a run writes into its directory; `overwrite` removes exactly these.
RUN_OUTPUTS = ("checkpoints", "best", "final", "metrics.jsonl", "summary.json", "curves.png")


class RunExistsError(FileExistsError):
    """The run directory already holds a run: resume it, or overwrite it explicitly."""


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train over an earlier run unless `overwrite`, which clears that run's outputs.

    Stale checkpoints must never survive into a new run: `resume` would pick them up.
    """
    existing = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if existing and not overwrite:
        again = "start it again with --overwrite (run(..., overwrite=True)), which deletes it"
        if (run_dir / "final" / "model.safetensors").is_file():
            raise RunExistsError(
                f"{run_dir} already holds a finished run: evaluate it with `ktransfer eval {run_dir}`, train it "
                f"further with `ktransfer resume {run_dir} --max-steps N`, or {again}")
        if latest_checkpoint(run_dir / "checkpoints") is None:
            raise RunExistsError(
                f"{run_dir} already holds a run that cannot be resumed ({', '.join(existing)}; no intact checkpoint: "
                f"it stopped before its first one): {again}")
        raise RunExistsError(
            f"{run_dir} already holds an unfinished run ({', '.join(existing)}): continue it with "
            f"`ktransfer resume {run_dir}`, or {again}"
        )
    if existing and int(os.environ.get("RANK", "0")) == 0:
        for name in existing:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in run_dir.glob("eval-*.json"):
            path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def say_data(info: dict[str, Any]) -> None:
    """How many examples of each split a run uses, kept, truncated and dropped, and any warning (stderr, rank 0)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for line in describe_examples(info):
        print(f"ktransfer: data: {line}", file=sys.stderr, flush=True)
    for message in example_warnings(info):
        print(f"ktransfer: warning: {message}", file=sys.stderr, flush=True)


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.yaml): {run_dir}")
    return RunConfig.from_yaml(path)
