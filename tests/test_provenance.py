"""Every published result names the code, command and machine that made it.

The helpers (`ktransfer.provenance` and the benchmark harness's `harness.provenance`) against git itself; every
JSON result under benchmarks/ for a provenance block that git history confirms; aggregates for the
commits they mix; the README and the documentation site (docs/) for the result files and commits they
cite, and the product's texts for process language."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ktransfer.provenance import git_state, provenance

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import BENCHMARKS, load_benchmark  # noqa: E402
from harness.provenance import COMMAND_ENV, commits_of, invoked_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_GIT = shutil.which("git") is not None and (ROOT / ".git").exists()
needs_git = pytest.mark.skipif(not HAS_GIT, reason="needs git and the repository's history")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------------------------------- the helper
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_names_head_and_sees_uncommitted_changes(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    git(tmp_path, "checkout", "-q", "a.txt")
    (tmp_path / "new.py").write_text("")  # an untracked file is code the result may have used
    assert git_state(tmp_path)["dirty"] is True
    (tmp_path / "new.py").unlink()
    results = tmp_path / "benchmarks" / "results" / "study"
    results.mkdir(parents=True)
    (results / "unit.json").write_text("{}")  # results landing during a benchmark are not code
    assert git_state(tmp_path) == {"commit": head, "dirty": False}


def test_git_state_outside_a_checkout_is_unknown_or_the_snapshots_commit_file(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    (tmp_path / "COMMIT").write_text("abc1234\n")
    assert git_state(tmp_path) == {"commit": "abc1234", "dirty": None}


def test_the_command_is_the_invocation_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    script = tmp_path / "benchmarks" / "x" / "bench.py"
    assert (invoked_command([str(script), "--set", "a=1 2", "--quick"], root=tmp_path)
            == "python benchmarks/x/bench.py --set 'a=1 2' --quick")
    assert invoked_command(["/elsewhere/run.py"], root=tmp_path) == "python /elsewhere/run.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--jobs", "2"])
    assert invoked_command(root=tmp_path) == "python benchmarks/x/bench.py --jobs 2"
    monkeypatch.setenv(COMMAND_ENV, "python benchmarks/x/bench.py --jobs 2")  # a worker of that invocation
    monkeypatch.setattr(sys, "argv", [str(script), "--worker", "1/2"])
    assert invoked_command(root=tmp_path) == "python benchmarks/x/bench.py --jobs 2"


def test_workers_record_the_command_that_started_them(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from harness.provenance import invoked_command
        from harness.queue import run_workers

        if "--worker" in sys.argv:
            i = sys.argv[sys.argv.index("--worker") + 1].split("/")[0]
            (Path(__file__).parent / f"w{{i}}.json").write_text(json.dumps(invoked_command()))
        else:
            sys.exit(0 if run_workers(__file__, sys.argv[1:], 2) else 1)
    """))
    env = {k: v for k, v in os.environ.items() if k != COMMAND_ENV}
    subprocess.run([sys.executable, "bench.py", "--seeds", "3", "--jobs", "2"], cwd=tmp_path, env=env, check=True)
    for i in (0, 1):
        assert json.loads((tmp_path / f"w{i}.json").read_text()) == "python bench.py --seeds 3 --jobs 2"


def test_provenance_holds_code_command_and_machine(tmp_path: Path) -> None:
    record = provenance(tmp_path, command="python x.py")
    assert record["command"] == "python x.py" and record["commit"] is None
    assert {"machine", "cpu_count", "torch", "platform"} <= set(record["machine"])


def test_the_machine_record_names_the_library_versions_that_import() -> None:
    """Versions come from package metadata (no import of transformers or accelerate); they are the imported ones."""
    import accelerate
    import torch
    import transformers

    from ktransfer.environment import environment, package_version

    machine = environment()
    assert (machine["torch"], machine["transformers"], machine["accelerate"]) == (
        torch.__version__, transformers.__version__, accelerate.__version__)
    assert machine["torch_threads"] == torch.get_num_threads()
    assert package_version("no-such-distribution-ktransfer") is None


def test_commits_of_lists_each_commit_once_in_order() -> None:
    records = [{"provenance": {"commit": "b"}}, {"provenance": {"commit": None, "committed_in": "a"}},
               {"provenance": {"commit": "b"}}, {"x": 1}]
    assert commits_of(records) == ["b", "a", None]


@needs_git
def test_a_benchmark_scripts_records_carry_the_repositorys_head(tmp_path: Path) -> None:
    bench = load_benchmark("translation/bench.py")
    bench.write_unit(tmp_path / "run.json", {"method": "labels", "seed": 0})
    prov = json.loads((tmp_path / "run.json").read_text())["provenance"]
    assert prov["commit"] == git(ROOT, "rev-parse", "HEAD")
    assert isinstance(prov["dirty"], bool) and prov["command"] and prov["machine"]["cpu_count"]
    units = [{"provenance": {"commit": "c1"}}, {"provenance": {"commit": None, "committed_in": "c0"}}]
    assert bench.provenance.aggregate_record(units)["commits"] == ["c1", "c0"]


