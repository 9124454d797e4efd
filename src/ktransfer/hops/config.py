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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ktransfer.config import apply_overrides, read_yaml_file
from ktransfer.data import DATASETS
from ktransfer.hops.fitting import TorchFitConfig, accepts_sample_weight
from ktransfer.hops.methods import build_method
from ktransfer.hops.models import check_spec, is_torch, spec_label
from ktransfer.hops.planner import PlanConfig
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

    def check(self) -> None:
        """Names and keys of every section, and combinations that cannot work (nothing is trained)."""
        data = dict(self.data)
        if "name" not in data:
            raise ConfigError(f"data.name: missing; valid choices: {', '.join(DATASETS.names())}")
        DATASETS.check(str(data.pop("name")), data, "data")
        check_spec(self.teacher, "teacher")
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
        for key in ("teacher", "student"):
            if key not in data:
                raise ConfigError(f"{key}: missing; a chain needs a teacher and a student model spec")
        return from_dict(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> ChainConfig:
        return cls.from_dict(read_yaml_file(Path(path)), overrides)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def is_chain_file(path: str | Path) -> bool:
    """Whether a YAML file is a chain config (has a `plan`, `method` or `hop_methods` key)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and any(k in data for k in CHAIN_MARKERS)
