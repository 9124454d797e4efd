"""The one training loop: a student learns from knowledge terms whose weights a selector sets.

Every method plugs in here by choosing knowledge terms, a divergence, a selector, batch stages
and the data; none has a loop of its own. Built on Hugging Face Accelerate, so the same code
runs on one CPU, one GPU, or several processes under `accelerate launch` / `torchrun`. The
loop's settings, batches, process helpers, evaluator, run-health checks, checkpoints and the
wiring of terms and selector live in the sibling modules of `ktransfer.engine`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ktransfer.batching import example_lengths
from ktransfer.capture import Capture
from ktransfer.checkpoint import save_weights
from ktransfer.data.base import collate_dicts
from ktransfer.engine.batches import EpochShuffleSampler, split_batch
from ktransfer.engine.checkpointing import CheckpointingMixin
from ktransfer.engine.configs import OptimConfig, ScheduleConfig, TrainConfig
from ktransfer.engine.distributed import new_accelerator, say
from ktransfer.engine.errors import NonFiniteLossError, NonFiniteMetricError
from ktransfer.engine.evaluation import Evaluator
from ktransfer.engine.health import HEALTH_MIN_STEPS, run_health_warnings
from ktransfer.engine.stages import BatchStage
from ktransfer.engine.state import TrainResult, TrainState
from ktransfer.engine.reporting import ReportingMixin
from ktransfer.engine.sharding import (
    ShardingError,
    clip_grad_norm,
    device_mesh,
    full_state_dict,
    gradient_sync,
    layer_class_names,
    shard_model,
    unservable_features,
)
from ktransfer.engine.wiring import WiringMixin
from ktransfer.knowledge.base import STORED_CAPTURES_KEY, STORED_TEACHER_KEY, KnowledgeTerm, StepView, term_units
from ktransfer.knowledge.teachers import view_for
from ktransfer.sparse_divergences import SparseTeacher
from ktransfer.registry import ConfigError, suggest
from ktransfer.runlog import MetricsLog, plot_curves, plot_weights
from ktransfer.selection import FixedWeights, SelectionState, Selector
from ktransfer.tasks import ForwardResult, Task, TaskKind


def _build_optimizer(params: Sequence[nn.Parameter] | Sequence[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class Distiller(WiringMixin, CheckpointingMixin, ReportingMixin):
    """Trains `student` on the weighted sum of `terms`, weights chosen each step by `selector`.

    The teacher is frozen: eval mode, no gradients, no optimizer state; it runs only if some
    term needs it. Several teachers are a mapping {name: model} (and a store stage may serve more by
    name, `ktransfer.store.StoreStage`); each teacher-reading term then names what it reads
    (`ktransfer.knowledge.teachers`), and only teachers some term reads run. `teacher` may be None for plain
    supervised training (a `labels` term alone).
    With `run_dir`, the run writes metrics.jsonl, checkpoints/, best/ and final/ weights and
    curves.png there, and `fit(resume=True)` continues from the newest intact checkpoint.
    `chance_accuracy` (e.g. the majority-class rate) lets the run warn when it ends no better.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Mapping[str, nn.Module] | None,
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
        self.stages = list(stages)
        named = isinstance(teacher, Mapping)
        # named teachers: live models by name, plus those a store stage serves by name
        self.teachers: dict[str, nn.Module] = dict(teacher) if isinstance(teacher, Mapping) else {}
        self.stored_teachers = [n for s in self.stages for n in getattr(s, "teacher_names", ())]
        if named or self.stored_teachers:
            if not named and teacher is not None:
                raise ValueError("a batch stage serves named teachers from stores, so the live teacher must be named "
                                 "too: pass teachers as a mapping {name: model}")
            self._check_named_teachers(terms)
            teacher = None
        stored = any(getattr(s, "provides_teacher_outputs", False) and not getattr(s, "teacher_names", ())
                     for s in self.stages)
        if stored and teacher is not None:
            raise ValueError("a batch stage reads the teacher's outputs from a store, so teacher must be None")
        if self.needs_teacher and teacher is None and not stored and not self.teacher_names:
            needing = [t.name for t in terms if t.requires_teacher]
            raise ValueError(f"knowledge terms {needing} need a teacher, but teacher is None")
        if teacher is None and any(getattr(s, "requires_teacher", False) for s in self.stages):
            raise ValueError("a batch stage generates with the teacher, but teacher is None" +
                             (" (with named teachers, no stage may generate with a teacher)" if named else ""))
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
        self._named_specs = self._specs_by_teacher()
        self._add_selector_specs()
        self._check_stored_captures()
        self._checkpointed_step: int | None = None
        self._saved_world = 1
        self._last_view: StepView | None = None
        self._heldout: Dataset | None = None
        self._sharded = False
        self._optimizer: Any = None
        self._sampler: EpochShuffleSampler | None = None

    # ----------------------------------------------------------------------------- one step
    def _losses(self, batch: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        stored = batch.get(STORED_TEACHER_KEY)
        stored_captures = batch.get(STORED_CAPTURES_KEY)
        if stored is not None or stored_captures is not None:  # the teacher's outputs come with the batch
            batch = {k: v for k, v in batch.items() if k not in (STORED_TEACHER_KEY, STORED_CAPTURES_KEY)}
        student_batch, teacher_batch = split_batch(batch)
        s_capture = Capture(student, self._student_specs) if self._student_specs else contextlib.nullcontext()
        s_precision = self.accelerator.autocast() if self._sharded else contextlib.nullcontext()
        with s_capture as sc, s_precision:
            s_out = self.task.forward(student, student_batch, fused_head=self._fused_head,
                                      check_head=self._fused_head and not self._head_checked)
        self._head_checked = True
        t_out = None
        t_captured: dict[str, Any] = dict(stored_captures or {})  # stored internals, where live capture puts them
        if self.needs_teacher and teacher is not None:
            t_capture = (Capture(teacher, self._teacher_specs, detach=True)
                         if self._teacher_specs else contextlib.nullcontext())
            with torch.no_grad(), self.accelerator.autocast(), t_capture as tc:
                t_out = self.task.forward(teacher, teacher_batch)
            t_captured = dict(tc.outputs) if tc is not None else {}
        t_sparse = stored if isinstance(stored, SparseTeacher) else None
        if isinstance(stored, Tensor):  # all class logits of a stored classifier
            t_out = ForwardResult(logits=stored, targets=s_out.targets, raw=None, task=self.task.kind)
        view = StepView(
            batch=batch, student=s_out, teacher=t_out,
            student_captured=dict(sc.outputs) if sc is not None else {},
            teacher_captured=t_captured, step=self.state.step, teacher_sparse=t_sparse,
        )
        if self.teacher_names:
            self._add_named_teachers(view, teacher_batch, stored if isinstance(stored, Mapping) else {})
        if getattr(self.selector, "observes_view", True):  # else released now, before backward and the update
            self._last_view = view
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.terms:
            w = weights[term.name]
            if w == 0.0:
                continue
            value = term.loss(view_for(term, view) if term.requires_teacher else view)
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
        self.accelerator = accelerator = new_accelerator(cfg, self.run_dir)
        set_seed(cfg.seed)
        self.state = TrainState(world_size=accelerator.num_processes)
        self._start_checkpoint_clock()
        student, teacher, optimizer, scheduler, loader = self._prepare(accelerator)
        self._bind_selector(accelerator, student)
        ckpt_root = self.run_dir / "checkpoints" if self.run_dir else None
        self._restore(accelerator, resume, ckpt_root, force_world_size)

        state = self.state
        if resume and (state.step >= cfg.max_steps or state.stopped_early):
            return self._already_finished(accelerator, student)
        setup = self._run_record(accelerator)
        if self.progress or accelerator.num_processes > 1:  # library calls with progress=False stay quiet
            say(accelerator, f"{setup['world_size']} process(es) on {setup['device']}; {setup['examples_per_step']} "
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
        self._sharded = self._shard_models(accelerator)
        if self._sharded:  # the optimizer takes the student's shards
            params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = _build_optimizer(self._param_groups(params), self.optim)
        scheduler = get_scheduler(self.schedule.name, optimizer, num_warmup_steps=self.schedule.warmup_steps,
                                  num_training_steps=cfg.max_steps)
        train_data = self._training_data()
        lengths = example_lengths(train_data) if cfg.group_by_length else None
        sampler = self._sampler = EpochShuffleSampler(len(train_data), cfg.seed, lengths, cfg.batch_size)  # type: ignore[arg-type]
        # A private generator: creating a DataLoader iterator must not draw from the global RNG
        # (dropout), or a resumed run, which creates one more iterator, would drift.
        loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=self.collate_fn, generator=torch.Generator().manual_seed(cfg.seed))
        if self._sharded:  # sharded by hand: Accelerate would wrap the student in DDP
            student, loader = self.student, accelerator.prepare(loader)
        else:
            student, optimizer, loader = accelerator.prepare(self.student, optimizer, loader)
        self._optimizer = optimizer
        teacher = None
        if self._sharded:
            teacher = self.teacher if self._places_teacher() else None
        elif self._places_teacher() and self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)
            # Placed, not prepared: a prepared model would be saved in every checkpoint.
            teacher = self.teacher.to(accelerator.device)
        self._place_named_teachers(accelerator)
        # The scheduler is stepped by hand once per optimizer step (an Accelerate-prepared
        # scheduler steps once per process), and checkpointed as a registered object.
        accelerator.register_for_checkpointing(scheduler, self.state, self.selector)
        self._register_stages(accelerator)
        return student, teacher, optimizer, scheduler, loader

    def _shard_models(self, accelerator: Any) -> bool:
        """Under `sharding: fsdp` and several processes, shard the student and the teachers per layer (True).

        One process has nothing to shard: it says so and trains unsharded. Features the sharded
        path cannot serve are refused here, before any training. The models are not moved to the
        device whole: `fully_shard` moves each layer's parameters there as it shards them, and the
        call on the model itself moves what lies outside the layers (embeddings, head, norms), so
        the device never holds more of a model than one layer beside its shards.
        """
        cfg = self.config
        if cfg.sharding == "none":
            return False
        world = accelerator.num_processes
        if world == 1:
            say(accelerator, "train.sharding=fsdp: one process, nothing to shard; training unsharded")
            return False
        refused = unservable_features(self.terms, self.stages)
        if refused:
            raise ShardingError("train.sharding=fsdp cannot serve this run: " + "; ".join(refused)
                                + ". Use train.sharding=none (every process holds whole models).")
        mesh = device_mesh(accelerator.device, world)
        counts = []
        for role, model in self._models_to_shard():
            names = layer_class_names(model, cfg.shard_layers, role)
            if role != "student":
                model.eval()
                model.requires_grad_(False)
            layers = shard_model(model, names, mesh, frozen=role != "student")
            counts.append(f"{role} in {layers} x {'/'.join(names)}")
        say(accelerator, f"sharded across {world} processes (FSDP2): " + ", ".join(counts))
        return True

    def _models_to_shard(self) -> list[tuple[str, nn.Module]]:
        """The models a sharded run shards, by role: the student, the teacher it places, the named teachers read."""
        models: list[tuple[str, nn.Module]] = [("student", self.student)]
        if self.teacher is not None and self._places_teacher():
            models.append(("teacher", self.teacher))
        models.extend((f"teacher '{name}'", self.teachers[name]) for name in self._named_specs)
        return models

    def _step_groups(self, accelerator: Any, loader: Any) -> Iterator[list[dict[str, Any]]]:
        """The current epoch's micro-batches in groups of one optimizer step each.

        Batches a resumed run has already seen are skipped; the last group of an epoch may be
        shorter than `grad_accum_steps`.
        """
        epoch, seen = self.state.epoch, self.state.batches_in_epoch
        batches = accelerator.skip_first_batches(loader, seen) if seen else loader
        batches.set_epoch(epoch)
        # The order depends only on (seed, epoch), set on the sampler itself: under several processes
        # a resumed loader nests it too deep for `set_epoch` to reach (it kept epoch 0's order).
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)
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

        Each term's value on a micro-batch (a mean over its own units: targets, spans, positions;
        `term_units`) is scaled by that micro-batch's share of the term's units counted over all
        micro-batches and processes, so the update equals that of one large batch whatever the
        padding, accumulation or number of processes. Losses are checked for NaN/inf on every
        process before the last (synchronising) backward.
        """
        accelerator = self.accelerator
        world = accelerator.num_processes
        weights = self.selector.weights(self.terms, self._selection_state())
        active = [t for t in self.terms if weights[t.name] != 0.0]
        names = [t.name for t in active]
        group = self._apply_stages(group, student, teacher)  # rewritten targets must be counted
        units = torch.tensor([[term_units(t, b, self.task) for t in active] for b in group],
                             dtype=torch.float64).reshape(len(group), len(active))
        step_units = units.sum(0)
        if world > 1:  # one all-reduce of every term's count
            step_units = accelerator.reduce(step_units.to(accelerator.device), "sum").cpu()
        # per micro-batch: [total, parts..., 1 if non-finite]; summed over micro-batches (and processes)
        sums = torch.zeros(len(names) + 2, dtype=torch.float64)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            counted = bool((units[i] > 0).any()) or not names  # no term: `_losses` says so
            sync = (gradient_sync(student, last) if self._sharded
                    else contextlib.nullcontext() if last else accelerator.no_sync(student))
            with sync:
                if not counted and world > 1:  # a zero loss through the forward: the gradient sync (DDP's
                    # reducer, sharded layers' gathers) needs every process's forward and backward
                    scaled = self._zero_loss(batch, student, teacher)
                    values = torch.zeros(len(names) + 1, dtype=torch.float64)
                elif not counted:  # nothing to learn here (one process: no gradient sync to join)
                    scaled = sum(p.sum() for p in student.parameters() if p.requires_grad) * 0.0
                    values = torch.zeros(len(names) + 1, dtype=torch.float64)
                else:
                    _, parts = self._losses(batch, student, teacher, weights)
                    scaled, values = self._scaled_loss(parts, names, weights, units[i], step_units, world)
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
                if finite or self._sharded:  # sharded layers gather in backward too: every process runs it
                    accelerator.backward(scaled)
        self._sync_term_grads(accelerator)
        if self.optim.max_grad_norm is not None and self._sharded:
            clip_grad_norm([*student.parameters(), *self._term_params()], self.optim.max_grad_norm)
        elif self.optim.max_grad_norm is not None:
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

    @staticmethod
    def _scaled_loss(parts: dict[str, Tensor], names: list[str], weights: dict[str, float], units: Tensor,
                     step_units: Tensor, world: int) -> tuple[Tensor, Tensor]:
        """One micro-batch's loss to back-propagate, and its host values [total, parts...] as step-level shares.

        Term t counts w_t * L_t * units_t * world / step_units_t; a term without units here adds
        nothing (its mean over no units may be NaN), while the others keep the graph.
        """
        scaled: Tensor | None = None
        shares = []
        for k, name in enumerate(names):
            share = float(units[k]) * world / float(step_units[k]) if units[k] > 0 else 0.0
            shares.append(share)
            if share > 0.0:
                term = weights[name] * parts[name] * share
                scaled = term if scaled is None else scaled + term
        assert scaled is not None  # some term has units here
        shared = torch.tensor(shares, dtype=torch.float64)
        # one host read per micro-batch, shared by the NaN guard and the logs
        raw = torch.stack([parts[n].detach().reshape(()) for n in names]).double().cpu()
        term_values = torch.where(shared > 0, raw * shared, torch.zeros_like(raw))
        total = (term_values * torch.tensor([weights[n] for n in names], dtype=torch.float64)).sum()
        return scaled, torch.cat([total.reshape(1), term_values])

    def _zero_loss(self, batch: dict[str, Any], student: nn.Module, teacher: nn.Module | None) -> Tensor:
        """A zero loss through the student's (and a sharded teacher's) forward, for a micro-batch without targets."""
        student_batch, teacher_batch = split_batch({k: v for k, v in batch.items() if k != STORED_TEACHER_KEY})
        with self.accelerator.autocast():  # in the order of `_losses`: the processes' gathers must pair up
            out = self.task.forward(student, student_batch)
        if self._sharded and self.needs_teacher and teacher is not None:  # its layers gather from every process
            with torch.no_grad(), self.accelerator.autocast():
                self.task.forward(teacher, teacher_batch)
        return out.logits.float().sum() * 0.0

    def _raise_nonfinite(self, sums: Tensor, names: list[str]) -> None:
        values = sums.tolist()
        raise NonFiniteLossError(self.state.step + 1, values[0], dict(zip(names, values[1:-1], strict=True)),
                                 self.config.mixed_precision)

    def _finish(self, accelerator: Any, student: nn.Module, ckpt_root: Path | None, warnings: list[str]) -> None:
        """Final checkpoint, final (and, without an evaluator, best) weights, learning curves, warnings."""
        if self._checkpointed_step != self.state.step:
            self._checkpoint(accelerator, ckpt_root)
        for message in warnings:
            say(accelerator, f"warning: {message}")
        if self.run_dir:
            final = self.run_dir / "final" / "model.safetensors"
            best = self.run_dir / "best" / "model.safetensors"
            accelerator.wait_for_everyone()  # every process sees the same best/ before deciding
            write_best = self.evaluate is None or not best.exists()
            self._save_student(student, final)
            if write_best:
                self._save_student(student, best)
        if self.run_dir and accelerator.is_main_process:
            self._save_term_weights("final")
            if write_best:
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

    def _observe(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            window = self.state.recent_losses.setdefault(k, [])
            window.append(v)
            del window[:-50]
        state = self._selection_state()
        state.view, self._last_view = self._last_view, None
        self.selector.observe(losses, state)

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
            if self.run_dir:
                self._save_student(student, self.run_dir / "best" / "model.safetensors")
            if self.run_dir and self.accelerator.is_main_process:
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

    def _save_student(self, student: nn.Module, path: Path) -> None:
        """The student's whole weights as one file, written by the main process.

        Called by every process: a sharded student's tensors are gathered collectively.
        """
        accelerator = self.accelerator
        if self._sharded:
            state = full_state_dict(student, keep=accelerator.is_main_process)
            if accelerator.is_main_process:
                save_weights(student, path, state=state)
        elif accelerator.is_main_process:
            save_weights(accelerator.unwrap_model(student), path)
