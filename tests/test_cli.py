"""End-to-end tests of the `ktransfer` command line on tiny runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ktransfer.cli import main
from test_causal import corpus  # noqa: F401  (a fixture: a word-level text corpus and its tokenizer)

TEACHER = {
    "data": {"name": "digits"},
    "student": {"builder": "mlp", "hidden": [64]},
    "knowledge": [{"type": "labels"}],
    "train": {"max_steps": 40, "batch_size": 64, "eval_every": 20, "checkpoint_every": 10},
}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_eval_check_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "teacher.yaml", TEACHER)
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "t"), "--no-progress", "--set", "train.max_steps=20"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["step"] == 20
    assert (tmp_path / "t" / "curves.png").stat().st_size > 1000
    assert yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())["train"]["max_steps"] == 20

    student = {**TEACHER, "teacher": {"from_run": str(tmp_path / "t")}, "student": {"builder": "mlp", "hidden": [8]},
               "knowledge": [{"type": "response", "divergence": "backward_kl", "temperature": 2.0, "weight": 0.7},
                             {"type": "labels", "weight": 0.3}]}
    cfg = write(tmp_path / "student.yaml", student)
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "s"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "s"), "--split", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["size"] == 360 and 0 <= report["accuracy"] <= 1
    assert 0 <= report["macro_f1"] <= 1 and -1 <= report["mcc"] <= 1  # classification: every prediction scored
    assert (tmp_path / "s" / "eval-test.json").exists()

    assert main(["check", str(cfg), "--set", "knowledge.0.divergence=jsd", "--set", "knowledge.0.params={beta: 0.2}"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["knowledge"][0] == {"type": "response", "divergence": "jsd", "temperature": 2.0, "weight": 0.7,
                                        "params": {"beta": 0.2}}


def test_stop_then_resume_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", TEACHER)
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "full"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress", "--stop-after", "15"]) == 0
    assert "continue with: ktransfer resume" in capsys.readouterr().out
    assert main(["resume", str(tmp_path / "r"), "--no-progress"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert resumed["step"] == 40 and resumed["final_val"] == full["final_val"]


def test_a_second_run_into_the_same_directory_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", TEACHER)
    args = ["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--set", "train.max_steps=30"]) == 0
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    # overwrite clears the old outputs: no checkpoint of the first run (step 30) survives
    assert main([*args, "--overwrite", "--set", "train.max_steps=20"]) == 0
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert ckpts == ["step-00000010", "step-00000020"]


def test_config_errors_exit_2_with_the_valid_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", TEACHER)
    assert main(["run", str(cfg), "--set", "train.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "train.batchsize: unknown key (did you mean 'batch_size'?)" in err and "valid keys:" in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_nan_loss_exits_3_with_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", {**TEACHER, "optim": {"lr": 1e30, "max_grad_norm": None, "name": "sgd"}})
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 3
    assert "at step" in capsys.readouterr().err


def test_modules_lists_capturable_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", {**TEACHER, "student": {"builder": "cnn"}})
    assert main(["modules", str(cfg), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "features.0\tConv2d" in out and "head\tLinear" in out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_outputs_writes_predictions_beside_the_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", {**TEACHER, "train": {**TEACHER["train"], "max_steps": 10, "eval_every": 10}})
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "preds.jsonl"
    assert main(["eval", str(tmp_path / "r"), "--split", "test", "--outputs", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout stays the JSON report
    assert f"outputs: 360 examples written to {out}" in captured.err
    rows = _lines(out)
    assert len(rows) == report["size"] == 360 and [r["index"] for r in rows] == list(range(360))
    assert set(rows[0]) == {"index", "source", "label", "predicted", "probability", "correct"}
    assert len(rows[0]["source"]) == 64  # a digits row's 64 features
    assert all(0.1 <= r["probability"] <= 1 and r["correct"] == (r["predicted"] == r["label"]) for r in rows)
    assert sum(r["correct"] for r in rows) / 360 == pytest.approx(report["accuracy"])


def test_eval_outputs_writes_translations_beside_the_references(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    pairs = [(f"hallo welt {i % 7} nummer {i}", f"hello world {i % 7} number {i}") for i in range(40)]
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    cfg = write(tmp_path / "mt.yaml", {
        "task": "seq2seq",
        "data": {"name": "parallel_tsv", "path": str(tsv), "source": "de", "target": "en", "vocab_size": 376,
                 "eval_max_new_tokens": 6},
        "student": {"builder": "seq2seq_transformer", "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                    "attention_heads": 2, "ffn_dim": 32},
        "knowledge": [{"type": "labels"}], "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2,
                                                     "metric": "bleu"}})
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "translations.jsonl"
    assert main(["eval", str(tmp_path / "r"), "--outputs", str(out)]) == 0
    size = json.loads(capsys.readouterr().out)["size"]
    rows = _lines(out)
    assert len(rows) == size > 0 and set(rows[0]) == {"index", "source", "reference", "output"}
    english = dict(pairs)
    assert all(english[r["source"]] == r["reference"] and isinstance(r["output"], str) for r in rows)


def test_eval_outputs_writes_continuations_beside_the_references(corpus: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "lm.yaml", {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 10, "val_fraction": 0.2, "test_fraction": 0.2},
        "student": {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "knowledge": [{"type": "labels"}], "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2,
                                                     "metric": "perplexity"}})
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    out = tmp_path / "continuations.jsonl"
    assert main(["eval", str(tmp_path / "r"), "--outputs", str(out)]) == 0
    rows = _lines(out)
    from transformers import AutoTokenizer

    from ktransfer.config import RunConfig
    from ktransfer.runner import load_data

    test = load_data(RunConfig.from_yaml(tmp_path / "r" / "config.yaml")).test
    tok = AutoTokenizer.from_pretrained(str(corpus["tokenizer"]))
    assert len(rows) == len(test) > 0 and set(rows[0]) == {"index", "source", "reference", "output"}
    for r in rows:  # the first half of each block (all of it targets) is the prompt, the rest the reference
        ids = test[r["index"]]["input_ids"].tolist()
        half = len(ids) // 2
        assert r["source"] == tok.decode(ids[:half], skip_special_tokens=True)
        assert r["reference"] == tok.decode(ids[half:], skip_special_tokens=True)
        assert len(tok(r["output"])["input_ids"]) <= len(ids) - half  # at most the reference's length


@pytest.mark.slow
def test_console_script_demo_quick(tmp_path: Path) -> None:
    exe = shutil.which("ktransfer") or str(Path(sys.executable).parent / "ktransfer")
    proc = subprocess.run([exe, "demo", "--quick", "--seeds", "0", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "distilled student" in proc.stdout and "student alone" in proc.stdout
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {r["role"] for r in results["rows"]} == {"teacher", "student alone", "distilled student"}
    assert (tmp_path / "demo" / "results.md").read_text().startswith("Command: `ktransfer demo")
