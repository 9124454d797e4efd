"""Chains of fitted models on tables: the backend of the chain driver (`hops.driver`) for these hops.

Each finished hop writes its model (and its sample weights) and then, last, a record JSON
holding the model file's SHA-256, all atomically. A rerun of the same config skips every hop
whose record matches its key and whose model verifies, so a killed chain continues from its
last finished hop. Hops are keyed by everything they depend on (data, teacher, the prefix of
the chain, the methods, and the content of the files it reads), so planner trials that share
a prefix share hops. The walk, the in-memory reuse, the count of trained hops (`stop_after_hops`)
and the planner's trials are the driver's, shared with chains of runs (`hops.run_chain`). The
report (`report.md`, `report.json`, `chain.png`) is `hops.report`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ktransfer.data import DATASETS
from ktransfer.fingerprint import path_digest
from ktransfer.hops import external
from ktransfer.hops.chain_data import load_chain_data
from ktransfer.hops.config import ChainConfig
from ktransfer.hops.driver import ChainDriver, ChainInterrupted, Done
from ktransfer.hops.driver import write_report as write_reports
from ktransfer.hops.fitting import ChainData, Recipe, accuracy, fit
from ktransfer.hops.ladder import candidates, check_chain
from ktransfer.hops.methods import TRANSFER_METHODS, Distill, HopContext, HopOutcome, Member, TransferMethod
from ktransfer.hops.models import (
    HopModel,
    TorchHopModel,
    complexity,
    load_hop_model,
    spec_key,
    spec_label,
)
from ktransfer.hops.planner import Trial
from ktransfer.hops.preflight import check_sources
from ktransfer.hops.report import ChainReport, HopRecord
from ktransfer.hops.run_config import RunChainConfig
from ktransfer.io import atomic_path, file_digest, write_json_atomic, write_text_atomic
from ktransfer.schema import to_dict

if TYPE_CHECKING:
    from ktransfer.hops.run_chain import RunChainReport

Spec = dict[str, Any]
TabularHop = tuple[Spec, TransferMethod]  # a hop of a chain on tables: the model it fits, and how it learns


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _method_name(method: TransferMethod) -> str:
    for name in TRANSFER_METHODS.names():
        if type(method) is TRANSFER_METHODS.get(name):
            return name
    return type(method).__name__


class HopStore:
    """Finished hops on disk: `hops/<index>-<model>-<key>/` with the model, weights.npy and record.json."""

    def __init__(self, root: Path | None, info: dict[str, Any]) -> None:
        self.root = root
        self.info = info

    def _dir(self, index: int, spec: Spec, key: str) -> Path:
        assert self.root is not None
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec_label(spec))[:40]
        return self.root / "hops" / f"{index:02d}-{name}-{key[:12]}"

    def load(self, index: int, spec: Spec, key: str) -> tuple[HopModel, np.ndarray | None, dict[str, Any]] | None:
        """The finished hop with this key, if its record is complete and its model file verifies."""
        if self.root is None:
            return None
        d = self._dir(index, spec, key)
        try:
            record = json.loads((d / "record.json").read_text(encoding="utf-8"))
            if record.get("key") != key or file_digest(d / record["model_file"]) != record["sha256"]:
                return None
            weights = np.load(d / "weights.npy") if record.get("has_weights") else None
            return load_hop_model(spec, d, self.info), weights, record
        except (OSError, ValueError, KeyError):
            return None

    def save(self, index: int, spec: Spec, key: str, model: HopModel, weights: np.ndarray | None,
             record: dict[str, Any]) -> str:
        if self.root is None:
            return ""
        d = self._dir(index, spec, key)
        d.mkdir(parents=True, exist_ok=True)
        model_file = model.save(d)
        if weights is not None:
            with atomic_path(d / "weights.npy") as tmp:
                np.save(tmp, weights)
        write_json_atomic(d / "record.json", {**record, "key": key, "model_file": model_file.name,
                                              "sha256": file_digest(model_file), "has_weights": weights is not None})
        return str(d)


@dataclass
class Lineage:
    """What teaches the next hop on tables: every model so far (teacher first), and the chain's key to here."""

    members: list[Member]
    prefix: list[Any]


