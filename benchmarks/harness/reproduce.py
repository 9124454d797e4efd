"""Reproduce the committed benchmark tables and aggregates from their committed unit results, through the harness.

For each study: its unit results are put into a fresh folder (copied from the committed per-unit files, or,
where only the aggregate was committed, extracted from the runs it embeds, one file per unit as the study
writes them), the study aggregates them with `--reproduce <committed aggregate>` (its command, machine and
versions; everything else is recomputed from the units) and the files it writes are compared byte for byte
with the committed ones.

    python benchmarks/reproduce.py                  # every study; exit status 1 when a file differs
    python benchmarks/reproduce.py translation      # one study
"""

from __future__ import annotations

import contextlib
import difflib
import io
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.report import write_json

BENCHMARKS = Path(__file__).resolve().parents[1]
RESULTS = BENCHMARKS / "results"


def load_study(script: str) -> ModuleType:
    """A fresh module from `benchmarks/<script>`, e.g. "translation/bench.py"."""
    path = BENCHMARKS / script
    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extract_units(records: list[dict[str, Any]], folder: Path, name: Callable[[dict[str, Any]], str]) -> None:
    """Write each record embedded in an aggregate, as it is (its provenance, or none, included), as its own unit
    result `folder/<name(record)>.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:
        path = folder / f"{name(rec)}.json"
        if path.exists():
            raise ValueError(f"{path}: two embedded records have the name {name(rec)!r}")
        write_json(path, rec)


@dataclass(frozen=True)
class Study:
    """How one study's committed results are reproduced: its script, its committed aggregate, how its unit results
    are laid out in a work folder, the flags that aggregate them there, and which outputs match which committed
    files."""

    script: str
    aggregate: Path
    lay_out: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    compare: Callable[[Path], dict[Path, Path]]  # committed file -> the file reproduced in the work folder


def _translation_units(work: Path) -> None:
    shutil.copytree(RESULTS / "translation" / "quick", work / "results" / "translation" / "quick")


def _embedded(aggregate: Path, key: str) -> list[dict[str, Any]]:
    return json.loads(aggregate.read_text())[key]


def _selection_units(work: Path) -> None:
    aggregate = RESULTS / "selection.json"
    folder = work / "out" / "quick"
    extract_units(_embedded(aggregate, "units"), folder / "units",
                  lambda u: f"{u['task']}-{u['student']}-{u['variant']}-s{u['seed']}")
    extract_units(list(_embedded(aggregate, "teachers").values()), folder, lambda t: f"teacher-{t['task']}")


def _multihop_units(work: Path) -> None:
    extract_units(_embedded(RESULTS / "multihop.json", "units"), work / "out" / "quick" / "units",
                  lambda u: f"{u['setting']}-{u['student']}-{u['method']}-s{u['seed']}")


def _causal_units(work: Path) -> None:
    extract_units(_embedded(BENCHMARKS / "causal" / "results" / "causal.json", "runs"), work / "runs" / "units",
                  lambda u: f"{u['method']}-s{u['seed']}")


STUDIES: dict[str, Study] = {
    "translation": Study(
        "translation/bench.py", RESULTS / "translation.json", _translation_units,
        lambda w: ["--quick", "--results", str(w / "results"), "--out", str(w / "runs")],
        lambda w: {RESULTS / "translation.json": w / "results" / "translation.json",
                   RESULTS / "translation.md": w / "results" / "translation.md"}),
    "selection": Study(
        "selection/bench.py", RESULTS / "selection.json", _selection_units,
        lambda w: ["--quick", "--out", str(w / "out"), "--report-dir", str(w / "report")],
        lambda w: {RESULTS / "selection.json": w / "report" / "selection.json",
                   BENCHMARKS / "selection" / "results" / "selection.md": w / "report" / "selection.md"}),
    "multihop": Study(
        "multihop/bench.py", RESULTS / "multihop.json", _multihop_units,
        lambda w: ["--quick", "--out", str(w / "out"), "--report-dir", str(w / "report")],
        lambda w: {RESULTS / "multihop.json": w / "report" / "multihop.json",
                   BENCHMARKS / "multihop" / "results" / "multihop.md": w / "report" / "multihop.md"}),
    "causal": Study(
        "causal/run.py", BENCHMARKS / "causal" / "results" / "causal.json", _causal_units,
        lambda w: ["--runs", str(w / "runs"), "--report-dir", str(w / "report")],
        lambda w: {BENCHMARKS / "causal" / "results" / "causal.json": w / "report" / "causal.json",
                   BENCHMARKS / "causal" / "README.md": w / "report" / "README.md"}),
}


def reproduce(name: str, work: Path) -> dict[Path, Path]:
    """Aggregate study `name`'s committed unit results in `work` (a new folder); returns committed -> reproduced."""
    study = STUDIES[name]
    work.mkdir(parents=True, exist_ok=True)
    study.lay_out(work)
    with contextlib.redirect_stdout(io.StringIO()):  # the study prints its table; the comparison is the report
        code = load_study(study.script).main([*study.argv(work), "--reproduce", str(study.aggregate)])
    if code != 0:
        raise RuntimeError(f"{study.script} exited with {code} aggregating {work}")
    return study.compare(work)


def differences(pairs: dict[Path, Path]) -> list[str]:
    """A unified diff (first lines) for each reproduced file that is not byte-identical to its committed one."""
    out = []
    for committed, reproduced in pairs.items():
        a, b = committed.read_bytes(), reproduced.read_bytes() if reproduced.is_file() else b""
        if a != b:
            diff = difflib.unified_diff(a.decode().splitlines(), b.decode().splitlines(), str(committed),
                                        str(reproduced), lineterm="", n=1)
            out.append("\n".join(list(diff)[:40]))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="Reproduce the committed benchmark tables from their unit results.")
    p.add_argument("studies", nargs="*", metavar="STUDY", help=f"any of {', '.join(STUDIES)} (default: all)")
    args = p.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        p.error(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    failed = 0
    for name in args.studies or list(STUDIES):
        with tempfile.TemporaryDirectory() as tmp:
            pairs = reproduce(name, Path(tmp))
            diffs = differences(pairs)
            for committed in pairs:
                print(f"{name}: {committed.relative_to(BENCHMARKS.parent)} "
                      f"{'differs' if any(str(committed) in d for d in diffs) else 'reproduced byte for byte'}")
            for d in diffs:
                print(d)
            failed += bool(diffs)
    return 1 if failed else 0