# ------------------------------------------------------------------------------------------- the results
# a study's working files beside its results (run directories, teacher stores, scratch runs, worker claims, a
# run's kept logs) are not results and are not committed (.gitignore)
WORKING_FOLDERS = {"runs", "stores", "scratch", "claims", "kept"}
RESULT_FILES = sorted(p for p in (ROOT / "benchmarks").rglob("*.json") if "results" in p.relative_to(ROOT).parts
                      and not WORKING_FOLDERS & set(p.relative_to(ROOT).parts))


@cache
def commits_touching(path: Path) -> frozenset[str]:
    return frozenset(git(ROOT, "log", "--format=%H", "--", str(path.relative_to(ROOT))).split())


def prov_of(record: dict[str, Any]) -> dict[str, Any] | None:
    return record.get("provenance") or (record.get("meta") or {}).get("provenance")


def problems(prov: dict[str, Any] | None, where: str, path: Path) -> list[str]:
    """What is missing or untrue in one provenance block."""
    if not isinstance(prov, dict):
        return [f"{where}: no provenance block"]
    out = []
    if not (isinstance(prov.get("command"), str) and prov["command"].strip()):
        out.append(f"{where}: provenance has no command")
    commit, committed_in = prov.get("commit"), prov.get("committed_in")
    if commit is None and committed_in is None:
        out.append(f"{where}: provenance names neither commit nor committed_in")
    for key, value in (("commit", commit), ("committed_in", committed_in)):
        if value is not None and not re.fullmatch(r"[0-9a-f]{7,40}", str(value)):
            out.append(f"{where}: {key} {value!r} is not a commit hash")
    if committed_in is not None and HAS_GIT:
        if not any(c.startswith(str(committed_in)) for c in commits_touching(path)):
            out.append(f"{where}: committed_in {committed_in} is not a commit that changed {path.name}")
    return out


def records_in(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The per-run records an aggregate embeds."""
    out = [(f"units[{i}]", u) for i, u in enumerate(data.get("units") or [])]
    out += [(f"runs[{i}]", u) for i, u in enumerate(data.get("runs") or [])]
    out += [(f"gradient_analysis.{k}", a) for k, a in (data.get("gradient_analysis") or {}).items() if a]
    teachers = data.get("teachers") or {}
    if "provenance" in teachers:  # one record for all the teachers (the several-teachers study)
        out.append(("teachers", teachers))
    else:  # a record per teacher
        out += [(f"teachers.{k}", t) for k, t in teachers.items()]
    return out


def test_there_are_results_to_check() -> None:
    assert len(RESULT_FILES) > 40
    assert ROOT / "benchmarks" / "results" / "translation.json" in RESULT_FILES


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_result_names_its_code_and_command(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    where = str(path.relative_to(ROOT))
    found = problems(prov_of(data), where, path)
    for name, record in records_in(data):
        found += problems(prov_of(record), f"{where} {name}", path)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", [p for p in RESULT_FILES if records_in(json.loads(p.read_text(encoding="utf-8")))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_aggregate_lists_the_commits_it_mixes(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    listed = (prov_of(data) or {}).get("commits")
    assert isinstance(listed, list) and listed, f"{path.relative_to(ROOT)}: no list of commits"
    mixed = set(commits_of([record for _, record in records_in(data)]))
    assert mixed <= set(listed), f"{path.relative_to(ROOT)}: commits {sorted(map(str, mixed - set(listed)))} not listed"


# ------------------------------------------------------------------------------------------- README and docs
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README = "\n".join(page.read_text(encoding="utf-8") for page in DOC_PAGES)  # the README and every page of the site


def test_every_file_the_readme_and_the_docs_cite_exists() -> None:
    # a markdown link target (in parentheses) is relative to its page; the strict build checks those
    cited = set(re.findall(r"(?<![\w/.(])((?:benchmarks|configs|examples)/[\w./-]+\.(?:md|jsonl|json|png|yaml|py))(?![\w])", README))
    assert len(cited) > 20
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"README or docs cite files that do not exist: {missing}"


def test_every_commit_the_readme_and_the_docs_name_exists() -> None:
    named = set(re.findall(r"(?:commit|before|Before:?|git show)\s*\(?`?([0-9a-f]{7,40})\b", README))
    if not HAS_GIT:
        pytest.skip("needs git and the repository's history")
    unknown = [c for c in sorted(named) if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT,
                                                          capture_output=True).returncode != 0]
    assert not unknown, f"README or docs name commits that are not in the history: {unknown}"


PROCESS_LANGUAGE = re.compile(r"Found:|\bissue \d+|the \d+ asked|lent to this (?:session|task)|uncommitted trial"
                              r"|this session\b")


def product_texts() -> list[Path]:
    files = [*DOC_PAGES, ROOT / "mkdocs.yml", *sorted((ROOT / "configs").rglob("*.yaml"))]
    files += sorted((ROOT / "docs").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    files += sorted(p for p in (ROOT / "benchmarks").rglob("*") if p.suffix in {".md", ".py", ".json"}
                    and "runs" not in p.relative_to(ROOT).parts)
    files += sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "src").rglob("*.py"))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def test_the_products_files_speak_of_the_product_not_of_its_making() -> None:
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
            for path in product_texts()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if PROCESS_LANGUAGE.search(line)]
    assert not hits, "process or history language:\n" + "\n".join(hits)
