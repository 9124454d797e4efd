"""The README runs as written: both Python quickstart blocks and the YAML shown as a config file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
def test_readme_quickstart_runs_exactly_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first block trains the teacher the distilled student reads, then the student; both blocks run as printed."""
    python = blocks("python")
    assert len(python) >= 2
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(python[:2]):
        exec(compile(code, f"README python block {i + 1}", "exec"), {})
    assert (tmp_path / "runs" / "digits_teacher" / "best" / "model.safetensors").exists()
    assert (tmp_path / "runs" / "my_student" / "eval-test.json").exists()
    assert (tmp_path / "runs" / "x" / "final" / "model.safetensors").exists()
    exec(compile(python[0], "README python block 1, again", "exec"), {})  # runs twice without an error


def test_readme_yaml_shown_as_a_config_file_equals_it() -> None:
    """Each YAML block introduced as a config file is that file, comments aside."""
    shown = re.findall(r"From `(configs/[\w.]+\.yaml)`[^\n]*\n\n```yaml\n(.*?)```", README, flags=re.S)
    assert shown, "the README shows no config file"
    for name, text in shown:
        body = "".join(line for line in (ROOT / name).read_text(encoding="utf-8").splitlines(keepends=True)
                       if not line.startswith("#"))
        assert text == body, f"the README's copy of {name} differs from the file"
