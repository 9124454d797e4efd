"""The forms of a chain's teacher taken from a user's files, and what can be known of it without loading it.

Three forms of the `teacher` section (see `ktransfer.hops.external`, which loads them): a run
(`from_run`), a fitted scikit-learn estimator (`estimator`), a chain model spec with saved
`weights`. Here: which form a spec has, its files (present, digested), a short label, and its
size (parameters of a run's network, nodes of fitted trees).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ktransfer.building import build_model
from ktransfer.fingerprint import path_digest
from ktransfer.models import count_parameters
from ktransfer.registry import ConfigError

# Keys that make a teacher spec one loaded from a user's files.
EXTERNAL_SOURCES = ("from_run", "estimator", "weights")
ESTIMATOR_SUFFIXES = (".joblib", ".pkl")


def source_key(spec: Mapping[str, Any]) -> str | None:
    """Which external form a teacher spec has: 'from_run', 'estimator', 'weights', or None (trained here)."""
    found = [k for k in EXTERNAL_SOURCES if k in spec]
    return found[0] if found else None


def is_external(spec: Mapping[str, Any]) -> bool:
    return source_key(spec) is not None


def saw_train_split(spec: Mapping[str, Any]) -> bool:
    """Whether an external teacher is taken to have trained on the chain's training split."""
    return bool(spec.get("saw_train_split", True))


def architecture(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A `weights` teacher's model spec alone (what intermediates are built from); other specs unchanged."""
    if source_key(spec) != "weights":
        return dict(spec)
    return {k: v for k, v in spec.items() if k not in ("weights", "saw_train_split")}


def teacher_label(spec: Mapping[str, Any]) -> str:
    """A short name: `run:teacher(best)`, `file:gbdt.joblib`."""
    key = source_key(spec)
    if key == "from_run":
        return f"run:{Path(spec['from_run']).name}({spec.get('which', 'best')})"
    return f"file:{Path(spec[str(key)]).name}"


def resolve(spec: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a teacher spec whose relative source path is absolute against `base`."""
    out = dict(spec)
    key = source_key(spec)
    if key is not None and isinstance(out[key], str) and out[key]:
        out[key] = os.path.abspath(base / os.path.expanduser(out[key]))
    return out


def _run_weights(spec: Mapping[str, Any]) -> Path:
    return Path(spec["from_run"]) / spec.get("which", "best") / "model.safetensors"


def source_files(spec: Mapping[str, Any]) -> list[Path]:
    """The files an external teacher is read from (none for a teacher the chain trains)."""
    key = source_key(spec)
    if key == "from_run":
        return [Path(spec["from_run"]) / "config.yaml", _run_weights(spec)]
    return [Path(spec[key])] if key is not None else []


def check_teacher_files(spec: Mapping[str, Any], where: str = "teacher") -> None:
    """The files an external teacher is read from exist (a run must have its `which` weights)."""
    key = source_key(spec)
    if key == "from_run":
        run_dir = Path(spec["from_run"])
        which = spec.get("which", "best")
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{where}.from_run: no run found at {run_dir} (missing config.yaml); train it "
                                    f"first (ktransfer run CONFIG --run-dir {run_dir}) or correct the path")
        if not _run_weights(spec).is_file():
            raise FileNotFoundError(f"{where}.from_run: the run at {run_dir} has no '{which}' weights (missing "
                                    f"{which}/model.safetensors): finish it with `ktransfer resume {run_dir}`")
    elif key is not None and not Path(spec[key]).is_file():
        raise FileNotFoundError(f"{where}.{key}: file not found: {spec[key]}")


def digest(spec: Mapping[str, Any]) -> list[str]:
    """SHA-256 of every file the teacher is read from: a file edited in place is a new teacher."""
    return [path_digest(p) for p in source_files(spec)]


def build_from_run(spec: Mapping[str, Any], info: Mapping[str, Any], where: str) -> nn.Module:
    """The student network of the run, with its `which` weights, sized for the chain's data."""
    check_teacher_files(spec, where)
    return build_model({k: v for k, v in spec.items() if k in ("from_run", "which")}, dict(info), where)


# ------------------------------------------------------------------------------------- size
def _estimator_nodes(est: Any) -> int | None:
    """Fitted size of common estimators: tree nodes, or coefficients of a linear model."""
    if hasattr(est, "steps"):  # a Pipeline: its final estimator
        return _estimator_nodes(est.steps[-1][1])
    if hasattr(est, "tree_"):
        return int(est.tree_.node_count)
    members = getattr(est, "estimators_", None)
    if members is not None:
        trees = np.asarray(members, dtype=object).ravel()
        if len(trees) and all(hasattr(t, "tree_") for t in trees):
            return int(sum(t.tree_.node_count for t in trees))
    if hasattr(est, "coef_"):
        return int(np.size(est.coef_) + np.size(getattr(est, "intercept_", 0)))
    return None


@functools.lru_cache(maxsize=16)
def _measured(key: str, path: str, which: str, stamp: tuple[int, int], features: int, classes: int) -> int:
    info = {"num_features": features, "num_classes": classes}
    if key == "estimator":
        import joblib

        size = _estimator_nodes(joblib.load(path))
        if size is None:
            raise ConfigError(f"teacher.estimator: the size of the estimator in {path} cannot be measured (trees, "
                              "forests, boosted trees and linear models can); state it with teacher.complexity")
        return size
    return count_parameters(build_from_run({"from_run": path, "which": which}, info, "teacher"))


def teacher_complexity(spec: Mapping[str, Any], info: Mapping[str, Any]) -> int:
    """A teacher's size measured from its files: parameters of a run's network, nodes of fitted trees, or
    `complexity` as given. (A `weights` teacher is sized by its model spec: `ktransfer.hops.models.complexity`.)"""
    key = source_key(spec)
    if key not in ("from_run", "estimator"):
        raise ValueError(f"not a teacher sized from its files (from_run or estimator): {dict(spec)}")
    if key == "estimator" and spec.get("complexity") is not None:
        return int(spec["complexity"])
    check_teacher_files(spec)
    path = str(spec[key])
    stat = (Path(path) / "config.yaml" if key == "from_run" else Path(path)).stat()
    return _measured(str(key), path, str(spec.get("which", "best")), (stat.st_mtime_ns, stat.st_size),
                     int(info["num_features"]), int(info["num_classes"]))
