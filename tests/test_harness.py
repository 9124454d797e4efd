"""The benchmark harness: a short benchmark file runs its grid through the claim-based queue with workers,
resumes, logs its sittings and aggregates with paired intervals; every study reproduces its committed tables
and aggregates from its committed unit results; the product (src/ktransfer) imports no benchmark."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import BENCHMARKS  # noqa: E402  (puts benchmarks/ on sys.path)
from harness import reproduce  # noqa: E402
from harness.grid import Unit, product, work_units  # noqa: E402

ROOT = BENCHMARKS.parent

STUDY = textwrap.dedent('''
    """A toy study: two methods, scored per seed."""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {benchmarks!r})
    from harness.aggregate import aggregate_provenance, cells, ci, paired
    from harness.cli import Benchmark, main
    from harness.grid import Unit, product, read_unit

    SCORES = {{"a": [0.50, 0.61, 0.72], "b": [0.52, 0.60, 0.75]}}

    class Toy(Benchmark):
        script = Path(__file__)
        def add_arguments(self, p):
            p.add_argument("--out", required=True)
        def results(self, args):
            return Path(args.out) / "units"
        def units(self, args):
            return [Unit(f"{{c['method']}}-s{{c['seed']}}", c) for c in product(seed=range(args.seeds), method="ab")]
        def run_unit(self, unit, args):
            with open(Path(args.out) / "ran.log", "a") as log:
                log.write(f"{{unit.name}} {{os.getpid()}}\\n")
            if unit.name == os.environ.get("TOY_FAIL"):
                raise RuntimeError(f"{{unit.name}} fails as asked")
            time.sleep(0.05)
            return {{**unit.key, "score": SCORES[unit.key["method"]][unit.key["seed"]]}}
        def aggregate(self, args, context):
            units = [read_unit(p) for p in sorted(self.results(args).glob("*.json"))]
            by = {{m: {{s: r["score"] for s, r in seeds.items()}} for (m,), seeds in cells(units, ["method"]).items()}}
            return {{"meta": {{**context, "provenance": aggregate_provenance(units, context)}},
                    "b": ci(list(by["b"].values())), "b_minus_a": paired(by["b"], by["a"]), "units": units}}
        def outputs(self, result, args):
            table = f"| b | {{result['b'][0]:.3f}} ± {{result['b'][1]:.3f}} |\\n"
            return {{Path(args.out) / "toy.json": result, Path(args.out) / "toy.md": table}}

    if __name__ == "__main__":
        sys.exit(main(Toy()))
''')


def _run_study(script: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KTRANSFER_BENCH_COMMAND", "TOY_FAIL")}
    if fail:
        env["TOY_FAIL"] = fail
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_a_short_benchmark_file_runs_with_workers_resumes_and_aggregates(tmp_path: Path) -> None:
    script = tmp_path / "toy.py"
    script.write_text(STUDY.format(benchmarks=str(BENCHMARKS)))
    out = tmp_path / "out"
    done = _run_study(script, "--out", str(out), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    ran = (out / "ran.log").read_text().split("\n")[:-1]
    assert sorted(r.split()[0] for r in ran) == ["a-s0", "a-s1", "a-s2", "b-s0", "b-s1", "b-s2"]  # each unit once
    unit = json.loads((out / "units" / "b-s1.json").read_text())
    assert unit["score"] == 0.60 and unit["provenance"]["command"].endswith("--jobs 2")
    assert unit["provenance"]["machine"]["cpu_count"]
    assert (out / "units" / "claims").is_dir() and not list((out / "units" / "claims").glob("*.claim"))
    (sitting,) = [json.loads(line) for line in (out / "units" / "sittings.jsonl").read_text().splitlines()]
    assert sitting["wall_time_min"] > 0 and sitting["command"].endswith("--jobs 2")

    result = json.loads((out / "toy.json").read_text())
    b = np.array([0.52, 0.60, 0.75], dtype=np.float64)
    d = b - np.array([0.50, 0.61, 0.72], dtype=np.float64)
    half = lambda x: stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    assert result["b"] == pytest.approx([b.mean(), half(b)], rel=1e-12)
    assert result["b_minus_a"] == pytest.approx([d.mean(), half(d)], rel=1e-12)
    assert result["meta"]["provenance"]["commits"] == [unit["provenance"]["commit"]]
    assert (out / "toy.md").read_text() == f"| b | {b.mean():.3f} ± {half(b):.3f} |\n"

    (out / "units" / "a-s2.json").unlink()  # a lost result: only that unit runs again
    again = _run_study(script, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert [r.split()[0] for r in (out / "ran.log").read_text().splitlines()[len(ran):]] == ["a-s2"]
    assert len((out / "units" / "sittings.jsonl").read_text().splitlines()) == 2
    only = _run_study(script, "--out", str(out), "--aggregate-only")
    assert only.returncode == 0 and len((out / "ran.log").read_text().splitlines()) == 7
    assert len((out / "units" / "sittings.jsonl").read_text().splitlines()) == 2  # no sitting without runs


def test_a_failed_sitting_is_logged_and_its_finished_units_are_kept(tmp_path: Path) -> None:
    """A worker's error ends the sitting with exit 1; the sitting's minutes are still logged (marked failed), so the
    sittings add up to the whole wall time, and the next sitting runs only what did not finish."""
    from harness.sittings import ran_by, read_sittings

    script = tmp_path / "toy.py"
    script.write_text(STUDY.format(benchmarks=str(BENCHMARKS)))
    out = tmp_path / "out"
    failed = _run_study(script, "--out", str(out), "--jobs", "2", fail="a-s1")
    assert failed.returncode == 1 and "a-s1 fails as asked" in failed.stderr
    (sitting,) = read_sittings(out / "units" / "sittings.jsonl")
    assert sitting["failed"] is True and sitting["wall_time_min"] > 0
    finished = {p.stem for p in (out / "units").glob("*.json")}
    assert "a-s1" not in finished and finished
    done = _run_study(script, "--out", str(out), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    ran = [r.split()[0] for r in (out / "ran.log").read_text().splitlines()]
    assert sorted(set(ran)) == ["a-s0", "a-s1", "a-s2", "b-s0", "b-s1", "b-s2"]
    assert all(ran.count(name) == 1 for name in finished)  # a finished unit never runs again
    sittings = read_sittings(out / "units" / "sittings.jsonl")
    assert [s.get("failed", False) for s in sittings] == [True, False]
    assert ran_by(sittings, "agg").endswith(", 1 of the 2 sittings ending in an error")


def test_units_of_one_group_run_together_and_needs_follow_their_group(tmp_path: Path) -> None:
    units = [Unit("x-s0", {"seed": 0}, group="s0"), Unit("y-s0", {"seed": 0}, group="s0"),
             Unit("z", {}, needs=("y-s0",))]
    ran: list[str] = []
    work = work_units(units, tmp_path, lambda u: ran.append(u.name) or {"name": u.name})
    assert [(w.name, tuple(w.needs)) for w in work] == [("s0", ()), ("z", ("s0",))]
    work[0].run()
    assert ran == ["x-s0", "y-s0"] and work[0].done() and not work[1].done()
    assert json.loads((tmp_path / "y-s0.json").read_text())["provenance"]["command"]
    with pytest.raises(ValueError, match="unknown units: \\['nope'\\]"):
        work_units([Unit("a", needs=("nope",))], tmp_path, lambda u: {})
    assert product(seed=[0, 1], method=["a", "b"]) == [
        {"seed": 0, "method": "a"}, {"seed": 0, "method": "b"}, {"seed": 1, "method": "a"}, {"seed": 1, "method": "b"}]


def test_a_needed_unit_whose_kept_files_are_gone_runs_again_only_while_a_unit_still_needs_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = tmp_path / "runs" / "warm" / "model.bin"

    def run_unit(u: Unit) -> dict[str, str]:
        ran.append(u.name)
        if u.name == "warm":
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text("weights")
        return {"name": u.name}

    units = [Unit("warm", keeps=(str(kept),)), Unit("a", needs=("warm",)), Unit("b", needs=("warm",))]
    results = tmp_path / "results"
    results.mkdir()
    ran: list[str] = []
    for w in work_units(units, results, run_unit)[:2]:
        w.run()
    assert ran == ["warm", "a"]
    kept.unlink()  # a fresh machine: the committed results are there, the runs folder is not
    work = work_units(units, results, run_unit)
    assert [w.done() for w in work] == [False, True, False]  # b still needs the warm start's files
    work[0].run()
    assert ran == ["warm", "a", "warm"] and kept.is_file()
    assert "warm: its result exists but the files it leaves for b do not" in capsys.readouterr().err
    work[2].run()
    kept.unlink()  # every unit that needs the files is done: nothing runs again
    assert all(w.done() for w in work_units(units, results, run_unit))


@pytest.mark.parametrize("study", list(reproduce.STUDIES))
def test_each_study_reproduces_its_committed_tables_from_its_committed_unit_results(study: str, tmp_path: Path) -> None:
    pairs = reproduce.reproduce(study, tmp_path / "work")
    assert len(pairs) == 2 and all(p.is_file() for p in pairs.values())
    assert reproduce.differences(pairs) == []


def test_a_changed_unit_result_changes_the_reproduced_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = reproduce.STUDIES["causal"]

    def lay_out(work: Path) -> None:
        study.lay_out(work)
        unit = work / "runs" / "units" / "onpolicy-s1.json"
        data = json.loads(unit.read_text())
        data["test"]["loss"] += 0.5
        unit.write_text(json.dumps(data))

    monkeypatch.setitem(reproduce.STUDIES, "causal", dataclasses.replace(study, lay_out=lay_out))
    diffs = reproduce.differences(reproduce.reproduce("causal", tmp_path / "work"))
    assert len(diffs) == 2 and any("README.md" in d and "Δ loss" not in d for d in diffs)


def test_the_reproduce_command_reports_every_study() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "reproduce.py"), "causal", "selection"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("reproduced byte for byte") == 4
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "reproduce.py"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown studies ['nope']" in bad.stderr


# ------------------------------------------------------------------------------------------- the product
BENCHMARK_NAMES = {"benchmarks", "harness"} | {p.stem for p in BENCHMARKS.glob("*.py")}
QUEUE_NAMES = {"WorkUnit", "work_queue", "run_workers", "strip_jobs", "record_sitting", "read_sittings"}


def test_the_product_imports_no_benchmark_and_holds_no_benchmark_queue() -> None:
    found = []
    for path in sorted((ROOT / "src" / "ktransfer").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name.split(".")[0] in BENCHMARK_NAMES]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in BENCHMARK_NAMES:
                    found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in QUEUE_NAMES:
                found.append(f"{where}:{node.lineno}: defines the benchmarks' {node.name}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "benchmarks/harness" in node.value \
                    and "sys.path" in node.value:
                found.append(f"{where}:{node.lineno}: puts the benchmarks on sys.path")
    assert not found, "\n".join(found)


def test_a_store_units_result_measures_the_whole_store_and_says_what_a_resumed_build_timed(tmp_path: Path) -> None:
    """A build that resumed computed part of the store: its size per token is the whole store's, its times are
    flagged as covering only what it computed."""
    import math
    from types import SimpleNamespace

    import torch

    from harness.stores import build_time_note, store_result
    from ktransfer.store import StoreWriter

    writer = StoreWriter(tmp_path / "s", kind="topk", task="causal_lm", examples=3, teacher="t", data="d" * 64, k=2,
                         vocab_size=50, values="float32", shard_size=2)
    half = torch.log(torch.tensor([[0.5, 0.25]]))
    for i, n in enumerate((2, 0, 1)):
        writer.add(i, ids=torch.tensor([[1, 2]] * n, dtype=torch.long).reshape(n, 2), logprobs=half.expand(n, 2))
    writer.close()
    resumed = SimpleNamespace(computed=1, examples=3, positions=1, total_s=2.0, forward_s=1.5)
    result = store_result(tmp_path / "s", resumed)
    stored = sum(p.stat().st_size for p in (tmp_path / "s").iterdir() if p.name != "manifest.json")
    assert (result["examples"], result["computed"], result["positions"], result["bytes"]) == (3, 1, 3, stored)
    assert math.isclose(result["bytes_per_token"], stored / 3)  # not / 1, the positions this invocation wrote
    note = build_time_note([{**result, "k": 2}])
    assert note is not None and "top-2: 1 of 3 examples" in note
    assert build_time_note([{**store_result(tmp_path / "s", SimpleNamespace(**{**vars(resumed), "computed": 3})),
                             "k": 2}]) is None


def test_the_expected_budget_sums_the_work_follows_the_longest_chain_and_slows_workers_side_by_side() -> None:
    from harness.budget import SIDE_BY_SIDE, expected_budget

    units = [Unit("store"), Unit("warm"), Unit("a", needs=("store",)), Unit("b", needs=("warm",)),
             Unit("c", needs=("store", "warm")), Unit("d")]
    seconds = {"store": 600.0, "warm": 60.0, "a": 120.0, "b": 1200.0, "c": 30.0, "d": 60.0}
    one = expected_budget(units, lambda u: seconds[u.name], jobs=1)
    assert one["work_min"] == pytest.approx(2070 / 60) and one["wall_min"] == pytest.approx(2070 / 60)
    assert one["critical_path_min"] == pytest.approx((60 + 1200) / 60)  # warm then b
    two = expected_budget(units, lambda u: seconds[u.name], jobs=2, side_by_side=1.5)
    # the queue played out (1.5 times slower each): store 0-900 and warm 0-90, then b 90-1890 (a waits for the
    # store), a 900-1080, c 1080-1125, d 1125-1215
    assert two["wall_min"] == pytest.approx(1890 / 60)
    serial = [Unit("gen"), Unit("x", needs=("gen",)), Unit("y", needs=("gen",)), Unit("z", needs=("gen",))]
    cost = {"gen": 30.0, "x": 60.0, "y": 60.0, "z": 60.0}
    # gen 0-30 while the other worker waits; x and y 30-90; z 90-150: more than half the work or the chain
    assert expected_budget(serial, lambda u: cost[u.name], jobs=2, side_by_side=1.0)["wall_min"] == pytest.approx(2.5)
    four = expected_budget(units, lambda u: 60.0, jobs=4)
    assert four["wall_min"] == pytest.approx(SIDE_BY_SIDE * 2.0)  # 6 min of work over 4 workers, chain 2 min
    with pytest.raises(ValueError, match="unit a needs \\['store'\\], which do not come before it"):
        expected_budget([Unit("a", needs=("store",)), Unit("store")], lambda u: 1.0, jobs=1)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        expected_budget(units, lambda u: 1.0, jobs=0)


def test_set_items_change_a_size_and_an_unknown_key_is_refused_listing_the_valid_ones() -> None:
    from harness.cli import apply_sets

    size = {"steps": 10, "lr": 0.1}
    apply_sets(size, ["steps=4", 'data={"name": "x"}'], also=("data",))
    assert size == {"steps": 4, "lr": 0.1, "data": {"name": "x"}}
    with pytest.raises(SystemExit, match=r"--set step: unknown size setting; valid: lr, steps, data$"):
        apply_sets({"steps": 10, "lr": 0.1}, ["step=3"], also=("data",))
