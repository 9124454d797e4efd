"""One YAML file for a whole chain: data, teacher, student, method(s), planner, training settings.

```yaml
data: {name: digits, split_seed: 0}         # DATASETS registry name + its keyword arguments
teacher: {kind: mlp, hidden: [256, 256]}      # model spec: mlp | cnn | tree | logreg | gbdt | forest
student: {kind: tree, max_depth: 3}
method: {name: profweight, margin: 0.0}       # TRANSFER_METHODS: labels | kd | confidence | profweight | sratio
hop_methods: null                            # fixed chains: one method per hop (overrides `method`)
plan: {strategy: greedy, ladder: [{kind: mlp, hidden: [32]}], epsilon: 0.005, max_hops: 3}
confidence_split: holdout                    # holdout | oof; where teacher confidences come from
teacher_fraction: 0.5                        # holdout: share of the training pool the teacher learns from
folds: 3                                     # out-of-fold predictions (oof, and intermediates' confidences)
seed: 0
train: {max_steps: 300, batch_size: 64, lr: 0.003}   # every torch model's engine run
```

The teacher may instead be one a user already has: `{from_run: RUN_DIR, which: best}`,
`{estimator: FILE.joblib}` or `{kind: mlp, hidden: [...], weights: FILE.safetensors}` (see
`ktransfer.hops.external`). Paths (the teacher's files, dataset arguments typed `LocalPath`
such as `data.path` of a CSV) are stored absolute: a relative path in a chain file is relative
to that file's folder, and one given any other way (`--set`, `ChainConfig.from_dict`) to the
current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ktransfer.config import apply_overrides, read_yaml_file
from ktransfer.data import DATASETS
from ktransfer.hops import external
from ktransfer.hops.fitting import TorchFitConfig, accepts_sample_weight
from ktransfer.hops.methods import build_method
from ktransfer.hops.models import check_spec, is_torch, spec_label
from ktransfer.hops.planner import PlanConfig
from ktransfer.hops.run_config import RunChainConfig, is_run_chain
from ktransfer.registry import ConfigError
from ktransfer.schema import from_dict, to_dict

# Top-level keys that mark a YAML file as a chain config (for `ktransfer run`).
CHAIN_MARKERS = ("plan", "method", "hop_methods")


@dataclass
class ChainConfig:
    """A multi-hop transfer: teacher -> planned intermediates -> student, each hop by a transfer method."""

    teacher: dict[str, Any]
    student: dict[str, Any]
    data: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    method: dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    hop_methods: list[dict[str, Any]] | None = None
    plan: PlanConfig = field(default_factory=PlanConfig)
    confidence_split: Literal["holdout", "oof", "train"] = "holdout"
    teacher_fraction: float = 0.5
    folds: int = 3
    seed: int = 0
    train: TorchFitConfig = field(default_factory=TorchFitConfig)
    compare_one_hop: bool = True

    def __post_init__(self) -> None:
        self.check()
        # after check(), which has validated the sections; paths still relative are the current directory's
        resolved = resolve_chain_paths({"data": self.data, "teacher": self.teacher}, Path.cwd())
        self.data, self.teacher = resolved["data"], resolved["teacher"]

    def check(self) -> None:
        """Names and keys of every section, and combinations that cannot work (nothing is trained)."""
        data = dict(self.data)
        if "name" not in data:
            raise ConfigError(f"data.name: missing; valid choices: {', '.join(DATASETS.names())}")
        DATASETS.check(str(data.pop("name")), data, "data")
        external.check_teacher(self.teacher, "teacher")
        check_spec(self.student, "student")
        if self.confidence_split == "train":
            raise ConfigError(
                "confidence_split: 'train' would read teacher confidences on the teacher's own training data, "
                "where it is confident everywhere and the weights carry no signal; use holdout (a disjoint "
                "part, teacher_fraction) or oof (out-of-fold predictions over `folds` folds)"
            )
        if self.confidence_split == "holdout" and not 0.0 < self.teacher_fraction < 1.0:
            raise ConfigError(f"teacher_fraction: must be in (0, 1) with confidence_split holdout, got {self.teacher_fraction}")
        if self.folds < 2:
            raise ConfigError(f"folds: must be >= 2, got {self.folds}")
        methods = self.methods_for(len(self.plan.intermediates) + 1) if self.plan.strategy == "fixed" else [
            build_method(self.method, "method")]
        if self.hop_methods is not None and self.plan.strategy != "fixed":
            raise ConfigError("hop_methods: only for plan.strategy fixed (a searched chain uses `method` for every hop)")
        self._check_teacher_confidences(methods)
        students = [*self.plan.intermediates, *self.plan.ladder, self.student]
        for m in methods:
            if not m.reweights:
                continue
            for s in students:
                if not is_torch(s) and not accepts_sample_weight(s):
                    raise ConfigError(
                        f"student {spec_label(s)}: model kind '{s['kind']}' does not accept sample_weight in fit, "
                        f"which reweighting methods need; use an estimator that does (tree, logreg, gbdt, forest) "
                        "or method kd"
                    )

    def _check_teacher_confidences(self, methods: list[Any]) -> None:
        """A loaded teacher's confidences are read only on data it never saw, from the holdout split.

        The methods that read the teacher: the first hop's, every hop's in a dense chain, and
        the last hop's when it is also run as the 1-hop comparison.
        """
        if not external.is_external(self.teacher):
            return
        readers = [methods[0], *(methods if self.plan.dense else []), *(methods[-1:] if self.compare_one_hop else [])]
        reweighting = [m for m in readers if m.reweights]
        if not reweighting:
            return
        name = type(reweighting[0]).__name__
        if external.saw_train_split(self.teacher):
            raise ConfigError(
                f"teacher.saw_train_split: {name} reweights by the teacher's confidences, which carry no signal on "
                "data the teacher trained on, and a loaded teacher is taken to have trained on the chain's training "
                "split; set teacher.saw_train_split: false if it never saw that data, or use method kd"
            )
        if self.confidence_split != "holdout":
            raise ConfigError(
                f"confidence_split: {name} with a loaded teacher needs holdout (the teacher's part of the training "
                f"split is where its probes learn, the students' part where its confidences are read); a loaded "
                f"teacher cannot be refitted for out-of-fold predictions, got {self.confidence_split}"
            )

    def methods_for(self, hops: int) -> list[Any]:
        """One transfer method per hop: `hop_methods` when given (fixed chains), else `method` for all."""
        if self.hop_methods is None:
            method = build_method(self.method, "method")
            return [method] * hops
        if len(self.hop_methods) != hops:
            raise ConfigError(f"hop_methods: {len(self.hop_methods)} given for a chain of {hops} hops; give one per hop")
        return [build_method(m, f"hop_methods[{i}]") for i, m in enumerate(self.hop_methods)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> ChainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a chain config must be a mapping, got {type(data).__name__}")
        data = apply_overrides(data, overrides or [])
        if is_run_chain(data):
            raise ConfigError("student: a run-config fragment, so this is a chain of runs: load it with "
                              "RunChainConfig (ktransfer.hops.run_config) or load_chain_config, which tells the two apart")
        for key in ("teacher", "student"):
            if key not in data:
                raise ConfigError(f"{key}: missing; a chain needs a teacher and a student model spec")
        return from_dict(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> ChainConfig:
        """Load a chain file; its relative paths are taken against the file's folder."""
        path = Path(path)
        data = read_yaml_file(path)
        if isinstance(data, dict):  # the file's own relative paths, before overrides add others
            data = resolve_chain_paths(data, Path(os.path.abspath(path.parent)))
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve_chain_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a chain mapping whose relative paths (dataset arguments, the teacher's files) are absolute.

    Works on unvalidated input: sections or values of the wrong type are left for validation to report.
    """
    out = dict(data)
    spec = out.get("data")
    if isinstance(spec, dict):
        keys = DATASETS.path_keys(str(spec.get("name")))
        out["data"] = {k: os.path.abspath(base / os.path.expanduser(v)) if k in keys and isinstance(v, str) and v
                       else v for k, v in spec.items()}
    if isinstance(out.get("teacher"), dict):
        out["teacher"] = external.resolve(out["teacher"], base)
    return out


def _read(path: str | Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def is_chain_file(path: str | Path) -> bool:
    """Whether a YAML file is a chain config: of tabular models (a `plan`, `method` or `hop_methods` key) or of
    runs (its `student` is a run-config fragment)."""
    data = _read(path)
    return isinstance(data, dict) and (any(k in data for k in CHAIN_MARKERS) or is_run_chain(data))


def is_run_chain_file(path: str | Path) -> bool:
    """Whether a YAML file is a chain of runs (its hops are ordinary runs: `ktransfer.hops.run_chain`)."""
    return is_run_chain(_read(path))


def load_chain_config(path: str | Path, overrides: list[str] | None = None) -> ChainConfig | RunChainConfig:
    """A chain file as the config of its kind of hops: runs (`RunChainConfig`) or fitted models (`ChainConfig`)."""
    if is_run_chain_file(path):
        return RunChainConfig.from_yaml(path, overrides)
    return ChainConfig.from_yaml(path, overrides)
