"""Multi-process training through torchrun needs no code change (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _launch
import pytest
import yaml

CONFIG = {
    "data": {"name": "digits"},
    "teacher": {"builder": "mlp", "hidden": [32]},
    "student": {"builder": "mlp", "hidden": [16], "dropout": 0.1},
    "knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0}, {"type": "labels"}],
    "train": {"max_steps": 10, "batch_size": 16, "eval_every": 5, "checkpoint_every": 5},
}


def launch(launcher: list[str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "ktransfer.cli", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def torchrun(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    return launch(_launch.torchrun(), *args, expect=expect)


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    full = torchrun("run", str(cfg), "--run-dir", str(tmp_path / "full"))
    assert full.stdout.count('"best_step"') == 1  # only rank 0 prints
    ckpt = tmp_path / "full" / "checkpoints" / "step-00000010"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()
    killed = torchrun("run", str(cfg), "--run-dir", str(tmp_path / "killed"), "--stop-after", "5")
    assert "2 process(es) on cpu" in killed.stderr and "10 examples" not in killed.stderr
    # found: a 2-process checkpoint resumed in 1 process ran silently to another result
    single = launch([sys.executable], "resume", str(tmp_path / "killed"), expect=2)
    assert "written by 2 process(es) and this run has 1" in single.stderr
    torchrun("resume", str(tmp_path / "killed"))
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert a["step"] == b["step"] == 10
    assert a["final_val"] == b["final_val"]
    assert a["world_size"] == 2 and a["batch_size"] == 16 and a["per_process_batch_size"] == 8


@pytest.mark.slow
def test_accelerate_launch_command_of_the_readme_runs_two_processes(tmp_path: Path) -> None:
    """`accelerate launch` as the README prints it starts two processes on a CPU machine (without `--multi_gpu`,
    `--num_processes 2` would silently run one)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = "accelerate launch --multi_gpu --num_processes 2 -m ktransfer.cli run CONFIG.yaml"
    assert command in readme
    proc = launch(_launch.accelerate_launch(), "run", str(cfg), "--run-dir",
                  str(tmp_path / "r"))
    assert "2 process(es)" in proc.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_processes_train_feature_projections_and_the_actor_critic_as_one(tmp_path: Path) -> None:
    """Term parameters (not part of the DDP-wrapped student) get gradients averaged over processes, and the
    actor-critic observes the mean over processes, so 2 processes learn what 1 process does on the same global batch."""
    config = {
        "data": {"name": "digits"},
        "teacher": {"builder": "mlp", "hidden": [32]},
        "student": {"builder": "mlp", "hidden": [16]},
        "knowledge": [{"type": "feature", "student_layers": ["0"], "teacher_layers": ["0"]},
                      {"type": "response", "temperature": 2.0}, {"type": "labels"}],
        "selector": {"type": "actor_critic", "phase_steps": 2, "heldout_examples": 32},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"max_steps": 6, "batch_size": 16, "eval_every": 6, "log_every": 1},
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    torchrun("run", str(cfg), "--run-dir", str(tmp_path / "two"))
    from safetensors.torch import load_file

    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    run(RunConfig.from_dict(config), tmp_path / "one", progress=False)  # one process, here

    for name in ("model.safetensors", "terms.safetensors"):
        a, b = load_file(str(tmp_path / "one" / "final" / name)), load_file(str(tmp_path / "two" / "final" / name))
        for key in a:
            assert (a[key] - b[key]).abs().max() < 1e-4, (name, key)
    logs = [[json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")]
    weights = [[r["weights"] for r in log if r["split"] == "train"] for log in logs]
    assert len(weights[0]) == 6
    for wa, wb in zip(*weights, strict=True):
        assert wa.keys() == wb.keys() and all(abs(wa[k] - wb[k]) < 1e-4 for k in wa)
