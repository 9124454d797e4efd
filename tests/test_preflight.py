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


def error_line(err: str) -> str:
    """The CLI's one error line in stderr (libraries may log warnings around it)."""
    lines = [line for line in err.splitlines() if line.startswith("ktransfer ") and ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def refused(tmp_path: Path, config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """Assert that `check` and `run` both exit 2 with the same message and that nothing trained; return it."""
    cfg = write(tmp_path / "c.yaml", config)
    assert main(["check", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    message = error_line(captured.err)
    run_dir = tmp_path / "r"
    assert main(["run", str(cfg), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert error_line(capsys.readouterr().err) == message.replace("ktransfer check", "ktransfer run")
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


# ---------------------------------------------------------------------------------- sources, data and task, models
def test_a_teacher_run_that_does_not_exist_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "teacher": {"from_run": str(tmp_path / "no_such_run")},
              "knowledge": [{"type": "response", "weight": 0.5}, {"type": "labels", "weight": 0.5}]}
    err = refused(tmp_path, config, capsys)
    assert f"teacher.from_run: no run found at {tmp_path / 'no_such_run'} (missing config.yaml)" in err


def test_a_missing_model_directory_is_named_by_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "teacher": {"builder": "hf_pretrained", "path": "models/teacher"}, "knowledge": [{"type": "response"}]}
    err = refused(tmp_path, config, capsys)  # the config file is in tmp_path: the path is relative to it
    assert f"teacher.path: not found: {tmp_path / 'models' / 'teacher'}" in err


def test_a_teacher_run_without_its_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_cfg = write(tmp_path / "t.yaml", {**BASE, "train": {**BASE["train"], "checkpoint_every": 5}})
    assert main(["run", str(teacher_cfg), "--run-dir", str(tmp_path / "t"), "--no-progress", "--stop-after", "5"]) == 0
    capsys.readouterr()
    config = {**BASE, "teacher": {"from_run": str(tmp_path / "t"), "which": "final"},
              "knowledge": [{"type": "response", "weight": 0.5}, {"type": "labels", "weight": 0.5}]}
    err = refused(tmp_path, config, capsys)
    assert "teacher.from_run: the run at" in err and "has no 'final' weights yet" in err
    assert f"ktransfer resume {tmp_path / 't'}" in err


def test_a_teacher_run_trained_on_other_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iris = write(tmp_path / "iris.yaml", {**BASE, "data": {"name": "iris"}, "train": {**BASE["train"], "max_steps": 5}})
    assert main(["run", str(iris), "--run-dir", str(tmp_path / "iris"), "--no-progress"]) == 0
    capsys.readouterr()
    config = {**BASE, "teacher": {"from_run": str(tmp_path / "iris")}, "knowledge": [{"type": "response"}]}
    err = refused(tmp_path, config, capsys)
    assert (f"teacher.from_run: the weights of the run at {tmp_path / 'iris'} (trained on dataset 'iris') do not fit "
            "a model built for dataset 'digits': size mismatch for 0.weight") in err


def test_a_weights_file_for_another_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.checkpoint import save_weights
    from ktransfer.models import MLP

    save_weights(MLP(64, 10, hidden=(32,)), tmp_path / "w.safetensors")
    err = refused(tmp_path, {**BASE, "student": {"builder": "mlp", "hidden": [16], "weights": "w.safetensors"}}, capsys)
    assert f"student.weights: {tmp_path / 'w.safetensors'} does not fit the model this section builds: size mismatch" in err


GPT2 = {"builder": "hf_config", "model_type": "gpt2",
        "config": {"n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 30, "n_positions": 80, "bos_token_id": 0,
                   "eos_token_id": 0}}


def test_a_task_that_does_not_fit_the_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "task": "causal_lm", "teacher": GPT2, "student": GPT2,
              "knowledge": [{"type": "response", "weight": 0.5}, {"type": "labels", "weight": 0.5}]}
    err = refused(tmp_path, config, capsys)
    assert ("task: 'causal_lm' trains on tokens data, but dataset 'digits' holds image data (batch keys: inputs); "
            "tasks for image data: classification") in err


def test_a_model_that_cannot_read_the_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, {**BASE, "student": GPT2}, capsys)
    assert ("student: does not run on dataset 'digits' (image data; batch keys: inputs) for task 'classification': "
            "one forward pass on 2 examples failed with") in err


def test_labels_beyond_the_students_classes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, {**BASE, "student": {"builder": "mlp", "hidden": [16], "num_classes": 5}}, capsys)
    assert ("student: predicts 5 classes, but dataset 'digits' (image data; batch keys: inputs) has 10 (labels 0 to 9); "
            "set student.num_classes: 10, or leave it out to take the dataset's") in err


def test_teacher_and_student_with_other_class_counts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "teacher": {"builder": "mlp", "hidden": [16], "num_classes": 12},
              "knowledge": [{"type": "response", "weight": 0.5}, {"type": "labels", "weight": 0.5}]}
    err = refused(tmp_path, config, capsys)
    assert ("teacher predicts 12 classes and the student 10: knowledge[0] (response) compares their outputs, so both "
            "must predict the same classes") in err
    assert "tokenizer" not in err and "vocabulary" not in err


