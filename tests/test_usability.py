"""Small things a user notices: start-up time of --version/--help, `ktransfer list`, file
permissions of weights, and the one-seed demo table."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

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


def test_the_public_api_still_imports_from_the_package() -> None:
    import ktransfer
    from ktransfer import ConfigError, Distiller, RunConfig, TrainConfig, forward_kl, run

    assert ktransfer.__version__ == "0.1.0"
    assert RunConfig.__module__ == "ktransfer.config" and Distiller.__module__ == "ktransfer.train"
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
