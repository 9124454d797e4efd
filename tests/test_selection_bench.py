"""The selection benchmark's configs validate, and its aggregation pairs runs by seed against vanilla KD."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from ktransfer.config import RunConfig

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402


def _bench() -> Any:
    return load_benchmark("selection/bench.py")


def test_every_variant_is_a_valid_run_config() -> None:
    bench = _bench()
    for task in bench.TASKS:
        for student in bench.STUDENTS:
            for variant in bench.VARIANTS:
                cfg = RunConfig.from_dict(bench.run_config(task, student, variant, seed=1, quick=True))
                names = [t["name"] for t in cfg.knowledge]
                assert names == bench.VARIANTS[variant][0]
                assert cfg.train.seed == 1 and cfg.data["split_seed"] == 0  # the teacher's split, whatever the seed


def _unit(variant: str, seed: int, f1: float, wall: float) -> dict[str, Any]:
    return {"task": "t", "student": "s", "variant": variant, "seed": seed, "train_wall_s": wall,
            "test": {"accuracy": f1, "macro_f1": f1, "mcc": f1}, "weights": {"step": [5, 10], "labels": [1.0, 0.5]},
            "selector_stats": None}


def test_aggregate_pairs_by_seed_and_reports_cost() -> None:
    bench = _bench()
    units = [_unit("vanilla_kd", 0, 0.50, 10.0), _unit("vanilla_kd", 1, 0.60, 10.0), _unit("vanilla_kd", 2, 0.70, 10.0),
             _unit("ac_soft", 0, 0.52, 20.0), _unit("ac_soft", 1, 0.61, 30.0), _unit("ac_soft", 2, 0.73, 10.0),
             _unit("all_equal", 0, 0.42, 10.0), _unit("all_equal", 1, 0.51, 10.0), _unit("all_equal", 2, 0.63, 10.0)]
    result = bench.aggregate(units, {}, {})
    (versus,) = result["learned_vs_baselines"]
    assert versus["variant"] == "ac_soft" and versus["all_equal"][0] == pytest.approx(0.1)
    assert versus["all_equal"][1] == pytest.approx(0.0, abs=1e-12) and "random_soft" not in versus
    row = {r["variant"]: r for r in result["rows"]}["ac_soft"]
    mean, half = row["macro_f1_minus_kd"]
    assert mean == pytest.approx(0.02)  # paired differences 0.02, 0.01, 0.03
    assert half == pytest.approx(4.302652729911275 * 0.01 / math.sqrt(3))  # t(0.975, 2) * sd / sqrt(n)
    assert row["cost_vs_kd"][0] == pytest.approx(2.0)
    assert row["mean_weights"] == {"labels": pytest.approx(0.75)}
    table = bench.markdown({**result, "meta": {"command": "c", "machine": "m", "torch": "t", "transformers": "x",
                                               "python": "p", "seeds": [0, 1, 2], "steps": 1, "batch_size": 1,
                                               "wall_time_min": 1.0}})
    assert "| t | s | ac_soft | 62.0 ± " in table and "| +2.0 ± 2.5 |" in table  # the interval includes 0: no star
    assert "| t | s | ac_soft | +10.0 ± 0.0 * |" in table  # the learned selector against all-equal weights


def test_workers_get_the_command_line_without_jobs() -> None:
    from harness.queue import strip_jobs

    assert strip_jobs(["--quick", "--jobs", "2", "--seeds", "3", "--jobs=4"]) == ["--quick", "--seeds", "3"]


def test_run_workers_starts_one_process_per_job_and_reports_a_failure(tmp_path: Path) -> None:
    from harness.queue import run_workers

    script = tmp_path / "w.py"
    script.write_text("import sys, pathlib\nw = sys.argv[sys.argv.index('--worker') + 1]\n"
                      f"pathlib.Path(r'{tmp_path}', w.replace('/', '-')).write_text(' '.join(sys.argv[1:]))\n"
                      "sys.exit(1 if w == '1/2' and '--fail' in sys.argv else 0)\n")
    assert run_workers(script, ["--quick", "--jobs", "2"], 2)
    assert (tmp_path / "0-2").read_text() == "--quick --worker 0/2" and (tmp_path / "1-2").exists()
    assert not run_workers(script, ["--fail", "--jobs", "2"], 2)
