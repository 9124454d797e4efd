"""Chains of ordinary runs: the backend of the chain driver (`hops.driver`) whose hops are `ktransfer run`s.

Each hop runs in its own run directory under the chain's; the walk, the in-memory reuse, the
count of new hops and the planner's trials are the driver's, shared with chains on tables.

Hop i is a run (`ktransfer.runner.run`, the one engine) whose teacher is hop i-1's student
with its final weights (`{from_run: HOP_DIR, which: final}`), or a store of that student's
outputs the chain builds first (`teacher_store`). Hops live in `CHAIN_DIR/hops/NN-LABEL-KEY/`,
keyed by their content: the hop's merged run config (the previous hop's directory written as
`<previous>`), the SHA-256 of the teacher's weights file, the digest of every data file and of
the code that reads and splits the data. So:

- a finished hop whose key matches is reused, never trained again (the planner's trials that
  share a prefix share its hops, and a second run of the chain trains nothing);
- a hop that was killed is continued from its newest intact checkpoint, as `ktransfer resume`
  does, so a chain killed in the middle of a hop ends with the weights of an uninterrupted one;
- a changed teacher, hop config or data file gives other keys, so nothing stale is reused.

Before anything trains, `check_run_chain` builds every hop's student in memory (a cut from the
untrained model before it) and runs one batch through each pair: a student that cannot read
its teacher's outputs (another label set, another tokenizer or vocabulary) or a cut asking for
layers its teacher lacks is refused naming both hops.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.building import _data_code_digest, build_model, load_data
from ktransfer.checkpoint import file_digest, find_intact_checkpoint
from ktransfer.checks import _probe, _probe_batch, check_models
from ktransfer.config import RunConfig
from ktransfer.data import DataSplits
from ktransfer.engine.batches import split_batch
from ktransfer.fingerprint import digests_of
from ktransfer.hops.driver import ChainDriver, ChainInterrupted, Done, write_report
from ktransfer.hops.planner import Trial
from ktransfer.hops.run_config import PREVIOUS, RunChainConfig, cut_source, hop_label
from ktransfer.io import write_json_atomic, write_text_atomic
from ktransfer.models.cut import cut_from_model
from ktransfer.registry import ConfigError
from ktransfer.runner import evaluate_run, resume, run
from ktransfer.sequence.vocab import VocabularyError, check_same_tokenizer, load_tokenizer, model_tokenizer
from ktransfer.tasks import Task

Fragment = dict[str, Any]
# Arguments of the hf_cut builder that say what is kept (the rest say where the teacher comes from).
CUT_KEYS = ("layers", "every", "first", "last", "encoder_layers", "decoder_layers", "intermediate_size", "num_heads",
            "keep")
MARK = "<previous>"
RunHop = tuple[str, Fragment]  # a hop of a chain of runs: where the chain file gives it, and its fragment


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Teacher:
    """What teaches the next hop: its model section, its run directory (if a run), its content digest, a name."""

    section: dict[str, Any]
    run_dir: str | None
    digest: str
    label: str


@dataclass
class HopResult:
    """One finished hop: where its run is, how it got there (trained, resumed, reused), its scores."""

    index: int
    label: str
    where: str
    run_dir: str
    key: str
    status: str
    teacher: str
    metric: str
    val: float
    score: float
    parameters: int | None
    wall_time_s: float
    test: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run in `run_dir` (its final weights present), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not summary.get("finished") or not (run_dir / "final" / "model.safetensors").is_file():
        return None
    return summary


def _sign(cfg: RunConfig) -> float:
    return 1.0 if cfg.train.resolved_mode == "max" else -1.0


class RunChain:
    """Runs (or reuses, or continues) the hops of a chain of runs under `root`, one ordinary run each.

    The hop backend of the driver for runs: `self.driver` walks, reuses, counts and plans.
    """

    def __init__(self, cfg: RunChainConfig, root: str | Path, *, stop_after_steps: int | None = None,
                 progress: bool = False, data: DataSplits | None = None, stop_after_hops: int | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root).resolve()
        self.stop_after_steps = stop_after_steps
        self.progress = progress
        probe = cfg.run_config(cfg.student, "student", {"from_run": "/nonexistent", "which": "final"})
        self.data = data if data is not None else load_data(probe)
        # the content of the data files and the code that reads and splits them (as the teacher cache keys it)
        self.data_digests = {**digests_of({k: v for k, v in probe.input_paths().items() if k.startswith("data.")}),
                             "data_code": _data_code_digest()}
        self.steps = 0  # optimizer steps trained by this object, across hops (what stop_after_steps counts)
        self._prepared: tuple[str, RunConfig, dict[str, Any] | None] | None = None
        self.driver: ChainDriver[RunHop, HopResult, Teacher] = ChainDriver(self, stop_after_hops)

    @property
    def teacher_result(self) -> HopResult | None:
        """Hop 0 when the chain trains its teacher, else None."""
        return self.driver.first().result

    def first_teacher(self) -> Teacher:
        """The chain's first teacher: hop 0 trained here (a fragment), or the model section as given."""
        return self.driver.first().teacher

    def chain(self, intermediates: list[RunHop]) -> list[HopResult]:
        """Every hop of teacher -> intermediates -> student (trained, continued or reused), teacher's first if trained."""
        return self.driver.walk([*intermediates, ("student", self.cfg.student)])

    # ---------------------------------------------------------------- the driver's backend
    def first_hop(self) -> Done[HopResult, Teacher]:
        """Hop 0 trained (or continued, or reused) when the teacher is a fragment; else the teacher as given."""
        cfg = self.cfg
        if cfg.teacher_is_trained:
            run_cfg = cfg.run_config(cfg.teacher, "teacher", teacher=None, defaults={})
            return self._hop(0, cfg.teacher, "teacher", run_cfg, None, None, self._key(run_cfg, None, None))
        section = dict(cfg.teacher)
        described = RunConfig.from_dict({"task": cfg.task, "data": cfg.data, "student": section})
        digest = _hash({"section": section, "inputs": described.input_digests()})
        run_dir = section.get("from_run")
        label = f"run:{Path(run_dir).name}" if run_dir else str(section.get("builder"))
        return Done(None, Teacher(section, str(run_dir) if run_dir else None, digest, label), False)

    def check(self, hops: list[RunHop]) -> None:
        """Nothing per walk: `check_run_chain` checks every hop of the chain file once, before anything trains."""

    def hop_key(self, index: int, hop: RunHop, teacher: Teacher) -> str:
        """The hop's merged run config, its store's options, its teacher's weights and the data, hashed."""
        run_cfg, store = self._prepare(hop, teacher)
        key = self._key(run_cfg, teacher, store)
        self._prepared = (key, run_cfg, store)  # what hop_after runs, if the driver has no hop of this key
        return key

    def hop_after(self, index: int, hop: RunHop, teacher: Teacher, key: str) -> Done[HopResult, Teacher]:
        """The hop taught by `teacher`, as an ordinary run (trained, continued or reused)."""
        where, fragment = hop
        prepared = self._prepared
        run_cfg, store = prepared[1:] if prepared is not None and prepared[0] == key else self._prepare(hop, teacher)
        return self._hop(index, fragment, where, run_cfg, teacher, store, key)

    def score(self, result: HopResult) -> float:
        """The validation metric, signed so that higher is better."""
        return result.score

    # ---------------------------------------------------------------- hops
    def _prepare(self, hop: RunHop, teacher: Teacher) -> tuple[RunConfig, dict[str, Any] | None]:
        """The hop's run config when `teacher` teaches it, and its teacher store's options (None: a live teacher)."""
        where, fragment = hop
        sections = self.cfg.sections(fragment, where)
        store = sections.get("teacher_store")
        previous = cut_source(teacher.section)
        if sections["student"].get("teacher") == PREVIOUS and previous is None:
            raise ConfigError(f"{where}.student.teacher: 'previous' cuts the student from its teacher, but the "
                              f"chain's teacher ({teacher.label}) is neither a run nor a pretrained model; give "
                              "teacher: {from_run: DIR} or {builder: hf_pretrained, model: ...}, or train it in the "
                              "chain (teacher: {student: ...})")
        store_dir = None
        if store is not None:  # the outputs of this teacher with these options: one store, shared by every hop
            store_dir = str(self.root / "stores" / f"{teacher.digest[:12]}-{_hash(store)[:8]}")
        return self.cfg.run_config(fragment, where, teacher=teacher.section, previous=previous,
                                   store_dir=store_dir), store

    def _key(self, run_cfg: RunConfig, teacher: Teacher | None, store: dict[str, Any] | None) -> str:
        text = json.dumps(run_cfg.to_dict(), sort_keys=True)
        if teacher is not None and teacher.run_dir:
            text = text.replace(json.dumps(teacher.run_dir)[1:-1], MARK)
        text = text.replace(json.dumps(str(self.root))[1:-1], "<chain>")
        return _hash({"config": text, "store": store, "teacher": teacher.digest if teacher else None,
                      "data": self.data_digests})

    def _hop(self, index: int, fragment: Fragment, where: str, run_cfg: RunConfig, teacher: Teacher | None,
             store: dict[str, Any] | None, key: str) -> Done[HopResult, Teacher]:
        label = hop_label(fragment, self.cfg.sections(fragment, where, {} if index == 0 else None))
        safe = "".join(c if c.isalnum() or c in "._=-" else "_" for c in label)[:40]
        run_dir = self.root / "hops" / f"{index:02d}-{safe}-{key[:12]}"
        summary = _finished(run_dir)
        status = "reused"
        if summary is None:
            status = self._train(run_cfg, run_dir, teacher, store)
            summary = _finished(run_dir)
            if summary is None:
                raise ChainInterrupted(f"{where} ({label}) stopped, {self.stop_after_steps} steps into this run of the "
                                       f"chain, as asked; its run is {run_dir}")
        digest = file_digest(run_dir / "final" / "model.safetensors")
        write_json_atomic(run_dir / "hop.json", {"key": key, "where": where, "label": label,
                                                 "teacher": teacher.label if teacher else None,
                                                 "final_sha256": digest})
        metric = run_cfg.train.metric
        val = float((summary.get("final_val") or {}).get(metric, float("nan")))
        result = HopResult(index, label, where, str(run_dir), key, status, teacher.label if teacher else "",
                           metric, val, _sign(run_cfg) * val, summary.get("student_parameters"),
                           float(summary.get("wall_time_s", 0.0)))
        next_teacher = Teacher({"from_run": str(run_dir), "which": "final"}, str(run_dir), digest,
                               f"hop{index}:{label}")
        return Done(result, next_teacher, status != "reused")

    def _train(self, run_cfg: RunConfig, run_dir: Path, teacher: Teacher | None, store: dict[str, Any] | None) -> str:
        """Train the hop, continuing it from its newest intact checkpoint if it was killed; how it was run."""
        if store is not None:
            from ktransfer.store.build import build_store

            assert teacher is not None
            assert run_cfg.teacher_store is not None
            live = RunConfig.from_dict({**run_cfg.to_dict(), "teacher": teacher.section})
            build_store(live, run_cfg.teacher_store, **store)  # a killed build is finished, not redone
        found, _ = find_intact_checkpoint(run_dir / "checkpoints")
        left = None if self.stop_after_steps is None else self.stop_after_steps - self.steps
        if left is not None and left <= 0:
            raise ChainInterrupted(f"stopped before {run_dir.name}, {self.stop_after_steps} steps into this run of "
                                   "the chain, as asked")
        if found is not None:
            start = int(found.name.rsplit("-", 1)[-1])
            result = resume(run_dir, progress=self.progress, stop_after_steps=left)
            self.steps += result.train.step - start
            return "resumed"
        result = run(run_cfg, run_dir, progress=self.progress, stop_after_steps=left, data=self.data, overwrite=True)
        self.steps += result.train.step
        return "trained"


