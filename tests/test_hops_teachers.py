"""Chains whose teacher is one the user already has: a run directory, a joblib estimator, safetensors weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ktransfer.hops.chain import ChainRunner, load_chain_data, run_chain
from ktransfer.hops.config import ChainConfig
from ktransfer.registry import ConfigError

FAST = {"max_steps": 30, "batch_size": 64, "lr": 0.01}


def _write_csv(path: Path, n: int = 240) -> None:
    """Three classes named by words, three numeric columns; the class is the largest column."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    names = np.array(["alpha", "beta", "gamma"])[x.argmax(1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["a,b,c,kind"] + [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{k}" for r, k in zip(x, names)]
    path.write_text("\n".join(rows) + "\n")


def _write_chain(path: Path, body: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _raw_columns(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().strip().splitlines()[1:]
    x = np.array([[float(v) for v in line.split(",")[:3]] for line in lines], dtype=np.float32)
    return x, np.array([line.split(",")[3] for line in lines])


def test_teacher_from_a_joblib_estimator_with_paths_relative_to_the_chain_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier

    project = tmp_path / "project"
    _write_csv(project / "data" / "points.csv")
    x_raw, labels = _raw_columns(project / "data" / "points.csv")
    estimator = GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0).fit(x_raw, labels)
    (project / "models").mkdir()
    joblib.dump(estimator, project / "models" / "gbdt.joblib")
    body = {"data": {"name": "csv", "path": "../data/points.csv", "label": "kind", "standardize": False},
            "teacher": {"estimator": "../models/gbdt.joblib"}, "student": {"kind": "tree", "max_depth": 1},
            "method": {"name": "kd"}, "confidence_split": "oof", "folds": 2, "train": FAST}
    chain_file = _write_chain(project / "chains" / "chain.yaml", body)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the paths are the chain file's, not the current directory's

    cfg = ChainConfig.from_yaml(chain_file)
    assert cfg.data["path"] == str(project / "data" / "points.csv")
    assert cfg.teacher["estimator"] == str(project / "models" / "gbdt.joblib")
    report = run_chain(cfg, "run")
    teacher = report.chain[0]
    assert teacher.label == "file:gbdt.joblib" and teacher.method == "loaded"
    assert teacher.complexity == sum(t.tree_.node_count for t in estimator.estimators_.ravel())
    # the teacher's scores are the estimator's own predictions on the chain's split, by label name
    data = load_chain_data(cfg)
    classes = np.array(data.info["classes"])
    assert list(classes) == ["alpha", "beta", "gamma"]
    assert teacher.val == float(np.mean(estimator.predict(data.x_val) == classes[data.y_val]))
    assert teacher.test == float(np.mean(estimator.predict(data.x_test) == classes[data.y_test]))
    assert teacher.val > 0.8 and report.chain[-1].val > 0.4
    md = (elsewhere / "run" / "report.md").read_text()
    assert f"- teacher file:gbdt.joblib: loaded from {project / 'models' / 'gbdt.joblib'} (sha256 " in md
    assert "trained on the chain's training split: yes" in md
    saved = yaml.safe_load((elsewhere / "run" / "config.yaml").read_text())
    assert saved["teacher"]["estimator"] == str(project / "models" / "gbdt.joblib")  # stored absolute
    assert ChainConfig.from_yaml(elsewhere / "run" / "config.yaml").teacher == cfg.teacher

    # the teacher file's content keys the chain's hops: a file replaced in place is a new teacher
    key = ChainRunner(cfg, data).base_key
    joblib.dump(GradientBoostingClassifier(n_estimators=4, random_state=0).fit(x_raw, labels),
                project / "models" / "gbdt.joblib")
    assert ChainRunner(cfg, data).base_key != key


def test_a_loaded_teacher_gives_confidences_only_when_declared_unseen(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    _write_csv(tmp_path / "points.csv")
    _write_csv(tmp_path / "other.csv", n=120)  # the teacher learns from other data than the chain's
    x_other, y_other = _raw_columns(tmp_path / "other.csv")
    joblib.dump(LogisticRegression().fit(x_other, y_other), tmp_path / "logreg.joblib")
    base = {"data": {"name": "csv", "path": str(tmp_path / "points.csv"), "label": "kind", "standardize": False},
            "teacher": {"estimator": str(tmp_path / "logreg.joblib"), "complexity": 500},
            "student": {"kind": "tree", "max_depth": 1}, "method": {"name": "confidence"}, "folds": 2,
            "train": FAST}
    with pytest.raises(ConfigError, match=r"teacher.saw_train_split: Confidence reweights"):
        ChainConfig.from_dict(base)
    unseen = {**base, "teacher": {**base["teacher"], "saw_train_split": False}}
    with pytest.raises(ConfigError, match="confidence_split: Confidence with a loaded teacher needs holdout"):
        ChainConfig.from_dict({**unseen, "confidence_split": "oof"})
    report = run_chain(ChainConfig.from_dict(unseen))
    assert report.chain[0].complexity == 500  # as stated: a linear model's size is its own business here
    assert report.chain[-1].details["confidences"] == "holdout" and report.chain[-1].details["kept"] > 0
    # an estimator fitted on other labels than the dataset's: the file and both sets of classes named
    joblib.dump(LogisticRegression().fit(x_other, np.arange(len(y_other)) % 4), tmp_path / "four.joblib")
    four = {**base, "teacher": {"estimator": str(tmp_path / "four.joblib")}, "method": {"name": "kd"}}
    with pytest.raises(ConfigError, match=r"teacher.estimator \(.*four.joblib\): the estimator's classes \[0, 1, 2, 3\] "
                                          r"are not the dataset's classes \(the labels alpha, beta, gamma\)"):
        run_chain(ChainConfig.from_dict(four))
    with pytest.raises(ConfigError, match=r"teacher.weights: .*kind: mlp or cnn"):
        ChainConfig.from_dict({**base, "teacher": {"kind": "tree", "weights": "t.safetensors"}})
    with pytest.raises(ConfigError, match=r"teacher.estimator: .* not a joblib file"):
        ChainConfig.from_dict({**base, "teacher": {"estimator": "t.safetensors"}})
    with pytest.raises(ConfigError, match=r"teacher.hidden: unknown key.*valid keys with 'estimator'"):
        ChainConfig.from_dict({**base, "teacher": {"estimator": "t.joblib", "hidden": [3]}})
    with pytest.raises(ConfigError, match="teacher: give one of from_run, estimator, weights, not from_run and"):
        ChainConfig.from_dict({**base, "teacher": {"from_run": "runs/t", "estimator": "t.joblib"}})
    with pytest.raises(ConfigError, match=r"teacher.saw_train_split: only for a teacher loaded with"):
        ChainConfig.from_dict({**base, "teacher": {"kind": "mlp", "saw_train_split": False}})
    with pytest.raises(ConfigError, match=r"teacher.which: invalid value 'last'; valid choices: best, final"):
        ChainConfig.from_dict({**base, "teacher": {"from_run": "runs/t", "which": "last"}})


def _trained_mlp(x: np.ndarray, y: np.ndarray, hidden: int, classes: int) -> torch.nn.Module:
    from ktransfer.models import MLP

    torch.manual_seed(0)
    module = MLP(x.shape[1], classes, hidden=(hidden,))
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(xs), ys).backward()
        opt.step()
    return module.eval()


def test_teacher_from_safetensors_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.checkpoint import save_weights

    body: dict[str, Any] = {"data": {"name": "wine"}, "teacher": {"kind": "mlp", "hidden": [16],
                                                                  "weights": "weights/teacher.safetensors"},
                            "student": {"kind": "tree", "max_depth": 1}, "method": {"name": "kd"},
                            "confidence_split": "oof", "folds": 2, "train": FAST}
    chain_file = _write_chain(tmp_path / "chain.yaml", body)
    cfg = ChainConfig.from_yaml(chain_file)
    data = load_chain_data(cfg)
    module = _trained_mlp(data.x, data.y, 16, data.num_classes)
    (tmp_path / "weights").mkdir()
    save_weights(module, tmp_path / "weights" / "teacher.safetensors")
    monkeypatch.chdir(tmp_path / "weights")
    report = run_chain(ChainConfig.from_yaml(chain_file))
    teacher = report.chain[0]
    assert teacher.label == "mlp[16]@teacher.safetensors"
    assert teacher.complexity == sum(p.numel() for p in module.parameters())
    with torch.no_grad():  # the reference: the module itself, in float64
        logits = module.double()(torch.from_numpy(data.x_val).double())
    assert teacher.val == float((logits.argmax(1).numpy() == data.y_val).mean()) and teacher.val > 0.8
    # weights of another architecture: the key, the file and what does not fit
    wrong = {**body, "teacher": {**body["teacher"], "hidden": [8]}}
    with pytest.raises(ConfigError, match=r"teacher.weights: .*teacher.safetensors does not fit the model"):
        run_chain(ChainConfig.from_yaml(_write_chain(tmp_path / "wrong.yaml", wrong)))


def test_teacher_from_a_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.config import RunConfig
    from ktransfer.runner import evaluate_run, run

    run_cfg = RunConfig.from_dict({"data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [32]},
                                   "train": {"max_steps": 60, "batch_size": 64, "eval_every": 30, "seed": 0}})
    run(run_cfg, tmp_path / "runs" / "teacher", progress=False)
    body = {"data": {"name": "digits"}, "teacher": {"from_run": "../runs/teacher", "which": "best"},
            "student": {"kind": "mlp", "hidden": [4]}, "method": {"name": "kd"}, "confidence_split": "oof",
            "folds": 2, "train": FAST}
    chain_file = _write_chain(tmp_path / "chains" / "from_run.yaml", body)
    monkeypatch.chdir(tmp_path)
    report = run_chain(ChainConfig.from_yaml(chain_file), tmp_path / "chain-run")
    teacher = report.chain[0]
    assert teacher.label == "run:teacher(best)"
    assert teacher.complexity == (64 * 32 + 32) + (32 * 10 + 10)
    # the same weights on the same split score what `ktransfer eval` reports for the run
    assert teacher.val == pytest.approx(evaluate_run(tmp_path / "runs" / "teacher", "val")["accuracy"], abs=1e-9)
    assert report.chain[-1].val > 0.3
    missing = {**body, "teacher": {"from_run": "../runs/nothing"}}
    with pytest.raises(FileNotFoundError, match=r"teacher.from_run: no run found at .*runs/nothing"):
        run_chain(ChainConfig.from_yaml(_write_chain(tmp_path / "chains" / "missing.yaml", missing)))
    assert not os.path.exists(tmp_path / "runs" / "nothing")
