"""Transfer methods behind one interface: (teachers, student spec, data) -> trained student.

Registered in `TRANSFER_METHODS`; a method's factory signature is its config schema.
- `labels`: the simple model alone (true labels only; the teacher is ignored).
- `kd`: distillation. Torch students go through the engine with any knowledge terms and
  selector; scikit-learn students are fitted on the teacher's tempered soft labels.
- `confidence`: sample weight = the teacher's true-label probability.
- `profweight`: weight = mean true-label probability over the kept linear probes on the
  teacher's intermediate representations (the teacher's own output joins them only with
  `output_probe: true`).
- `sratio`: weight = teacher's (or kept probes') true-label probability / the simple model's
  own; points above a threshold, tuned on validation, are dropped.
Reweighting methods read teacher confidences only on data the teacher did not train on: a
disjoint part of the pool, or out-of-fold predictions of refits of the teacher's own recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from torch import nn

from ktransfer.hops.fitting import ChainData, Recipe, TorchFitConfig, accepts_sample_weight, accuracy, fit
from ktransfer.hops.models import HopModel, ProbaTeacher, TorchHopModel, is_torch, spec_key, stable_seed
from ktransfer.hops.probes import (
    fit_probe,
    keep_probes,
    profweight_weights,
    sratio_weights,
    true_label_probs,
)
from ktransfer.registry import ConfigError, Registry
from ktransfer.selection import SELECTORS
from ktransfer.terms import build_terms

PROBE_FIT_LIMIT = 2000  # probes are fitted on at most this many points (seeded subsample)


class TeacherDataError(ValueError):
    """Teacher confidences were requested on data the teacher trained on (they carry no signal there)."""


@dataclass
class Member:
    """A fitted model that can teach: the model, which pool points it trained on, how to refit it."""

    model: HopModel
    trained_on: np.ndarray
    recipe: Recipe | None = None
    name: str = ""


@dataclass
class HopContext:
    """What every hop shares: the data, fitting settings, the chain seed, and a cache of simple models."""

    data: ChainData
    fit_cfg: TorchFitConfig
    seed: int
    simple_cache: dict[str, tuple[HopModel, float]] = field(default_factory=dict)
    # the current hop's teacher network, which a spec with `init_from_teacher` starts from
    init_from: nn.Module | None = None

    def recipe_seed(self, spec: dict[str, Any]) -> int:
        """The seed of a model in this chain: a function of the chain seed and the spec alone."""
        return stable_seed(self.seed, spec_key(spec))

    def new_recipe(self, spec: dict[str, Any], **kwargs: Any) -> Recipe:
        """A recipe for `spec` with the chain's seed for it (and the teacher's weights if it asks for them)."""
        init = self.init_from if spec.get("init_from_teacher") else None
        if spec.get("init_from_teacher") and init is None:
            raise ConfigError(f"{spec}: init_from_teacher needs a torch teacher to copy weights from")
        return Recipe(dict(spec), self.recipe_seed(spec), init_from=init, **kwargs)

    def simple(self, spec: dict[str, Any]) -> tuple[HopModel, float]:
        """The student architecture trained on labels alone (on the students' part), and its val accuracy."""
        key = spec_key(spec)
        if key not in self.simple_cache:
            model = fit(Recipe(dict(spec), self.recipe_seed(spec)), self.data.student_idx, self.data, self.fit_cfg)
            self.simple_cache[key] = (model, accuracy(model, self.data.x_val, self.data.y_val))
        return self.simple_cache[key]


@dataclass
class HopOutcome:
    """A trained student, the recipe that refits it, and what the method decided (for the report)."""

    model: HopModel
    recipe: Recipe
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TransferMethod(Protocol):
    """(teachers, student spec, context) -> trained student. `reweights`: needs sample_weight."""

    reweights: bool

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome: ...


TRANSFER_METHODS: Registry[TransferMethod] = Registry("transfer method")


# ------------------------------------------------------------------------------ confidences
def _probe_fit_points(member: Member, data: ChainData, seed: int) -> np.ndarray:
    pts = np.flatnonzero(member.trained_on)
    if len(pts) > PROBE_FIT_LIMIT:
        pts = np.sort(np.random.default_rng(seed).choice(pts, PROBE_FIT_LIMIT, replace=False))
    return pts


def _profile(model: HopModel, fit_points: np.ndarray, x: np.ndarray, y: np.ndarray, data: ChainData,
             probes: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True-label probabilities on (x, y) of the model's output (last column) and, with `probes`, of
    linear probes fitted on its representations of `fit_points`. Also each column's val accuracy."""
    cols, accs = [], []
    if probes:
        reps_fit = model.representations(data.x[fit_points])
        reps_x = model.representations(x)
        reps_val = model.representations(data.x_val)
        for r_fit, r_x, r_val in zip(reps_fit, reps_x, reps_val):
            probe = fit_probe(r_fit, data.y[fit_points], data.num_classes, seed)
            cols.append(true_label_probs(probe.predict_proba(r_x), y))
            accs.append(float((probe.predict_proba(r_val).argmax(1) == data.y_val).mean()))
    cols.append(true_label_probs(model.predict_proba(x), y))
    accs.append(accuracy(model, data.x_val, data.y_val))
    return np.stack(cols, axis=1), np.asarray(accs)


def confidences(member: Member, idx: np.ndarray, ctx: HopContext, probes: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(n, P) true-label probabilities of `member` (probes..., output) on pool points `idx`, the
    columns' validation accuracies, and how they were obtained ('holdout' or 'out-of-fold (K)').

    Never on the member's own training points: disjoint points are predicted directly; others
    by refits of the member's recipe without the fold (cross-fitting). A member without a
    recipe (an external model) on its own training data is a `TeacherDataError`.
    """
    data = ctx.data
    seed = stable_seed(ctx.seed, "probes", member.name)
    fit_points = _probe_fit_points(member, data, seed)
    full, accs = _profile(member.model, fit_points, data.x[idx], data.y[idx], data, probes, seed)
    overlap = member.trained_on[idx]
    if not overlap.any():
        return full, accs, "holdout"
    if member.recipe is None:
        raise TeacherDataError(
            f"teacher confidences requested on {int(overlap.sum())} points the teacher '{member.name}' trained on; "
            "on its own training data a teacher is confident everywhere and the weights carry no signal. "
            "Use confidence_split: holdout (a disjoint part) or oof (out-of-fold predictions)"
        )
    from sklearn.model_selection import KFold, StratifiedKFold  # here, as in data.tabular: a costly import

    out = np.empty_like(full)
    labels = data.y[idx]
    if np.unique(labels, return_counts=True)[1].min() >= data.folds:
        splits = StratifiedKFold(n_splits=data.folds, shuffle=True, random_state=seed).split(idx, labels)
    else:  # a class too rare to stratify: plain shuffled folds
        splits = KFold(n_splits=data.folds, shuffle=True, random_state=seed).split(idx)
    for _, held in splits:
        held_points = idx[held]
        train_points = np.flatnonzero(member.trained_on & ~data.mask(held_points))
        refit = fit(member.recipe, train_points, data, ctx.fit_cfg)
        sub = member.trained_on & ~data.mask(held_points)
        fit_sub = _probe_fit_points(Member(refit, sub), data, seed)
        part, _ = _profile(refit, fit_sub, data.x[held_points], data.y[held_points], data, probes, seed)
        if part.shape[1] != out.shape[1]:
            raise ValueError("a refit teacher has a different number of representations than the teacher")
        out[held] = part
    return out, accs, f"out-of-fold ({data.folds} folds)"


def _student_points(ctx: HopContext) -> np.ndarray:
    return ctx.data.student_idx


def _pool_weights(ctx: HopContext, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    w = np.zeros(len(ctx.data.y))
    w[idx] = values
    return w


def _weight_stats(w: np.ndarray) -> dict[str, float]:
    kept = w[w > 0]
    return {"weight_mean": float(w.mean()), "weight_min": float(w.min()), "weight_max": float(w.max()),
            "dropped": int((w == 0).sum()), "kept": int(kept.size)}


def _require_weights(spec: dict[str, Any], method: str) -> None:
    if not accepts_sample_weight(spec):
        raise ConfigError(f"method '{method}' reweights samples, but model kind '{spec['kind']}' does not accept "
                          "sample_weight in fit; choose an estimator that does (tree, logreg, gbdt, forest) or method kd")


# ------------------------------------------------------------------------------ methods
@TRANSFER_METHODS.register("labels")
@dataclass
class LabelsOnly:
    """The simple model alone: trained on the true labels, no teacher."""

    reweights: bool = field(default=False, init=False)

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome:
        model, val = ctx.simple(spec)
        return HopOutcome(model, Recipe(dict(spec), ctx.recipe_seed(spec)), {"simple_val": val})


@TRANSFER_METHODS.register("kd")
@dataclass
class Distill:
    """Distillation. Torch student: the engine with `terms` (default: forward KL at `temperature`,
    weight `alpha`, plus labels, weight 1 - alpha) and `selector`. Estimator student: fitted on
    alpha * teacher's tempered probabilities + (1 - alpha) * one-hot labels by weighted replication."""

    temperature: float = 4.0
    alpha: float = 0.5
    terms: list[dict[str, Any]] | None = None
    selector: dict[str, Any] | None = None
    reweights: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.terms is not None:
            build_terms(self.terms, "method.terms")
        if self.selector is not None:
            spec = dict(self.selector)
            kind = spec.pop("type", None)
            if kind is None:
                raise ConfigError(f"method.selector.type: missing; valid choices: {', '.join(SELECTORS.names())}")
            SELECTORS.check(kind, spec, "method.selector")

    def torch_terms(self) -> list[dict[str, Any]]:
        if self.terms is not None:
            return [dict(t) for t in self.terms]
        return [{"type": "response", "divergence": "forward_kl", "temperature": self.temperature, "weight": self.alpha},
                {"type": "labels", "weight": 1.0 - self.alpha}]

    def recipe(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> Recipe:
        """How the student is fitted from these teachers (no fitting here)."""
        models = [m.model for m in teachers]
        recipe = ctx.new_recipe(spec)
        if is_torch(spec):
            teacher: nn.Module = (models[0].module if len(models) == 1 and isinstance(models[0], TorchHopModel)
                                  else ProbaTeacher(models))
            recipe.teacher = teacher
            recipe.terms = self.torch_terms()
            recipe.selector = dict(self.selector or {"type": "fixed"})
        else:
            data, temperature = ctx.data, self.temperature

            def soft_targets(idx: np.ndarray) -> np.ndarray:
                p = np.mean([m.predict_proba(data.x[idx]) for m in models], axis=0)
                logp = np.log(np.clip(p, 1e-12, None)) / temperature
                q = np.exp(logp - logp.max(1, keepdims=True))
                return q / q.sum(1, keepdims=True)

            recipe.soft_targets = soft_targets
            recipe.soft_weight = self.alpha
        return recipe

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome:
        recipe = self.recipe(teachers, spec, ctx)
        model = fit(recipe, _student_points(ctx), ctx.data, ctx.fit_cfg)
        return HopOutcome(model, recipe, {"temperature": self.temperature, "alpha": self.alpha,
                                          "selector": (self.selector or {"type": "fixed"}).get("type")})


def _reweighted(spec: dict[str, Any], ctx: HopContext, weights: np.ndarray) -> tuple[HopModel, Recipe]:
    recipe = ctx.new_recipe(spec, weights=_pool_weights(ctx, _student_points(ctx), weights))
    return fit(recipe, _student_points(ctx), ctx.data, ctx.fit_cfg), recipe


@TRANSFER_METHODS.register("confidence")
@dataclass
class Confidence:
    """Sample weight = the teacher's true-label probability (held-out or out-of-fold)."""

    reweights: bool = field(default=True, init=False)

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome:
        _require_weights(spec, "confidence")
        idx = _student_points(ctx)
        parts = [confidences(m, idx, ctx) for m in teachers]
        w = np.mean([p[0][:, -1] for p in parts], axis=0)
        model, recipe = _reweighted(spec, ctx, w)
        return HopOutcome(model, recipe, {"confidences": parts[0][2], **_weight_stats(w)})


def _kept_probe_probs(teachers: list[Member], ctx: HopContext, spec: dict[str, Any], margin: float,
                      output_probe: bool) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Mean true-label probability over kept probes of all teachers (None when none is kept).

    The probes are linear probes on each teacher's intermediate representations; with
    `output_probe` each teacher's own output is one more probe.
    """
    idx = _student_points(ctx)
    _, simple_val = ctx.simple(spec)
    cols, accs, names, how = [], [], [], ""
    for m in teachers:
        probs, acc, how = confidences(m, idx, ctx, probes=True)
        layers = probs.shape[1] - 1  # the last column is the teacher's output
        used = probs.shape[1] if output_probe else layers
        cols.append(probs[:, :used])
        accs.append(acc[:used])
        names += [f"{m.name} layer {k + 1}" for k in range(layers)] + ([f"{m.name} output"] if output_probe else [])
    probs, acc = np.concatenate(cols, axis=1), np.concatenate(accs)
    keep = keep_probes(acc, simple_val, margin)
    details = {"confidences": how, "output_probe": output_probe, "probe_names": names,
               "probe_val_accuracy": [round(float(a), 4) for a in acc],
               "kept_probes": [int(i) for i in np.flatnonzero(keep)], "simple_val": simple_val, "margin": margin}
    if not keep.any():
        if not names:
            details["no_probes"] = ("the teacher has no intermediate representations to probe (a network's "
                                    "activations, boosting stages or forest prefixes); output_probe: true adds "
                                    "its output as a probe")
        return None, details
    return profweight_weights(probs, keep), details


@TRANSFER_METHODS.register("profweight")
@dataclass
class ProfWeight:
    """ProfWeight (Dhurandhar et al., 2018): linear probes on the teacher's intermediate
    representations (a network's ReLU outputs; stages of boosted trees, prefixes of forests); a
    probe is kept when its validation accuracy beats the simple model's by `margin`; weight =
    mean true-label probability over the kept probes.

    `output_probe: true` adds the teacher's own output as one more probe. It is off by default,
    as in the paper: the output is usually the most accurate probe, so with it the weights drift
    towards plain confidence weighting (method `confidence`). When no probe is kept, the simple
    model is kept and the hop's details say why (`fallback`).
    """

    margin: float = 0.0
    output_probe: bool = False
    reweights: bool = field(default=True, init=False)

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome:
        _require_weights(spec, "profweight")
        w, details = _kept_probe_probs(teachers, ctx, spec, self.margin, self.output_probe)
        if w is None:
            model, val = ctx.simple(spec)
            why = details.get("no_probes") or "no probe beat the simple model by the margin"
            details["fallback"] = f"{why}: the simple model is kept"
            return HopOutcome(model, Recipe(dict(spec), ctx.recipe_seed(spec)), details)
        model, recipe = _reweighted(spec, ctx, w)
        return HopOutcome(model, recipe, {**details, **_weight_stats(w)})


@TRANSFER_METHODS.register("sratio")
@dataclass
class SRatio:
    """Weight = complex / simple true-label probability; points whose ratio exceeds a threshold are
    dropped. Thresholds are the ratio's `quantiles` (1.0 keeps all); the best on validation wins.
    `source`: the teacher's output, or its kept probes (with `margin`, and `output_probe`) as in
    ProfWeight."""

    source: Literal["output", "probes"] = "output"
    quantiles: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.95, 1.0])
    margin: float = 0.0
    output_probe: bool = False
    reweights: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.quantiles or any(not 0.0 < q <= 1.0 for q in self.quantiles):
            raise ValueError(f"quantiles must be a non-empty list in (0, 1], got {self.quantiles}")

    def transfer(self, teachers: list[Member], spec: dict[str, Any], ctx: HopContext) -> HopOutcome:
        _require_weights(spec, "sratio")
        idx = _student_points(ctx)
        simple, _ = ctx.simple(spec)
        simple_probs = true_label_probs(simple.predict_proba(ctx.data.x[idx]), ctx.data.y[idx])
        if self.source == "probes":
            complex_probs, details = _kept_probe_probs(teachers, ctx, spec, self.margin, self.output_probe)
            if complex_probs is None:
                why = details.get("no_probes") or "no probe beat the simple model by the margin"
                details["fallback"] = f"{why}: the teacher's output is used"
        else:
            complex_probs, details = None, {}
        if complex_probs is None:
            parts = [confidences(m, idx, ctx) for m in teachers]
            complex_probs = np.mean([p[0][:, -1] for p in parts], axis=0)
            details["confidences"] = parts[0][2]
        ratio = complex_probs / np.maximum(simple_probs, 1e-6)
        best: tuple[float, float, HopModel, Recipe, np.ndarray] | None = None
        tried = []
        for q in sorted(set(self.quantiles)):
            threshold = float(np.quantile(ratio, q)) if q < 1.0 else float("inf")
            w = sratio_weights(complex_probs, simple_probs, threshold)
            if not (w > 0).any():
                continue
            model, recipe = _reweighted(spec, ctx, w)
            val = accuracy(model, ctx.data.x_val, ctx.data.y_val)
            tried.append({"quantile": q, "threshold": threshold, "val_accuracy": val})
            if best is None or val > best[0]:
                best = (val, threshold, model, recipe, w)
        if best is None:
            raise ValueError("sratio: every threshold drops every point")
        _, threshold, model, recipe, w = best
        return HopOutcome(model, recipe, {**details, "source": self.source, "threshold": threshold,
                                          "thresholds_tried": tried, **_weight_stats(w)})


def build_method(spec: dict[str, Any], where: str = "method") -> TransferMethod:
    """A transfer method from `{name: ..., **kwargs}`; unknown names and keys name the valid ones."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{name: profweight}}, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}.name: missing; valid choices: {', '.join(TRANSFER_METHODS.names())}")
    return TRANSFER_METHODS.build(str(name), spec, where)