@dataclass
class RunChainReport:
    """The chosen chain's hops (teacher's first when trained here), the 1-hop comparison and the planner's trials."""

    hops: list[HopResult]
    one_hop: HopResult | None
    trials: list[Trial]
    config: dict[str, Any]

    @property
    def student(self) -> HopResult:
        return self.hops[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"hops": [h.as_dict() for h in self.hops], "one_hop": self.one_hop.as_dict() if self.one_hop else None,
                "trials": [{"intermediates": t.intermediates, "val": t.val} for t in self.trials],
                "config": self.config}

    def markdown(self) -> str:
        metric = self.student.metric
        head = ["| hop | student | parameters | teacher | val " + metric + " | test accuracy | test macro-F1 | "
                "wall s | run |", "|---|---|---|---|---|---|---|---|---|"]

        def row(h: HopResult, name: str) -> str:
            acc, f1 = h.test.get("accuracy"), h.test.get("macro_f1")
            fmt = (lambda v: f"{v:.4f}" if isinstance(v, float) else "-")  # noqa: E731
            return (f"| {name} | {h.label} | {h.parameters if h.parameters is not None else '-'} | {h.teacher or '-'} "
                    f"| {h.val:.4f} | {fmt(acc)} | {fmt(f1)} | {h.wall_time_s:.1f} | {h.status}: {Path(h.run_dir).name} |")

        lines = ["# Chain of runs", "", *head, *(row(h, str(h.index)) for h in self.hops)]
        if self.one_hop is not None:
            lines += ["", "1 hop (teacher -> student directly):", "", *head, row(self.one_hop, "1-hop")]
        if self.trials:
            lines += ["", f"Planner ({self.config.get('plan', {}).get('strategy')}), validation {metric} of the final "
                      "student:", ""]
            lines += [f"- [{', '.join(t.intermediates) or 'direct'}]: {t.val:.4f}" for t in self.trials]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- checks before training
