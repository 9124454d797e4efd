"""From a `RunConfig` to a finished run directory, and back (resume, eval).

A run directory holds: config.yaml (resolved), metrics.jsonl, checkpoints/step-N/,
best/model.safetensors, final/model.safetensors, curves.png and summary.json.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.checkpoint import find_intact_checkpoint, latest_checkpoint, load_weights, write_json_atomic, write_text_atomic
from ktransfer.config import MODEL_META_KEYS, RunConfig
from ktransfer.data import DATASETS, DataSplits
from ktransfer.data.base import describe_examples, example_warnings
from ktransfer.knowledge import ResponseTerm, build_terms
from ktransfer.models import DATASET_DEFAULTS, MODELS, count_parameters
from ktransfer.registry import ConfigError
from ktransfer.selection import SELECTORS
from ktransfer.tasks import TASK_SPECS, ForwardResult, Task
from ktransfer.train import Distiller, TrainResult, make_evaluator, split_batch


@dataclass
class RunResult:
    """A finished (or interrupted) run: its directory, training result and model sizes."""

    run_dir: Path
    train: TrainResult
    student_parameters: int
    teacher_parameters: int | None


def load_data(cfg: RunConfig) -> DataSplits:
    """The dataset of a run config, split into train/val/test."""
    data = dict(cfg.data)
    return DATASETS.build(data.pop("name"), data, "data")


# ---------------------------------------------------------------------------------- checks before training
@dataclass
class Preflight:
    """What `preflight` found: the loaded data (reusable by the run), one line per check passed, and
    warnings that do not stop a run (e.g. much of the training data dropped)."""

    data: DataSplits
    checked: list[str]
    warnings: list[str] = field(default_factory=list)


def check_sources(cfg: RunConfig) -> None:
    """The runs, weights and other files a config reads from exist (a teacher run must have its `which` weights)."""
    data = dict(cfg.data)
    for key in DATASETS.path_keys(str(data.get("name"))):
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).exists() \
                and not glob.has_magic(data[key]):
            raise FileNotFoundError(f"data.{key}: not found: {data[key]}")
    for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
        if spec is None:
            continue
        for key in MODELS.path_keys(str(spec.get("builder"))):
            if spec.get(key) and not Path(spec[key]).exists():
                raise FileNotFoundError(f"{role}.{key}: not found: {spec[key]}")
        if "from_run" in spec:
            run_dir = Path(spec["from_run"])
            which = spec.get("which", "best")
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(
                    f"{role}.from_run: no run found at {run_dir} (missing config.yaml); train it first "
                    f"(ktransfer run CONFIG --run-dir {run_dir}) or correct the path"
                )
            if not (run_dir / which / "model.safetensors").is_file():
                raise FileNotFoundError(
                    f"{role}.from_run: the run at {run_dir} has no '{which}' weights yet (missing "
                    f"{which}/model.safetensors): finish it with `ktransfer resume {run_dir}`"
                )
        elif spec.get("weights") and not Path(spec["weights"]).is_file():
            raise FileNotFoundError(f"{role}.weights: weights file not found: {spec['weights']}")


def _describe_data(cfg: RunConfig, info: dict[str, Any]) -> str:
    """e.g. "dataset 'digits' (image data; batch keys: inputs)", for messages."""
    facts = [f"{info['kind']} data"] if "kind" in info else []
    if "input_keys" in info:
        facts.append(f"batch keys: {', '.join(info['input_keys'])}")
    return f"dataset '{info.get('name', cfg.data['name'])}'" + (f" ({'; '.join(facts)})" if facts else "")


def check_data_fits_task(cfg: RunConfig, info: dict[str, Any]) -> None:
    """The dataset provides what the task needs (`TaskSpec` against the dataset's `info`); unknown facts pass."""
    spec = TASK_SPECS[cfg.task]
    kind = info.get("kind")
    if kind is not None and kind not in spec.data_kinds:
        fitting = [name for name, other in TASK_SPECS.items() if kind in other.data_kinds]
        keys = f" (batch keys: {', '.join(info['input_keys'])})" if "input_keys" in info else ""
        raise ConfigError(
            f"task: '{cfg.task}' trains on {' or '.join(spec.data_kinds)} data, but dataset "
            f"'{info.get('name', cfg.data['name'])}' holds {kind} data{keys}; tasks for {kind} data: "
            f"{', '.join(fitting) or '(none)'}"
        )
    keys = info.get("input_keys")
    missing = [key for key in spec.input_keys if keys is not None and key not in keys]
    if missing:
        raise ConfigError(f"task: '{cfg.task}' needs the batch key {missing[0]}, which {_describe_data(cfg, info)} lacks")


def _probe_batch(data: DataSplits, size: int = 2) -> dict[str, Any]:
    """A couple of validation examples (training ones if there is no validation data) as one batch."""
    source = data.val if len(data.val) else data.train  # type: ignore[arg-type]
    n = min(size, len(source))  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("data: the dataset has no examples")
    return data.collate_fn([source[i] for i in range(n)])


@torch.no_grad()
def _probe(model: nn.Module, batch: dict[str, Any], task: Task, role: str, describe: str) -> ForwardResult:
    """One forward pass in eval mode; a failure becomes a message naming the model and the data."""
    was_training = model.training
    model.eval()
    try:
        return task.forward(model, batch)
    except Exception as e:  # whatever the model raises: report it with what was fed to it
        raise ConfigError(
            f"{role}: does not run on {describe} for task '{task.kind}': one forward pass on "
            f"{len(next(iter(batch.values())))} examples failed with {type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(was_training)


def _classes_hint(spec: dict[str, Any], role: str, num_classes: int) -> str:
    if "from_run" in spec:
        return f"use a {role} run trained on this dataset"
    if "num_classes" in MODELS.keys(str(spec["builder"])):
        return f"set {role}.num_classes: {num_classes}, or leave it out to take the dataset's"
    return f"give the {role} {num_classes} outputs"


def check_models(cfg: RunConfig, data: DataSplits, student: nn.Module, teacher: nn.Module | None) -> list[str]:
    """The built models run on a few examples and their outputs fit the labels and each other; nothing trains.

    Returns one line per model saying what was checked.
    """
    task, info = Task(cfg.task), data.info
    if task.kind in ("causal_lm", "seq2seq"):
        from ktransfer.sequence.vocab import check_data_tokenizer

        check_data_tokenizer(info, teacher)  # different tokenizers: an error naming both, before anything runs
        check_teacher_run_tokenizer(cfg.teacher, info)
    describe = _describe_data(cfg, info)
    student_batch, teacher_batch = split_batch(_probe_batch(data))
    outputs = {"student": _probe(student, student_batch, task, "student", describe)}
    if teacher is not None and cfg.teacher is not None:
        outputs["teacher"] = _probe(teacher, teacher_batch, task, "teacher", describe)
    sizes = {role: out.logits.shape[-1] for role, out in outputs.items()}
    num_classes = info.get("num_classes")
    if task.kind == "classification" and isinstance(num_classes, int):
        for role, size in sizes.items():
            spec = cfg.student if role == "student" else cfg.teacher
            assert spec is not None
            if size < num_classes:
                raise ConfigError(
                    f"{role}: predicts {size} classes, but {describe} has {num_classes} (labels 0 to "
                    f"{num_classes - 1}); {_classes_hint(spec, role, num_classes)}"
                )
    if "teacher" in outputs and sizes["teacher"] != sizes["student"]:
        compared = [(i, term) for i, term in enumerate(build_terms(cfg.knowledge))  # response, on_policy, reinforce
                    if (isinstance(term, ResponseTerm) or (term.requires_teacher and hasattr(term, "vocab_size")))
                    and term.vocab_size is None]
        if compared and task.kind == "classification":
            raise ConfigError(
                f"teacher predicts {sizes['teacher']} classes and the student {sizes['student']}: knowledge"
                f"[{compared[0][0]}] ({compared[0][1].name}) compares their outputs, so both must predict the same "
                "classes; build them for the same dataset"
            )
        if compared:
            raise ConfigError(
                f"teacher has vocabulary {sizes['teacher']} and the student {sizes['student']}: if they share a "
                f"tokenizer and one embedding matrix is padded, set knowledge[{compared[0][0]}].vocab_size to the "
                "real vocabulary size"
            )
    unit = "classes" if task.kind == "classification" else "vocabulary"
    lines = [f"{role}: {count_parameters(model):,} parameters, {sizes[role]} {unit}, ran on {describe}"
             for role, model in (("student", student), ("teacher", teacher)) if role in sizes and model is not None]
    return lines + check_term_layers(cfg, student, teacher, student_batch, teacher_batch, task)


def check_teacher_run_tokenizer(spec: dict[str, Any] | None, info: dict[str, Any]) -> None:
    """A teacher from a run read tokens of the same tokenizer as this data: its `summary.json` records the
    vocabulary's digest, and another digest means its ids stand for other strings."""
    if not spec or "from_run" not in spec or not info.get("tokenizer_sha256"):
        return
    summary = Path(spec["from_run"]) / "summary.json"
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("tokenizer_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded and recorded != info["tokenizer_sha256"]:
        raise ConfigError(
            f"teacher.from_run: the run at {spec['from_run']} was trained on the tokens of another tokenizer "
            f"(vocabulary sha256 {recorded[:12]}) than this data's ({info['tokenizer_sha256'][:12]}, "
            f"{info.get('tokenizer')}): its token ids stand for other strings. Train the teacher again on this data")


def check_term_layers(cfg: RunConfig, student: nn.Module, teacher: nn.Module | None, student_batch: dict[str, Any],
                      teacher_batch: dict[str, Any], task: Task) -> list[str]:
    """The layers each knowledge term names exist in its model and run in one forward pass on a few examples.

    Terms resolve their layer names (`setup`) exactly as the engine does, then the modules they
    capture are hooked during one forward pass of each model; a name that is missing, or a module
    that the forward pass never calls, is a ConfigError naming the term and the layer.
    """
    from ktransfer.capture import Capture

    terms = build_terms(cfg.knowledge)
    for i, term in enumerate(terms):
        setup = getattr(term, "setup", None)
        if callable(setup):
            try:
                setup(student, teacher)
            except (ValueError, KeyError, AttributeError) as e:
                raise ConfigError(f"knowledge[{i}] ({term.name}): {e}") from e
    lines: list[str] = []
    for role, model, batch in (("student", student, student_batch), ("teacher", teacher, teacher_batch)):
        wanted = {spec: i for i, t in enumerate(terms) for spec in getattr(t, f"{role}_modules", ())}
        if not wanted or model is None:
            continue
        for spec, i in wanted.items():
            try:
                Capture(model, [spec])
            except ValueError as e:
                raise ConfigError(f"knowledge[{i}] ({terms[i].name}): {role} layer '{spec}': {e}") from e
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), Capture(model, list(wanted), detach=True) as cap:
                task.forward(model, batch)
        finally:
            model.train(was_training)
        silent = [spec for spec in wanted if spec not in cap]
        if silent:
            i = wanted[silent[0]]
            raise ConfigError(f"knowledge[{i}] ({terms[i].name}): the {role}'s module '{silent[0]}' exists but was "
                              "not called in a forward pass, so it has nothing to capture")
        lines.append(f"knowledge: the {role}'s {len(wanted)} captured module(s) exist and run "
                     f"({', '.join(sorted(wanted))})")
    return lines


def preflight(cfg: RunConfig, data: DataSplits | None = None) -> Preflight:
    """Every check that needs no training: sources exist, the data fits the task, and the models
    are built and run once on a few examples, with outputs that fit the labels and each other.

    `ktransfer check` and `ktransfer run` call it first, so a config that would fail after some
    steps fails at once with a ConfigError (or FileNotFoundError) naming the problem.
    """
    check_sources(cfg)
    data = data if data is not None else load_data(cfg)
    check_data_fits_task(cfg, data.info)
    with torch.random.fork_rng(devices=[]):  # building models draws random numbers: leave the caller's RNG as it was
        teacher = build_model(cfg.teacher, data.info, "teacher") if cfg.teacher is not None else None
        student = build_model(cfg.student, data.info, "student")
        checked = [f"data: {_describe_data(cfg, data.info)} fits task '{cfg.task}'",
                   *(f"data examples: {line}" for line in describe_examples(data.info)),
                   *check_models(cfg, data, student, teacher)]
    return Preflight(data=data, checked=checked, warnings=[*cfg.warnings(), *example_warnings(data.info)])


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
        try:
            return load_weights(model, run_dir / which / "model.safetensors")
        except RuntimeError as e:  # tensor shapes differ: that run was sized for other data
            raise ConfigError(
                f"{where}.from_run: the weights of the run at {run_dir} (trained on dataset "
                f"'{source.data.get('name')}') do not fit a model built for dataset '{info.get('name', '?')}': "
                f"{_shape_mismatches(e)}; use a run trained on data of the same shape"
            ) from e
    builder = spec["builder"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    accepted = MODELS.keys(builder)
    for key, info_key in DATASET_DEFAULTS:
        if key in accepted and key not in kwargs and info_key in info:
            kwargs[key] = info[info_key]
    model = MODELS.build(builder, kwargs, where)
    if spec.get("weights"):
        try:
            load_weights(model, spec["weights"])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{where}.weights: {e}") from e
        except RuntimeError as e:  # tensor shapes differ from the model this section builds
            raise ConfigError(f"{where}.weights: {spec['weights']} does not fit the model this section builds: "
                              f"{_shape_mismatches(e)}") from e
    return model


def _shape_mismatches(error: RuntimeError, limit: int = 2) -> str:
    """The first 'size mismatch' lines of a `load_state_dict` error, on one line."""
    lines = [line.strip().rstrip(".") for line in str(error).splitlines() if "size mismatch" in line]
    if not lines:
        return str(error).strip().splitlines()[0]
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def build_distiller(
    cfg: RunConfig, run_dir: str | Path | None = None, *, data: DataSplits | None = None,
    progress: bool = True, stop_after_steps: int | None = None,
) -> tuple[Distiller, DataSplits]:
    """Everything a run needs, built from its config: the Python API behind `ktransfer run`."""
    check_sources(cfg)
    data = data if data is not None else load_data(cfg)
    check_data_fits_task(cfg, data.info)
    torch.manual_seed(cfg.train.seed)  # model initialisation depends on the run's seed
    teacher = build_model(cfg.teacher, data.info, "teacher") if cfg.teacher is not None else None
    student = build_model(cfg.student, data.info, "student")
    check_models(cfg, data, student, teacher)  # in eval mode, without gradients: the models stay as built
    selector_spec = dict(cfg.selector)
    selector = SELECTORS.build(selector_spec.pop("type"), selector_spec, "selector")
    task = Task(cfg.task)
    distiller = Distiller(
        student, teacher, build_terms(cfg.knowledge), selector,
        train_data=data.train, config=cfg.train, optim=cfg.optim, schedule=cfg.schedule, task=task,
        evaluate=run_evaluator(cfg, data, "val", teacher),
        run_dir=run_dir, collate_fn=data.collate_fn, progress=progress, stop_after_steps=stop_after_steps,
        stages=_stages(cfg),
        chance_accuracy=majority_rate(data.val) if cfg.task == "classification" else None,
    )
    return distiller, data


def run_evaluator(cfg: RunConfig, data: DataSplits, split: str, teacher: nn.Module | None) -> Any:
    """Accuracy, loss and perplexity of the student on a split; for a sequence task with a teacher, also
    `teacher_kl`, its divergence from the teacher there (ktransfer.sequence.heldout)."""
    task = Task(cfg.task)
    evaluate = make_evaluator(data.get(split), task, cfg.train.eval_batch_size, collate_fn=data.collate_fn)
    if teacher is None or cfg.task not in ("causal_lm", "seq2seq"):
        return evaluate
    from ktransfer.sequence.heldout import with_teacher_kl

    return with_teacher_kl(evaluate, data.get(split), task, teacher, cfg.train.eval_batch_size, data.collate_fn)


def _stages(cfg: RunConfig) -> list[Any]:
    """The batch stages a config asks for: a targets stage when it has a `targets` section (seed: the run's)."""
    if cfg.targets is None:
        return []
    from ktransfer.sequence.targets import targets_stage_from_config

    return [targets_stage_from_config({"seed": cfg.train.seed, **cfg.targets}, cfg.task)]


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


def _finish(distiller: Distiller, cfg: RunConfig, run_dir: Path, result: TrainResult,
            data_info: dict[str, Any] | None = None) -> RunResult:
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
        "grad_accum_steps": cfg_train.grad_accum_steps,
        "warnings": example_warnings(data_info or {}) + result.warnings,
        "examples": (data_info or {}).get("examples"), "examples_rule": (data_info or {}).get("examples_rule"),
        "tokenizer_sha256": (data_info or {}).get("tokenizer_sha256"),
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
    if cfg.teacher is not None and cfg.task in ("causal_lm", "seq2seq"):  # for teacher_kl on this split
        teacher = build_model(cfg.teacher, data.info, "teacher")
    metrics = run_evaluator(cfg, data, split, teacher)(model)
    if cfg.task == "classification":  # macro-F1 and MCC need every prediction, not sums
        from ktransfer.scores import classification_scores, predict_classes

        predicted, true = predict_classes(model, data.get(split), Task(cfg.task), cfg.train.eval_batch_size,
                                          data.collate_fn)
        metrics.update(classification_scores(predicted, true, data.info.get("num_classes")))
    report = {"split": split, "which": which, **metrics, "parameters": count_parameters(model),
              "size": len(data.get(split))}  # type: ignore[arg-type]
    write_json_atomic(run_dir / f"eval-{split}.json", report)
    return report

