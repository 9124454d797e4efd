"""What can be checked before training is checked before training: `ktransfer check` and the
start of `ktransfer run` exit with code 2 and a message naming the problem, and nothing trains."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktransfer.cli import main

BASE: dict[str, Any] = {
    "data": {"name": "digits"},
    "student": {"builder": "mlp", "hidden": [16]},
    "knowledge": [{"type": "labels"}],
    "train": {"max_steps": 20, "batch_size": 32, "eval_every": 5},
}


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def refused(tmp_path: Path, config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """Assert that `check` and `run` both exit 2 with the same message and that nothing trained; return it."""
    cfg = write(tmp_path / "c.yaml", config)
    assert main(["check", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    message = captured.err
    run_dir = tmp_path / "r"
    assert main(["run", str(cfg), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert capsys.readouterr().err == message.replace("ktransfer check", "ktransfer run")
    assert not run_dir.exists()  # refused before the run directory was touched
    return message


# ---------------------------------------------------------------------------------- train.metric and train.mode
def test_an_unknown_metric_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, {**BASE, "train": {**BASE["train"], "metric": "acuracy"}}, capsys)
    assert ("train.metric: unknown metric 'acuracy' (did you mean 'accuracy'?); the evaluation of task "
            "'classification' reports: accuracy, loss, perplexity") in err


@pytest.mark.parametrize(("metric", "mode", "pick"), [("loss", None, min), ("accuracy", None, max), ("loss", "max", max)])
def test_the_best_checkpoint_follows_the_metric_direction(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          metric: str, mode: str | None, pick: Any) -> None:
    train = {**BASE["train"], "max_steps": 40, "metric": metric, **({"mode": mode} if mode else {})}
    cfg = write(tmp_path / "c.yaml", {**BASE, "optim": {"lr": 0.05}, "train": train})
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    val = [r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]
    values = [r[metric] for r in val]
    assert len(set(values)) > 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best_val"][metric] == pick(values)
    assert summary["best_step"] == val[values.index(pick(values))]["step"]
    # the config records what was asked for: null means "from the metric"
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["mode"] == mode


def test_mode_resolution() -> None:
    from ktransfer.train import TrainConfig

    assert TrainConfig().resolved_mode == "max"
    assert TrainConfig(metric="loss").resolved_mode == "min"
    assert TrainConfig(metric="perplexity").resolved_mode == "min"
    assert TrainConfig(metric="val_loss").resolved_mode == "min"
    assert TrainConfig(metric="bleu").resolved_mode == "max"
    assert TrainConfig(metric="loss", mode="max").resolved_mode == "max"


# ---------------------------------------------------------------------------------- relative paths
def test_relative_paths_follow_the_config_file_and_resume_works_from_anywhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ktransfer.checkpoint import save_weights
    from ktransfer.models import MLP

    project = tmp_path / "project"
    teacher_cfg = write(project / "configs" / "teacher.yaml", {**BASE, "train": {**BASE["train"], "max_steps": 10}})
    assert main(["run", str(teacher_cfg), "--run-dir", str(project / "runs" / "teacher"), "--no-progress"]) == 0
    torch.manual_seed(0)
    save_weights(MLP(64, 10, hidden=(16,)), project / "init" / "student.safetensors")
    student = {**BASE, "teacher": {"from_run": "../runs/teacher"},
               "student": {"builder": "mlp", "hidden": [16], "weights": "../init/student.safetensors"},
               "knowledge": [{"type": "response", "weight": 0.5}, {"type": "labels", "weight": 0.5}],
               "train": {**BASE["train"], "checkpoint_every": 5}}
    student_cfg = write(project / "configs" / "student.yaml", student)
    capsys.readouterr()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "../project/configs/student.yaml", "--run-dir", "out", "--no-progress", "--stop-after", "12"]) == 0
    capsys.readouterr()
    stored = yaml.safe_load((elsewhere / "out" / "config.yaml").read_text())
    assert stored["teacher"]["from_run"] == str(project / "runs" / "teacher")
    assert stored["student"]["weights"] == str(project / "init" / "student.safetensors")

    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert main(["resume", str(elsewhere / "out"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20

    # a path given on the command line is relative to the current directory, not to the file
    monkeypatch.chdir(project)
    assert main(["check", str(student_cfg), "--set", "teacher.from_run=runs/teacher"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["teacher"]["from_run"] == str(project / "runs" / "teacher")


def test_paths_of_builders_and_python_configs_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.config import RunConfig

    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.from_dict({**BASE, "teacher": {"builder": "hf_pretrained", "path": "models/t"},
                               "knowledge": [{"type": "response"}]})
    assert cfg.teacher == {"builder": "hf_pretrained", "path": str(tmp_path / "models" / "t")}
    write(tmp_path / "sub" / "c.yaml", {**BASE, "teacher": {"builder": "hf_pretrained", "path": "~/m"},
                                        "knowledge": [{"type": "response"}]})
    assert RunConfig.from_yaml("sub/c.yaml").teacher["path"] == os.path.expanduser("~/m")