def _cut_kwargs(student: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in student.items() if k in CUT_KEYS}


def _student_in_memory(cfg: RunChainConfig, fragment: Fragment, where: str, teacher: nn.Module, teacher_label: str,
                       info: dict[str, Any]) -> nn.Module:
    """The hop's student as built before training: cut from the (untrained) model before it, or its builder's."""
    student = dict(cfg.sections(fragment, where)["student"])
    if student.get("teacher") != PREVIOUS:
        return build_model(student, info, f"{where}.student")
    if student.get("builder") != "hf_cut":
        raise ConfigError(f"{where}.student.teacher: 'previous' names the previous hop's student for an hf_cut "
                          f"student; builder {student.get('builder')!r} has no teacher to cut from")
    try:
        return cut_from_model(teacher, PREVIOUS, **_cut_kwargs(student))[0]
    except ValueError as e:
        raise ConfigError(f"{where}.student: cut from {teacher_label}: {e}") from e


def _tokenizer_of(model: nn.Module, info: dict[str, Any]) -> str | None:
    return model_tokenizer(model) or (info.get("tokenizer") if isinstance(info.get("tokenizer"), str) else None)


def check_reads(teacher: nn.Module, teacher_label: str, student: nn.Module, student_label: str, where: str,
                data: DataSplits, task: Task) -> None:
    """The student reads what the teacher writes: the same classes (or vocabulary), the same tokenizer."""
    t_tok, s_tok = _tokenizer_of(teacher, data.info), _tokenizer_of(student, data.info)
    if task.kind in ("causal_lm", "seq2seq") and t_tok and s_tok and t_tok != s_tok:
        try:
            check_same_tokenizer(load_tokenizer(s_tok), load_tokenizer(t_tok))
        except VocabularyError as e:
            raise ConfigError(f"{where}: its student {student_label} (tokenizer {s_tok}) cannot read the outputs of its "
                              f"teacher {teacher_label} (tokenizer {t_tok}): {e}") from None
    student_batch, teacher_batch = split_batch(_probe_batch(data))
    t_out = _probe(teacher, teacher_batch, task, f"{where}: teacher {teacher_label}", "the chain's data")
    s_out = _probe(student, student_batch, task, f"{where}: student {student_label}", "the chain's data")
    a, b = t_out.logits.shape[-1], s_out.logits.shape[-1]
    if a != b:
        unit = "classes" if task.kind == "classification" else "vocabulary entries"
        raise ConfigError(f"{where}: its student {student_label} predicts {b} {unit}, but its teacher {teacher_label} "
                          f"predicts {a}: the student cannot read the teacher's outputs; build both for the same "
                          f"{'labels' if task.kind == 'classification' else 'tokenizer'}")