def test_check_reports_what_it_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "teacher": {"builder": "cnn"}, "knowledge": [{"type": "response"}]}
    assert main(["check", str(write(tmp_path / "c.yaml", config))]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["teacher"] == {"builder": "cnn"}
    assert "# ok: data: dataset 'digits' (image data; batch keys: inputs) fits task 'classification'" in out
    assert "# ok: teacher: " in out and "10 classes" in out


# ---------------------------------------------------------------------------------- the Python engine, no config
def test_the_engine_speaks_of_classes_for_classifiers() -> None:
    import torch
    from torch import nn

    from ktransfer.data import TensorDictDataset
    from ktransfer.knowledge import LabelsTerm, ResponseTerm
    from ktransfer.train import Distiller, TrainConfig, make_evaluator

    data = TensorDictDataset(inputs=torch.randn(16, 4), labels=torch.arange(16) % 6)
    config = TrainConfig(max_steps=1, batch_size=16)
    with pytest.raises(ValueError, match=r"labels must be class indices from 0 to 4: the student predicts 5 classes, "
                                         r"but the data has labels 5"):
        Distiller(nn.Linear(4, 5), None, [LabelsTerm()], train_data=data, config=config, progress=False).fit()
    with pytest.raises(ValueError, match=r"labels must be class indices from 0 to 4: the model predicts 5 classes"):
        make_evaluator(data)(nn.Linear(4, 5))
    with pytest.raises(ValueError, match=r"the teacher predicts 7 classes and the student 6; a classifier's teacher and "
                                         r"student must predict the same classes") as caught:
        Distiller(nn.Linear(4, 6), nn.Linear(4, 7), [ResponseTerm()], train_data=data, config=config,
                  progress=False).fit()
    assert "tokenizer" not in str(caught.value)


def test_preflight_from_python_returns_the_data_and_leaves_the_rng_alone() -> None:
    import torch

    from ktransfer import RunConfig, preflight

    cfg = RunConfig.from_dict({**BASE, "teacher": {"builder": "cnn"}, "knowledge": [{"type": "response"}]})
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    report = preflight(cfg)
    assert torch.equal(torch.rand(3), expected)
    assert report.data.info["num_classes"] == 10 and len(report.data.train) > 0
    assert [line.split(":")[0] for line in report.checked] == ["data", "student", "teacher"]


def test_a_knowledge_term_naming_a_missing_layer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = {"builder": "mlp", "hidden": [32, 32]}
    feature = {"type": "feature", "student_layers": ["0"], "teacher_layers": ["net.9"], "weight": 0.5}
    message = refused(tmp_path, {**BASE, "teacher": teacher, "knowledge": [feature, {"type": "labels"}]}, capsys)
    assert "knowledge[0] (feature): teacher layer 'net.9' does not exist; MLP has modules: 0, 1, 2, 3, 4" in message
    attention = {"type": "attention", "path": "nope", "weight": 0.1}
    message = refused(tmp_path, {**BASE, "teacher": teacher, "knowledge": [{"type": "labels"}, attention]}, capsys)
    assert "knowledge[1] (attention): the student does not expose hidden states" in message


def test_check_names_the_layers_it_captures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feature = {"type": "feature", "student_layers": ["0"], "teacher_layers": ["2"], "weight": 0.5}
    cfg = write(tmp_path / "c.yaml", {**BASE, "teacher": {"builder": "mlp", "hidden": [32, 32]},
                                      "knowledge": [feature, {"type": "labels"}]})
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "# ok: knowledge: the student's 1 captured module(s) exist and run (0)" in out
    assert "# ok: knowledge: the teacher's 1 captured module(s) exist and run (2)" in out


def test_settings_that_cannot_take_effect_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**BASE, "schedule": {"name": "constant", "warmup_steps": 30},
              "train": {"max_steps": 20, "batch_size": 32, "eval_every": 50, "patience": 2}}
    cfg = write(tmp_path / "c.yaml", config)
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "# warning: schedule.warmup_steps=30 >= train.max_steps=20" in out
    assert "# warning: schedule.warmup_steps=30 has no effect with schedule.name=constant" in out
    assert "# warning: train.eval_every=50 > train.max_steps=20: the student is evaluated only once" in out
    assert "train.patience cannot stop early" in out
    assert yaml.safe_load(out)["train"]["max_steps"] == 20  # the output stays loadable YAML
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "ktransfer: warning: train.eval_every=50 > train.max_steps=20" in capsys.readouterr().err
    write(tmp_path / "ok.yaml", BASE)
    assert main(["check", str(tmp_path / "ok.yaml")]) == 0
    assert "# warning" not in capsys.readouterr().out
