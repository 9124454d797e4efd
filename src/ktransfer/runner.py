"""From a `RunConfig` to a finished run directory, and back (resume, eval).

The steps have modules of their own: `ktransfer.building` builds the data and models,
`ktransfer.checks` checks everything that needs no training (`preflight`), and
`ktransfer.rundir` keeps the run directory (what it holds, summary.json). Their public names
stay importable from here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.building import _architecture, build_model, build_teachers, load_data
from ktransfer.checkpoint import find_intact_checkpoint, load_weights
from ktransfer.checks import (
    Preflight,
    check_data_fits_task,
    check_models,
    check_named_store,
    check_sources,
    check_teacher_run_tokenizer,
    check_teacher_store,
    check_term_layers,
    preflight,
)
from ktransfer.config import RunConfig
from ktransfer.data import DataSplits
from ktransfer.engine import Distiller, TrainResult, make_evaluator
from ktransfer.environment import environment
from ktransfer.io import write_json_atomic, write_text_atomic
from ktransfer.models import count_parameters
from ktransfer.rundir import (
    RUN_OUTPUTS,
    RunExistsError,
    load_run_config,
    prepare_run_dir,
    say_data,
    write_summary,
)
from ktransfer.scores import classification_scores, predict_classes
from ktransfer.selection import SELECTORS
from ktransfer.sequence.heldout import with_teacher_kl
from ktransfer.store import IndexedCollate, IndexedDataset, StoreStage
from ktransfer.sequence.targets import targets_stage_from_config
from ktransfer.tasks import Task
from ktransfer.terms import bind_terms, build_terms

__all__ = ["RUN_OUTPUTS", "Preflight", "RunExistsError", "RunResult", "build_distiller", "build_model",
           "check_data_fits_task", "check_models", "check_sources", "check_teacher_run_tokenizer",
           "check_term_layers", "environment", "evaluate_run", "load_data", "load_run_config", "majority_rate",
           "prepare_run_dir", "preflight", "resume", "run", "run_evaluator", "say_data", "_architecture"]


@dataclass
class RunResult:
    """A finished (or interrupted) run: its directory, training result and model sizes."""

    run_dir: Path
    train: TrainResult
    student_parameters: int
    teacher_parameters: int | None


def build_distiller(
    cfg: RunConfig, run_dir: str | Path | None = None, *, data: DataSplits | None = None,
    progress: bool = True, stop_after_steps: int | None = None,
) -> tuple[Distiller, DataSplits]:
    """Everything a run needs, built from its config: the Python API behind `ktransfer run`."""
    check_sources(cfg)
    data = data if data is not None else load_data(cfg)
    check_data_fits_task(cfg, data.info)
    torch.manual_seed(cfg.train.seed)  # model initialisation depends on the run's seed
    teacher: Any = build_model(cfg.teacher_model, data.info, "teacher") if cfg.teacher_model is not None else None
    if cfg.teachers is not None:
        teacher = build_teachers(cfg, data.info)
    student = build_model(cfg.student, data.info, "student")
    store = check_teacher_store(cfg, data) if cfg.teacher_store is not None else None
    check_models(cfg, data, student, teacher, store)  # in eval mode, without gradients: the models stay as built
    selector_spec = dict(cfg.selector)
    selector = SELECTORS.build(selector_spec.pop("type"), selector_spec, "selector")
    task = Task(cfg.task)
    train_data, collate_fn, stages = data.train, data.collate_fn, _stages(cfg, data.info)
    if store is not None:  # the teacher's outputs come from the store, by example index
        train_data, collate_fn = IndexedDataset(data.train), IndexedCollate(data.collate_fn)
        stages = [StoreStage(store)]
    stores = {name: check_named_store(cfg, name, data) for name, spec in (cfg.teachers or {}).items()
              if "store" in spec}
    if stores:  # named teachers from stores: their outputs come by example index, beside the live teachers'
        train_data, collate_fn = IndexedDataset(data.train), IndexedCollate(data.collate_fn)
        stages = [StoreStage(stores)]
    terms = cfg.arranged_terms()
    bind_terms(terms, data.info)
    distiller = Distiller(
        student, teacher, terms, selector,
        train_data=train_data, config=cfg.train, optim=cfg.optim, schedule=cfg.schedule, task=task,
        evaluate=run_evaluator(cfg, data, "val", teacher if isinstance(teacher, nn.Module) else None),
        run_dir=run_dir, collate_fn=collate_fn, progress=progress, stop_after_steps=stop_after_steps,
        stages=stages,
        chance_accuracy=majority_rate(data.val) if cfg.task == "classification" else None,
    )
    return distiller, data


def run_evaluator(cfg: RunConfig, data: DataSplits, split: str, teacher: nn.Module | None) -> Any:
    """Accuracy, loss and perplexity of the student on a split; for a sequence task with a teacher, also
    `teacher_kl`, its divergence from the teacher there (ktransfer.sequence.heldout)."""
    task = Task(cfg.task)
    evaluate = make_evaluator(data.get(split), task, cfg.train.eval_batch_size, collate_fn=data.collate_fn)
    if teacher is None or cfg.task not in ("causal_lm", "seq2seq") or data.info.get("teacher_tokenizer"):
        return evaluate  # a teacher with its own tokenizer has no divergence on the student's tokens
    return with_teacher_kl(evaluate, data.get(split), task, teacher, cfg.train.eval_batch_size, data.collate_fn)


def _stages(cfg: RunConfig, info: dict[str, Any] | None = None) -> list[Any]:
    """The batch stages a config asks for: a targets stage when it has a `targets` section (seed: the run's);
    on a dataset with `teacher_tokenizer`, wrapped so that each rewritten row is tokenised for the teacher again."""
    if cfg.targets is None:
        return []
    stage = targets_stage_from_config({"seed": cfg.train.seed, **cfg.targets}, cfg.task)
    if info and info.get("teacher_tokenizer"):
        from ktransfer.cross_tokenizer.retokenize import RetokenizedTargets
        from ktransfer.data.corpus import load_tokenizer

        return [RetokenizedTargets(stage, load_tokenizer(info["tokenizer"]), load_tokenizer(info["teacher_tokenizer"]),
                                   student_eos=info.get("eos_token_id"))]
    return [stage]


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


def _finish(distiller: Distiller, cfg: RunConfig, run_dir: Path, result: TrainResult,
            data_info: dict[str, Any] | None = None) -> RunResult:
    out = RunResult(
        run_dir=run_dir, train=result,
        student_parameters=count_parameters(distiller.student),
        teacher_parameters=(count_parameters(distiller.teacher) if distiller.teacher is not None
                            else sum(count_parameters(m) for m in distiller.teachers.values()) if distiller.teachers
                            else None),
    )
    if not distiller.accelerator.is_main_process:
        return out
    if result.already_finished and (run_dir / "summary.json").is_file():
        return out  # a finished run is left exactly as it was
    write_summary(run_dir, cfg, result, out.student_parameters, out.teacher_parameters, data_info)
    return out


def run(
    cfg: RunConfig, run_dir: str | Path, *, progress: bool = True, stop_after_steps: int | None = None,
    data: DataSplits | None = None, overwrite: bool = False,
) -> RunResult:
    """Train a student as `cfg` says, writing everything to `run_dir` (its config first).

    An existing run in `run_dir` is an error unless `overwrite=True` (use `resume` to continue it).
    Every check that needs no training (`preflight`) runs before the run directory is touched.
    """
    run_dir = Path(run_dir)
    report = preflight(cfg, data)
    data = report.data
    if int(os.environ.get("RANK", "0")) == 0:
        for message in cfg.warnings():  # the data's own warnings follow with its counts (say_data)
            print(f"ktransfer: warning: {message}", file=sys.stderr, flush=True)
    prepare_run_dir(run_dir, overwrite)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    say_data(data.info)
    distiller, _ = build_distiller(cfg, run_dir, data=data, progress=progress, stop_after_steps=stop_after_steps)
    result = distiller.fit()
    return _finish(distiller, cfg, run_dir, result, data.info)


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
    found, damaged = find_intact_checkpoint(run_dir / "checkpoints")
    if found is None:
        why = (f"damaged: {'; '.join(f'{p.name}: {r}' for p, r in damaged)}" if damaged else
               f"the run stopped before its first one; train.checkpoint_every={cfg.train.checkpoint_every}, "
               f"train.checkpoint_minutes={cfg.train.checkpoint_minutes}")
        raise FileNotFoundError(
            f"no checkpoint to resume from in {run_dir / 'checkpoints'} ({why}). Start the run again with "
            f"`ktransfer run {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite`")
    if max_steps is not None and max_steps != cfg.train.max_steps:
        if max_steps < cfg.train.max_steps:
            raise ValueError(f"train.max_steps={max_steps} is shorter than the run's own {cfg.train.max_steps}; "
                             "a run can only be continued to a larger max_steps")
        cfg.train.max_steps = max_steps
        if int(os.environ.get("RANK", "0")) == 0:
            write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    distiller, data = build_distiller(cfg, run_dir, progress=progress, stop_after_steps=stop_after_steps)
    result = distiller.fit(resume=True, force_world_size=force_world_size)
    return _finish(distiller, cfg, run_dir, result, data.info)


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best") -> dict[str, Any]:
    """Metrics of a run's student (`best` or `final` weights) on one data split; writes eval-<split>.json."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got '{which}'")
    data = load_data(cfg)
    model = build_model(_architecture(cfg.student), data.info, "student")
    load_weights(model, run_dir / which / "model.safetensors")
    teacher = None
    if cfg.teacher_model is not None and cfg.task in ("causal_lm", "seq2seq"):  # for teacher_kl on this split
        teacher = build_model(cfg.teacher_model, data.info, "teacher")
    metrics = run_evaluator(cfg, data, split, teacher)(model)
    if cfg.task == "classification":  # macro-F1 and MCC need every prediction, not sums
        predicted, true = predict_classes(model, data.get(split), Task(cfg.task), cfg.train.eval_batch_size,
                                          data.collate_fn)
        metrics.update(classification_scores(predicted, true, data.info.get("num_classes")))
    report = {"split": split, "which": which, **metrics, "parameters": count_parameters(model),
              "size": len(data.get(split))}  # type: ignore[arg-type]
    write_json_atomic(run_dir / f"eval-{split}.json", report)
    return report
