"""The converged-budget selection benchmark: its configs read the teacher from a store and stop on validation, its
aggregation pairs runs with the 150-step study by seed, and a tiny end-to-end sitting builds one store and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ktransfer.config import RunConfig

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402


def _bench() -> Any:
    return load_benchmark("selection/converged.py")


def test_every_variant_trains_from_the_store_until_validation_stops_improving() -> None:
    bench = _bench()
    assert list(bench.VARIANTS) == list(bench.SELECTION.VARIANTS)  # the 150-step study's variants
    for size in bench.SIZES.values():
        for task in bench.TASKS:
            for student in bench.STUDENTS:
                for variant in bench.VARIANTS:
                    cfg = RunConfig.from_dict(bench.run_config(task, student, variant, 2, size, Path("stores/x")))
                    assert cfg.teacher_store is not None and cfg.teacher_store.endswith("stores/x")
                    assert [t["name"] for t in cfg.knowledge] == bench.VARIANTS[variant][0]
                    assert cfg.train.patience == size["patience"] and cfg.train.max_steps == size["max_steps"]
                    assert cfg.train.seed == 2 and cfg.data["split_seed"] == 0  # the teacher's split, whatever the seed


def _unit(variant: str, seed: int, f1: float, steps: int = 300, stopped: bool = True) -> dict[str, Any]:
    return {"task": "t", "student": "s", "variant": variant, "seed": seed, "train_wall_s": 10.0, "steps": steps,
            "best_step": steps - 100, "stopped_early": stopped, "at_cap": not stopped,
            "test": {"accuracy": f1, "macro_f1": f1, "mcc": f1}, "weights": {"step": [5], "labels": [1.0]},
            "selector_stats": None}


def test_aggregate_pairs_each_variant_with_its_150_step_runs_by_seed() -> None:
    bench = _bench()
    units = [_unit("vanilla_kd", 0, 0.60), _unit("vanilla_kd", 1, 0.70, 600, False),
             _unit("all_equal", 0, 0.58), _unit("all_equal", 1, 0.66)]
    before = [_unit("vanilla_kd", 0, 0.50), _unit("vanilla_kd", 1, 0.64), _unit("vanilla_kd", 2, 0.99),
              _unit("all_equal", 0, 0.55)]
    result = bench.aggregate(units, [], before, {}, {})
    rows = {r["variant"]: r for r in result["rows"]}
    kd = rows["vanilla_kd"]
    assert kd["minus_step150"][0] == pytest.approx(0.08)  # seeds 0 and 1: +0.10 and +0.06 (seed 2 has no partner)
    assert kd["step150"][0] == pytest.approx((0.50 + 0.64 + 0.99) / 3) and kd["step150_n"] == 3
    assert kd["steps"][0] == pytest.approx(450) and kd["stopped_early"] == 1 and kd["at_cap"] == 1
    assert rows["all_equal"]["minus_step150"][0] == pytest.approx(0.03)  # one shared seed: no interval
    assert rows["all_equal"]["macro_f1_minus_kd"][0] == pytest.approx(-0.03)
    meta = {"command": "c", "machine": "m", "torch": "t", "transformers": "x", "python": "p", "seeds": [0, 1],
            "wall_time_min": 1.0, "size": bench.SIZES["quick"]}
    table = bench.markdown({**result, "meta": meta})
    t1 = 12.706204736174707  # t(0.975, 1): two seeds
    assert kd["macro_f1"][1] == pytest.approx(t1 * 0.1 / 2 ** 0.5 / 2 ** 0.5)  # sd of (0.6, 0.7) over sqrt(2)
    assert "| t | s | vanilla_kd | macro_f1 | 65.0 ± 63.5 | 71.0 ± " in table
    assert "| +8.0 ± 25.4 | — | 450 | 350 | 1/2 | 1.00 |" in table  # vs 150 steps (interval includes 0), vs KD, steps
    assert "| t | s | all_equal | macro_f1 | 62.0 ± 50.8 | 55.0 | +3.0 | -3.0 ± 12.7 | 300 | 200 | 2/2 |" in table


@pytest.fixture()
def tiny_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A 4-layer BERT (width 24: the relation term splits it into 12 heads) with its tokenizer, a CSV of labelled texts and its teacher's config."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    words = ["good", "bad", "the", "film", "was", "very", "not", "great", "awful", "plot"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([" ".join(words)] * 20, trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    model = tmp_path / "model"
    fast.save_pretrained(model)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(fast), hidden_size=24, num_hidden_layers=4,
                                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                             num_labels=3)).save_pretrained(model)
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(words[int(j)] for j in torch.randint(len(words), (int(torch.randint(1, 9, (1,), generator=g)),),
                                                          generator=g)) + f" {i},{['pos', 'neg', 'mixed'][i % 3]}\n"
            for i in range(150)]
    (tmp_path / "texts.csv").write_text("text,label\n" + "".join(rows))
    data = {"name": "text_csv", "path": str(tmp_path / "texts.csv"), "tokenizer": str(model), "max_length": 16,
            "split_seed": 0}
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(json.dumps({"task": "classification", "data": data,
                                   "student": {"builder": "minilm", "path": str(model)},
                                   "knowledge": [{"type": "labels"}],
                                   "train": {"max_steps": 3, "batch_size": 16, "eval_every": 3, "checkpoint_every": 3}}))
    return {"data": data, "teacher_config": str(teacher), "model": str(model)}


def test_a_tiny_sitting_builds_the_store_once_trains_from_it_and_resumes(
        tiny_task: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    monkeypatch.setattr(bench, "TASKS", {"tiny": {"data": tiny_task["data"], "score": "macro_f1",
                                                  "teacher_config": tiny_task["teacher_config"]}})
    monkeypatch.setattr(bench, "STUDENTS", {"tiny-2L": {"builder": "minilm_student", "num_layers": 2,
                                                        "path": tiny_task["model"]}})
    (tmp_path / "step150.json").write_text(json.dumps({"units": [{**_unit("vanilla_kd", 0, 0.25), "task": "tiny",
                                                                  "student": "tiny-2L"}]}))
    argv = ["--quick", "--tasks", "tiny", "--students", "tiny-2L", "--variants", "vanilla_kd", "all_equal",
            "ac_soft_multi", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"),
            "--report-dir", str(tmp_path / "report"),
            "--step150", str(tmp_path / "step150.json"), "--set", "max_steps=8", "--set", "eval_every=2",
            "--set", "patience=1", "--set", "warmup=0", "--set", "batch_size=8", "--set", "lr=0.003"]
    assert bench.main(argv) == 0
    units = tmp_path / "results" / "selection_converged" / "quick"
    store = json.loads((units / "store-tiny-tiny-2L.json").read_text())
    assert store["hidden"] == ["bert.encoder.layer.1", "bert.encoder.layer.3",
                               "bert.encoder.layer.3.attention.self.value", "bert.pooler"]
    assert store["attentions"] == ["bert.encoder.layer.1.attention.self", "bert.encoder.layer.3.attention.self"]
    assert store["computed"] == store["examples"] > 0
    done = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    assert set(done) == {"store-tiny-tiny-2L.json", "teacher-tiny.json", *(f"tiny-tiny-2L-{v}-s0.json"
                                                      for v in ("vanilla_kd", "all_equal", "ac_soft_multi"))}
    for variant in ("vanilla_kd", "all_equal", "ac_soft_multi"):
        unit = json.loads((units / f"tiny-tiny-2L-{variant}-s0.json").read_text())
        assert unit["config"]["teacher"] == {"store": str(tmp_path / "out" / "quick" / "stores" / "store-tiny-tiny-2L")}
        assert unit["steps"] <= 8 and unit["stopped_early"] != unit["at_cap"]
        assert [p[0] for p in unit["val_curve"]] == list(range(2, unit["steps"] + 1, 2))
    table = (tmp_path / "report" / "selection_converged.md").read_text()
    assert "| tiny | tiny-2L | vanilla_kd | macro_f1 |" in table and "| 25.0 |" in table
    assert "Store (tiny, for tiny-2L):" in table
    assert bench.main(argv) == 0  # resumed: nothing runs again
    assert {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")} == done


def test_on_a_fresh_machine_the_teacher_and_store_are_made_again_only_for_units_still_to_run(
        tiny_task: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bench = _bench()
    monkeypatch.setattr(bench, "TASKS", {"tiny": {"data": tiny_task["data"], "score": "macro_f1",
                                                  "teacher_config": tiny_task["teacher_config"]}})
    monkeypatch.setattr(bench, "STUDENTS", {"tiny-2L": {"builder": "minilm_student", "num_layers": 2,
                                                        "path": tiny_task["model"]}})
    argv = ["--quick", "--tasks", "tiny", "--students", "tiny-2L", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results"), "--report-dir", str(tmp_path / "report"),
            "--step150", str(tmp_path / "none.json"), "--set", "max_steps=2", "--set", "eval_every=2",
            "--set", "warmup=0", "--set", "batch_size=8"]
    assert bench.main([*argv, "--variants", "vanilla_kd"]) == 0
    units = tmp_path / "results" / "selection_converged" / "quick"

    def fresh_machine() -> None:  # the committed results stay; the cache and the run folders are gone
        shutil.rmtree(tmp_path / "cache")
        shutil.rmtree(tmp_path / "out")

    fresh_machine()
    capsys.readouterr()
    assert bench.main([*argv, "--variants", "vanilla_kd"]) == 0  # every unit done: nothing is trained
    assert not (tmp_path / "cache").exists() and "training it again" not in capsys.readouterr().err
    assert bench.main([*argv, "--variants", "vanilla_kd", "all_equal", "--aggregate-only"]) == 0
    assert not (tmp_path / "cache").exists()  # aggregating reads the records alone
    assert bench.main([*argv, "--variants", "vanilla_kd", "all_equal"]) == 0  # all_equal needs the store
    err = capsys.readouterr().err
    assert "teacher-tiny.json: recorded, but its teacher is not in this machine's cache; training it again" in err
    assert "store-tiny-tiny-2L: its result exists but the files it leaves for tiny-tiny-2L-all_equal-s0" in err
    assert (units / "tiny-tiny-2L-all_equal-s0.json").is_file()
