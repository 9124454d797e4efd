"""One adapter over torch modules and scikit-learn estimators, so a hop can treat both alike.

A model spec is a mapping `{kind: NAME, **kwargs}`: torch kinds are the `ktransfer.models`
builders (mlp, cnn), the others are scikit-learn estimators registered in `SKLEARN_MODELS`
(tree, logreg, gbdt, forest). A fitted model answers `predict_proba`, its `representations`
(inputs of linear probes: activations of a network, stages of a boosted model) and is saved
and loaded from one file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ktransfer.checkpoint import load_weights, save_weights
from ktransfer.io import atomic_path
from ktransfer.models import MODELS, count_parameters
from ktransfer.hops.sources import EXTERNAL_SOURCES, architecture, source_key, teacher_complexity, teacher_label
from ktransfer.registry import ConfigError, Registry, suggest

SKLEARN_MODELS: Registry[Any] = Registry("scikit-learn model")
TORCH_KINDS = ("mlp", "cnn")
# Keys of a model spec that are not arguments of its builder.
SPEC_META_KEYS = ("kind", "init_from_teacher")


@SKLEARN_MODELS.register("tree")
def build_tree(max_depth: int | None = 3, max_leaf_nodes: int | None = None, min_samples_leaf: int = 1,
               random_state: int = 0) -> Any:
    """A decision tree classifier; its size is bounded by `max_depth` and/or `max_leaf_nodes`."""
    from sklearn.tree import DecisionTreeClassifier

    if max_depth is None and max_leaf_nodes is None:
        raise ValueError("a tree needs max_depth or max_leaf_nodes (its complexity must be bounded)")
    return DecisionTreeClassifier(max_depth=max_depth, max_leaf_nodes=max_leaf_nodes,
                                  min_samples_leaf=min_samples_leaf, random_state=random_state)


@SKLEARN_MODELS.register("logreg")
def build_logreg(C: float = 1.0, max_iter: int = 300, random_state: int = 0) -> Any:
    """Multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)


@SKLEARN_MODELS.register("gbdt")
def build_gbdt(n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1, subsample: float = 1.0,
               random_state: int = 0) -> Any:
    """Gradient-boosted trees; its stages serve as probes for ProfWeight."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                      subsample=subsample, random_state=random_state)


@SKLEARN_MODELS.register("forest")
def build_forest(n_estimators: int = 100, max_depth: int | None = 8, random_state: int = 0) -> Any:
    """A random forest; growing prefixes of its trees serve as probes for ProfWeight."""
    from sklearn.ensemble import RandomForestClassifier

    if max_depth is None:
        raise ValueError("a forest needs max_depth (its complexity must be bounded)")
    return RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=random_state,
                                  n_jobs=1)


def model_kinds() -> list[str]:
    return sorted([*TORCH_KINDS, *SKLEARN_MODELS.names()])


def spec_kind(spec: Mapping[str, Any], where: str) -> str:
    """The spec's kind, checked; an unknown kind names the valid ones."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a model spec mapping like {{kind: mlp, hidden: [32]}}, got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        raise ConfigError(f"{where}.kind: missing; valid choices: {', '.join(model_kinds())}")
    if kind not in model_kinds():
        raise ConfigError(f"{where}.kind: unknown model kind '{kind}'{suggest(str(kind), model_kinds())}; "
                          f"valid choices: {', '.join(model_kinds())}")
    return str(kind)


def builder_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in SPEC_META_KEYS}


def check_spec(spec: Mapping[str, Any], where: str) -> None:
    """Validate a model spec's kind and keys against its builder's signature (nothing is built)."""
    kind = spec_kind(spec, where)
    kwargs = builder_kwargs(spec)
    if kind in TORCH_KINDS:
        kwargs.pop("in_features", None)
        kwargs.pop("num_classes", None)
        MODELS.check(kind, kwargs, where)
    else:
        if "random_state" in kwargs:
            raise ConfigError(f"{where}.random_state: set by the chain's seed, not in the spec")
        SKLEARN_MODELS.check(kind, kwargs, where)
    if "init_from_teacher" in spec and kind not in TORCH_KINDS:
        raise ConfigError(f"{where}.init_from_teacher: only for torch models ({', '.join(TORCH_KINDS)})")


def is_torch(spec: Mapping[str, Any]) -> bool:
    return spec.get("kind") in TORCH_KINDS


def spec_key(spec: Mapping[str, Any]) -> str:
    """A canonical text of a spec (sorted keys), for hashing and display."""
    return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))