class ChainRunner:
    """Trains the teacher once, then any chain of intermediates to the student, caching hops by key.

    The hop backend of the driver for fitted models: `self.driver` walks, reuses, counts and plans.
    """

    def __init__(self, cfg: ChainConfig, data: ChainData, run_dir: Path | None = None,
                 stop_after_hops: int | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.ctx = HopContext(data, cfg.train, cfg.seed)
        self.store = HopStore(run_dir, data.info)
        self.stop_after_hops = stop_after_hops
        keyed = {k: to_dict(getattr(cfg, k)) for k in (
            "data", "teacher", "seed", "confidence_split", "teacher_fraction", "folds", "train")}
        contents = source_digests(cfg)
        if contents:  # files the chain reads: their content, not their path, keys the hops
            keyed["contents"] = contents
        self.base_key = _hash(keyed)
        self.driver: ChainDriver[TabularHop, HopRecord, Lineage] = ChainDriver(self, stop_after_hops)
        first = self.driver.first()
        assert first.result is not None
        self.teacher, self.teacher_record = first.teacher.members[0], first.result

    @property
    def trained(self) -> int:
        """Hops trained by this runner (not loaded): what `stop_after_hops` counts."""
        return self.driver.trained

    @property
    def last_members(self) -> list[Member]:
        """The models of the chain `run` walked last, teacher first."""
        last = self.driver.last_teacher
        return list(last.members) if last is not None else []

    def _scores(self, model: HopModel) -> tuple[float, float]:
        return (accuracy(model, self.data.x_val, self.data.y_val), accuracy(model, self.data.x_test, self.data.y_test))

    def _loaded_teacher(self, spec: Spec) -> tuple[Member, HopRecord]:
        """A teacher from the user's files: never trained, never refitted; where it learned is as declared."""
        t0 = time.perf_counter()
        model = external.load_teacher(spec, self.data.info, self.data.x_val[:4], "teacher")
        if external.saw_train_split(spec):
            trained_on = np.ones(len(self.data.y), dtype=bool)
        else:  # it saw none of the split; its probes learn from the teacher's part (holdout)
            trained_on = self.data.mask(self.data.teacher_idx) if self.cfg.confidence_split == "holdout" else \
                np.zeros(len(self.data.y), dtype=bool)
        val, test = self._scores(model)
        source = external.source_key(spec)
        assert source is not None
        details = {"loaded_from": spec[source], "sha256": external.digest(spec),
                   "saw_train_split": external.saw_train_split(spec)}
        record = HopRecord(0, spec, complexity(spec, self.data.info), "loaded", [], val, test, details,
                           _hash([self.base_key, "teacher"]), "", time.perf_counter() - t0)
        return Member(model, trained_on, None, name=f"teacher:{spec_label(spec)}"), record

    # ---------------------------------------------------------------- the driver's backend
    def first_hop(self) -> Done[HopRecord, Lineage]:
        """The teacher: loaded from the user's files, or trained here (or found on disk) on its part of the data."""
        spec = dict(self.cfg.teacher)
        if external.is_external(spec):
            member, record = self._loaded_teacher(spec)
            fresh = False
        else:
            member, record, fresh = self._trained_teacher(spec)
        return Done(record, Lineage([member], [self.base_key, self.cfg.plan.dense]), fresh)

    def check(self, hops: list[TabularHop]) -> None:
        """A chain must strictly decrease in complexity from the teacher to the student."""
        check_chain([self.cfg.teacher, *(spec for spec, _ in hops)], self.data.info)

    @staticmethod
    def _extend(prefix: list[Any], spec: Spec, method: TransferMethod) -> list[Any]:
        return [*prefix, spec_key(spec), _method_name(method), to_dict(method)]

    def hop_key(self, index: int, hop: TabularHop, teacher: Lineage) -> str:
        """The chain so far (data, teacher, every hop's model and method), hashed."""
        return _hash(self._extend(teacher.prefix, *hop))

    def hop_after(self, index: int, hop: TabularHop, teacher: Lineage, key: str) -> Done[HopRecord, Lineage]:
        """The hop fitted by its method from the model before it (every model before it when dense), or loaded."""
        spec, method = hop
        teachers = list(teacher.members) if self.cfg.plan.dense else [teacher.members[-1]]
        member, record, fresh = self._hop(index, spec, method, teachers, key)
        return Done(record, Lineage([*teacher.members, member], self._extend(teacher.prefix, spec, method)), fresh)

    def score(self, result: HopRecord) -> float:
        """Validation accuracy."""
        return result.val

    def _trained_teacher(self, spec: Spec) -> tuple[Member, HopRecord, bool]:
        key = _hash([self.base_key, "teacher"])
        trained_on = self.data.mask(self.data.teacher_idx)
        recipe = Recipe(spec, self.ctx.recipe_seed(spec))
        t0 = time.perf_counter()
        loaded = self.store.load(0, spec, key)
        fresh = loaded is None
        model = fit(recipe, self.data.teacher_idx, self.data, self.cfg.train) if fresh else loaded[0]
        val, test = self._scores(model)
        record = HopRecord(0, spec, complexity(spec, self.data.info), "labels", [], val, test,
                           {"trained_on": self.cfg.confidence_split, "points": int(len(self.data.teacher_idx))},
                           key, "", time.perf_counter() - t0)
        if fresh:
            record.path = self.store.save(0, spec, key, model, None, record.as_dict())
        member = Member(model, trained_on, recipe, name=f"teacher:{spec_label(spec)}")
        return member, record, fresh

    def _recipe_from_disk(self, method: TransferMethod, teachers: list[Member], spec: Spec,
                          weights: np.ndarray | None) -> Recipe:
        if isinstance(method, Distill):
            return method.recipe(teachers, spec, self.ctx)
        return self.ctx.new_recipe(spec, weights=weights)

    def run(self, intermediates: list[Spec], methods: list[TransferMethod]) -> list[HopRecord]:
        """Train (or load) every hop of teacher -> intermediates -> student; the records, teacher first."""
        specs = [dict(s) for s in intermediates] + [dict(self.cfg.student)]
        if len(methods) != len(specs):
            raise ValueError(f"{len(methods)} methods for {len(specs)} hops")
        return self.driver.walk(list(zip(specs, methods)))

    def _hop(self, index: int, spec: Spec, method: TransferMethod, teachers: list[Member],
             key: str) -> tuple[Member, HopRecord, bool]:
        last = teachers[-1].model
        self.ctx.init_from = last.module if isinstance(last, TorchHopModel) else None
        name = _method_name(method)
        t0 = time.perf_counter()
        loaded = self.store.load(index, spec, key)
        if loaded is not None:
            model, weights, saved = loaded
            recipe = self._recipe_from_disk(method, teachers, spec, weights)
            details = saved.get("details", {})
        else:
            outcome: HopOutcome = method.transfer(teachers, spec, self.ctx)
            model, recipe, details = outcome.model, outcome.recipe, outcome.details
        val, test = self._scores(model)
        record = HopRecord(index, spec, complexity(spec, self.data.info), name, [t.name for t in teachers],
                           val, test, details, key, "", time.perf_counter() - t0)
        if loaded is None:
            record.path = self.store.save(index, spec, key, model, recipe.weights, record.as_dict())
        else:
            record.path = str(self.store._dir(index, spec, key)) if self.store.root else ""
        member = Member(model, self.data.mask(self.data.student_idx), recipe, name=f"hop{index}:{spec_label(spec)}")
        return member, record, loaded is None


def one_hop(runner: ChainRunner, method: TransferMethod) -> HopOutcome:
    """The 1-hop transfer teacher -> student by `method`, straight through the method (no chain)."""
    runner.ctx.init_from = None
    return method.transfer([runner.teacher], dict(runner.cfg.student), runner.ctx)


def source_digests(cfg: ChainConfig) -> list[str]:
    """SHA-256 of every file a chain reads (dataset files, a loaded teacher's files)."""
    data = dict(cfg.data)
    files = [Path(data[k]) for k in DATASETS.path_keys(str(data.get("name"))) if isinstance(data.get(k), str) and data[k]]
    found = [p for p in files if p.exists()]
    return [path_digest(p) for p in found] + external.digest(cfg.teacher)


def run_chain(cfg: ChainConfig, run_dir: str | Path | None = None, *, data: ChainData | None = None,
              stop_after_hops: int | None = None, write_report: bool = True,
              simple_cache: dict[str, Any] | None = None) -> ChainReport:
    """Plan and run the chain `cfg` describes; with `run_dir`, save every hop and the report there.

    Rerunning with the same `run_dir` resumes: finished hops are loaded, not retrained. Chains
    that share data, teacher and seed may share one `run_dir` (and `simple_cache`): their common
    hops are then trained once.
    """
    check_sources(cfg)  # missing files and columns fail here, before anything trains
    data = data if data is not None else load_chain_data(cfg)
    if cfg.plan.strategy == "fixed":
        check_chain([cfg.teacher, *cfg.plan.intermediates, cfg.student], data.info)
    root = Path(run_dir) if run_dir is not None else None
    if root is not None and write_report:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / "config.yaml", cfg.to_yaml())
    runner = ChainRunner(cfg, data, root, stop_after_hops)
    if simple_cache is not None:
        runner.ctx.simple_cache = simple_cache
    base_method = cfg.methods_for(1)[0] if cfg.hop_methods is None else None
    if cfg.plan.strategy == "fixed":
        intermediates = [dict(s) for s in cfg.plan.intermediates]
        trials: list[Trial] = []
    else:
        assert base_method is not None
        pool = candidates(external.architecture(cfg.teacher), cfg.student, cfg.plan.ladder, data.info,
                          cfg.plan.construct)
        method = base_method
        intermediates, trials = runner.driver.plan(
            cfg.plan, pool, lambda chain: [(dict(s), method) for s in [*chain, cfg.student]])
    methods = cfg.methods_for(len(intermediates) + 1)
    records = runner.run(intermediates, methods)
    simple_model, _ = runner.ctx.simple(dict(cfg.student))
    sval, stest = runner._scores(simple_model)
    student = dict(cfg.student)
    simple = HopRecord(1, student, complexity(student, data.info), "labels", [], sval, stest)
    one = None
    if cfg.compare_one_hop:
        one = runner.run([], [methods[-1]])[-1] if intermediates else records[-1]
    report = ChainReport(records, simple, one, trials, cfg.to_dict(), {
        "confidence_split": cfg.confidence_split, "teacher_points": int(len(data.teacher_idx)),
        "teacher_loaded": external.is_external(cfg.teacher),
        "student_points": int(len(data.student_idx)), "folds": cfg.folds,
        "teacher_fraction": cfg.teacher_fraction if cfg.confidence_split == "holdout" else None})
    if root is not None and write_report:
        write_reports(root, report)
        report.plot(root / "chain.png")
    return report


