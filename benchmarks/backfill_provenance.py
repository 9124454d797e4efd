"""Give result files written before the scripts recorded their own provenance a truthful one, from git history.

    python benchmarks/backfill_provenance.py          # rewrites the files in place; a file that has one is left alone

What is known of such a result, and recorded:

- `commit`: the commit the file itself names (the translation aggregate recorded `git rev-parse` when it was
  made), else null: the code that made it is not known exactly;
- `committed_in`: the commit that holds this very record (a file: the last commit that changed it; a run
  embedded in an aggregate: the first version of the aggregate that holds it, the provenance aside). The code
  that made it is that commit's or an earlier one;
- `command`: the command the file names; for the translation runs, the sitting of
  benchmarks/results/translation/quick/sittings.jsonl whose `--methods` ran the method; for the multi-hop units,
  which of the two commands of the aggregate ran the method; null where nothing says;
- `machine`: the `environment` the file recorded, else the aggregate's `machine`, else null.

Aggregates also get `commits`, the commits of the runs they hold, and their tables are re-rendered from the
JSON by their own scripts (the figures do not change; the header names the commits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
from harness.provenance import commits_of  # noqa: E402

TRANSLATION = HERE / "results" / "translation" / "quick"
TRANSLATION_DEFAULT = "python benchmarks/translation/bench.py --quick --seeds 3 --jobs 2"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def last_commit(path: Path) -> str:
    return git("log", "-1", "--format=%H", "--", str(path.relative_to(ROOT)))


def versions(path: Path) -> list[tuple[str, Any]]:
    """Every committed version of a JSON file, oldest first."""
    rel = str(path.relative_to(ROOT))
    return [(c, json.loads(git("show", f"{c}:{rel}"))) for c in reversed(git("log", "--format=%H", "--", rel).split())]


def canonical(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "provenance"}, sort_keys=True)


def first_holding(history: list[tuple[str, Any]], pick: Callable[[Any], list[dict[str, Any]]],
                  record: dict[str, Any]) -> str:
    """The first commit whose version of an aggregate holds `record` (among the records `pick` takes)."""
    key = canonical(record)
    for commit, data in history:
        if any(canonical(r) == key for r in pick(data) if isinstance(r, dict)):
            return commit
    raise ValueError("record not found in the file's history")


def translation_command(method: str) -> str | None:
    """The command of the sitting that ran `method` (its --methods), or the default one for the default methods."""
    sittings = [json.loads(line) for line in (TRANSLATION / "sittings.jsonl").read_text().splitlines()]
    for sitting in sittings:
        command = sitting.get("command", TRANSLATION_DEFAULT)
        if "--methods" in command:
            methods = command.split("--methods", 1)[1].split("--")[0].split()
            if method in methods or (method == "warm_kd" and any(m.endswith("_from_kd") for m in methods)):
                return command
    return TRANSLATION_DEFAULT if not method.endswith(("_from_kd", "warm_kd")) else None


def record(committed_in: str, command: str | None, machine: Any, commit: str | None = None) -> dict[str, Any]:
    return {"commit": commit, "dirty": None, "committed_in": committed_in, "command": command, "machine": machine}


def translation_unit_method(path: Path, data: dict[str, Any]) -> str:
    if "method" in data:
        return str(data["method"])
    if path.name.startswith("gradient_analysis-"):
        return path.stem.removeprefix("gradient_analysis-").rsplit("-s", 1)[0]
    return "seq_kd" if path.name == "seq_kd-generation.json" else "labels"  # setup.json: the first sitting's


def backfill_file(path: Path) -> bool:
    """Add the provenance of one result file (and of the runs it embeds); False when it already has one."""
    data = json.loads(path.read_text())
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else None
    holder = meta if meta is not None else data
    if "provenance" in holder:
        return False
    here = last_commit(path)
    machine = data.get("environment") or (meta or {}).get("machine")
    command = data.get("command") or (meta or {}).get("command")
    if path.parent == TRANSLATION:
        command = translation_command(translation_unit_method(path, data))
    commit = git("rev-parse", str(meta["commit"])) if meta and meta.get("commit") else None
    holder["provenance"] = record(here, command, machine, commit)
    holder.pop("commit", None)
    if meta is not None:
        meta.pop("timing", None)  # a wall time entered by hand, not measured by the script
        history = versions(path)
        for key in ("units", "runs"):
            for unit in data.get(key) or []:
                if "provenance" not in unit:
                    unit_command = command
                    if path.name == "translation.json":
                        unit_command = translation_command(unit["method"])
                    elif path.name == "multihop.json":
                        first, _, second = str(command).partition(", then ")
                        unit_command = second.split(" (")[0] if unit["method"] == "kd_T1" else first
                    unit["provenance"] = record(first_holding(history, lambda d, k=key: d.get(k) or [], unit),
                                                unit_command, unit.get("environment") or machine)
        for who, analysis in (data.get("gradient_analysis") or {}).items():
            if analysis and "provenance" not in analysis:
                analysis["provenance"] = record(
                    first_holding(history, lambda d, w=who: [(d.get("gradient_analysis") or {}).get(w)], analysis),
                    TRANSLATION_DEFAULT, machine)
        teacher = data.get("teacher") if isinstance(data.get("teacher"), dict) else None
        if teacher and "provenance" not in teacher:
            teacher["provenance"] = record(first_holding(history, lambda d: [d.get("teacher")], teacher),
                                           TRANSLATION_DEFAULT, machine)
        runs = [*(data.get("units") or []), *(data.get("runs") or []), *([teacher] if teacher else []),
                *(a for a in (data.get("gradient_analysis") or {}).values() if a)]
        holder["provenance"]["commits"] = commits_of(runs)
    path.write_text(json.dumps(data, indent=2, sort_keys=path in SORTED) + "\n")
    return True


def sorted_keys(path: Path) -> bool:
    text = path.read_text()
    return text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


SORTED: set[Path] = set()  # files written with sorted keys keep them


def rerender() -> None:
    """The tables of the aggregates, from their JSON, by their own scripts' markdown functions."""
    from _benchmarks import load_benchmark

    results = HERE / "results"
    translation = load_benchmark("translation/bench.py")
    (results / "translation.md").write_text(translation.markdown(json.loads((results / "translation.json").read_text())))
    selection = load_benchmark("selection/bench.py")
    (HERE / "selection" / "results" / "selection.md").write_text(
        selection.markdown(json.loads((results / "selection.json").read_text())))
    multihop = load_benchmark("multihop/bench.py")
    (HERE / "multihop" / "results" / "multihop.md").write_text(
        multihop.markdown(json.loads((results / "multihop.json").read_text())))
    causal = load_benchmark("causal/run.py")
    data = json.loads((HERE / "causal" / "results" / "causal.json").read_text())
    causal.write_readme(data["rows"], data["runs"], data["meta"])


def main() -> int:
    files = sorted(p for p in HERE.rglob("*.json") if "results" in p.relative_to(HERE).parts
                   and "runs" not in p.relative_to(HERE).parts)
    SORTED.update(p for p in files if sorted_keys(p))
    changed = [p for p in files if backfill_file(p)]
    rerender()
    for p in changed:
        print(f"provenance added: {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