def check_run_chain(cfg: RunChainConfig, data: DataSplits) -> list[str]:
    """Every hop's student built in memory and run once with its teacher before anything trains; one line per hop.

    A fixed chain is checked hop by hop in order (and the student against the teacher, for the direct hop of
    `compare_one_hop`); a searched chain checks every ladder entry (and the student) against the teacher and
    every earlier, larger ladder entry it may follow.
    """
    task, info = Task(cfg.task), data.info
    lines: list[str] = []
    with torch.random.fork_rng(devices=[]):
        if cfg.teacher_is_trained:
            first = build_model(dict(cfg.sections(cfg.teacher, "teacher", {})["student"]), info, "teacher.student")
        else:
            first = build_model(dict(cfg.teacher), info, "teacher")
        models: list[tuple[str, nn.Module]] = [("the teacher", first)]
        hops = [*(cfg.plan.intermediates if cfg.plan.strategy == "fixed" else cfg.plan.ladder), cfg.student]
        names = [*(f"plan.{'intermediates' if cfg.plan.strategy == 'fixed' else 'ladder'}[{i}]"
                   for i in range(len(hops) - 1)), "student"]
        for where, fragment in zip(names, hops):
            sources = models[-1:] if cfg.plan.strategy == "fixed" else list(models)
            if where == "student" and cfg.compare_one_hop and len(models) > 1 and cfg.plan.strategy == "fixed":
                sources = [models[0], *sources]  # the direct hop, run for the report
            built = None
            for source_label, source in sources:
                label = f"{where} ({hop_label(fragment, cfg.sections(fragment, where))})"
                model = _student_in_memory(cfg, fragment, where, source, source_label, info)
                check_reads(source, source_label, model, label, where, data, task)
                hop_cfg = cfg.run_config(fragment, where, {"from_run": "/nonexistent", "which": "final"})
                try:  # the ordinary run's checks: outputs fit the labels, the terms' layers exist and run
                    check_models(hop_cfg, data, model, source if hop_cfg.teacher_model is not None else None)
                except ConfigError as e:
                    raise ConfigError(f"{where} (taught by {source_label}): {e}") from e
                built = built or model
            assert built is not None
            models.append((f"{where} ({hop_label(fragment, cfg.sections(fragment, where))})", built))
            lines.append(f"{where}: the student reads its teacher's outputs "
                         f"({', '.join(s for s, _ in sources)})")
    return lines


