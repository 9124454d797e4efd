"""Fitting one model of a chain from a recipe: torch students through the engine, estimators by `fit`.

A `Recipe` says everything needed to (re)fit a hop's student on any subset of the chain's
training pool: its spec and seed, per-point weights (reweighting methods), and a teacher with
knowledge terms and selector (distillation). Refitting on subsets is how out-of-fold
confidences of an intermediate model are obtained without it ever judging its own training data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ktransfer.data import TensorDictDataset
from ktransfer.hops.models import (
    SKLEARN_MODELS,
    HopModel,
    SklearnHopModel,
    TorchHopModel,
    build_torch_module,
    builder_kwargs,
    is_torch,
)
from ktransfer.hops.probes import normalise_weights
from ktransfer.registry import ConfigError
from ktransfer.schema import validate
from ktransfer.selection import SELECTORS
from ktransfer.tasks import Task
from ktransfer.terms import build_terms
from ktransfer.engine import Distiller, OptimConfig, TrainConfig


@dataclass
class TorchFitConfig:
    """How every torch model of a chain is trained (one engine run per fit)."""

    max_steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        validate(self, "train")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("train.max_steps and train.batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class ChainData:
    """The chain's data: a training pool split into the teacher's and the students' parts, plus val/test.

    `split` is 'holdout' (teacher and students learn from disjoint parts) or 'oof' (both learn
    from the whole pool; confidences are out-of-fold predictions over `folds` folds).
    """

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    teacher_idx: np.ndarray
    student_idx: np.ndarray
    info: dict[str, Any]
    split: str = "holdout"
    folds: int = 3

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    def mask(self, idx: np.ndarray) -> np.ndarray:
        m = np.zeros(len(self.y), dtype=bool)
        m[idx] = True
        return m


@dataclass
class Recipe:
    """How to fit a hop's student on a subset of the pool (see module docstring).

    `weights` has one entry per pool point (only the subset's entries are read). `teacher` and
    `terms`/`selector` drive distillation of a torch student; `soft_targets(idx)` gives the
    (n, C) targets a scikit-learn student is fitted on by weighted replication.
    """

    spec: dict[str, Any]
    seed: int
    weights: np.ndarray | None = None
    teacher: nn.Module | None = None
    terms: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "labels"}])
    selector: dict[str, Any] = field(default_factory=lambda: {"type": "fixed"})
    soft_targets: Callable[[np.ndarray], np.ndarray] | None = None
    soft_weight: float = 0.5
    init_from: nn.Module | None = None


def accepts_sample_weight(spec: dict[str, Any]) -> bool:
    """Whether the estimator of a scikit-learn spec takes `sample_weight` in `fit` (torch: always)."""
    if is_torch(spec):
        return True
    kwargs = builder_kwargs(spec)
    est = SKLEARN_MODELS.build(str(spec["kind"]), kwargs, "model")
    return "sample_weight" in inspect.signature(est.fit).parameters


def _copy_prefix(student: nn.Module, source: nn.Module) -> None:
    """Initialise a truncated model from the model it was cut from: copy same-named, same-shaped tensors."""
    src = source.state_dict()
    own = student.state_dict()
    for k, v in own.items():
        if k in src and src[k].shape == v.shape:
            own[k] = src[k].detach().clone()
    student.load_state_dict(own)


def fit(recipe: Recipe, idx: np.ndarray, data: ChainData, cfg: TorchFitConfig) -> HopModel:
    """Fit the recipe's model on pool points `idx` (points of weight 0 are left out)."""
    idx = np.asarray(idx, dtype=np.int64)
    weights = None
    if recipe.weights is not None:
        w = recipe.weights[idx]
        idx, weights = idx[w > 0], normalise_weights(w[w > 0])
    if len(idx) == 0:
        raise ValueError(f"no training points left for {recipe.spec}")
    if is_torch(recipe.spec):
        return _fit_torch(recipe, idx, weights, data, cfg)
    return _fit_sklearn(recipe, idx, weights, data)


def _fit_torch(recipe: Recipe, idx: np.ndarray, weights: np.ndarray | None, data: ChainData,
               cfg: TorchFitConfig) -> TorchHopModel:
    module = build_torch_module(recipe.spec, data.info, recipe.seed)
    if recipe.init_from is not None:
        _copy_prefix(module, recipe.init_from)
    tensors = {"inputs": torch.from_numpy(np.ascontiguousarray(data.x[idx], dtype=np.float32)),
               "labels": torch.from_numpy(data.y[idx].astype(np.int64))}
    if weights is not None:
        tensors["sample_weight"] = torch.from_numpy(weights.astype(np.float32))
    terms = build_terms(recipe.terms)
    selector_spec = dict(recipe.selector)
    selector = SELECTORS.build(selector_spec.pop("type"), selector_spec, "selector")
    teacher = recipe.teacher if any(t.requires_teacher for t in terms) else None
    train_cfg = TrainConfig(max_steps=cfg.max_steps, batch_size=cfg.batch_size, seed=recipe.seed,
                            eval_every=cfg.max_steps, log_every=cfg.max_steps)
    Distiller(module, teacher, terms, selector, train_data=TensorDictDataset(**tensors), config=train_cfg,
              optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay), task=Task("classification"),
              progress=False).fit()
    module.eval()
    return TorchHopModel(recipe.spec, module, data.num_classes)


def _fit_sklearn(recipe: Recipe, idx: np.ndarray, weights: np.ndarray | None, data: ChainData) -> SklearnHopModel:
    kwargs = builder_kwargs(recipe.spec)
    kwargs["random_state"] = recipe.seed
    est = SKLEARN_MODELS.build(str(recipe.spec["kind"]), kwargs, "model")
    x, y = data.x[idx], data.y[idx]
    takes_weights = "sample_weight" in inspect.signature(est.fit).parameters
    if recipe.soft_targets is not None:
        # distillation into an estimator: each point once per class, weighted by the soft target
        # mixed with the true label, so the fit matches the teacher's distribution
        soft = recipe.soft_targets(idx)
        hard = np.eye(data.num_classes)[y]
        target = recipe.soft_weight * soft + (1.0 - recipe.soft_weight) * hard
        if weights is not None:
            target = target * weights[:, None]
        if not takes_weights:
            raise ConfigError(f"model kind '{recipe.spec['kind']}' does not accept sample_weight, which "
                              "distillation into an estimator needs")
        classes = np.tile(np.arange(data.num_classes), len(idx))
        w = target.reshape(-1)
        rows = np.repeat(np.arange(len(idx)), data.num_classes)
        keep = w > 1e-6
        est.fit(x[rows[keep]], classes[keep], sample_weight=w[keep])
    elif weights is not None:
        if not takes_weights:
            raise ConfigError(f"model kind '{recipe.spec['kind']}' does not accept sample_weight, which "
                              "reweighting methods need")
        est.fit(x, y, sample_weight=weights)
    else:
        est.fit(x, y)
    return SklearnHopModel(recipe.spec, est, data.num_classes)


def accuracy(model: HopModel, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict_proba(x).argmax(1) == y).mean())