def spec_label(spec: Mapping[str, Any]) -> str:
    """A short human name: `mlp[64,32]`, `tree(d=3)`; a loaded teacher: `mlp[64]@t.safetensors`, `file:t.joblib`."""
    if any(k in spec for k in EXTERNAL_SOURCES):
        if source_key(spec) == "weights":
            return f"{spec_label(architecture(spec))}@{Path(spec['weights']).name}"
        return teacher_label(spec)
    kind = spec.get("kind")
    rest = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "mlp":
        return f"mlp{list(rest.pop('hidden', [64]))}".replace(" ", "") + (f"{rest}" if rest else "")
    if kind == "cnn":
        return f"cnn{list(rest.pop('channels', [32, 64]))}".replace(" ", "") + (f"{rest}" if rest else "")
    if kind == "tree" and set(rest) <= {"max_depth"}:
        return f"tree(d={rest.get('max_depth', 3)})"
    inner = ",".join(f"{k}={v}" for k, v in sorted(rest.items()))
    return f"{kind}({inner})"


def stable_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) that depends only on `parts` (same on every machine and process)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def build_torch_module(spec: Mapping[str, Any], info: Mapping[str, Any], seed: int) -> nn.Module:
    """A freshly initialised torch module for `spec` (initialisation seeded by `seed`)."""
    kwargs = builder_kwargs(spec)
    kwargs.setdefault("in_features", info["num_features"])
    kwargs.setdefault("num_classes", info["num_classes"])
    torch.manual_seed(seed)
    return MODELS.build(str(spec["kind"]), kwargs, "model")


def complexity(spec: Mapping[str, Any], info: Mapping[str, Any]) -> int:
    """Capacity of a spec in parameters, comparable across kinds (known before training).

    Torch models: parameter count. Trees: the most nodes the size bounds allow (2^(d+1) - 1,
    or 2 * leaves - 1). Boosted trees: stages x trees per stage x nodes; forests: trees x
    nodes; logistic regression: (features + 1) x classes. A teacher loaded from files: see
    `ktransfer.hops.sources.teacher_complexity` (fitted sizes).
    """
    if any(k in spec for k in EXTERNAL_SOURCES):
        if source_key(spec) == "weights":
            return complexity(architecture(spec), info)
        return teacher_complexity(spec, info)
    kind = spec_kind(spec, "model")
    classes = int(info["num_classes"])
    if kind in TORCH_KINDS:
        return count_parameters(build_torch_module(spec, info, 0))

    def nodes(depth: int | None, leaves: int | None) -> int:
        bounds = [2 ** (depth + 1) - 1] if depth is not None else []
        if leaves is not None:
            bounds.append(2 * leaves - 1)
        return min(bounds)

    if kind == "tree":
        return nodes(spec.get("max_depth", 3), spec.get("max_leaf_nodes"))
    if kind == "logreg":
        return (int(info["num_features"]) + 1) * classes
    if kind == "gbdt":
        per_stage = 1 if classes == 2 else classes
        return int(spec.get("n_estimators", 100)) * per_stage * nodes(spec.get("max_depth", 3), None)
    if kind == "forest":
        return int(spec.get("n_estimators", 100)) * nodes(spec.get("max_depth", 8), None)
    raise ConfigError(f"no complexity measure for model kind '{kind}'")


@runtime_checkable
class HopModel(Protocol):
    """A fitted model of a chain: probabilities, probe inputs, saving."""

    spec: dict[str, Any]

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...

    def representations(self, x: np.ndarray) -> list[np.ndarray]: ...

    def save(self, path: Path) -> Path: ...


