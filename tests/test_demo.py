"""The demo: its settings are the ones chosen on validation, and its statistics are right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ktransfer import demo

SWEEP = Path(__file__).parent.parent / "benchmarks" / "digits_kd" / "results" / "sweep.json"


def test_demo_uses_the_settings_chosen_on_validation() -> None:
    if not SWEEP.exists():
        pytest.skip(f"{SWEEP} not present (run benchmarks/digits_kd/sweep.py)")
    chosen = json.loads(SWEEP.read_text())["chosen"]
    assert demo.TEACHER == chosen["teacher_spec"]["student"]
    assert demo.TEACHER_OPTIM["lr"] == chosen["teacher_spec"]["optim"]["lr"]
    assert demo.TEACHER_STEPS == chosen["teacher_spec"]["train"]["max_steps"]
    assert demo.OPTIM["lr"] == chosen["student_lr"] and demo.TRAIN["max_steps"] == chosen["student_steps"]
    response, labels = demo.KD_TERMS
    assert response["temperature"] == chosen["temperature"] and response["weight"] == chosen["weight"]
    assert labels["weight"] == pytest.approx(1 - chosen["weight"])


def test_mean_ci_matches_the_t_interval() -> None:
    mean, half = demo.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 * 1.0 / 3**0.5)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert demo.mean_ci([0.5]) == (0.5, None)
    mean, half = demo.mean_ci([float("nan"), 1.0, 2.0])  # a failed run: nan propagates, no interval
    assert math.isnan(mean) and half is None


def test_summary_pairs_by_seed() -> None:
    rows = []
    for seed, (alone, kd) in enumerate([(0.90, 0.92), (0.91, 0.94)]):
        for role, acc in (("teacher", 0.99), ("student alone", alone), ("distilled student", kd)):
            rows.append({"seed": seed, "role": role, "test_accuracy": acc, "val_accuracy": acc, "parameters": 10,
                         "train_wall_time_s": 1.0})
    s = demo.summarize(rows)
    assert s["distilled minus alone"]["per_seed"] == pytest.approx([0.02, 0.03])
    assert s["student alone"]["test_accuracy_mean"] == pytest.approx(0.905)
