"""Small things a user notices: start-up time of --version/--help, `ktransfer list` (and piping it into
`head`), file permissions of weights, and the one-seed demo table."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROBE = """
import sys
import ktransfer.cli
try:
    ktransfer.cli.main([{arg!r}])
except SystemExit as e:
    assert e.code == 0, e.code
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "numpy", "sklearn") if m in sys.modules)
print("heavy:", heavy)
"""


@pytest.mark.parametrize("arg", ["--version", "--help"])
def test_version_and_help_do_not_import_torch(arg: str) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout


FRESH_IMPORTS = """
import importlib, pkgutil, sys
import ktransfer
names = sorted(m.name for m in pkgutil.walk_packages(ktransfer.__path__, "ktransfer."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "ktransfer" or m.startswith("ktransfer.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print(len(names), "modules")
print("\\n".join(failed) or "all imported")
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Import cycles show only when a module is the first of the package to be imported."""
    proc = subprocess.run([sys.executable, "-c", FRESH_IMPORTS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("all imported"), proc.stdout
    assert int(proc.stdout.split()[0]) > 40, proc.stdout


def test_the_public_api_still_imports_from_the_package() -> None:
    import ktransfer
    from ktransfer import ConfigError, Distiller, RunConfig, TrainConfig, forward_kl, run

    assert ktransfer.__version__ == "0.1.0"
    assert RunConfig.__module__ == "ktransfer.config" and Distiller.__module__ == "ktransfer.engine.loop"
    assert callable(run) and callable(forward_kl) and issubclass(ConfigError, ValueError) and TrainConfig
    assert set(ktransfer.__all__) <= set(dir(ktransfer))
    for name in ktransfer.__all__:
        assert getattr(ktransfer, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Distiler'"):
        ktransfer.Distiler  # noqa: B018


def test_weights_and_text_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import torch

    from ktransfer.checkpoint import save_weights, write_json_atomic

    old = os.umask(0o022)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w" / "model.safetensors")
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
    old = os.umask(0o077)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "private.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.safetensors").stat().st_mode) == 0o600


def demo_results(seeds: list[int]) -> dict[str, Any]:
    from ktransfer.demo import summarize

    rows = [{"seed": seed, "role": role, "test_accuracy": acc + seed / 100, "val_accuracy": acc, "parameters": 10,
             "train_wall_time_s": 1.0}
            for seed in seeds for role, acc in (("teacher", 0.9), ("student alone", 0.8), ("distilled student", 0.85))]
    return {"command": "ktransfer demo", "seeds": seeds, "quick": False, "summary": summarize(rows),
            "total_wall_time_s": 1.0, "environment": {"machine": "x86_64", "cpu_count": 2, "torch": "2"}}


def test_a_one_seed_demo_shows_no_confidence_interval(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.demo import markdown_table, print_table

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells on a narrow terminal
    one = demo_results([0])
    assert one["summary"]["teacher"]["test_accuracy_ci95"] is None
    table = markdown_table(one)
    assert "±" not in table and "| teacher | 10 | 90.00 % |" in table and "one seed, no CI" in table
    assert "Distilled minus alone (paired by seed): +5.00 points" in table
    print_table(one)
    out = capsys.readouterr().out
    assert "±" not in out and "90.00 %" in out and "no confidence interval" in out
    # with two seeds the interval is back
    two = markdown_table(demo_results([0, 1]))
    assert "| teacher | 10 | 90.50 ± 6.35 % |" in two and "mean ± 95% CI" in two


# ---------------------------------------------------------------------------------- ktransfer list
def registries() -> dict[str, dict[str, list[str]]]:
    """category -> component name -> the keys a config may give it, straight from the code."""
    from ktransfer.data import DATASETS
    from ktransfer.divergences import DIVERGENCES
    from ktransfer.knowledge.response import divergence_params
    from ktransfer.models import MODELS
    from ktransfer.selection import SELECTORS
    from ktransfer.terms import TERMS

    out = {name: {n: reg.keys(n) for n in reg.names()}
           for name, reg in (("knowledge", TERMS), ("selectors", SELECTORS), ("builders", MODELS),
                             ("datasets", DATASETS))}
    out["divergences"] = {n: divergence_params(n) for n in DIVERGENCES}
    from ktransfer.hops.methods import TRANSFER_METHODS
    from ktransfer.hops.models import SKLEARN_MODELS, TORCH_KINDS

    out["methods"] = {n: TRANSFER_METHODS.keys(n) for n in TRANSFER_METHODS.names()}
    out["model_kinds"] = {**{n: MODELS.keys(n) for n in TORCH_KINDS},
                          **{n: [k for k in SKLEARN_MODELS.keys(n) if k != "random_state"] for n in SKLEARN_MODELS.names()}}
    return out


@pytest.mark.parametrize("category", ["divergences", "knowledge", "selectors", "builders", "datasets", "methods",
                                      "model_kinds"])
def test_list_shows_every_component_with_its_parameters(category: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    assert main(["list", category]) == 0
    text = capsys.readouterr().out
    expected = registries()[category]
    listed = [line.split(":")[0].strip() for line in text.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert listed == sorted(expected)
    assert main(["list", category, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)[category]
    assert {c["name"]: [p["name"] for p in c["params"]] for c in data} == expected
    assert all(c["summary"] for c in data)  # every component says what it is


def test_list_shows_types_defaults_and_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for heading in ("divergences  (knowledge: [{type: response, divergence: NAME", "knowledge  (knowledge: [{type: NAME",
                    "selectors  (selector: {type: NAME", "builders  (student / teacher: {builder: NAME",
                    "datasets  (data: {name: NAME"):
        assert heading in text
    assert "  jsd: Generalised Jensen-Shannon divergence, P = teacher, Q = student.\n      beta: float = 0.5\n" in text
    assert "      hidden: Sequence[int] = (64,)\n" in text
    assert "      num_classes: int = (the dataset's num_classes)\n" in text
    assert "      model_type: str (required)\n" in text and "      path: path (required)\n" in text
    assert "      params: dict[str, Any] = {}\n" in text
    assert "  wine: scikit-learn's bundled wine recognition data: 178 samples, 13 features, 3 classes.\n" in text
    with pytest.raises(SystemExit):
        main(["list", "optimizers"])
    assert "invalid choice: 'optimizers'" in capsys.readouterr().err


def test_list_covers_chain_methods_and_model_kinds_with_whole_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "methods  (chain config (ktransfer hops): method: {name: NAME, ...})\n" in text
    assert "model_kinds  (chain config (ktransfer hops): teacher / student / plan.ladder: {kind: NAME, ...})\n" in text
    assert ("  sratio: Weight = complex / simple true-label probability; points whose ratio exceeds a threshold are "
            "dropped.") in text  # a summary runs to the end of its first sentence, across docstring lines
    assert "      quantiles: list[float] = [0.5, 0.8, 0.95, 1.0]\n" in text
    kinds = text[text.index("model_kinds  ("):]
    assert "  gbdt: Gradient-boosted trees" in kinds and "random_state" not in kinds  # the chain's seed sets it
    assert "      num_classes: int = (the dataset's num_classes)\n" in kinds


def test_list_into_a_reader_that_closes_early_ends_quietly() -> None:
    """`ktransfer list | head`: the reader has gone before the listing is written."""
    proc = subprocess.Popen([sys.executable, "-m", "ktransfer.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child has imported anything: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as `cat` ends in the same place
    assert err == ""
