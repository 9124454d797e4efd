"""One YAML file describes a whole run; this module loads, overrides and validates it.

Layout (every section maps onto a Python object of the same name):

```yaml
task: classification            # classification | causal_lm | seq2seq
data: {name: digits, split_seed: 0}           # DATASETS registry name + its keyword arguments
teacher: {from_run: runs/teacher}             # or {builder: mlp, hidden: [256], weights: t.safetensors}; null = none
# or several, by name (each like `teacher`), read by terms with `teacher: NAME` or merged by `combine`:
# teachers: {big: {from_run: runs/big}, tfidf: {store: stores/tfidf}}
# combine: {method: average}                  # pairs | average | choose (ktransfer.knowledge.teachers)
student: {builder: mlp, hidden: [32]}         # MODELS registry name + its keyword arguments
knowledge:                                    # TERMS catalogue (ktransfer.terms): type + keyword arguments
  - {type: response, divergence: forward_kl, temperature: 4.0, weight: 0.5}
  - {type: labels, weight: 0.5}
targets: null                                 # or {sources: {dataset: 0.5, student: 0.5}, generation: {...}}
selector: {type: fixed}                       # SELECTORS registry
optim: {name: adamw, lr: 0.001}               # OptimConfig
schedule: {name: cosine, warmup_steps: 0}     # ScheduleConfig
train: {max_steps: 500, batch_size: 64, seed: 0}   # TrainConfig
```

Paths (`from_run`, `weights`, and builder or dataset arguments typed `LocalPath`) are stored
absolute: a relative path in a config file is relative to that file's directory, and one given
any other way (a `--set` override, `RunConfig.from_dict`) to the current directory. So a run's
config.yaml names the same files whichever directory `ktransfer resume` is started from.
Arguments typed `ModelSource` / `DatasetSource` take a local path (resolved the same way when it
exists) or a Hugging Face hub id, kept as written (`ktransfer.sources`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ktransfer.cross_tokenizer import CROSS_TOKENIZER_TERMS, CrossTokenizerTerm
from ktransfer.data import DATASETS
from ktransfer.knowledge import ResponseTerm
from ktransfer.knowledge.layer_map import TappedTerm
from ktransfer.knowledge.teachers import (
    COMBINE_METHODS,
    PAIR_SEPARATOR,
    CombineConfig,
    arrange_terms,
    teacher_names_of,
)
from ktransfer.models import MODELS
from ktransfer.registry import ConfigError, suggest
from ktransfer.schema import from_dict, to_dict
from ktransfer.selection import SELECTORS
from ktransfer.sequence.targets import targets_stage_from_config
from ktransfer.sources import resolve_source
from ktransfer.tasks import TASK_KINDS, TASK_SPECS, TaskKind
from ktransfer.terms import build_terms
from ktransfer.engine.configs import OptimConfig, ScheduleConfig, TrainConfig

# Keys of a model section that are not arguments of the builder.
MODEL_META_KEYS = ("builder", "weights", "from_run", "which")
SECTIONS = ("task", "data", "teacher", "teachers", "combine", "student", "knowledge", "targets", "selector", "optim",
            "schedule", "train")


@dataclass
class RunConfig:
    """A whole run: task, data, teacher, student, knowledge terms, selector and training settings."""

    student: dict[str, Any]
    task: TaskKind = "classification"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    teacher: dict[str, Any] | None = None
    # several teachers by name, each a section like `teacher` (a model, or {store: DIR}); a knowledge term reads
    # one with `teacher: NAME`, and terms that name none follow `combine`. Teachers must predict the same classes
    # in the same order. Instead of `teacher`
    teachers: dict[str, Any] | None = None
    # how terms that name no teacher read several teachers: method pairs (one term per teacher and term, named
    # TERM@TEACHER, weighed by the selector), average (averaged probabilities) or choose (per example, one
    # teacher); weights per teacher; by (choose): label | confidence. Default with several teachers: none (each
    # teacher-reading term must name its teacher)
    combine: CombineConfig | None = None
    knowledge: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "labels"}])
    # where each step's targets come from (ktransfer.sequence.TargetsStage); null = the dataset's
    targets: dict[str, Any] | None = None
    selector: dict[str, Any] = field(default_factory=lambda: {"type": "fixed"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.check()
        # after check(), which has validated the sections; paths still relative are the current directory's
        resolved = resolve_paths({"data": self.data, "teacher": self.teacher, "teachers": self.teachers,
                                  "student": self.student}, Path.cwd())
        self.data, self.teacher, self.student = resolved["data"], resolved["teacher"], resolved["student"]
        self.teachers = resolved["teachers"]

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Validate names and keys of every section against the registries (nothing is built)."""
        if self.task not in TASK_KINDS:
            raise ConfigError(f"task: invalid value {self.task!r}; valid choices: {', '.join(TASK_KINDS)}")
        data = dict(self.data)
        if "name" not in data:
            raise ConfigError(f"data.name: missing; valid choices: {', '.join(DATASETS.names())}")
        DATASETS.check(str(data.pop("name")), data, "data")
        check_model_spec(self.student, "student")
        if self.teacher is not None:
            check_model_spec(self.teacher, "teacher")
        if not isinstance(self.knowledge, list) or not self.knowledge:
            raise ConfigError("knowledge: expected a non-empty list of terms, e.g. [{type: labels}]")
        terms = build_terms(self.knowledge)
        if self.teachers is not None:
            self._check_teachers(terms)
            return
        if self.combine is not None:
            raise ConfigError("combine: merges several teachers, but the run has " +
                              ("one ('teacher'); name several in a 'teachers' section" if self.teacher is not None
                               else "none"))
        named = [(i, t) for i, t in enumerate(terms) if getattr(t, "teacher", None) is not None]
        if named:
            i, term = named[0]
            source = getattr(term, "teacher", None)
            raise ConfigError(f"knowledge[{i}].teacher: names teacher {source!r}, but the run has "
                              + ("one unnamed teacher ('teacher'); name teachers in a 'teachers' section to choose "
                                 "between them" if self.teacher is not None else "no teacher"))
        needing = [t.name for t in terms if t.requires_teacher]
        if needing and self.teacher is None:
            raise ConfigError(f"knowledge: terms {needing} need a teacher, but 'teacher' is not set")
        if self.targets is not None:
            stage = targets_stage_from_config(self.targets, self.task)
            if stage.requires_teacher and self.teacher_model is None:
                raise ConfigError("targets: the teacher generates targets (teacher source, teacher_mix or "
                                  "greedy_baseline), but 'teacher' is " + ("a store of outputs, which cannot generate"
                                                                          if self.teacher_store else "not set"))
            if self.teacher_store:
                raise ConfigError("targets: a teacher output store holds the teacher's outputs on the dataset's "
                                  "targets; a targets section would change them. Remove one of the two")
        if self.teacher_store:
            reading = [t.name for t in terms if t.requires_teacher and not _reads_store(t)]
            if reading:
                raise ConfigError(f"knowledge: terms {reading} need the teacher model (its generations); "
                                  "teacher.store provides its output distribution (terms: response; cross_tokenizer "
                                  "from a store built on the teacher's own tokens) and the hidden states and attention "
                                  "maps it was built with (terms: feature, relation, attention)")
        self._check_teacher_tokens(terms)
        self._check_selector_and_metric()

    def _check_selector_and_metric(self) -> None:
        selector = dict(self.selector)
        kind = selector.pop("type", None)
        if kind is None:
            raise ConfigError(f"selector.type: missing; valid choices: {', '.join(SELECTORS.names())}")
        SELECTORS.check(kind, selector, "selector")
        metrics = list(TASK_SPECS[self.task].metrics)
        if self.train.metric not in metrics:
            raise ConfigError(
                f"train.metric: unknown metric '{self.train.metric}'{suggest(self.train.metric, metrics)}; "
                f"the evaluation of task '{self.task}' reports: {', '.join(metrics)}"
            )
        if self.train.metric == "teacher_kl" and self.teacher_model is None:
            raise ConfigError("train.metric: teacher_kl is the student's divergence from the teacher on the "
                              "validation data, but 'teacher' is not set")

    def _check_teachers(self, terms: list[Any]) -> None:
        """A `teachers` section: valid teachers, terms naming defined ones, a `combine` that can merge them."""
        if self.teacher is not None:
            raise ConfigError("teachers: give either 'teacher' (one) or 'teachers' (several, by name), not both")
        if not isinstance(self.teachers, dict) or not self.teachers:
            raise ConfigError("teachers: expected a mapping of teacher names to teacher sections, e.g. "
                              "{big: {from_run: runs/big}, tfidf: {store: stores/tfidf}}")
        names = list(self.teachers)
        for name, spec in self.teachers.items():
            if not isinstance(name, str) or not name or PAIR_SEPARATOR in name:
                raise ConfigError(f"teachers: invalid teacher name {name!r}; a non-empty string without "
                                  f"'{PAIR_SEPARATOR}'")
            check_model_spec(spec, f"teachers.{name}")
        for i, term in enumerate(terms):
            source = getattr(term, "teacher", None)
            if isinstance(source, str) and source not in names:
                raise ConfigError(f"knowledge[{i}].teacher: unknown teacher '{source}'{suggest(source, names)}; "
                                  f"defined teachers: {', '.join(names)}")
        if self.combine is not None and len(names) < 2:
            raise ConfigError(f"combine: merges several teachers, but 'teachers' defines one ({names[0]})")
        unnamed = [(i, t) for i, t in enumerate(terms) if t.requires_teacher and getattr(t, "teacher", None) is None]
        if unnamed and len(names) > 1 and self.combine is None:
            i, term = unnamed[0]
            raise ConfigError(f"knowledge[{i}] ({term.name}): reads a teacher but names none, and the run has "
                              f"teachers {', '.join(names)}: give it `teacher: NAME`, or add a 'combine' section "
                              f"(method: {', '.join(COMBINE_METHODS)})")
        try:
            arranged = arrange_terms(terms, names, self.combine)
        except ValueError as e:
            raise ConfigError(f"combine: {e}" if not str(e).startswith("combine") else str(e)) from e
        stores = [n for n in names if "store" in self.teachers[n]]
        for term in arranged:
            read = teacher_names_of(term)
            on_store = [n for n in read if n in stores]
            if on_store and not isinstance(term, ResponseTerm):  # named stores serve outputs, not internals
                raise ConfigError(f"knowledge: term '{term.name}' needs the model of teacher '{on_store[0]}' (its "
                                  f"layers or generations); teachers.{on_store[0]}.store provides only its output "
                                  "distribution (terms: response)")
            if on_store and len(read) > 1 and self.task != "classification":
                raise ConfigError(f"combine: teachers.{on_store[0]}.store holds a sequence teacher's top-k outputs, "
                                  f"which cannot be averaged or chosen between; use method pairs")
        if self.targets is not None:
            raise ConfigError("targets: generated targets come from one teacher model; a run with a 'teachers' "
                              "section trains on the dataset's targets")
        selector = self.selector or {}
        if selector.get("teacher_representation") is not None:
            raise ConfigError("selector.teacher_representation: the run's teachers are several models whose modules "
                              "differ; leave it out (the selector reads the mean of their output distributions)")
        if self.train.metric == "teacher_kl":
            raise ConfigError("train.metric: teacher_kl is the divergence from one teacher; a run with a 'teachers' "
                              "section has several")
        self._check_selector_and_metric()

    @property
    def teacher_specs(self) -> dict[str, dict[str, Any]]:
        """Every teacher section by name: the `teachers` section, or {"teacher": teacher} for one (or {})."""
        if self.teachers is not None:
            return dict(self.teachers)
        return {"teacher": self.teacher} if self.teacher is not None else {}

    def arranged_terms(self) -> list[Any]:
        """The run's knowledge terms, each teacher-reading one bound to what it reads (`arrange_terms`)."""
        terms = build_terms(self.knowledge)
        if self.teachers is None:
            return terms
        return arrange_terms(terms, list(self.teachers), self.combine)
    def _check_teacher_tokens(self, terms: list[Any]) -> None:
        """A cross-tokenizer term (cross_tokenizer, cross_tokenizer_reinforce) needs a dataset that tokenises each
        text for the teacher too (`data.teacher_tokenizer`); the other teacher-reading terms need the teacher on
        the student's tokens."""
        name = str(self.data.get("name"))
        teacher_tokenizer = self.data.get("teacher_tokenizer")
        cross = [(i, t) for i, t in enumerate(terms) if isinstance(t, CROSS_TOKENIZER_TERMS)]
        for i, term in cross[:1]:
            where = f"knowledge[{i}] ({term.name}, type {self.knowledge[i].get('type')})"
            if self.task != "causal_lm":
                raise ConfigError(f"{where}: aligns two tokenizations of causal-LM text; task is '{self.task}' "
                                  "(valid: causal_lm)")
            if "teacher_tokenizer" not in DATASETS.keys(name):
                able = [n for n in DATASETS.names() if "teacher_tokenizer" in DATASETS.keys(n)]
                raise ConfigError(f"{where}: the teacher reads its own tokens of each text, which dataset '{name}' "
                                  f"cannot give; datasets with teacher_tokenizer: {', '.join(able)}")
            if teacher_tokenizer is None:
                raise ConfigError(f"{where}: set data.teacher_tokenizer to the teacher's tokenizer (a folder, a "
                                  "tokenizer.json, a hub id, or smollm2), so that each text is tokenised for the "
                                  "teacher too")
            if self.targets is not None and targets_stage_from_config(self.targets, self.task).requires_teacher:
                raise ConfigError(f"{where}: the targets section has the teacher generate (teacher source, "
                                  "teacher_mix or greedy_baseline), on the student's tokens, which this teacher does "
                                  "not read; with data.teacher_tokenizer use the dataset and student sources only")
        if teacher_tokenizer is None:
            return
        same = [(i, t) for i, t in enumerate(terms) if t.requires_teacher and not isinstance(t, CROSS_TOKENIZER_TERMS)]
        if same:
            i, term = same[0]
            raise ConfigError(f"knowledge[{i}] ({term.name}): compares teacher and student on the same tokens, but "
                              "data.teacher_tokenizer gives the teacher its own tokens; use a term of type "
                              "cross_tokenizer or cross_tokenizer_reinforce, or remove data.teacher_tokenizer if "
                              "both share one tokenizer")
        if self.train.metric == "teacher_kl":
            raise ConfigError("train.metric: teacher_kl compares teacher and student on the same tokens, which "
                              "data.teacher_tokenizer rules out (the teacher has its own); valid here: "
                              + ", ".join(m for m in TASK_SPECS[self.task].metrics if m != "teacher_kl"))

    @property
    def teacher_store(self) -> str | None:
        """The teacher output store the run reads (`teacher: {store: DIR}`), or None."""
        return self.teacher.get("store") if isinstance(self.teacher, dict) else None

    @property
    def teacher_model(self) -> dict[str, Any] | None:
        """The teacher's model section, or None when there is none or the teacher is a store."""
        return None if self.teacher is None or self.teacher_store else self.teacher

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
        """Build from a mapping (as loaded from YAML), after applying `a.b=c` overrides."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
        data = apply_overrides(data, overrides or [])
        for key in data:
            if key not in SECTIONS:
                raise ConfigError(f"{key}: unknown section{suggest(key, list(SECTIONS))}; valid sections: {', '.join(SECTIONS)}")
        if "student" not in data:
            raise ConfigError("student: missing; every run needs a student model")
        return from_dict(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        """Load a YAML run file; `overrides` are `a.b=c` strings as given to `--set`."""
        path = Path(path)
        data = read_yaml_file(path)
        if isinstance(data, dict):  # the file's own relative paths, before overrides add others
            data = resolve_paths(data, Path(os.path.abspath(path.parent)))
        return cls.from_dict(data, overrides)

    def warnings(self) -> list[str]:
        """Settings that are valid but cannot take effect as written (the run still starts)."""
        t, out = self.train, []
        if self.schedule.warmup_steps >= t.max_steps:
            out.append(f"schedule.warmup_steps={self.schedule.warmup_steps} >= train.max_steps={t.max_steps}: the "
                       "learning rate never leaves its warm-up")
        if self.schedule.warmup_steps and self.schedule.name == "constant":
            out.append(f"schedule.warmup_steps={self.schedule.warmup_steps} has no effect with schedule.name=constant; "
                       "use constant_with_warmup, linear or cosine")
        if t.eval_every > t.max_steps:
            out.append(f"train.eval_every={t.eval_every} > train.max_steps={t.max_steps}: the student is evaluated "
                       "only once, at the end, so the best checkpoint is the last one"
                       + (" and train.patience cannot stop early" if t.patience is not None else ""))
        if t.checkpoint_every > t.max_steps:
            out.append(f"train.checkpoint_every={t.checkpoint_every} > train.max_steps={t.max_steps}: no checkpoint by "
                       "steps before the end (train.checkpoint_minutes still applies)")
        if self.teachers:
            read = {n for term in self.arranged_terms() for n in teacher_names_of(term)}
            unread = [n for n in self.teachers if n not in read]
            if unread:
                out.append(f"teachers: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} read by no knowledge "
                           "term (each names another teacher): built and checked, but never run")
        if t.log_every > t.max_steps:
            out.append(f"train.log_every={t.log_every} > train.max_steps={t.max_steps}: the training loss is logged "
                       "only at the end")
        return out

    def input_paths(self) -> dict[str, str]:
        """Every file or folder the run reads, by where it is named (`data.path`, `teacher.from_run`, ...)."""
        found: dict[str, str] = {}
        for where, spec, section in self._sections_with_paths():
            for k, v in spec.items():
                if k in _path_keys(spec, section):
                    found.update(_named_paths(f"{where}.{k}", v))
        return found

    def _sections_with_paths(self) -> list[tuple[str, dict[str, Any], str]]:
        """(where, spec, kind of section) of the data, student and every teacher section that is a mapping."""
        found = [("data", self.data, "data"), ("teacher", self.teacher, "teacher"), ("student", self.student, "student")]
        found += [(f"teachers.{name}", spec, "teacher") for name, spec in (self.teachers or {}).items()]
        return [(where, spec, section) for where, spec, section in found if isinstance(spec, dict)]

    def input_digests(self) -> dict[str, str]:
        """The content key of every input: each file or folder's digest, and each hub id's snapshot commit
        (`ktransfer.sources.source_key`, at the section's `revision`)."""
        from ktransfer.fingerprint import digests_of
        from ktransfer.sources import source_key

        found = digests_of(self.input_paths())
        for where, spec, section in self._sections_with_paths():
            for key, kind in _source_keys(spec, section).items():
                if isinstance(spec.get(key), str) and spec[key]:
                    found[f"{where}.{key}"] = source_key(spec[key], spec.get("revision"), kind)  # type: ignore[arg-type]
        return found

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _named_paths(name: str, value: Any) -> dict[str, str]:
    """{name: path} of a path value, or of each path of a list (`name[i]`) or mapping (`name.key`) of them."""
    if isinstance(value, list):
        return {k: p for i, v in enumerate(value) for k, p in _named_paths(f"{name}[{i}]", v).items()}
    if isinstance(value, dict):
        return {k: p for key, v in value.items() for k, p in _named_paths(f"{name}.{key}", v).items()}
    return {name: value} if isinstance(value, str) and value else {}


def _reads_store(term: Any) -> bool:
    """Whether a teacher-reading term can take its teacher from a store: it reads the output distribution (on
    the student's tokens, or with `cross_tokenizer` on the teacher's own, which the run checks against the
    store's keys before training), or named teacher internals (checked against the store's captures)."""
    return isinstance(term, (ResponseTerm, TappedTerm, CrossTokenizerTerm))


def read_yaml_file(path: Path) -> Any:
    """The YAML content of a config file ({} when empty); a missing file or bad YAML is a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


STORE_KEYS = ("store", "sha256", "k")


def check_model_spec(spec: Any, where: str) -> None:
    """Validate a model section: `from_run` (+ `which`), or `builder` + builder keys (+ `weights`).

    The teacher section may instead be `{store: DIR}` (+ `sha256`, the teacher weights' digest the
    store must record; + `k`, read the top k of a store built with more, the rest folded into its tail):
    the run then reads the teacher's outputs from a store (`ktransfer.store`).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'builder' or 'from_run', got {spec!r}")
    if "store" in spec:
        if where != "teacher" and not where.startswith("teachers."):
            raise ConfigError(f"{where}.store: only the teacher section can be a store of outputs")
        extra = sorted(set(spec) - set(STORE_KEYS))
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not allowed with 'store' (valid keys: {', '.join(STORE_KEYS)}); "
                              "a store replaces the teacher model")
        if not isinstance(spec["store"], str) or not spec["store"]:
            raise ConfigError(f"{where}.store: expected the path of a teacher output store, got {spec['store']!r}")
        sha = spec.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
            raise ConfigError(f"{where}.sha256: expected the 64 hex digits of the teacher's weights digest "
                              f"(`ktransfer teacher-outputs info DIR` prints it), got {sha!r}")
        k = spec.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"{where}.k: expected a whole number >= 1 (read the store's top k, at most the k it was "
                              f"built with), got {k!r}")
        return
    if "from_run" in spec:
        extra = sorted(set(spec) - {"from_run", "which"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not allowed with 'from_run' (only 'which': best | final)")
        if spec.get("which", "best") not in ("best", "final"):
            raise ConfigError(f"{where}.which: invalid value {spec['which']!r}; valid choices: best, final")
        return
    if "which" in spec:
        raise ConfigError(f"{where}.which: only allowed together with 'from_run'")
    if "builder" not in spec:
        raise ConfigError(
            f"{where}: needs 'builder' (one of {', '.join(MODELS.names())}) or 'from_run' (a run directory)"
        )
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    MODELS.check(str(spec["builder"]), kwargs, where)


def _absolute(value: Any, base: Path) -> Any:
    """`value` made absolute against `base` if it is a relative path string (or a list or mapping of them, as
    `data_files` are); anything else unchanged."""
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        return value
    return os.path.abspath(base / os.path.expanduser(value))


def _path_keys(spec: dict[str, Any], section: str) -> list[str]:
    """The keys of a data or model section whose values are paths."""
    if section == "data":
        return DATASETS.path_keys(str(spec.get("name")))
    keys = ["from_run", "weights", "store"]
    return keys + MODELS.path_keys(str(spec["builder"])) if "builder" in spec else keys


def _source_keys(spec: dict[str, Any], section: str) -> dict[str, str]:
    """The keys of a data or model section whose values are a local path or a hub id, with their repository type."""
    if section == "data":
        return DATASETS.source_keys(str(spec.get("name")))
    return MODELS.source_keys(str(spec["builder"])) if "builder" in spec else {}


def _resolved(key: str, value: Any, paths: list[str], sources: dict[str, str], base: Path) -> Any:
    if key in paths:
        return _absolute(value, base)
    return resolve_source(value, base) if key in sources and isinstance(value, str) else value


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a config mapping whose relative paths (model and data sections) are absolute against `base`.

    Works on unvalidated input: sections or values of the wrong type are left for validation to report.
    """
    out = dict(data)
    for section in ("data", "teacher", "student"):
        spec = out.get(section)
        if isinstance(spec, dict):
            out[section] = _resolved_section(spec, section, base)
    if isinstance(out.get("teachers"), dict):
        out["teachers"] = {name: _resolved_section(spec, "teacher", base) if isinstance(spec, dict) else spec
                           for name, spec in out["teachers"].items()}
    return out


def _resolved_section(spec: dict[str, Any], section: str, base: Path) -> dict[str, Any]:
    paths, sources = _path_keys(spec, section), _source_keys(spec, section)
    return {k: _resolved(k, v, paths, sources, base) for k, v in spec.items()}


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.max_steps=200")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from e
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with `a.b=c` overrides applied (values parsed as YAML; list indices allowed)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = _parse_override(item)
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_index(part, node, where)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override '{item}': {where} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, node, ".".join(path))] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override '{item}': {'.'.join(path[:-1])} is a value, not a section")
    return data


def _index(part: str, node: list[Any], where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{where}: expected a list index in [0, {len(node) - 1}], got '{part}'")
    return int(part)