def _full_proba(estimator: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba with one column per class 0..C-1 (classes absent from the fit get 0)."""
    proba = estimator.predict_proba(x)
    out = np.zeros((len(x), num_classes), dtype=np.float64)
    out[:, np.asarray(estimator.classes_, dtype=np.int64)] = proba
    return out


class TorchHopModel:
    """A trained torch classifier; representations are the outputs of its ReLU activations."""

    def __init__(self, spec: dict[str, Any], module: nn.Module, num_classes: int) -> None:
        self.spec = dict(spec)
        self.module = module.eval()
        self.num_classes = num_classes

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> Tensor:
        self.module.eval()
        xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return torch.cat([self.module(xs[i:i + 2048]) for i in range(0, len(xs), 2048)]) if len(xs) else \
            torch.zeros(0, self.num_classes)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return F.softmax(self.logits(x).double(), dim=-1).numpy()

    @torch.no_grad()
    def representations(self, x: np.ndarray) -> list[np.ndarray]:
        """Each ReLU's output (in module order), flattened; image maps average-pooled to 2x2."""
        acts = [m for m in self.module.modules() if isinstance(m, nn.ReLU)]
        outputs: dict[int, list[Tensor]] = {i: [] for i in range(len(acts))}

        def hook(i: int) -> Any:
            def save(_m: nn.Module, _inp: Any, out: Tensor) -> None:
                if out.dim() == 4:
                    out = F.adaptive_avg_pool2d(out, 2)
                outputs[i].append(out.flatten(1).double())
            return save

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(acts)]
        try:
            self.logits(x)
        finally:
            for h in handles:
                h.remove()
        return [torch.cat(v).numpy() for _, v in sorted(outputs.items()) if v]

    def save(self, path: Path) -> Path:
        file = Path(path) / "model.safetensors"
        save_weights(self.module, file)
        return file

    @classmethod
    def load(cls, spec: dict[str, Any], path: Path, info: Mapping[str, Any]) -> TorchHopModel:
        module = build_torch_module(spec, info, 0)
        load_weights(module, Path(path) / "model.safetensors")
        return cls(spec, module, int(info["num_classes"]))


class SklearnHopModel:
    """A fitted scikit-learn classifier; boosted stages / forest prefixes are its representations."""

    def __init__(self, spec: dict[str, Any], estimator: Any, num_classes: int, probe_stages: int = 4) -> None:
        self.spec = dict(spec)
        self.estimator = estimator
        self.num_classes = num_classes
        self.probe_stages = probe_stages

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _full_proba(self.estimator, np.asarray(x, dtype=np.float32), self.num_classes)

    def representations(self, x: np.ndarray) -> list[np.ndarray]:
        """Decision values after evenly spaced boosting stages, or class votes of growing tree prefixes."""
        x = np.asarray(x, dtype=np.float32)
        est = self.estimator
        if hasattr(est, "staged_decision_function"):
            total = est.n_estimators_
            keep = sorted({max(1, round(total * (k + 1) / (self.probe_stages + 1))) for k in range(self.probe_stages)})
            out = []
            for stage, values in enumerate(est.staged_decision_function(x), start=1):
                if stage in keep:
                    out.append(np.asarray(values, dtype=np.float64).reshape(len(x), -1))
            return out
        if hasattr(est, "estimators_") and isinstance(est.estimators_, list):
            trees = est.estimators_
            keep = sorted({max(1, round(len(trees) * (k + 1) / (self.probe_stages + 1))) for k in range(self.probe_stages)})
            out, running = [], np.zeros((len(x), len(est.classes_)))
            for i, tree in enumerate(trees, start=1):
                running += tree.predict_proba(x)
                if i in keep:
                    out.append(running / i)
            return out
        return []

    def save(self, path: Path) -> Path:
        file = Path(path) / "model.pkl"
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(self.estimator, f, protocol=pickle.HIGHEST_PROTOCOL)
        return file

    @classmethod
    def load(cls, spec: dict[str, Any], path: Path, info: Mapping[str, Any]) -> SklearnHopModel:
        with open(Path(path) / "model.pkl", "rb") as f:
            estimator = pickle.load(f)  # noqa: S301 - our own file, verified by its hash first
        return cls(spec, estimator, int(info["num_classes"]))


def load_hop_model(spec: dict[str, Any], path: Path, info: Mapping[str, Any]) -> HopModel:
    return (TorchHopModel if is_torch(spec) else SklearnHopModel).load(spec, path, info)


class ProbaTeacher(nn.Module):
    """Any fitted model (or an average of several) as a frozen torch teacher returning log-probabilities.

    Lets a scikit-learn model teach a torch student by distillation, and a dense chain's earlier
    models teach as one ensemble (log of the mean probability).
    """

    def __init__(self, models: list[HopModel]) -> None:
        super().__init__()
        if not models:
            raise ValueError("ProbaTeacher needs at least one model")
        self.models = models
        self.torch_members = nn.ModuleList([m.module for m in models if isinstance(m, TorchHopModel)])

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        probs = None
        for m in self.models:
            if isinstance(m, TorchHopModel):
                p = F.softmax(m.module(x.float()).double(), -1)
            else:
                p = torch.from_numpy(m.predict_proba(x.detach().cpu().numpy())).to(x.device)
            probs = p if probs is None else probs + p
        assert probs is not None
        return torch.log((probs / len(self.models)).clamp_min(1e-12)).float()
