"""A chain's teacher taken from what a user already has, instead of trained by the chain.

Three forms of the `teacher` section:

```yaml
teacher: {from_run: runs/teacher, which: best}      # an ordinary ktransfer run: its student and weights
teacher: {estimator: models/gbdt.joblib}            # a fitted scikit-learn classifier saved with joblib
teacher: {kind: mlp, hidden: [128], weights: t.safetensors}   # a chain model spec and its saved weights
```

Relative paths are taken against the chain file's folder. `saw_train_split` (default true)
says whether the teacher was trained on the chain's training split: the chain cannot know, and
reweighting methods need the teacher's confidences on data it never saw, so they are refused
unless it is set to false. `complexity` (estimators only) states the teacher's size where it
cannot be measured (fitted trees count their nodes, linear models their coefficients).

A loaded model sees the inputs as the chain's dataset gives them: an estimator fitted on raw
CSV columns needs `data.standardize: false` (or a saved Pipeline with its own scaler). A joblib
file is a pickle: load only files you trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ktransfer.checkpoint import load_weights
from ktransfer.hops.models import (
    HopModel,
    SklearnHopModel,
    TorchHopModel,
    build_torch_module,
    check_spec,
    is_torch,
)
from ktransfer.hops.sources import (
    ESTIMATOR_SUFFIXES,
    EXTERNAL_SOURCES,
    architecture,
    build_from_run,
    check_teacher_files,
    digest,
    is_external,
    resolve,
    saw_train_split,
    source_files,
    source_key,
    teacher_complexity,
    teacher_label,
)
from ktransfer.registry import ConfigError, unknown_key

__all__ = ["ESTIMATOR_SUFFIXES", "EXTERNAL_SOURCES", "LoadedEstimator", "architecture", "check_teacher",
           "check_teacher_files", "digest", "is_external", "load_teacher", "resolve", "saw_train_split",
           "source_files", "source_key", "teacher_complexity", "teacher_label"]


def check_teacher(spec: Any, where: str = "teacher") -> None:
    """Validate a teacher section of any form (keys and types; files are checked by `check_teacher_files`)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a model spec mapping like {{kind: mlp, hidden: [32]}}, got {spec!r}")
    source = source_key(spec)
    if source is None:
        if "saw_train_split" in spec:
            raise ConfigError(f"{where}.saw_train_split: only for a teacher loaded with "
                              f"{', '.join(EXTERNAL_SOURCES)} (a teacher trained by the chain learns its own part)")
        check_spec(spec, where)
        return
    given = [k for k in EXTERNAL_SOURCES if k in spec]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of {', '.join(EXTERNAL_SOURCES)}, not {' and '.join(given)}")
    if not isinstance(spec[source], str) or not spec[source]:
        raise ConfigError(f"{where}.{source}: expected a path, got {spec[source]!r}")
    if not isinstance(spec.get("saw_train_split", True), bool):
        raise ConfigError(f"{where}.saw_train_split: expected true or false, got {spec['saw_train_split']!r}")
    if source == "weights":
        if not is_torch(spec):
            raise ConfigError(f"{where}.weights: safetensors weights need a torch model spec (kind: mlp or cnn, "
                              f"with its sizes), got kind {spec.get('kind')!r}")
        if "init_from_teacher" in spec:
            raise ConfigError(f"{where}.init_from_teacher: only for intermediates")
        check_spec(architecture(spec), where)
        return
    valid = {"from_run": ["from_run", "which", "saw_train_split"],
             "estimator": ["estimator", "saw_train_split", "complexity"]}[source]
    for key in spec:
        if key not in valid:
            raise unknown_key(where, key, valid, f" with '{source}'")
    if source == "from_run" and spec.get("which", "best") not in ("best", "final"):
        raise ConfigError(f"{where}.which: invalid value {spec['which']!r}; valid choices: best, final")
    if source == "estimator":
        if Path(spec["estimator"]).suffix not in ESTIMATOR_SUFFIXES:
            raise ConfigError(f"{where}.estimator: {spec['estimator']} is not a joblib file (name ending "
                              f"{' or '.join(ESTIMATOR_SUFFIXES)}); torch weights go in "
                              "{kind: mlp, hidden: [...], weights: FILE.safetensors}")
        c = spec.get("complexity")
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ConfigError(f"{where}.complexity: expected a positive integer, got {c!r}")


