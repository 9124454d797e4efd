"""Runs that go wrong say so: NaN validation metrics stop the run; divergence and chance level warn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ktransfer.cli import main
from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import LabelsTerm
from ktransfer.train import (
    Distiller,
    NonFiniteLossError,
    NonFiniteMetricError,
    TrainConfig,
    make_evaluator,
    run_health_warnings,
)


def blobs(n: int = 96) -> TensorDictDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    return TensorDictDataset(inputs=torch.randn(3, 6, generator=g)[labels] * 3 + torch.randn(n, 6, generator=g),
                             labels=labels)


def test_nan_in_validation_data_stops_the_run_with_the_step(tmp_path: Path) -> None:
    val = blobs(32)
    val.tensors["inputs"][5, 2] = float("nan")  # found: silent, and a "best" was still chosen
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], train_data=blobs(), evaluate=make_evaluator(val),
                  config=TrainConfig(max_steps=6, batch_size=16, eval_every=3), run_dir=tmp_path / "r", progress=False)
    with pytest.raises(NonFiniteMetricError, match=r"validation metrics are not finite at step 3 \(loss=nan"):
        d.fit()
    assert not (tmp_path / "r" / "best").exists()


def test_diverging_run_finishes_with_a_warning_in_log_and_summary(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A diverging run (AdamW at lr 1e6 ends at 10-17 % accuracy) finishes with a warning in the log and summary."""
    cfg = {"data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [32]}, "knowledge": [{"type": "labels"}],
           "optim": {"name": "adamw", "lr": 1.0e6}, "train": {"max_steps": 60, "batch_size": 64, "eval_every": 30}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["warnings"] and "training diverged" in summary["warnings"][0]
    assert "warning: the training loss ended at" in err
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "warning" and "diverged" in r["message"] for r in records)


def test_a_healthy_run_has_no_warnings(tmp_path: Path) -> None:
    cfg = {"data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [32]}, "knowledge": [{"type": "labels"}],
           "optim": {"lr": 0.01}, "train": {"max_steps": 60, "batch_size": 64, "eval_every": 30}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] == []


def test_health_rules() -> None:
    assert run_health_warnings(1.0, 1.2, {}, None) == []
    assert "diverged" in run_health_warnings(1.0, 1.6, {}, None)[0]
    assert run_health_warnings(0.01, 0.05, {}, None) == []  # x5, but by less than 0.1: noise near zero
    assert run_health_warnings(None, 100.0, {}, None) == []  # too short to judge
    assert "chance level" in run_health_warnings(None, None, {"accuracy": 0.105}, 0.1)[0]
    assert run_health_warnings(None, None, {"accuracy": 0.5}, 0.1) == []


def test_nan_hint_mentions_mixed_precision_only_when_it_is_used() -> None:
    plain = str(NonFiniteLossError(4, float("nan"), {"labels": float("nan")}, "no"))
    assert "mixed_precision" not in plain and "Lower the learning rate" in plain
    assert "mixed_precision='no' to see whether bf16 overflows" in str(
        NonFiniteLossError(4, float("nan"), {}, "bf16"))
