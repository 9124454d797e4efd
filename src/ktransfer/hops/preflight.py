"""Checks of a chain config that need no training: `ktransfer check` runs them, `ktransfer hops` first.

A chain that would die on a missing data file, a label column that is not there, a teacher
file that does not exist or does not fit the data, or models that do not decrease in
complexity dies here, before anything trains, with the key and the file named.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ktransfer.data import DATASETS
from ktransfer.hops import external
from ktransfer.hops.chain_data import load_chain_data
from ktransfer.hops.config import ChainConfig
from ktransfer.hops.ladder import candidates, check_chain
from ktransfer.hops.models import complexity, spec_label
from ktransfer.registry import ConfigError


def _csv_columns(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def check_columns(data: dict[str, Any]) -> None:
    """A CSV dataset's `label` and `features` name columns of its header (the columns are listed if not)."""
    if data.get("name") != "csv" or not data.get("path"):
        return
    file = Path(data["path"])
    columns = _csv_columns(file)
    listed = ", ".join(columns) or "(none: the file is empty)"
    label = data.get("label")
    if label not in columns:
        raise ConfigError(f"data.label: column '{label}' not found in {file}; columns are: {listed}")
    for i, name in enumerate(data.get("features") or []):
        if name not in columns:
            raise ConfigError(f"data.features[{i}]: column '{name}' not found in {file}; columns are: {listed}")


def check_sources(cfg: ChainConfig) -> None:
    """The files a chain reads exist (dataset files, the teacher's), and a CSV has the columns named."""
    data = dict(cfg.data)
    for key in DATASETS.path_keys(str(data.get("name"))):
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).exists():
            raise FileNotFoundError(f"data.{key}: file not found: {data[key]}")
    check_columns(data)
    external.check_teacher_files(cfg.teacher, "teacher")


def preflight(cfg: ChainConfig) -> list[str]:
    """Every check of a chain that needs no training; one line per check passed.

    Sources exist, the data loads, a loaded teacher runs on it and predicts its classes, and the
    models of a fixed chain decrease in complexity (a searched one has candidates to try).
    """
    check_sources(cfg)
    data = load_chain_data(cfg)
    info = data.info
    teacher = dict(cfg.teacher)
    part = "its probes" if external.is_external(teacher) else "the teacher"
    lines = [f"data: '{info.get('name')}', {len(data.y)} training rows ({len(data.teacher_idx)} for {part}, "
             f"{len(data.student_idx)} for the students), {len(data.y_val)} validation, {len(data.y_test)} test; "
             f"{info['num_features']} features, {info['num_classes']} classes"]
    if external.is_external(teacher):
        external.load_teacher(teacher, info, data.x_val[:4], "teacher")
        lines.append(f"teacher: {spec_label(teacher)} loaded and ran on {min(4, len(data.y_val))} validation rows, "
                     f"{info['num_classes']} classes; complexity {complexity(teacher, info)}")
    if cfg.plan.strategy == "fixed":
        specs = [teacher, *cfg.plan.intermediates, cfg.student]
        sizes = check_chain(specs, info)
        lines.append("chain: " + " > ".join(f"{spec_label(s)} ({n})" for s, n in zip(specs, sizes)))
    else:
        check_chain([teacher, cfg.student], info)
        pool = candidates(external.architecture(teacher), cfg.student, cfg.plan.ladder, info, cfg.plan.construct)
        lines.append(f"planner: {cfg.plan.strategy} over {len(pool)} candidate intermediates between "
                     f"{spec_label(teacher)} and {spec_label(cfg.student)}"
                     + (f": {', '.join(spec_label(s) for s in pool)}" if pool else ""))
    return lines