# ------------------------------------------------------------------------------------- loading
class LoadedEstimator(SklearnHopModel):
    """A user's fitted scikit-learn classifier, its classes mapped to the chain's class indices."""

    def __init__(self, spec: dict[str, Any], estimator: Any, num_classes: int, class_index: np.ndarray) -> None:
        super().__init__(spec, estimator, num_classes)
        self.class_index = class_index

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        proba = self.estimator.predict_proba(np.asarray(x, dtype=np.float32))
        out = np.zeros((len(x), self.num_classes), dtype=np.float64)
        out[:, self.class_index] = proba
        return out


def _class_index(estimator: Any, info: Mapping[str, Any], where: str) -> np.ndarray:
    """Column j of the estimator's predict_proba is chain class index[j] (by label value, else by number)."""
    classes = list(estimator.classes_)
    names = info.get("classes")
    if names is not None and all(str(c) in {str(n) for n in names} for c in classes):
        lookup = {str(n): i for i, n in enumerate(names)}
        return np.asarray([lookup[str(c)] for c in classes], dtype=np.int64)
    num_classes = int(info["num_classes"])
    if all(isinstance(c, (int, np.integer)) and 0 <= int(c) < num_classes for c in classes):
        return np.asarray(classes, dtype=np.int64)
    valid = f"the labels {', '.join(map(str, names))}" if names is not None else f"0 to {num_classes - 1}"
    shown = ", ".join(str(c.item() if isinstance(c, np.generic) else c) for c in classes)
    raise ConfigError(f"{where}: the estimator's classes [{shown}] are not the dataset's classes ({valid})")


def _load_estimator(spec: Mapping[str, Any], info: Mapping[str, Any], where: str) -> LoadedEstimator:
    import joblib

    path = spec["estimator"]
    try:
        estimator = joblib.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}.estimator: file not found: {path}") from None
    except Exception as e:  # unpickling raises whatever the stored object's classes raise
        raise ConfigError(f"{where}.estimator: {path} could not be loaded with joblib: {type(e).__name__}: {e}") from e
    if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
        raise ConfigError(f"{where}.estimator: {path} holds a {type(estimator).__name__}, not a fitted classifier "
                          "with predict_proba and classes_")
    at = f"{where}.estimator ({path})"
    features = int(info["num_features"])
    n_in = getattr(estimator, "n_features_in_", features)
    if n_in != features:
        raise ConfigError(f"{at}: the estimator takes {n_in} features, the dataset gives {features}")
    names_in = getattr(estimator, "feature_names_in_", None)
    if names_in is not None and info.get("features") is not None and list(names_in) != list(info["features"]):
        raise ConfigError(f"{at}: the estimator was fitted on the columns {', '.join(map(str, names_in))}, the "
                          f"dataset gives {', '.join(info['features'])} (set data.features in that order)")
    return LoadedEstimator(dict(spec), estimator, int(info["num_classes"]), _class_index(estimator, info, at))


def load_teacher(spec: Mapping[str, Any], info: Mapping[str, Any], x_check: np.ndarray,
                 where: str = "teacher") -> HopModel:
    """The external teacher as a chain model, checked on a few rows `x_check` of the chain's data."""
    key = source_key(spec)
    check_teacher_files(spec, where)
    model: HopModel
    if key == "estimator":
        model = _load_estimator(spec, info, where)
    elif key == "from_run":
        model = TorchHopModel(dict(spec), build_from_run(spec, info, where), int(info["num_classes"]))
    elif key == "weights":
        module = build_torch_module(architecture(spec), info, 0)
        try:
            load_weights(module, spec["weights"])
        except (RuntimeError, ValueError) as e:  # shapes or names differ from the spec's model
            raise ConfigError(f"{where}.weights: {spec['weights']} does not fit the model "
                              f"{architecture(spec)} built for this dataset: {str(e).splitlines()[0]}") from e
        model = TorchHopModel(dict(spec), module, int(info["num_classes"]))
    else:
        raise ValueError(f"{where}: not an external teacher: {dict(spec)}")
    try:
        proba = model.predict_proba(x_check)
    except Exception as e:  # whatever the model raises on the chain's inputs
        raise ConfigError(f"{where}.{key}: the model in {spec[key]} does not run on the dataset's inputs "
                          f"({int(info['num_features'])} features): {type(e).__name__}: {e}") from e
    if proba.shape != (len(x_check), int(info["num_classes"])):
        raise ConfigError(f"{where}.{key}: the model in {spec[key]} predicts {proba.shape[-1]} classes, the dataset "
                          f"has {int(info['num_classes'])}")
    return model
