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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ktransfer.capture import Capture
from ktransfer.checkpoint import latest_checkpoint, save_weights
from ktransfer.data.base import collate_dicts
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.registry import ConfigError, suggest
from ktransfer.runlog import MetricsLog, plot_curves
from ktransfer.schema import validate
from ktransfer.selection import FixedWeights, SelectionState, Selector
from ktransfer.tasks import Task, TaskKind, metric_mode

Evaluator = Callable[[nn.Module], dict[str, float]]
TEACHER_PREFIX = "teacher_"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops rather than train on garbage."""

    def __init__(self, step: int, total: float, parts: dict[str, float]) -> None:
        self.step = step
        detail = ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        super().__init__(
            f"loss is {total} at step {step} ({detail}); stopping. Lower the learning rate, check the "
            "data for NaN/inf, or use mixed_precision='no' to see whether reduced precision overflows."
        )


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
    """Length, batching, precision, evaluation, early stopping and checkpointing of a run.

    `max_steps` counts optimizer steps; one step consumes `grad_accum_steps` batches of
    `batch_size` per process. `metric` (from the evaluator) picks the best model; with
    `patience` set, training stops after that many evaluations without improvement.
    `checkpoint_every` = 0 writes a checkpoint only at the end.
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
    keep_checkpoints: int = 2
    metric: str = "accuracy"
    # "max" keeps the checkpoint with the highest metric, "min" the lowest; null (the default)
    # takes it from the metric: min for loss, perplexity and names containing "loss", else max
    mode: Literal["max", "min"] | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        validate(self, "train")
        for key in ("max_steps", "batch_size", "eval_batch_size", "grad_accum_steps", "eval_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience must be >= 1 or null, got {self.patience}")

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


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[override]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def split_batch(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Student and teacher views of a batch: keys `teacher_X` replace `X` for the teacher only.

    This lets teacher and student take different inputs (other tokenizers, image sizes).
    """
    student = {k: v for k, v in batch.items() if not k.startswith(TEACHER_PREFIX)}
    teacher = dict(student)
    teacher.update({k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)})
    return student, teacher


def make_evaluator(
    data: Dataset, task: Task | TaskKind = "classification", batch_size: int = 512,
    collate_fn: Callable[[list[Any]], dict[str, Any]] = collate_dicts,
) -> Evaluator:
    """An evaluator computing accuracy and cross-entropy of a model on `data`."""
    from ktransfer.tasks import evaluate_logits

    task = task if isinstance(task, Task) else Task(task)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        batches = ({k: v.to(device) if isinstance(v, Tensor) else v for k, v in split_batch(b)[0].items()}
                   for b in loader)
        return evaluate_logits(model, batches, task)

    return evaluate


def _build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _new_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision='fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'no'")
    # Accelerate keeps one global state; a new run in the same process may use another precision.
    AcceleratorState._reset_state()
    # Under torchrun / accelerate launch on a machine without a GPU, Accelerate only sets up
    # multi-process CPU training (gloo) when told `cpu=True`.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum_steps, mixed_precision=cfg.mixed_precision,
                       cpu=multi_cpu)


class Distiller:
    """Trains `student` on the weighted sum of `terms`, weights chosen each step by `selector`.

    The teacher is frozen: eval mode, no gradients, no optimizer state; it runs only if some
    term needs it. `teacher` may be None for plain supervised training (a `labels` term alone).
    With `run_dir`, the run writes metrics.jsonl, checkpoints/, best/ and final/ weights and
    curves.png there, and `fit(resume=True)` continues from the newest checkpoint.
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
        self.state = TrainState()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir else None
        self._student_specs = sorted({s for t in self.terms for s in t.student_modules})
        self._teacher_specs = sorted({s for t in self.terms for s in t.teacher_modules})

    # ----------------------------------------------------------------------------- one step
    def _losses(self, batch: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        student_batch, teacher_batch = split_batch(batch)
        s_capture = Capture(student, self._student_specs) if self._student_specs else contextlib.nullcontext()
        with s_capture as sc:
            s_out = self.task.forward(student, student_batch)
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
    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train until `max_steps` or early stopping; `resume` = True (newest checkpoint) or a path."""
        from accelerate.utils import set_seed

        cfg = self.config
        self.accelerator = accelerator = _new_accelerator(cfg)
        set_seed(cfg.seed)
        self.state = TrainState()
        student, teacher, optimizer, scheduler, loader = self._prepare(accelerator)
        ckpt_root = self.run_dir / "checkpoints" if self.run_dir else None
        self._restore(accelerator, resume, ckpt_root)

        state = self.state
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
                for batch in self._epoch_batches(accelerator, loader):
                    if not self._micro_step(batch, student, teacher, optimizer, scheduler):
                        continue  # accumulating gradients: no optimizer step yet
                    if bar is not None:
                        bar.update(1)
                    last = state.step >= cfg.max_steps
                    if state.step % cfg.log_every == 0 or last:
                        self._flush_log(scheduler.get_last_lr()[0], t0, bar)
                    if self.evaluate is not None and (state.step % cfg.eval_every == 0 or last):
                        final_metrics = self._evaluate(student)
                    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not last:
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
        if not killed:
            if self.evaluate is not None and not final_metrics:
                final_metrics = self._evaluate(student)
            self._finish(accelerator, student, ckpt_root)
        return TrainResult(
            step=state.step, stopped_early=state.stopped_early, best_step=state.best_step,
            best_metrics=dict(state.best_metrics), final_metrics=final_metrics,
            wall_time_s=state.elapsed_s, run_dir=self.run_dir,
        )

    def _prepare(self, accelerator: Any) -> tuple[nn.Module, nn.Module | None, Any, Any, Any]:
        """Optimizer, schedule and data loader for the student; the teacher frozen on the device."""
        from transformers import get_scheduler

        cfg = self.config
        self.student.train()
        params = [p for p in self.student.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the student has no trainable parameters")
        optimizer = _build_optimizer(params, self.optim)
        scheduler = get_scheduler(self.schedule.name, optimizer, num_warmup_steps=self.schedule.warmup_steps,
                                  num_training_steps=cfg.max_steps)
        sampler = EpochShuffleSampler(len(self.train_data), cfg.seed)  # type: ignore[arg-type]
        # A private generator: creating a DataLoader iterator must not draw from the global RNG
        # (dropout), or a resumed run, which creates one more iterator, would drift.
        loader = DataLoader(self.train_data, batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=self.collate_fn, generator=torch.Generator().manual_seed(cfg.seed))
        student, optimizer, loader = accelerator.prepare(self.student, optimizer, loader)
        teacher = None
        if self.needs_teacher and self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)
            # Placed, not prepared: a prepared model would be saved in every checkpoint.
            teacher = self.teacher.to(accelerator.device)
        # The scheduler is stepped by hand once per optimizer step (an Accelerate-prepared
        # scheduler steps once per process), and checkpointed as a registered object.
        accelerator.register_for_checkpointing(scheduler, self.state, self.selector)
        return student, teacher, optimizer, scheduler, loader

    def _restore(self, accelerator: Any, resume: bool | str | Path, ckpt_root: Path | None) -> None:
        """Load the checkpoint to resume from (and drop later log lines), or start a fresh log."""
        if resume:
            path = Path(resume) if not isinstance(resume, bool) else (latest_checkpoint(ckpt_root) if ckpt_root else None)
            if path is None or not Path(path).is_dir():
                raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_root if ckpt_root else resume}")
            accelerator.load_state(str(path))
            if self.log and accelerator.is_main_process:
                self.log.truncate_after(self.state.step)
        elif self.log and accelerator.is_main_process and self.log.path.exists():
            self.log.path.unlink()

    def _epoch_batches(self, accelerator: Any, loader: Any) -> Any:
        """The current epoch's batches, skipping those a resumed run has already seen."""
        epoch, seen = self.state.epoch, self.state.batches_in_epoch
        batches = accelerator.skip_first_batches(loader, seen) if seen else loader
        batches.set_epoch(epoch)  # the order depends only on (seed, epoch)
        return batches

    def _micro_step(self, batch: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                    optimizer: Any, scheduler: Any) -> bool:
        """Forward and backward on one batch; True when it completed an optimizer step (then counted)."""
        accelerator = self.accelerator
        with accelerator.accumulate(student):
            weights = self.selector.weights(self.terms, self._selection_state())
            total, parts = self._losses(batch, student, teacher, weights)
            # one host read of the loss and its parts per batch, shared by the guard and the logs
            total_value = float(total.detach())
            losses = {k: float(v.detach()) for k, v in parts.items()}
            if not math.isfinite(total_value):
                raise NonFiniteLossError(self.state.step + 1, total_value, losses)
            accelerator.backward(total)
            if accelerator.sync_gradients and self.optim.max_grad_norm is not None:
                accelerator.clip_grad_norm_(student.parameters(), self.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.state.batches_in_epoch += 1
        self._accumulate_log(total_value, losses, weights)
        if not accelerator.sync_gradients:
            return False
        scheduler.step()
        self.state.step += 1
        self._observe(losses)
        return True

    def _finish(self, accelerator: Any, student: nn.Module, ckpt_root: Path | None) -> None:
        """Final checkpoint, final (and, without an evaluator, best) weights, learning curves."""
        self._checkpoint(accelerator, ckpt_root)
        unwrapped = accelerator.unwrap_model(student)
        if self.run_dir and accelerator.is_main_process:
            save_weights(unwrapped, self.run_dir / "final" / "model.safetensors")
            if self.evaluate is None or not (self.run_dir / "best" / "model.safetensors").exists():
                save_weights(unwrapped, self.run_dir / "best" / "model.safetensors")
            if self.log:
                plot_curves(self.log.read(), self.run_dir / "curves.png", title=self.run_dir.name)
        accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------------- helpers
    def _accumulate_log(self, total: float, losses: dict[str, float], weights: dict[str, float]) -> None:
        s = self.state.log_sums
        s["loss"] = s.get("loss", 0.0) + total
        for name, value in losses.items():
            s[f"terms/{name}"] = s.get(f"terms/{name}", 0.0) + value
        for name, w in weights.items():
            s[f"weights/{name}"] = s.get(f"weights/{name}", 0.0) + w
        self.state.log_count += 1

    def _flush_log(self, lr: float, t0: float, bar: Any) -> None:
        n = max(1, self.state.log_count)
        avg = {k: v / n for k, v in self.state.log_sums.items()}
        record: dict[str, Any] = {
            "split": "train", "step": self.state.step, "epoch": self.state.epoch, "lr": lr,
            "loss": avg.pop("loss", math.nan), "elapsed_s": round(time.perf_counter() - t0, 3),
            "terms": {k[6:]: v for k, v in avg.items() if k.startswith("terms/")},
            "weights": {k[8:]: v for k, v in avg.items() if k.startswith("weights/")},
        }
        self.state.log_sums = {}
        self.state.log_count = 0
        if self.log and self.accelerator.is_main_process:
            self.log.append(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}")

    def _observe(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            window = self.state.recent_losses.setdefault(k, [])
            window.append(v)
            del window[:-50]
        self.selector.observe(losses, self._selection_state())

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
        value = metrics[cfg.metric]
        state = self.state
        maximise = cfg.resolved_mode == "max"
        better = state.best_metric is None or (value > state.best_metric if maximise else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            state.best_metrics = dict(metrics)
            if self.run_dir and self.accelerator.is_main_process:
                save_weights(unwrapped, self.run_dir / "best" / "model.safetensors")
        else:
            state.bad_evals += 1
            if cfg.patience is not None and state.bad_evals >= cfg.patience:
                state.stopped_early = True
        if self.log and self.accelerator.is_main_process:
            self.log.append({"split": "val", "step": state.step, **metrics})
        return metrics

    def _checkpoint(self, accelerator: Any, root: Path | None) -> None:
        """Save the whole training state to root/step-N via a temporary directory and one rename."""
        if root is None:
            return
        final = root / f"step-{self.state.step:08d}"
        tmp = root / f".tmp-step-{self.state.step:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            kept = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
            for old in kept[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
