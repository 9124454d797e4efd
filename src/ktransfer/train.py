"""The one training loop: a student learns from knowledge terms whose weights a selector sets.

Every method plugs in here by choosing knowledge terms, a divergence, a selector and the data;
none has a loop of its own. Built on Hugging Face Accelerate, so the same code runs on one CPU,
one GPU, or several processes under `accelerate launch` / `torchrun`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ktransfer.batching import example_lengths, length_grouped_order, length_sorted
from ktransfer.capture import Capture
from ktransfer.checkpoint import (
    CorruptFileError,
    checkpoints_newest_first,
    current_umask,
    find_intact_checkpoint,
    read_manifest,
    read_weights,
    replace_dir,
    save_weights,
    verify_manifest,
    write_manifest,
)
from ktransfer.data.base import collate_dicts
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.registry import ConfigError, suggest
from ktransfer.runlog import MetricsLog, plot_curves, plot_weights
from ktransfer.schema import validate
from ktransfer.selection import FixedWeights, SelectionState, Selector, SelectorContext
from ktransfer.sequence.stage import BatchStage, StageContext, StageStates
from ktransfer.tasks import Task, TaskKind, metric_mode

Evaluator = Callable[[nn.Module], dict[str, float]]
TEACHER_PREFIX = "teacher_"
# The divergence warning compares the first step's loss with the last logged one, in runs this long.
HEALTH_MIN_STEPS = 20
# Trackers of Accelerate that write locally (nothing here may need the network).
TRACKERS = ("tensorboard", "aim", "mlflow", "clearml", "dvclive")


class NonFiniteError(RuntimeError):
    """A loss or a validation metric became NaN or infinite; the run stops rather than go on with garbage."""

    step: int


class NonFiniteLossError(NonFiniteError):
    """A training loss became NaN or infinite (on any process) at an optimizer step."""

    def __init__(self, step: int, total: float, parts: dict[str, float], mixed_precision: str = "no") -> None:
        self.step = step
        detail = ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        hint = "Lower the learning rate or check the data for NaN/inf"
        if mixed_precision != "no":
            hint += f", or use mixed_precision='no' to see whether {mixed_precision} overflows"
        super().__init__(f"loss is {total} at step {step} ({detail}); stopping. {hint}.")


class NonFiniteMetricError(NonFiniteError):
    """A validation metric became NaN or infinite: no checkpoint can be judged best by it."""

    def __init__(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        super().__init__(
            f"validation metrics are not finite at step {step} ({bad}); stopping. The model's outputs "
            "overflowed (lower the learning rate) or the validation data holds NaN/inf."
        )


class WorldSizeError(RuntimeError):
    """A checkpoint written by N processes is resumed by M != N processes."""


@dataclass
class OptimConfig:
    """Optimizer of the student (the teacher has none)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        validate(self, "optim")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, by Hugging Face `transformers.get_scheduler` name."""

    name: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        validate(self, "schedule")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class TrainConfig:
    """Length, batching, precision, evaluation, early stopping, checkpointing and tracking of a run.

    `max_steps` counts optimizer steps. `batch_size` is global: one micro-batch of `batch_size`
    examples is split across all processes (each takes batch_size / world_size), and one
    optimizer step consumes `grad_accum_steps` micro-batches, so a step sees
    batch_size x grad_accum_steps examples whatever the number of processes. Token-level losses
    are normalised by the target count of the whole step (all micro-batches, all processes).
    `metric` (from the evaluator) picks the best model; with `patience` set, training stops
    after that many evaluations without improvement. A checkpoint (the whole training state, for
    `resume`) is written every `checkpoint_every` steps (0: not by steps), every
    `checkpoint_minutes` of training wall time (0: not by time; by default every 10 minutes, so a
    kill loses at most that much work whatever the step count), and at the end. `report_to` sends metrics to trackers Accelerate supports (e.g.
    ["tensorboard"]), written under the run directory's `tracking/`.
    """

    max_steps: int = 500
    batch_size: int = 64
    eval_batch_size: int = 512
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    metric: str = "accuracy"
    # "max" keeps the checkpoint with the highest metric, "min" the lowest; null (the default)
    # takes it from the metric: min for loss, perplexity and names containing "loss", else max
    mode: Literal["max", "min"] | None = None
    patience: int | None = None
    report_to: list[str] = field(default_factory=list)
    # Batch examples of similar length together (within windows of 50 batches, batch order
    # shuffled), so that padded batches waste little compute; the epoch still sees every example.
    group_by_length: bool = False
    # Intra-op CPU threads of this process (torch.set_num_threads, process-wide, set when training
    # starts); null leaves torch's default (one per core). Runs sharing a machine want fewer.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        validate(self, "train")
        unknown = sorted(set(self.report_to) - set(TRACKERS))
        if unknown:
            raise ValueError(f"train.report_to: unknown tracker '{unknown[0]}'; valid choices: {', '.join(TRACKERS)}")
        for key in ("max_steps", "batch_size", "eval_batch_size", "grad_accum_steps", "eval_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"train.checkpoint_minutes must be >= 0 (0: no checkpoints by time), got "
                             f"{self.checkpoint_minutes}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience must be >= 1 or null, got {self.patience}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        """`mode` as given, or else the direction in which `metric` improves."""
        return self.mode if self.mode is not None else metric_mode(self.metric)


@dataclass
class TrainState:
    """Progress that a checkpoint must restore beyond model/optimizer/RNG (Accelerate keeps those)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    log_sums: dict[str, float] = field(default_factory=dict)
    log_count: int = 0
    recent_losses: dict[str, list[float]] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    first_loss: float | None = None
    last_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What `Distiller.fit` returns: the final and best validation metrics and where things are."""

    step: int
    stopped_early: bool
    best_step: int
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    wall_time_s: float
    run_dir: Path | None
    already_finished: bool = False
    warnings: list[str] = field(default_factory=list)
    world_size: int = 1


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
    from ktransfer.bleu import has_references
    from ktransfer.tasks import evaluation_sums, metrics_from_sums

    task = task if isinstance(task, Task) else Task(task)
    scores_translations = task.kind == "seq2seq" and has_references(data)

    by_length = length_sorted(data)  # order does not change the sums; less padding makes them cheaper

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        batches, world = shard_batches(by_length, batch_size, collate_fn, device)
        metrics = metrics_from_sums(*sum_over_processes(evaluation_sums(model, batches, task), world, device))
        if scores_translations:  # every process decodes the same bounded subset: the scores agree everywhere
            from ktransfer.bleu import generation_metrics

            metrics.update(generation_metrics(model, data, collate_fn))
        return metrics

    return evaluate


def _build_optimizer(params: Sequence[nn.Parameter] | Sequence[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _new_accelerator(cfg: TrainConfig, run_dir: Path | None) -> Any:
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
    return Accelerator(
        gradient_accumulation_steps=1, mixed_precision=cfg.mixed_precision, cpu=multi_cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=list(cfg.report_to) or None,
        project_dir=str(run_dir / "tracking") if cfg.report_to and run_dir is not None else None,
    )


class Distiller:
    """Trains `student` on the weighted sum of `terms`, weights chosen each step by `selector`.

    The teacher is frozen: eval mode, no gradients, no optimizer state; it runs only if some
    term needs it. `teacher` may be None for plain supervised training (a `labels` term alone).
    With `run_dir`, the run writes metrics.jsonl, checkpoints/, best/ and final/ weights and
    curves.png there, and `fit(resume=True)` continues from the newest intact checkpoint.
    `chance_accuracy` (e.g. the majority-class rate) lets the run warn when it ends no better.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        terms: Sequence[KnowledgeTerm],
        selector: Selector | None = None,
        *,
        train_data: Dataset,
        config: TrainConfig | None = None,
        optim: OptimConfig | None = None,
        schedule: ScheduleConfig | None = None,
        task: Task | TaskKind = "classification",
        evaluate: Evaluator | None = None,
        run_dir: str | Path | None = None,
        collate_fn: Callable[[list[Any]], dict[str, Any]] = collate_dicts,
        progress: bool = True,
        stop_after_steps: int | None = None,
        chance_accuracy: float | None = None,
        stages: Sequence[BatchStage] = (),
    ) -> None:
        if not terms:
            raise ValueError("Distiller needs at least one knowledge term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"knowledge term names must be unique, got {names}")
        self.needs_teacher = any(t.requires_teacher for t in terms)
        if self.needs_teacher and teacher is None:
            needing = [t.name for t in terms if t.requires_teacher]
            raise ValueError(f"knowledge terms {needing} need a teacher, but teacher is None")
        self.stages = list(stages)
        if teacher is None and any(getattr(s, "requires_teacher", False) for s in self.stages):
            raise ValueError("a batch stage generates with the teacher, but teacher is None")
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise ValueError("train_data is empty")
        self.student = student
        self.teacher = teacher
        self.terms = list(terms)
        self.selector: Selector = selector if selector is not None else FixedWeights()
        self.train_data = train_data
        self.config = config or TrainConfig()
        self.optim = optim or OptimConfig()
        self.schedule = schedule or ScheduleConfig()
        self.task = task if isinstance(task, Task) else Task(task)
        self.evaluate = evaluate
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.collate_fn = collate_fn
        self.progress = progress
        # For tests and the CLI's --stop-after: end the process's work after this many steps
        # as if killed (no final evaluation or checkpoint beyond the regular ones).
        self.stop_after_steps = stop_after_steps
        self.chance_accuracy = chance_accuracy
        self.state = TrainState()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir else None
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        # A term that fuses the student's output layer into its loss: the student then runs without
        # computing its (tokens x V) logits (`ktransfer.fused_head`), checked on the first step.
        self._fused_head = any(getattr(t, "fused_head", False) for t in terms)
        if self._fused_head and self.task.kind == "classification":
            fused = [t.name for t in terms if getattr(t, "fused_head", False)]
            raise ValueError(f"knowledge terms {fused} use fused_head, which needs task causal_lm or seq2seq "
                             f"(a Hugging Face sequence model), not '{self.task.kind}'")
        self._head_checked = False
        self._setup_terms()
        self._student_specs = sorted({s for t in self.terms for s in t.student_modules})
        self._teacher_specs = sorted({s for t in self.terms for s in t.teacher_modules})
        self._add_selector_specs()
        self._checkpointed_step: int | None = None
        self._saved_world = 1
        self._last_view: StepView | None = None
        self._heldout: Dataset | None = None

    # ----------------------------------------------------------------------------- one step
    def _losses(self, batch: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        student_batch, teacher_batch = split_batch(batch)
        s_capture = Capture(student, self._student_specs) if self._student_specs else contextlib.nullcontext()
        with s_capture as sc:
            s_out = self.task.forward(student, student_batch, fused_head=self._fused_head,
                                      check_head=self._fused_head and not self._head_checked)
        self._head_checked = True
        t_out = None
        t_captured: dict[str, Any] = {}
        if self.needs_teacher and teacher is not None:
            t_capture = (Capture(teacher, self._teacher_specs, detach=True)
                         if self._teacher_specs else contextlib.nullcontext())
            with torch.no_grad(), self.accelerator.autocast(), t_capture as tc:
                t_out = self.task.forward(teacher, teacher_batch)
            t_captured = dict(tc.outputs) if tc is not None else {}
        view = StepView(
            batch=batch, student=s_out, teacher=t_out,
            student_captured=dict(sc.outputs) if sc is not None else {},
            teacher_captured=t_captured, step=self.state.step,
        )
        if getattr(self.selector, "observes_view", True):  # else released now, before backward and the update
            self._last_view = view
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.terms:
            w = weights[term.name]
            if w == 0.0:
                continue
            value = term.loss(view)
            parts[term.name] = value
            total = w * value if total is None else total + w * value
        if total is None:
            raise ValueError(f"the selector gave every term weight 0 at step {self.state.step + 1}")
        return total, parts

    def _selection_state(self) -> SelectionState:
        return SelectionState(step=self.state.step, max_steps=self.config.max_steps,
                              recent_losses=self.state.recent_losses)

    # ----------------------------------------------------------------------------- fit
    def fit(self, resume: bool | str | Path = False, *, force_world_size: bool = False) -> TrainResult:
        """Train until `max_steps` or early stopping; `resume` = True (newest intact checkpoint) or a path.

        Resuming a finished run changes nothing and returns its result (`already_finished`).
        A checkpoint written by another number of processes is refused unless `force_world_size`.
        """
        from accelerate.utils import set_seed

        cfg = self.config
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        self.accelerator = accelerator = _new_accelerator(cfg, self.run_dir)
        set_seed(cfg.seed)
        self.state = TrainState(world_size=accelerator.num_processes)
        self._checkpointed_step = None
        self._checkpointed_at = _clock()
        student, teacher, optimizer, scheduler, loader = self._prepare(accelerator)
        self._bind_selector(accelerator, student)
        ckpt_root = self.run_dir / "checkpoints" if self.run_dir else None
        self._restore(accelerator, resume, ckpt_root, force_world_size)

        state = self.state
        if resume and (state.step >= cfg.max_steps or state.stopped_early):
            return self._already_finished(accelerator, student)
        setup = self._run_record(accelerator)
        if self.progress or accelerator.num_processes > 1:  # library calls with progress=False stay quiet
            _say(accelerator, f"{setup['world_size']} process(es) on {setup['device']}; {setup['examples_per_step']} "
                 f"examples per step = batch {setup['batch_size']} ({setup['per_process_batch_size']} per process) "
                 f"x {setup['grad_accum_steps']} accumulated")
        if self.log and accelerator.is_main_process and (not resume or self._saved_world != accelerator.num_processes):
            self.log.append(setup)
        state.world_size = accelerator.num_processes
        self._start_trackers(accelerator)
        start_step = state.step
        t0 = time.perf_counter() - state.elapsed_s
        bar = None
        if self.progress and accelerator.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
        final_metrics: dict[str, float] = {}
        killed = False
        try:
            while state.step < cfg.max_steps and not state.stopped_early and not killed:
                for group in self._step_groups(accelerator, loader):
                    self._optimizer_step(group, student, teacher, optimizer, scheduler)
                    if bar is not None:
                        bar.update(1)
                    last = state.step >= cfg.max_steps
                    if state.step % cfg.log_every == 0 or last:
                        self._flush_log(scheduler.get_last_lr()[0], t0, bar)
                    if self.evaluate is not None and (state.step % cfg.eval_every == 0 or last):
                        final_metrics = self._evaluate(student)
                    if not last and self._checkpoint_due(accelerator):
                        state.elapsed_s = time.perf_counter() - t0
                        self._checkpoint(accelerator, ckpt_root)
                    killed = self.stop_after_steps is not None and state.step - start_step >= self.stop_after_steps
                    if last or state.stopped_early or killed:
                        break
                else:
                    state.epoch += 1
                    state.batches_in_epoch = 0
        finally:
            if bar is not None:
                bar.close()
        state.elapsed_s = time.perf_counter() - t0
        warnings: list[str] = []
        if not killed:
            if self.evaluate is not None and not final_metrics:
                final_metrics = self._evaluate(student)
            warnings = self._health_warnings(final_metrics)
            self._finish(accelerator, student, ckpt_root, warnings)
        if cfg.report_to:
            accelerator.end_training()
        return TrainResult(
            step=state.step, stopped_early=state.stopped_early, best_step=state.best_step,
            best_metrics=dict(state.best_metrics), final_metrics=final_metrics,
            wall_time_s=state.elapsed_s, run_dir=self.run_dir, warnings=warnings, world_size=state.world_size,
        )

    def _run_record(self, accelerator: Any) -> dict[str, Any]:
        """What the log records about the run's set-up: processes and batching."""
        cfg = self.config
        world = accelerator.num_processes
        return {"split": "setup", "step": self.state.step, "world_size": world, "batch_size": cfg.batch_size,
                "per_process_batch_size": cfg.batch_size // world, "grad_accum_steps": cfg.grad_accum_steps,
                "examples_per_step": cfg.batch_size * cfg.grad_accum_steps, "mixed_precision": cfg.mixed_precision,
                "device": str(accelerator.device)}

    def _start_trackers(self, accelerator: Any) -> None:
        if not self.config.report_to:
            return
        from ktransfer.schema import to_dict

        flat: dict[str, Any] = {}
        for section, obj in (("train", self.config), ("optim", self.optim), ("schedule", self.schedule)):
            for key, value in to_dict(obj).items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        name = self.run_dir.name if self.run_dir else "ktransfer"
        accelerator.init_trackers(name, config=flat)

    def _prepare(self, accelerator: Any) -> tuple[nn.Module, nn.Module | None, Any, Any, Any]:
        """Optimizer, schedule and data loader for the student; the teacher frozen on the device."""
        from transformers import get_scheduler

        cfg = self.config
        world = accelerator.num_processes
        if cfg.batch_size % world:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} is the global batch and must split evenly across "
                f"{world} processes (use a multiple of {world})"
            )
        self.student.train()
        params = [p for p in self.student.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the student has no trainable parameters")
        self._prepare_terms(accelerator)  # on the device before the optimizer takes their parameters
        optimizer = _build_optimizer(self._param_groups(params), self.optim)
        scheduler = get_scheduler(self.schedule.name, optimizer, num_warmup_steps=self.schedule.warmup_steps,
                                  num_training_steps=cfg.max_steps)
        train_data = self._training_data()
        lengths = example_lengths(train_data) if cfg.group_by_length else None
        sampler = EpochShuffleSampler(len(train_data), cfg.seed, lengths, cfg.batch_size)  # type: ignore[arg-type]
        # A private generator: creating a DataLoader iterator must not draw from the global RNG
        # (dropout), or a resumed run, which creates one more iterator, would drift.
        loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=self.collate_fn, generator=torch.Generator().manual_seed(cfg.seed))
        student, optimizer, loader = accelerator.prepare(self.student, optimizer, loader)
        teacher = None
        if self._places_teacher() and self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)
            # Placed, not prepared: a prepared model would be saved in every checkpoint.
            teacher = self.teacher.to(accelerator.device)
        # The scheduler is stepped by hand once per optimizer step (an Accelerate-prepared
        # scheduler steps once per process), and checkpointed as a registered object.
        accelerator.register_for_checkpointing(scheduler, self.state, self.selector)
        self._register_stages(accelerator)
        return student, teacher, optimizer, scheduler, loader

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
                _say(accelerator, f"skipping checkpoint {skipped.name}: {why}")
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
        saved_world = self._saved_world = int(read_manifest(path).get("world_size", 1))
        if saved_world != accelerator.num_processes and not force_world_size:
            raise WorldSizeError(
                f"checkpoint {path.name} was written by {saved_world} process(es) and this run has "
                f"{accelerator.num_processes}: the data order, batch split and RNG streams would differ from "
                f"the original run. Resume with {saved_world} process(es), or force it (--force-world-size; "
                "fit(resume=..., force_world_size=True)) to continue with a different result."
            )
        try:
            accelerator.load_state(str(path))
        except Exception as e:  # a file that verified but still cannot be read: name it
            raise CorruptFileError(f"checkpoint {path} cannot be loaded: {e}") from e
        _say(accelerator, f"resuming from checkpoint {path}{newest} (step {self.state.step} of {self.config.max_steps})")
        if self.log and accelerator.is_main_process:
            self.log.truncate_after(self.state.step)

    def _already_finished(self, accelerator: Any, student: nn.Module) -> TrainResult:
        """The result of a run that had finished; only outputs a kill prevented are completed."""
        state = self.state
        _say(accelerator, f"the run is finished (step {state.step} of {self.config.max_steps}"
             + (", stopped early" if state.stopped_early else "") + "); nothing to do. "
             "To train further, give a larger train.max_steps.")
        if self.run_dir and accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(student)
            for which in ("final", "best"):
                path = self.run_dir / which / "model.safetensors"
                if which == "best" and self.evaluate is not None:
                    continue  # best weights come from evaluations; never rewritten from the final state
                if not _weights_ok(path):
                    save_weights(unwrapped, path)
                    self._save_term_weights(which)
        return TrainResult(
            step=state.step, stopped_early=state.stopped_early, best_step=state.best_step,
            best_metrics=dict(state.best_metrics), final_metrics=dict(state.last_metrics),
            wall_time_s=state.elapsed_s, run_dir=self.run_dir, already_finished=True, world_size=state.world_size,
        )

    def _step_groups(self, accelerator: Any, loader: Any) -> Iterator[list[dict[str, Any]]]:
        """The current epoch's micro-batches in groups of one optimizer step each.

        Batches a resumed run has already seen are skipped; the last group of an epoch may be
        shorter than `grad_accum_steps`.
        """
        epoch, seen = self.state.epoch, self.state.batches_in_epoch
        batches = accelerator.skip_first_batches(loader, seen) if seen else loader
        batches.set_epoch(epoch)  # the order depends only on (seed, epoch)
        group: list[dict[str, Any]] = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.config.grad_accum_steps:
                yield group
                group = []
        if group:
            yield group

    def _optimizer_step(self, group: list[dict[str, Any]], student: nn.Module, teacher: nn.Module | None,
                        optimizer: Any, scheduler: Any) -> None:
        """Forward and backward on each micro-batch of one step, then one optimizer update.

        Each micro-batch's loss (a mean over its own targets) is scaled by its share of the
        step's targets counted over all micro-batches and processes, so the update equals that
        of one large batch whatever the padding, accumulation or number of processes. Losses
        are checked for NaN/inf on every process before the last (synchronising) backward.
        """
        accelerator = self.accelerator
        world = accelerator.num_processes
        weights = self.selector.weights(self.terms, self._selection_state())
        names = [t.name for t in self.terms if weights[t.name] != 0.0]
        group = self._apply_stages(group, student, teacher)  # rewritten targets must be counted
        counts = [self.task.count_targets(b) for b in group]
        step_count = float(sum(counts))
        if world > 1:
            step_count = float(accelerator.reduce(
                torch.tensor(step_count, dtype=torch.float64, device=accelerator.device), "sum"))
        # per micro-batch: [total, parts..., 1 if non-finite]; summed over micro-batches (and processes)
        sums = torch.zeros(len(names) + 2, dtype=torch.float64)
        for i, (batch, count) in enumerate(zip(group, counts, strict=True)):
            last = i == len(group) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(student):
                if count == 0:  # nothing to learn here; a zero loss still joins the gradient sync
                    scaled = sum(p.sum() for p in student.parameters() if p.requires_grad) * 0.0
                    values = torch.zeros(len(names) + 1, dtype=torch.float64)
                else:
                    total, parts = self._losses(batch, student, teacher, weights)
                    share = count * world / step_count
                    scaled = total * share
                    # one host read per micro-batch, shared by the NaN guard and the logs
                    values = torch.stack([total.detach(), *(parts[n].detach() for n in names)]).double().cpu() * share
                finite = bool(torch.isfinite(values).all())
                sums[:-1] += values
                sums[-1] += 0.0 if finite else 1.0
                if world == 1 and not finite:
                    self._raise_nonfinite(sums, names)
                if last and world > 1:
                    sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
                    sums[:-1] /= world  # each process's values were scaled by world (its share); the flag is a count
                    if sums[-1] > 0:
                        self._raise_nonfinite(sums, names)
                if finite:
                    accelerator.backward(scaled)
        self._sync_term_grads(accelerator)
        if self.optim.max_grad_norm is not None:
            accelerator.clip_grad_norm_([*student.parameters(), *self._term_params()], self.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.state.batches_in_epoch += len(group)
        self.state.step += 1
        values = sums.tolist()
        losses = dict(zip(names, values[1:-1], strict=True))
        self._accumulate_log(values[0], losses, weights)
        self._observe(losses)

    def _raise_nonfinite(self, sums: Tensor, names: list[str]) -> None:
        values = sums.tolist()
        raise NonFiniteLossError(self.state.step + 1, values[0], dict(zip(names, values[1:-1], strict=True)),
                                 self.config.mixed_precision)

    def _finish(self, accelerator: Any, student: nn.Module, ckpt_root: Path | None, warnings: list[str]) -> None:
        """Final checkpoint, final (and, without an evaluator, best) weights, learning curves, warnings."""
        if self._checkpointed_step != self.state.step:
            self._checkpoint(accelerator, ckpt_root)
        unwrapped = accelerator.unwrap_model(student)
        for message in warnings:
            _say(accelerator, f"warning: {message}")
        if self.run_dir and accelerator.is_main_process:
            save_weights(unwrapped, self.run_dir / "final" / "model.safetensors")
            self._save_term_weights("final")
            if self.evaluate is None or not (self.run_dir / "best" / "model.safetensors").exists():
                save_weights(unwrapped, self.run_dir / "best" / "model.safetensors")
                self._save_term_weights("best")
            self._save_selector_outputs()
            if self.log:
                for message in warnings:
                    self.log.append({"split": "warning", "step": self.state.step, "message": message})
                plot_curves(self.log.read(), self.run_dir / "curves.png", title=self.run_dir.name)
                plot_weights(self.log.read(), self.run_dir / "weights.png", title=self.run_dir.name)
        accelerator.wait_for_everyone()

    def _health_warnings(self, final_metrics: dict[str, float]) -> list[str]:
        """Signs that the run went wrong although nothing was NaN: a rising loss, chance-level accuracy."""
        long_enough = self.state.step >= HEALTH_MIN_STEPS  # a few noisy steps say nothing about divergence
        return run_health_warnings(self.state.first_loss if long_enough else None, self.state.last_loss,
                                   final_metrics, self.chance_accuracy)

    # ----------------------------------------------------------------------------- helpers
    def _accumulate_log(self, total: float, losses: dict[str, float], weights: dict[str, float]) -> None:
        s = self.state.log_sums
        s["loss"] = s.get("loss", 0.0) + total
        for name, value in losses.items():
            s[f"terms/{name}"] = s.get(f"terms/{name}", 0.0) + value
        for name, w in weights.items():
            s[f"weights/{name}"] = s.get(f"weights/{name}", 0.0) + w
        self.state.log_count += 1
        if self.state.first_loss is None:  # the untrained model's loss, for the divergence warning
            self.state.first_loss = total

    def _flush_log(self, lr: float, t0: float, bar: Any) -> None:
        n = max(1, self.state.log_count)
        avg = {k: v / n for k, v in self.state.log_sums.items()}
        record: dict[str, Any] = {
            "split": "train", "step": self.state.step, "epoch": self.state.epoch, "lr": lr,
            "loss": avg.pop("loss", math.nan), "elapsed_s": round(time.perf_counter() - t0, 3),
            "terms": {k[6:]: v for k, v in avg.items() if k.startswith("terms/")},
            "weights": {k[8:]: v for k, v in avg.items() if k.startswith("weights/")},
        }
        if hasattr(self.selector, "metrics"):
            record["selector"] = dict(self.selector.metrics())
        self.state.log_sums = {}
        self.state.log_count = 0
        self.state.last_loss = record["loss"]
        if self.log and self.accelerator.is_main_process:
            self.log.append(record)
        if self.config.report_to:
            self.accelerator.log({"train/loss": record["loss"], "train/lr": lr,
                                  **{f"train/terms/{k}": v for k, v in record["terms"].items()},
                                  **{f"train/weights/{k}": v for k, v in record["weights"].items()}},
                                 step=self.state.step)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}")

    def _observe(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            window = self.state.recent_losses.setdefault(k, [])
            window.append(v)
            del window[:-50]
        state = self._selection_state()
        state.view, self._last_view = self._last_view, None
        self.selector.observe(losses, state)

    # ------------------------------------------------------------------------ batch stages
    def _places_teacher(self) -> bool:
        """The teacher goes on the device when a term reads its outputs or a stage generates with it."""
        return self.needs_teacher or any(getattr(s, "requires_teacher", False) for s in self.stages)

    def _register_stages(self, accelerator: Any) -> None:
        """Put the stages' states (their sampling RNGs) and stateful non-module terms into every checkpoint."""
        if self.stages:
            accelerator.register_for_checkpointing(StageStates(self.stages))
        stateful = {t.name: t for t in self.terms if not isinstance(t, nn.Module) and callable(getattr(t, "state_dict", None))}
        if stateful:
            accelerator.register_for_checkpointing(_TermStates(stateful))

    def _apply_stages(self, group: list[dict[str, Any]], student: nn.Module,
                      teacher: nn.Module | None) -> list[dict[str, Any]]:
        """Every micro-batch of a step passed through the stages in order (before targets are counted)."""
        if not self.stages:
            return group
        ctx = StageContext(student=self.accelerator.unwrap_model(student), teacher=teacher, task=self.task,
                           step=self.state.step, device=self.accelerator.device,
                           process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes)
        out = []
        for batch in group:
            for stage in self.stages:
                batch = stage(batch, ctx)
            out.append(batch)
        return out

    # ------------------------------------------------------- terms with models and parameters; selector context
    def _setup_terms(self) -> None:
        """Terms with a `setup(student, teacher)` resolve layer names and build projections against the models."""
        for term in self.terms:
            setup = getattr(term, "setup", None)
            if callable(setup):
                setup(self.student, self.teacher)

    def _add_selector_specs(self) -> None:
        """A selector may read captured internals too (`student_modules` / `teacher_modules`, like a term's)."""
        self._student_specs = sorted({*self._student_specs, *getattr(self.selector, "student_modules", ())})
        self._teacher_specs = sorted({*self._teacher_specs, *getattr(self.selector, "teacher_modules", ())})

    def _term_modules(self) -> dict[str, nn.Module]:
        """Terms that are modules with parameters (e.g. feature projections), by name."""
        return {t.name: t for t in self.terms if isinstance(t, nn.Module) and any(True for _ in t.parameters())}

    def _term_params(self) -> list[nn.Parameter]:
        return [p for m in self._term_modules().values() for p in m.parameters() if p.requires_grad]

    def _param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """The student's parameters, plus one group for the terms' own parameters when there are any."""
        groups: list[dict[str, Any]] = [{"params": params}]
        extra = self._term_params()
        if extra:
            groups.append({"params": extra})
        return groups

    def _prepare_terms(self, accelerator: Any) -> None:
        """Place the terms' parameters on the device and put their state into every checkpoint."""
        modules = self._term_modules()
        for module in modules.values():
            module.to(accelerator.device)
        if modules:
            accelerator.register_for_checkpointing(_TermStates(modules))

    def _sync_term_grads(self, accelerator: Any) -> None:
        """Average the terms' gradients over processes (DDP does this for the student's only)."""
        if accelerator.num_processes == 1:
            return
        for p in self._term_params():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad = accelerator.reduce(p.grad, "mean")

    def _save_term_weights(self, which: str) -> None:
        """The terms' parameters next to the student's weights: `<which>/terms.safetensors`."""
        modules = self._term_modules()
        if self.run_dir is not None and modules:
            save_weights(nn.ModuleDict({k.replace(".", "_"): m for k, m in modules.items()}),
                         self.run_dir / which / "terms.safetensors")

    def _training_data(self) -> Dataset:
        """`train_data` minus the held-out examples a selector asked for (`heldout_examples`)."""
        n = int(getattr(self.selector, "heldout_examples", 0) or 0)
        if n <= 0:
            self._heldout = None
            return self.train_data
        size = len(self.train_data)  # type: ignore[arg-type]
        if n >= size:
            raise ValueError(f"the selector asks for {n} held-out examples, but train_data has only {size}")
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.config.seed + 7919)).tolist()
        self._heldout = Subset(self.train_data, sorted(order[:n]))
        return Subset(self.train_data, sorted(order[n:]))

    def _bind_selector(self, accelerator: Any, student: nn.Module) -> None:
        """Give a selector with `bind(context)` what it may need beyond the losses (held-out loss, seed)."""
        bind = getattr(self.selector, "bind", None)
        if not callable(bind):
            return
        from ktransfer.tasks import evaluate_sums

        heldout = self._heldout
        batch: dict[str, Any] | None = None
        if heldout is not None:
            rows = [heldout[i] for i in range(len(heldout))]  # type: ignore[arg-type]
            batch = {k: v.to(accelerator.device) if isinstance(v, Tensor) else v
                     for k, v in split_batch(self.collate_fn(rows))[0].items()}

        def heldout_loss(model: nn.Module | None = None) -> float:
            if batch is None:
                raise RuntimeError("this selector has no held-out batch: set its heldout_examples > 0")
            _, nll, total = evaluate_sums(accelerator.unwrap_model(model or student), [batch], self.task)
            return nll / max(total, 1.0)

        def all_mean(t: Tensor) -> Tensor:
            if accelerator.num_processes == 1:
                return t
            return accelerator.reduce(t.to(accelerator.device), "mean").cpu()

        bind(SelectorContext(heldout_loss=heldout_loss if batch is not None else None, seed=self.config.seed,
                             max_steps=self.config.max_steps, term_names=[t.name for t in self.terms],
                             all_mean=all_mean))

    def _save_selector_outputs(self) -> None:
        """A selector that learns a policy saves it as final/policy.pt, for reuse by another run."""
        save_policy = getattr(self.selector, "save_policy", None)
        if self.run_dir is not None and callable(save_policy):
            save_policy(self.run_dir / "final" / "policy.pt")

    def _evaluate(self, student: nn.Module) -> dict[str, float]:
        assert self.evaluate is not None
        cfg = self.config
        unwrapped = self.accelerator.unwrap_model(student)
        metrics = {k: float(v) for k, v in self.evaluate(unwrapped).items()}
        if cfg.metric not in metrics:
            # a run config's metric is checked before training; a custom evaluator's names are known only now
            raise ConfigError(
                f"train.metric: the evaluator returned no '{cfg.metric}'{suggest(cfg.metric, list(metrics))}; "
                f"it returned: {', '.join(sorted(metrics)) or '(nothing)'}; set train.metric to one of these"
            )
        if not all(math.isfinite(v) for v in metrics.values()):
            raise NonFiniteMetricError(self.state.step, metrics)
        value = metrics[cfg.metric]
        state = self.state
        state.last_metrics = dict(metrics)
        maximise = cfg.resolved_mode == "max"
        better = state.best_metric is None or (value > state.best_metric if maximise else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            state.best_metrics = dict(metrics)
            if self.run_dir and self.accelerator.is_main_process:
                save_weights(unwrapped, self.run_dir / "best" / "model.safetensors")
                self._save_term_weights("best")
        else:
            state.bad_evals += 1
            if cfg.patience is not None and state.bad_evals >= cfg.patience:
                state.stopped_early = True
        if self.log and self.accelerator.is_main_process:
            self.log.append({"split": "val", "step": state.step, **metrics})
        if cfg.report_to:
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
        return metrics

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
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in tmp.rglob("*"):  # Accelerate writes some files 0600; give them the usual permissions
                if path.is_file():
                    os.chmod(path, 0o666 & ~current_umask())
            write_manifest(tmp, step=self.state.step, world_size=accelerator.num_processes)
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


class _TermStates:
    """The state of the terms' own modules (or other stateful terms), as one object Accelerate checkpoints."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules  # nn.Modules, or terms with state_dict / load_state_dict

    def state_dict(self) -> dict[str, Any]:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])


def _clock() -> float:
    """Seconds on a monotonic clock: what checkpoints by wall time are timed with."""
    return time.monotonic()


def _say(accelerator: Any, message: str) -> None:
    """A message for the user, on the main process only (stderr: stdout may carry JSON)."""
    if accelerator.is_main_process:
        print(f"ktransfer: {message}", file=sys.stderr, flush=True)


def _weights_ok(path: Path) -> bool:
    try:
        read_weights(path)
    except (FileNotFoundError, CorruptFileError):
        return False
    return True


def run_health_warnings(first_loss: float | None, last_loss: float | None, final_metrics: dict[str, float],
                        chance_accuracy: float | None) -> list[str]:
    """Warnings for a run that finished without error but probably failed.

    A training loss that ends well above the first step's (factor 1.5 and by more than 0.1)
    means divergence; a final validation accuracy within 1 point of chance means nothing was learnt.
    """
    warnings = []
    if first_loss is not None and last_loss is not None and math.isfinite(first_loss):
        if last_loss > 1.5 * first_loss and last_loss - first_loss > 0.1:
            warnings.append(
                f"the training loss ended at {last_loss:.4g}, above where it started ({first_loss:.4g}): "
                "training diverged (is the learning rate too high?)"
            )
    accuracy = final_metrics.get("accuracy")
    if chance_accuracy is not None and accuracy is not None and accuracy <= chance_accuracy + 0.01:
        warnings.append(
            f"the final validation accuracy {accuracy:.4f} is at chance level ({chance_accuracy:.4f}, the "
            "majority class's share): the student learnt nothing useful"
        )
    return warnings
