"""A chain whose hops are ordinary runs: one file names the task and data once, each hop a run-config fragment.

```yaml
task: classification
data: {name: text_csv, path: news.csv, tokenizer: minilm, max_length: 128}
teacher:                                   # hop 0, trained here: a fragment (or a model section: {from_run: DIR})
  student: {builder: minilm}
  train: {max_steps: 300, batch_size: 16}
defaults:                                  # merged under every hop after the teacher
  knowledge: [{type: response, temperature: 2.0, weight: 0.5}, {type: labels, weight: 0.5}]
  train: {max_steps: 200, batch_size: 16}
student:                                   # the last hop
  student: {builder: hf_cut, teacher: previous, first: 1}
plan:
  strategy: greedy                         # fixed | greedy | exhaustive
  ladder:                                  # candidate intermediates, largest first
    - {student: {builder: hf_cut, teacher: previous, first: 4}}
    - {student: {builder: hf_cut, teacher: previous, first: 2}}
  max_hops: 3
```

A fragment holds the sections of a run config that a hop may choose (`FRAGMENT_KEYS`): its
student, knowledge terms, target source, selector, optimiser, schedule and training settings,
and `teacher_store` (the hop reads its teacher's outputs from a store the chain builds of the
previous hop's student). `config: FILE` takes those sections from a run config file; the
fragment's own keys override them. Sections merge key by key over `defaults`; `student` and
lists are replaced whole. A hop's teacher is the previous hop's student (its run's final
weights); `teacher: previous` in an `hf_cut` student cuts it from that same model. The chain's
teacher may also be a pretrained model taken as it is (`{builder: hf_pretrained, model: ...}`,
no hop 0 trained): `teacher: previous` of a hop it teaches cuts from that same model source.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ktransfer.config import RunConfig, apply_overrides, read_yaml_file, resolve_paths
from ktransfer.registry import ConfigError, suggest
from ktransfer.schema import from_dict, to_dict, validate
from ktransfer.tasks import TaskKind

# The value of an hf_cut student's `teacher` that names the previous hop's student.
PREVIOUS = "previous"
# What a hop fragment may set; task, data and teacher are the chain's.
RUN_SECTIONS = ("student", "knowledge", "targets", "selector", "optim", "schedule", "train")
FRAGMENT_KEYS = (*RUN_SECTIONS, "teacher_store", "config", "name")
STORE_OPTIONS = ("k", "values", "shard_size", "batch_size")
# A stand-in for the previous hop's run directory while a hop's config is only validated.
_PLACEHOLDER_RUN = "/nonexistent/previous-hop"


# hf_pretrained arguments that name the model a cut of it reads (hf_cut takes them under the same names).
_PRETRAINED_SOURCE_KEYS = ("revision", "subfolder", "auto_class", "dtype")


def cut_source(section: dict[str, Any]) -> dict[str, Any] | None:
    """The `hf_cut` arguments that cut a student from a teacher's model section, or None where it has no source
    to cut from: a run (`{from_run: DIR}`: `teacher: DIR`) or a pretrained model (`{builder: hf_pretrained,
    model: ...}`: `teacher:` that model, with its revision, subfolder, auto class and dtype)."""
    if section.get("from_run"):
        return {"teacher": str(section["from_run"])}
    model = section.get("model") or section.get("path")
    if section.get("builder") == "hf_pretrained" and model:
        return {"teacher": str(model), **{k: section[k] for k in _PRETRAINED_SOURCE_KEYS if section.get(k) is not None}}
    return None


def with_cut_source(student: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """An hf_cut student whose `teacher: previous` is replaced by `source` (its own other keys kept)."""
    return {**{k: v for k, v in source.items() if k != "teacher" and k not in student}, **student,
            "teacher": source["teacher"]}


def is_fragment(spec: Any) -> bool:
    """Whether a section is a run-config fragment (a hop) rather than a model section or a tabular model spec.

    A model section names a `builder` or `from_run` (an `hf_config` model has a `config` key of its own)."""
    return (isinstance(spec, dict) and not {"builder", "from_run", "kind", "estimator"} & set(spec)
            and ("student" in spec or "config" in spec))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_fragment(fragment: Any, base: Path) -> Any:
    """A copy of a fragment whose relative paths (its student's files, a referenced config) are absolute."""
    if not isinstance(fragment, dict):
        return fragment
    out = dict(fragment)
    if isinstance(out.get("config"), str) and out["config"]:
        out["config"] = os.path.abspath(base / os.path.expanduser(out["config"]))
    if isinstance(out.get("student"), dict):
        student = resolve_paths({"student": out["student"]}, base)["student"]
        if out["student"].get("teacher") == PREVIOUS:  # a name, never a path
            student["teacher"] = PREVIOUS
        out["student"] = student
    return out


def expand_fragment(fragment: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """The run sections of a hop: `defaults`, then a referenced run config's sections, then the fragment's keys."""
    if not isinstance(fragment, dict):
        raise ConfigError(f"{where}: expected a run-config fragment (a mapping with 'student' or 'config'), "
                          f"got {fragment!r}")
    unknown = [k for k in fragment if k not in FRAGMENT_KEYS]
    if unknown:
        bad = str(unknown[0])
        hint = " (a hop's task and data are the chain's; its teacher is the previous hop's student)" \
            if bad in ("task", "data", "teacher") else ""
        raise ConfigError(f"{where}.{bad}: not a key of a hop{suggest(bad, list(FRAGMENT_KEYS))}{hint}; "
                          f"valid keys: {', '.join(FRAGMENT_KEYS)}")
    merged = copy.deepcopy(defaults)
    if fragment.get("config") is not None:
        path = Path(str(fragment["config"]))
        data = read_yaml_file(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{where}.config: {path} is not a run config (a mapping of sections)")
        data = resolve_paths(data, path.parent)
        merged = deep_merge(merged, {k: v for k, v in data.items() if k in RUN_SECTIONS})
        if "student" in data:
            merged["student"] = copy.deepcopy(data["student"])
    for key, value in fragment.items():
        if key in ("config", "name"):
            continue
        if key == "student" or not isinstance(value, dict):
            merged[key] = copy.deepcopy(value)
        else:
            merged[key] = deep_merge(merged.get(key) or {}, value)
    if "student" not in merged:
        raise ConfigError(f"{where}.student: missing; every hop needs a student (or a 'config' that has one)")
    store = merged.get("teacher_store")
    if store is not None:
        if not isinstance(store, dict):
            raise ConfigError(f"{where}.teacher_store: expected a mapping of store options "
                              f"({', '.join(STORE_OPTIONS)}), or {{}} for the defaults; got {store!r}")
        extra = [k for k in store if k not in STORE_OPTIONS]
        if extra:
            raise ConfigError(f"{where}.teacher_store.{extra[0]}: unknown option; valid: {', '.join(STORE_OPTIONS)}")
    return merged


def hop_label(fragment: dict[str, Any], sections: dict[str, Any]) -> str:
    """A short name for a hop: its `name`, else its student's builder and cut (`hf_cut-first2`)."""
    if fragment.get("name"):
        return str(fragment["name"])
    student = sections.get("student") or {}
    if "from_run" in student:
        return f"run:{Path(str(student['from_run'])).name}"
    label = str(student.get("builder", "model"))
    for key in ("layers", "every", "first", "last", "num_layers", "hidden"):
        if student.get(key) is not None:
            value = student[key]
            label += f"-{key}" + ("_".join(map(str, value)) if isinstance(value, list) else str(value))
    return label


@dataclass
class RunPlanConfig:
    """How a chain of runs chooses its intermediates: listed (`fixed`) or searched over a `ladder` on validation."""

    strategy: Literal["fixed", "exhaustive", "greedy"] = "fixed"
    # fixed: the hops between the teacher and the student, in order (run-config fragments)
    intermediates: list[dict[str, Any]] = field(default_factory=list)
    # exhaustive, greedy: candidate intermediates (run-config fragments), largest model first
    ladder: list[dict[str, Any]] = field(default_factory=list)
    # a longer chain must gain more than this on the validation metric
    epsilon: float = 0.0
    max_hops: int = 3

    def __post_init__(self) -> None:
        validate(self, "plan")
        if self.max_hops < 1:
            raise ConfigError(f"plan.max_hops: must be >= 1, got {self.max_hops}")
        if self.epsilon < 0:
            raise ConfigError(f"plan.epsilon: must be >= 0, got {self.epsilon}")
        if self.strategy == "fixed" and self.ladder:
            raise ConfigError("plan.ladder: for strategy exhaustive or greedy; a fixed chain lists its 'intermediates'")
        if self.strategy != "fixed" and self.intermediates:
            raise ConfigError(f"plan.intermediates: only for strategy fixed; strategy {self.strategy} searches 'ladder'")
        if self.strategy == "fixed" and len(self.intermediates) + 1 > self.max_hops:
            raise ConfigError(f"plan: {len(self.intermediates)} intermediates make {len(self.intermediates) + 1} hops, "
                              f"more than plan.max_hops={self.max_hops}")


@dataclass
class RunChainConfig:
    """A chain of ordinary runs: teacher -> (planned) intermediates -> student, each hop distilling the one before."""

    # the first teacher: a model section ({from_run: DIR}, {builder: ...}) or a fragment trained here as hop 0
    teacher: dict[str, Any]
    # the last hop (a run-config fragment)
    student: dict[str, Any]
    task: TaskKind = "classification"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    # merged under every hop after the teacher
    defaults: dict[str, Any] = field(default_factory=dict)
    plan: RunPlanConfig = field(default_factory=RunPlanConfig)
    # also run the teacher -> student hop alone, for the report
    compare_one_hop: bool = True

    def __post_init__(self) -> None:
        unknown = [k for k in self.defaults if k not in RUN_SECTIONS and k != "teacher_store"]
        if unknown:
            raise ConfigError(f"defaults.{unknown[0]}: not a section a hop sets; valid: "
                              f"{', '.join((*RUN_SECTIONS, 'teacher_store'))}")
        for where, fragment in self.fragments():
            self.run_config(fragment, where, teacher={"from_run": _PLACEHOLDER_RUN, "which": "final"})
        if self.teacher_is_trained:
            self.run_config(self.teacher, "teacher", teacher=None, defaults={})
            return
        RunConfig.from_dict({"task": self.task, "data": self.data, "student": self.teacher}).check()
        if cut_source(self.teacher) is not None:  # a run or a pretrained model: `teacher: previous` cuts from it
            return
        first = self.plan.intermediates[:1] if self.plan.strategy == "fixed" else self.plan.ladder
        direct = self.plan.strategy != "fixed" or not self.plan.intermediates or self.compare_one_hop
        for where, fragment in [*((w, f) for w, f in self.fragments() if any(f is g for g in first)),
                                *([("student", self.student)] if direct else [])]:
            if self.sections(fragment, where)["student"].get("teacher") == PREVIOUS:
                raise ConfigError(f"{where}.student.teacher: 'previous' cuts the student from its teacher, but it "
                                  f"may follow the chain's teacher, which is neither a run nor a pretrained model "
                                  f"({self.teacher}); give teacher: {{from_run: DIR}} or {{builder: hf_pretrained, "
                                  "model: ...}, or train it in the chain (teacher: {student: ...})")

    @property
    def teacher_is_trained(self) -> bool:
        """Whether the first teacher is a fragment trained here (hop 0) rather than a model section."""
        return is_fragment(self.teacher)

    def fragments(self) -> list[tuple[str, dict[str, Any]]]:
        """(where, fragment) of every hop after the teacher: intermediates or ladder, then the student."""
        listed = [(f"plan.intermediates[{i}]", f) for i, f in enumerate(self.plan.intermediates)]
        listed += [(f"plan.ladder[{i}]", f) for i, f in enumerate(self.plan.ladder)]
        return [*listed, ("student", self.student)]

    def sections(self, fragment: dict[str, Any], where: str, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run sections of a hop (defaults merged in)."""
        return expand_fragment(fragment, self.defaults if defaults is None else defaults, where)

    def run_config(self, fragment: dict[str, Any], where: str, teacher: dict[str, Any] | None,
                   defaults: dict[str, Any] | None = None, previous: str | dict[str, Any] | None = None,
                   store_dir: str | None = None) -> RunConfig:
        """The ordinary run config of a hop: the chain's task and data, `teacher`, the hop's sections.

        `previous` replaces `teacher: previous` of an hf_cut student: the previous hop's run directory, or the
        hf_cut arguments naming the model to cut from (`cut_source`); a hop with `teacher_store` reads its
        teacher's outputs from `store_dir`.
        """
        sections = self.sections(fragment, where, defaults)
        store = sections.pop("teacher_store", None)
        student = dict(sections["student"])
        if student.get("teacher") == PREVIOUS:
            source = previous if isinstance(previous, dict) else {"teacher": previous or _PLACEHOLDER_RUN}
            student = with_cut_source(student, source)
        sections["student"] = student
        if store is not None:
            teacher = {"store": store_dir or _PLACEHOLDER_RUN}
        try:
            return RunConfig.from_dict({"task": self.task, "data": self.data, "teacher": teacher, **sections})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> RunChainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a chain config must be a mapping, got {type(data).__name__}")
        data = apply_overrides(data, overrides or [])
        for key in ("teacher", "student"):
            if key not in data:
                raise ConfigError(f"{key}: missing; a chain of runs needs a teacher and a student hop")
        return from_dict(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunChainConfig:
        """Load a chain file; its relative paths are taken against the file's folder."""
        path = Path(path)
        data = read_yaml_file(path)
        if isinstance(data, dict):
            data = resolve_run_chain_paths(data, Path(os.path.abspath(path.parent)))
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve_run_chain_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a chain-of-runs mapping whose relative paths (data, teacher, every hop's files) are absolute."""
    out = dict(data)
    out.update({k: v for k, v in resolve_paths({k: out[k] for k in ("data",) if k in out}, base).items()})
    teacher = out.get("teacher")
    if is_fragment(teacher):
        out["teacher"] = resolve_fragment(teacher, base)
    elif isinstance(teacher, dict):
        out["teacher"] = resolve_paths({"teacher": teacher}, base)["teacher"]
    out["student"] = resolve_fragment(out.get("student"), base)
    if isinstance(out.get("defaults"), dict):
        out["defaults"] = resolve_fragment(out["defaults"], base)
    plan = out.get("plan")
    if isinstance(plan, dict):
        plan = dict(plan)
        for key in ("intermediates", "ladder"):
            if isinstance(plan.get(key), list):
                plan[key] = [resolve_fragment(f, base) for f in plan[key]]
        out["plan"] = plan
    return out


def is_run_chain(data: Any) -> bool:
    """Whether a chain mapping's hops are runs (its student is a run-config fragment)."""
    return isinstance(data, dict) and is_fragment(data.get("student"))


__all__ = ["FRAGMENT_KEYS", "PREVIOUS", "RUN_SECTIONS", "RunChainConfig", "RunPlanConfig", "cut_source",
           "deep_merge", "expand_fragment", "hop_label", "is_fragment", "is_run_chain", "with_cut_source"]
