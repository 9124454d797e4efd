"""The translation benchmark: every method's config validates at both sizes, students are about 1/4 of
the teacher, and the aggregation pairs runs by seed against word-level forward KL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402


def _bench() -> Any:
    return load_benchmark("translation/bench.py")


@pytest.mark.parametrize("size_name", ["quick", "gpu"])
def test_every_method_config_validates_and_the_student_is_a_quarter(size_name: str, tmp_path: Path) -> None:
    from ktransfer.models import MODELS, count_parameters

    bench = _bench()
    size = bench.SIZES[size_name]
    (tmp_path / "init-s0.safetensors").write_bytes(b"")  # method_config only names it
    for method in bench.ALL_METHODS:
        cfg = bench.method_config(method, size, tmp_path, seed=0)
        assert cfg.task == "seq2seq" and cfg.train.metric == "bleu"
        steps = size["steps"] - (size["warm_steps"] if method in bench.ON_POLICY + bench.FROM_KD else 0)
        assert cfg.train.max_steps == steps and cfg.train.seed == 0
        assert (cfg.teacher is None) == (method == "labels")
    ids = {"vocab_size": size["data"]["vocab_size"], "pad_token_id": 0, "eos_token_id": 3, "decoder_start_token_id": 0}
    teacher = count_parameters(MODELS.build("seq2seq_transformer", {**ids, **size["teacher"]}))
    student = count_parameters(MODELS.build("seq2seq_transformer", {**ids, **size["student"]}))
    assert 0.2 <= student / teacher <= 0.3


@pytest.mark.parametrize("size_name", ["quick", "gpu"])
def test_the_from_kd_variants_differ_from_word_kd_only_in_the_last_steps_loss(size_name: str, tmp_path: Path) -> None:
    bench = _bench()
    size = bench.SIZES[size_name]
    (tmp_path / "init-s1.safetensors").write_bytes(b"")
    warm = bench.method_config("warm_kd", size, tmp_path, seed=1).to_dict()
    word = bench.method_config("word_kd", size, tmp_path, seed=1).to_dict()
    assert warm["train"].pop("max_steps") == size["warm_steps"] and word["train"].pop("max_steps") == size["steps"]
    assert warm["schedule"].pop("warmup_steps") == min(100, size["warm_steps"] // 10)
    word["schedule"].pop("warmup_steps")
    assert warm == word  # the warm start is word KD run for warm_steps (its own schedule, as the other warm start)
    control = bench.method_config("word_kd_from_kd", size, tmp_path, seed=1).to_dict()
    onpolicy = bench.method_config("backward_kl_from_kd", size, tmp_path, seed=1).to_dict()
    for key in ("optim", "schedule", "train", "student", "teacher", "data"):
        assert control[key] == onpolicy[key], key  # only the targets and the loss differ
    assert control["knowledge"] == word["knowledge"] and not control.get("targets")
    for method in bench.ON_POLICY:
        plain = bench.method_config(method, size, tmp_path, seed=1).to_dict()
        from_kd = bench.method_config(f"{method}_from_kd", size, tmp_path, seed=1).to_dict()
        assert plain["student"].pop("weights").endswith("warm-s1/final/model.safetensors")
        assert from_kd["student"].pop("weights").endswith("warm_kd-s1/final/model.safetensors")
        assert plain == from_kd
    units = bench.grid_units(["word_kd", "jsd_from_kd"], 2)
    needs = {u.name: set(u.needs) for u in units}
    assert needs == {"teacher": set(), "warm_kd-s0": {"teacher"}, "warm_kd-s1": {"teacher"},
                     "jsd_from_kd-s0": {"teacher", "warm_kd-s0"}, "jsd_from_kd-s1": {"teacher", "warm_kd-s1"},
                     "word_kd-s0": {"teacher"}, "word_kd-s1": {"teacher"}}
    result = bench.aggregate([_unit("word_kd", 0, 5.0, 20.0), _unit("jsd_from_kd", 0, 6.0, 21.0),
                              _unit("word_kd_from_kd", 0, 5.5, 22.0)], {}, {}, {})
    rows = {r["method"]: r for r in result["rows"]}
    row = rows["jsd_from_kd"]
    assert row["warm_start"] == "warm_kd" and row["label"].endswith("from word KD")
    assert row["diff_bleu_vs_word_kd"][0] == pytest.approx(1.0)
    assert row["diff_bleu_vs_word_kd_from_kd"][0] == pytest.approx(0.5)
    assert row["diff_chrf_vs_word_kd_from_kd"][0] == pytest.approx(-1.0)
    assert rows["word_kd_from_kd"]["diff_bleu_vs_word_kd_from_kd"] is None
    assert rows["word_kd"]["diff_bleu_vs_word_kd_from_kd"] is None


def _unit(method: str, seed: int, bleu: float, chrf: float) -> dict[str, Any]:
    return {"method": method, "seed": seed, "test": {"bleu": bleu, "chrf": chrf}, "best_val": {"bleu": bleu - 1},
            "wall_time_s": 10.0, "warm_start_s": 0.0, "samples_per_s": 5.0, "parameters": 100}


def test_aggregate_pairs_by_seed_against_word_kd() -> None:
    bench = _bench()
    units = [_unit("word_kd", s, b, 40 + s) for s, b in enumerate([10.0, 12.0, 14.0])]
    units += [_unit("backward_kl", s, b, 41 + s) for s, b in enumerate([11.0, 12.5, 15.5])]
    result = bench.aggregate(units, {}, {}, {})
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["word_kd"]["test_bleu"][0] == pytest.approx(12.0)
    diff = rows["backward_kl"]["diff_bleu_vs_word_kd"]
    assert diff[0] == pytest.approx((1.0 + 0.5 + 1.5) / 3)
    from scipy import stats

    sd = stats.tstd([1.0, 0.5, 1.5])
    assert diff[1] == pytest.approx(stats.t.ppf(0.975, 2) * sd / 3 ** 0.5)
    assert rows["backward_kl"]["diff_chrf_vs_word_kd"][0] == pytest.approx(1.0)
    assert rows["backward_kl"]["diff_chrf_vs_word_kd"][1] == pytest.approx(0.0)
    assert rows["word_kd"]["diff_bleu_vs_word_kd"] is None and rows["backward_kl"]["warm_start"]


def test_work_units_start_with_the_teacher_and_wait_for_what_they_need(tmp_path: Path) -> None:
    bench = _bench()
    from harness.grid import work_units

    units = bench.grid_units(bench.METHODS, 2)
    names = [u.name for u in units]
    assert names[0] == "teacher" and len(names) == len(set(names)) == 1 + 2 + 1 + 6 * 2
    needs = {u.name: set(u.needs) for u in units}
    assert needs["labels-s1"] == set() and needs["warm-s0"] == set()
    assert needs["word_kd-s0"] == {"teacher"} and needs["seq_kd-s1"] == {"seq_kd-generation"}
    assert needs["seq_kd-generation"] == {"teacher"} and needs["reinforce-s1"] == {"teacher", "warm-s1"}
    work = work_units(units, tmp_path, lambda unit: {})
    assert not any(w.done() for w in work)
    (tmp_path / "warm-s1.json").write_text("{}")
    assert [w.name for w in work if w.done()] == ["warm-s1"]
    only = bench.grid_units(["labels", "word_kd"], 1)
    assert [u.name for u in only] == ["teacher", "labels-s0", "word_kd-s0"]


def test_results_of_another_size_setting_are_not_mixed_in(tmp_path: Path) -> None:
    import copy

    bench = _bench()
    size = copy.deepcopy(bench.SIZES["quick"])
    bench.check_same_setup(tmp_path, tmp_path / "runs", size)
    bench.check_same_setup(tmp_path, tmp_path / "runs", size)  # the same setting continues
    size["steps"] = 7
    with pytest.raises(SystemExit, match="another size setting"):
        bench.check_same_setup(tmp_path, tmp_path / "runs", size)


def test_wall_time_is_counted_per_command() -> None:
    bench = _bench()
    sittings = [{"wall_time_min": 30.0}, {"wall_time_min": 21.0, "command": "A"}, {"wall_time_min": 9.5, "command": "B"}]
    assert bench.wall_minutes(sittings, "A") == {"A": 51.0, "B": 9.5}
    assert bench.wall_minutes([], "A") == {}


def test_each_needed_unit_keeps_the_files_its_units_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    bench = _bench()
    monkeypatch.setattr(bench, "student_init", lambda size, runs, seed: runs / f"init-s{seed}.safetensors")
    size = bench.SIZES["quick"]
    units = {u.name: u for u in bench.grid_units(bench.METHODS + list(bench.FROM_KD), 2, tmp_path)}
    assert {"warm-s1", "warm_kd-s1", "seq_kd-generation"} <= set(units)
    for u in units.values():
        if u.needs and u.key["kind"] == "method":
            config = bench.method_config(u.key["method"], size, tmp_path, u.key["seed"]).to_dict()
            teacher = config.get("teacher") or {}
            read = json.dumps(config) + json.dumps(str(Path(teacher["from_run"]) / "best" / "model.safetensors")
                                                   if "from_run" in teacher else "")
            for needed in u.needs:
                assert units[needed].keeps and all(json.dumps(k)[1:-1] in read for k in units[needed].keeps), u.name
    assert all(not u.keeps for u in bench.grid_units(bench.METHODS, 1))
