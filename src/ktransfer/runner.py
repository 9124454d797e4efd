"""From a `RunConfig` to a finished run directory, and back (resume, eval).

A run directory holds: config.yaml (resolved), metrics.jsonl, checkpoints/step-N/,
best/model.safetensors, final/model.safetensors, curves.png and summary.json.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.checkpoint import load_weights, write_json_atomic, write_text_atomic
from ktransfer.config import MODEL_META_KEYS, RunConfig
from ktransfer.data import DATASETS, DataSplits
from ktransfer.knowledge import build_terms
from ktransfer.models import MODELS, count_parameters
from ktransfer.selection import SELECTORS
from ktransfer.tasks import Task
from ktransfer.train import Distiller, TrainResult, make_evaluator


@dataclass
class RunResult:
    """A finished (or interrupted) run: its directory, training result and model sizes."""

    run_dir: Path
    train: TrainResult
    student_parameters: int
    teacher_parameters: int | None


def load_data(cfg: RunConfig) -> DataSplits:
    data = dict(cfg.data)
    return DATASETS.build(data.pop("name"), data, "data")


def _architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """A model section without its initial weights: the weights of a run replace them."""
    return {k: v for k, v in spec.items() if k != "weights"}


def build_model(spec: dict[str, Any], info: dict[str, Any], where: str) -> nn.Module:
    """Build a model section: `from_run` (that run's student and weights) or builder + optional weights."""
    if "from_run" in spec:
        run_dir = Path(spec["from_run"])
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{where}.from_run: no run found at {run_dir} (missing {cfg_path.name})")
        source = RunConfig.from_yaml(cfg_path)
        model = build_model(_architecture(source.student), info, f"{where}.from_run")
        which = spec.get("which", "best")
        return load_weights(model, run_dir / which / "model.safetensors")
    builder = spec["builder"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    accepted = MODELS.keys(builder)
    for key, info_key in (("in_features", "num_features"), ("num_classes", "num_classes")):
        if key in accepted and key not in kwargs and info_key in info:
            kwargs[key] = info[info_key]
    model = MODELS.build(builder, kwargs, where)
    if spec.get("weights"):
        try:
            load_weights(model, spec["weights"])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{where}.weights: {e}") from e
    return model


def build_distiller(
    cfg: RunConfig, run_dir: str | Path | None = None, *, data: DataSplits | None = None,
    progress: bool = True, stop_after_steps: int | None = None,
) -> tuple[Distiller, DataSplits]:
    """Everything a run needs, built from its config: the Python API behind `ktransfer run`."""
    data = data if data is not None else load_data(cfg)
    torch.manual_seed(cfg.train.seed)  # model initialisation depends on the run's seed
    teacher = build_model(cfg.teacher, data.info, "teacher") if cfg.teacher is not None else None
    student = build_model(cfg.student, data.info, "student")
    selector_spec = dict(cfg.selector)
    selector = SELECTORS.build(selector_spec.pop("type"), selector_spec, "selector")
    task = Task(cfg.task)
    distiller = Distiller(
        student, teacher, build_terms(cfg.knowledge), selector,
        train_data=data.train, config=cfg.train, optim=cfg.optim, schedule=cfg.schedule, task=task,
        evaluate=make_evaluator(data.val, task, cfg.train.eval_batch_size),
        run_dir=run_dir, progress=progress, stop_after_steps=stop_after_steps,
        chance_accuracy=majority_rate(data.val) if cfg.task == "classification" else None,
    )
    return distiller, data


def majority_rate(data: Any) -> float | None:
    """The share of the most frequent label in a dataset of dict rows: the accuracy of guessing."""
    labels = getattr(data, "tensors", {}).get("labels") if hasattr(data, "tensors") else None
    if labels is None:
        try:
            labels = torch.stack([torch.as_tensor(data[i]["labels"]) for i in range(len(data))])
        except (KeyError, TypeError, IndexError):
            return None
    labels = labels[labels != -100]
    if labels.numel() == 0 or labels.dim() != 1:
        return None
    return float(torch.bincount(labels).max()) / labels.numel()


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded with every run and benchmark."""
    import accelerate
    import transformers

    return {
        "python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def _finish(distiller: Distiller, cfg: RunConfig, run_dir: Path, result: TrainResult) -> RunResult:
    out = RunResult(
        run_dir=run_dir, train=result,
        student_parameters=count_parameters(distiller.student),
        teacher_parameters=count_parameters(distiller.teacher) if distiller.teacher is not None else None,
    )
    if not distiller.accelerator.is_main_process:
        return out
    if result.already_finished and (run_dir / "summary.json").is_file():
        return out  # a finished run is left exactly as it was
    cfg_train = cfg.train
    write_json_atomic(run_dir / "summary.json", {
        "step": result.step, "max_steps": cfg.train.max_steps, "stopped_early": result.stopped_early,
        "best_step": result.best_step, "best_val": result.best_metrics, "final_val": result.final_metrics,
        "wall_time_s": round(result.wall_time_s, 3), "seed": cfg.train.seed,
        "student_parameters": out.student_parameters, "teacher_parameters": out.teacher_parameters,
        "environment": environment(), "finished": result.step >= cfg.train.max_steps or result.stopped_early,
        "world_size": result.world_size, "batch_size": cfg_train.batch_size,
        "per_process_batch_size": cfg_train.batch_size // max(1, result.world_size),
        "grad_accum_steps": cfg_train.grad_accum_steps, "warnings": result.warnings,
    })
    return out


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
        raise RunExistsError(
            f"{run_dir} already holds a run ({', '.join(existing)}): continue it with "
            f"`ktransfer resume {run_dir}`, or start again with --overwrite (run(..., overwrite=True))"
        )
    if existing and int(os.environ.get("RANK", "0")) == 0:
        for name in existing:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in run_dir.glob("eval-*.json"):
            path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def run(
    cfg: RunConfig, run_dir: str | Path, *, progress: bool = True, stop_after_steps: int | None = None,
    data: DataSplits | None = None, overwrite: bool = False,
) -> RunResult:
    """Train a student as `cfg` says, writing everything to `run_dir` (its config first).

    An existing run in `run_dir` is an error unless `overwrite=True` (use `resume` to continue it).
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, overwrite)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    distiller, _ = build_distiller(cfg, run_dir, data=data, progress=progress, stop_after_steps=stop_after_steps)
    result = distiller.fit()
    return _finish(distiller, cfg, run_dir, result)


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.yaml): {run_dir}")
    return RunConfig.from_yaml(path)


