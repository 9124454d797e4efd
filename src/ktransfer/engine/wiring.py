"""How the loop wires its parts together: batch stages, knowledge terms with parameters, and the selector.

Terms may own modules (feature projections) that train with the student, be stateful, or read
captured internals; a selector may want held-out data, the seed or an all-process mean. The
`Distiller` gets these from this mixin, so that its own code is the loop itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ktransfer.capture import Capture
from ktransfer.checkpoint import save_weights
from ktransfer.engine.batches import split_batch
from ktransfer.engine.configs import TrainConfig
from ktransfer.engine.stages import BatchStage, StageContext, StageStates
from ktransfer.engine.state import TrainState
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.knowledge.teachers import teacher_names_of
from ktransfer.selection import Selector, SelectorContext
from ktransfer.tasks import ForwardResult, Task, evaluate_sums


class _TermStates:
    """The state of the terms' own modules (or other stateful terms), as one object Accelerate checkpoints."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules  # nn.Modules, or terms with state_dict / load_state_dict

    def state_dict(self) -> dict[str, Any]:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])


class WiringMixin:
    """Stages, terms and selector of a `Distiller` (which provides the attributes annotated here)."""

    student: nn.Module
    teacher: nn.Module | None
    teachers: dict[str, nn.Module]
    stored_teachers: list[str]
    terms: list[KnowledgeTerm]
    selector: Selector
    stages: list[BatchStage]
    needs_teacher: bool
    train_data: Dataset
    config: TrainConfig
    state: TrainState
    task: Task
    run_dir: Any
    collate_fn: Any
    accelerator: Any
    _student_specs: list[str]
    _teacher_specs: list[str]
    _named_specs: dict[str, list[str]]
    _heldout: Dataset | None
    _sharded: bool

    # ------------------------------------------------------------------------ batch stages
    def _places_teacher(self) -> bool:
        """The (unnamed) teacher goes on the device when a term reads its outputs or a stage generates with it."""
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

    # ------------------------------------------------------------------------ named teachers
    @property
    def teacher_names(self) -> list[str]:
        """The run's named teachers: live ones, then those a store stage serves (empty with one unnamed teacher)."""
        return [*self.teachers, *self.stored_teachers]

    def _check_named_teachers(self, terms: Sequence[KnowledgeTerm]) -> None:
        """Names are unique, and every teacher-reading term names (only) defined teachers."""
        names = self.teacher_names
        if not names:
            raise ValueError("teachers: an empty mapping; give at least one {name: model}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"teacher '{twice[0]}' is defined twice (a live model and a store, or two stores)")
        for term in terms:
            if not term.requires_teacher:
                continue
            read = teacher_names_of(term)
            if not read:
                raise ValueError(f"knowledge term '{term.name}' reads a teacher but names none; teachers: "
                                 f"{', '.join(names)} (ktransfer.knowledge.teachers.arrange_terms binds terms)")
            unknown = [n for n in read if n not in names]
            if unknown:
                raise ValueError(f"knowledge term '{term.name}' names teacher '{unknown[0]}', which is not defined; "
                                 f"teachers: {', '.join(names)}")

    def _specs_by_teacher(self) -> dict[str, list[str]]:
        """For each live named teacher some term reads, the modules to capture in it (its terms' teacher_modules)."""
        specs: dict[str, set[str]] = {}
        for term in self.terms:
            if term.requires_teacher:
                for name in teacher_names_of(term):
                    if name in self.teachers:
                        specs.setdefault(name, set()).update(term.teacher_modules)
        return {name: sorted(found) for name, found in specs.items()}

    def _place_named_teachers(self, accelerator: Any) -> None:
        """The named teachers some term reads, frozen on the device (placed, not prepared; sharded ones are there)."""
        self._placed: dict[str, nn.Module] = {}
        for name in self._named_specs:
            model = self.teachers[name]
            model.eval()
            model.requires_grad_(False)
            self._placed[name] = model if self._sharded else model.to(accelerator.device)

    def _add_named_teachers(self, view: StepView, teacher_batch: dict[str, Any], stored: Any) -> None:
        """Every named teacher's outputs on this micro-batch into `view` (live ones run, stored ones attached)."""
        for name, model in self._placed.items():
            specs = self._named_specs[name]
            capture = Capture(model, specs, detach=True) if specs else contextlib.nullcontext()
            with torch.no_grad(), self.accelerator.autocast(), capture as tc:
                view.teachers[name] = self.task.forward(model, teacher_batch)
            view.teachers_captured[name] = dict(tc.outputs) if tc is not None else {}
        for name, value in stored.items():
            if isinstance(value, Tensor):  # all class logits of a stored classifier
                view.teachers[name] = ForwardResult(logits=value, targets=view.student.targets, raw=None,
                                                    task=self.task.kind)
            else:
                view.teachers_sparse[name] = value

    # ------------------------------------------------------- terms with models and parameters; selector context
    def _setup_terms(self) -> None:
        """Terms with a `setup(student, teacher)` resolve layer names and build projections against the models
        (a term reading a named teacher against that teacher).

        Without a teacher model, a stage that serves the teacher's outputs may offer `teacher_outline`: a
        module tree with the teacher's names and widths (no weights), against which the terms resolve
        their teacher layers as they would against the teacher.
        """
        teacher = self.teacher
        if teacher is None:
            teacher = next((s.teacher_outline for s in self.stages if getattr(s, "teacher_outline", None) is not None),
                           None)
        # the terms' own parameters (projections) start from the run's seed alone, whatever was built before
        # (a run from a store builds no teacher, yet starts where the run with the live teacher starts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for term in self.terms:
                setup = getattr(term, "setup", None)
                if callable(setup):
                    read = teacher_names_of(term) if self.teacher_names else ()
                    setup(self.student, self.teachers.get(read[0]) if len(read) == 1 else teacher)

    def _check_stored_captures(self) -> None:
        """A stage serving the teacher's outputs is told which teacher internals the terms and selector read
        (`need_captures`), and refuses, before training, a run needing one it does not hold."""
        for stage in self.stages:
            need = getattr(stage, "need_captures", None)
            if getattr(stage, "provides_teacher_outputs", False) and callable(need):
                need(list(self._teacher_specs))

    def _add_selector_specs(self) -> None:
        """A selector may read captured internals too (`student_modules` / `teacher_modules`, like a term's)."""
        self._student_specs = sorted({*self._student_specs, *getattr(self.selector, "student_modules", ())})
        wanted = tuple(getattr(self.selector, "teacher_modules", ()))
        if wanted and self.teacher_names:
            raise ValueError(f"the selector captures teacher module(s) {', '.join(wanted)}, but the run has named "
                             "teachers, whose modules differ; let it read the teachers' output distributions")
        self._teacher_specs = sorted({*self._teacher_specs, *wanted})

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
