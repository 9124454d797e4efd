"""Multi-process training through torchrun needs no code change (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIG = {
    "data": {"name": "digits"},
    "teacher": {"builder": "mlp", "hidden": [32]},
    "student": {"builder": "mlp", "hidden": [16], "dropout": 0.1},
    "knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0}, {"type": "labels"}],
    "train": {"max_steps": 10, "batch_size": 16, "eval_every": 5, "checkpoint_every": 5},
}


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([exe, "--nproc_per_node", "2", "-m", "ktransfer.cli", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    full = torchrun("run", str(cfg), "--run-dir", str(tmp_path / "full"))
    assert full.stdout.count('"best_step"') == 1  # only rank 0 prints
    ckpt = tmp_path / "full" / "checkpoints" / "step-00000010"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()
    torchrun("run", str(cfg), "--run-dir", str(tmp_path / "killed"), "--stop-after", "5")
    torchrun("resume", str(tmp_path / "killed"))
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert a["step"] == b["step"] == 10
    assert a["final_val"] == b["final_val"]