def resume(
    run_dir: str | Path, *, progress: bool = True, stop_after_steps: int | None = None,
    max_steps: int | None = None, force_world_size: bool = False,
) -> RunResult:
    """Continue a killed run from its newest intact checkpoint; the result equals an uninterrupted run's.

    A finished run is left unchanged, unless `max_steps` is larger than its own, which trains it
    further (and records the new length in its config.yaml). A checkpoint written by another
    number of processes is refused unless `force_world_size`.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if max_steps is not None and max_steps != cfg.train.max_steps:
        if max_steps < cfg.train.max_steps:
            raise ValueError(f"train.max_steps={max_steps} is shorter than the run's own {cfg.train.max_steps}; "
                             "a run can only be continued to a larger max_steps")
        cfg.train.max_steps = max_steps
        if int(os.environ.get("RANK", "0")) == 0:
            write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    distiller, _ = build_distiller(cfg, run_dir, progress=progress, stop_after_steps=stop_after_steps)
    result = distiller.fit(resume=True, force_world_size=force_world_size)
    return _finish(distiller, cfg, run_dir, result)


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best") -> dict[str, Any]:
    """Metrics of a run's student (`best` or `final` weights) on one data split; writes eval-<split>.json."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got '{which}'")
    data = load_data(cfg)
    model = build_model(_architecture(cfg.student), data.info, "student")
    load_weights(model, run_dir / which / "model.safetensors")
    evaluate = make_evaluator(data.get(split), Task(cfg.task), cfg.train.eval_batch_size)
    metrics = evaluate(model)
    report = {"split": split, "which": which, **metrics, "parameters": count_parameters(model),
              "size": len(data.get(split))}  # type: ignore[arg-type]
    write_json_atomic(run_dir / f"eval-{split}.json", report)
    return report