def run_chain_config(cfg: ChainConfig | RunChainConfig, run_dir: str | Path, stop_after_hops: int | None = None,
                     stop_after_steps: int | None = None, progress: bool = False) -> ChainReport | RunChainReport:
    """`ktransfer hops`: run (or resume) the chain in `run_dir` through the chain driver, by the kind of its hops.

    Hops that are fitted models (`ChainConfig`) are this module's backend; hops that are ordinary runs
    (`RunChainConfig`) are `ktransfer.hops.run_chain`'s, each in a run directory of its own. `stop_after_hops`
    (hops trained here) is for both kinds; `stop_after_steps` (optimizer steps, mid-hop) for chains of runs.
    """
    if isinstance(cfg, RunChainConfig):
        from ktransfer.hops.run_chain import run_run_chain

        return run_run_chain(cfg, run_dir, stop_after_steps=stop_after_steps, progress=progress,
                             stop_after_hops=stop_after_hops)
    if stop_after_steps is not None:
        raise ValueError("stop_after_steps: for chains of runs; a chain of fitted models stops with stop_after_hops")
    return run_chain(cfg, run_dir, stop_after_hops=stop_after_hops)

__all__ = ["ChainInterrupted", "ChainReport", "ChainRunner", "HopRecord", "load_chain_data", "one_hop", "run_chain"]
