"""The causal LM example's benchmark: its runs' configs, the order and needs of its work, and the
paired aggregation over seeds against the student trained alone (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402


def _bench() -> Any:
    return load_benchmark("causal/run.py")


def test_the_warm_started_run_is_the_student_alone_then_the_on_policy_config(tmp_path: Path) -> None:
    bench = _bench()
    alone = bench.run_config("student_alone", 2, tmp_path).to_dict()
    onpolicy = bench.run_config("onpolicy", 2, tmp_path).to_dict()
    warm = bench.run_config("warm", 2, tmp_path).to_dict()
    then = bench.run_config("onpolicy_warm", 2, tmp_path).to_dict()
    steps = alone["train"]["max_steps"]
    assert alone["train"]["seed"] == onpolicy["train"]["seed"] == warm["train"]["seed"] == then["train"]["seed"] == 2
    assert warm["train"].pop("max_steps") + then["train"].pop("max_steps") == steps == onpolicy["train"].pop("max_steps")
    alone["train"].pop("max_steps")
    assert warm == alone  # the warm start is the student alone, stopped at half the steps
    assert then["student"].pop("weights") == str(tmp_path / "warm-s2" / "final" / "model.safetensors")
    assert then["schedule"].pop("warmup_steps") == 0
    onpolicy["schedule"].pop("warmup_steps")
    assert then == onpolicy


def test_work_units_wait_for_the_warm_start(tmp_path: Path) -> None:
    bench = _bench()
    units = bench.grid_units(list(bench.METHODS), 2)
    needs = {u.name: set(u.needs) for u in units}
    assert [u.name for u in units][:4] == ["onpolicy-s0", "warm-s0", "onpolicy_warm-s0", "student_alone-s0"]
    assert len(units) == 8 and needs["onpolicy_warm-s1"] == {"warm-s1"} and needs["student_alone-s1"] == set()
    assert units[2].key == {"method": "onpolicy_warm", "seed": 0}


def _unit(method: str, seed: int, loss: float, kl: float) -> dict[str, Any]:
    import math

    return {"method": method, "seed": seed, "steps": 100, "wall_time_s": 60.0,
            "test": {"perplexity": math.exp(loss), "loss": loss, "teacher_kl": kl, "accuracy": 0.1}}


def test_aggregate_pairs_seeds_against_the_student_alone() -> None:
    from scipy import stats

    bench = _bench()
    units = [_unit("student_alone", s, 7.0 + s, 4.0) for s in range(3)]
    units += [_unit("onpolicy_warm", s, 6.5 + s + 0.1 * s, 3.9) for s in range(3)]
    rows = {r["method"]: r for r in bench.aggregate(units)}
    assert rows["student_alone"]["diff_loss"] is None
    diff = rows["onpolicy_warm"]["diff_loss"]
    deltas = [-0.5, -0.4, -0.3]
    assert diff[0] == pytest.approx(sum(deltas) / 3)
    assert diff[1] == pytest.approx(stats.t.ppf(0.975, 2) * stats.tstd(deltas) / 3 ** 0.5)
    assert rows["onpolicy_warm"]["diff_teacher_kl"][0] == pytest.approx(-0.1)
    text = bench.table(list(rows.values()))
    assert "-0.400 ± 0.248 *" in text and "student on the text alone" in text
