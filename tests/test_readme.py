"""The README's Python quickstart runs as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from ktransfer.cli import main
from ktransfer.data import TensorDictDataset

ROOT = Path(__file__).parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    # the config-driven snippet needs the teacher run that configs/digits_distill.yaml points to
    assert main(["run", "configs/digits_teacher.yaml", "--run-dir", "runs/digits_teacher", "--no-progress",
                 "--set", "train.max_steps=20", "--set", "train.eval_every=10"]) == 0
    exec(compile(blocks[0], "README block 1", "exec"), {})
    assert (tmp_path / "runs" / "my_student" / "eval-test.json").exists()

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    namespace = {"student": nn.Linear(5, 3), "teacher": nn.Linear(5, 3),
                 "train_ds": TensorDictDataset(inputs=x, labels=y), "val_ds": TensorDictDataset(inputs=x, labels=y)}
    code = blocks[1].replace("max_steps=1000", "max_steps=5")
    exec(compile(code, "README block 2", "exec"), namespace)
    assert (tmp_path / "runs" / "x" / "final" / "model.safetensors").exists()
