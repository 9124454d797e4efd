"""The chains-of-runs benchmark: its grid, its chain configs, and an end-to-end run at a tiny size (a 4-layer
random BERT for MiniLM, a three-class CSV for BBC News, two steps a hop)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from harness.reproduce import load_study  # noqa: E402
from test_text_data import tiny_dir  # noqa: E402, F401  (fixture: a 4-layer tiny BERT and its tokenizer)

bench = load_study("chains/bench.py")


def test_the_grid_is_the_teacher_then_every_chain_grouped_by_method_and_seed() -> None:
    size = bench.SIZES["quick"]
    assert bench.chains([4, 3]) == {"direct": [], "via4": [4], "via3": [3], "via4_3": [4, 3]}
    units = bench.grid_units(size, 1, list(bench.METHODS))
    assert units[0].name == "teacher" and len(units) == 1 + 2 * 2 * 4
    chain_units = units[1:]
    assert all(u.needs == ("teacher",) and u.group == f"{u.key['method']}-s0" for u in chain_units)
    assert {u.name for u in chain_units} >= {"vanilla_kd-1L-direct-s0", "learned-2L-via4_3-s0"}


def test_every_chain_is_a_valid_chain_of_runs_cut_from_the_previous_hop() -> None:
    from ktransfer.hops.run_config import RunChainConfig

    size = bench.SIZES["full"]
    for method in bench.METHODS:
        cfg = RunChainConfig.from_dict(bench.chain_config(size, 1, [4, 3], method, 2))
        assert [f["student"] for f in cfg.plan.intermediates] == [bench.cut(4), bench.cut(3)]
        assert cfg.student["student"] == bench.cut(1) and cfg.defaults["train"]["seed"] == 2
        assert cfg.teacher["train"]["seed"] == 0  # one teacher for every seed


def test_the_benchmark_runs_end_to_end_at_a_tiny_size_and_aggregates(tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    csv = tmp_path / "news.csv"
    csv.write_text("text,label\n" + "".join(f"{w} {i} {w},{w}\n" for i in range(16) for w in ("good", "bad", "the")))
    data = {"name": "text_csv", "path": str(csv), "tokenizer": str(tiny_dir), "max_length": 12}
    sets: dict[str, Any] = {"steps": 2, "teacher_steps": 2, "batch_size": 8, "eval_every": 2, "warmup": 0,
                            "threads": 1, "heldout_examples": 8, "students": [1], "intermediates": [3, 2], "data": data,
                            "teacher_model": {"builder": "minilm", "path": str(tiny_dir)}}
    argv = ["--quick", "--methods", "learned", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "results" / "chains.json").read_text())
    rows = {r["chain"]: r for r in result["rows"]}
    assert set(rows) == {"direct", "via3", "via2", "via3_2"}
    for name, row in rows.items():
        assert 0.0 <= row["macro_f1"][0] <= 1.0 and row["wall_s"][0] > 0, name
    unit = json.loads((tmp_path / "results" / "chains" / "quick" / "learned-1L-via3_2-s0.json").read_text())
    direct = json.loads((tmp_path / "results" / "chains" / "quick" / "learned-1L-direct-s0.json").read_text())
    assert unit["hops"] == ["hf_cut-first3", "hf_cut-first2", "hf_cut-first1"]
    assert rows["via3_2"]["vs_direct"][0] == pytest.approx(unit["macro_f1"] - direct["macro_f1"])
    # every hop trained once: the teacher, T->3, T->2, 3->2 and the four final hops
    assert len(list((tmp_path / "runs" / "quick" / "chains" / "hops").glob("*/summary.json"))) == 8
    table = (tmp_path / "results" / "chains.md").read_text()
    assert "| 1L | learned | via3_2 |" in table
