"""Every script in examples/ runs, with the tiny settings docs/examples.md prints, and says what it measured."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
# What each script prints at the end when it worked.
EXPECTED = {
    "distil_classifier.py": r"distilled student: test accuracy \d+\.\d\d %",
    "multihop_tree.py": r"\| 1-hop \| tree\(d=3\) \|",
    "on_policy_causal_lm.py": r"test perplexity \d+(\.\d)?, KL\(teacher \|\| student\) per token \d+\.\d+",
    "select_knowledge_text.py": r"mean weight per kind of knowledge: attention \d\.\d\d, feature",
    "store_from_topk_api.py": r"student trained from the store at .*: test accuracy \d+\.\d\d %",
}


def documented_commands() -> dict[str, list[str]]:
    """Script name -> its arguments, from the first bash block of docs/examples.md (the tiny settings)."""
    text = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert block is not None
    out = {}
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:1] == ["python"] and argv[1].startswith("examples/"):
            out[Path(argv[1]).name] = argv[2:]
    return out


def test_every_example_is_documented_with_tiny_settings_and_checked() -> None:
    assert EXAMPLES == sorted(documented_commands()) == sorted(EXPECTED)
    assert len(EXAMPLES) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *documented_commands()[name]],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0 and "is not prepared" in done.stderr:
        pytest.skip(next(line for line in done.stderr.splitlines() if "is not prepared" in line))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(EXPECTED[name], done.stdout), done.stdout[-2000:]