# ---------------------------------------------------------------------------- the chain
def hop_test_scores(run_dir: Path) -> dict[str, Any]:
    """Test metrics of a hop's final weights: its eval-test.json when written after those weights, else evaluated."""
    file, weights = run_dir / "eval-test.json", run_dir / "final" / "model.safetensors"
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        fresh = saved.get("which") == "final" and file.stat().st_mtime_ns >= weights.stat().st_mtime_ns
    except (OSError, ValueError):
        saved, fresh = {}, False
    report = saved if fresh else evaluate_run(run_dir, "test", "final")
    return {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "size"}


def run_run_chain(cfg: RunChainConfig, root: str | Path, *, stop_after_steps: int | None = None,
                  progress: bool = False, evaluate_test: bool = True,
                  stop_after_hops: int | None = None) -> RunChainReport:
    """Plan and run the chain of runs `cfg` describes under `root`; rerunning continues where it stopped.

    `stop_after_steps` stops the chain after that many optimizer steps trained in this call (counted across
    hops), in the middle of whichever hop it reaches, as if killed (ChainInterrupted); `stop_after_hops` after that
    many hops trained or continued in this call.
    """
    root = Path(root)
    chain = RunChain(cfg, root, stop_after_steps=stop_after_steps, progress=progress, stop_after_hops=stop_after_hops)
    check_run_chain(cfg, chain.data)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / "config.yaml", cfg.to_yaml())
    where = {json.dumps(f, sort_keys=True): f"plan.ladder[{i}]" for i, f in enumerate(cfg.plan.ladder)}
    trials: list[Trial] = []
    if cfg.plan.strategy == "fixed":
        chosen = [(f"plan.intermediates[{i}]", f) for i, f in enumerate(cfg.plan.intermediates)]
    else:
        def hops_of(fragments: list[Fragment]) -> list[RunHop]:
            return [*((where[json.dumps(f, sort_keys=True)], f) for f in fragments), ("student", cfg.student)]

        picked, trials = chain.driver.plan(cfg.plan, [dict(f) for f in cfg.plan.ladder], hops_of)
        chosen = [(where[json.dumps(f, sort_keys=True)], f) for f in picked]
        labels = {json.dumps(f, sort_keys=True): hop_label(f, cfg.sections(f, w)) for w, f in
                  [(where[json.dumps(f, sort_keys=True)], f) for f in cfg.plan.ladder]}
        sign = 1.0 if cfg.run_config(cfg.student, "student", {"from_run": "/nonexistent", "which": "final"}
                                     ).train.resolved_mode == "max" else -1.0
        trials = [Trial([labels[json.dumps(f, sort_keys=True)] for f in t.intermediates], sign * t.val)
                  for t in trials]
    hops = chain.chain(chosen)
    one = None
    if cfg.compare_one_hop and chosen:
        one = chain.chain([])[-1]
    if evaluate_test:
        for h in [*hops, *([one] if one else [])]:
            h.test = hop_test_scores(Path(h.run_dir))
    result = RunChainReport(hops, one, trials, cfg.to_dict())
    write_report(root, result)
    return result


__all__ = ["ChainInterrupted", "HopResult", "RunChain", "RunChainReport", "check_run_chain", "run_run_chain"]
