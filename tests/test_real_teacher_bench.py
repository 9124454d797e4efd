"""The real-teacher benchmark: its grid, budget arithmetic, generation scores, configs, and an end-to-end run of
every method on a tiny random Llama teacher laid out as a model folder."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "real_teacher"))
sys.path.insert(0, str(ROOT / "tests"))

import bench  # noqa: E402
import metrics  # noqa: E402
from test_causal import word_tokenizer_file  # noqa: E402


# ------------------------------------------------------------------------------------------- grid and budget
def test_quick_grid_is_one_seed_of_the_main_methods_after_the_units_they_need() -> None:
    size = bench.SIZES["quick"]
    units = {u.name: u for u in bench.grid_units(size["methods"], size["seeds"])}
    assert set(units) == {"store-k8", "store-k64", "generation", "warm-s0", "untrained-s0", "labels-s0", "word_kd-s0",
                          "store_k8-s0", "store_k64-s0", "backward_kl-s0", "seq_kd-s0"}
    assert units["store_k8-s0"].needs == ("store-k8",) and units["store_k64-s0"].needs == ("store-k64",)
    assert units["backward_kl-s0"].needs == ("warm-s0",) and units["seq_kd-s0"].needs == ("generation",)
    assert units["labels-s0"].needs == units["word_kd-s0"].needs == units["untrained-s0"].needs == ()


def test_full_grid_is_three_seeds_of_every_method_with_a_warm_start_per_seed() -> None:
    size = bench.SIZES["full"]
    units = bench.grid_units(size["methods"], size["seeds"])
    names = [u.name for u in units]
    assert size["seeds"] == 3 and set(size["methods"]) == set(bench.METHODS)
    assert len(names) == len(set(names)) == 2 + 1 + 3 + 3 * len(bench.METHODS)
    for s in range(3):
        assert {u.needs for u in units if u.name in (f"backward_kl-s{s}", f"jsd-s{s}")} == {(f"warm-s{s}",)}
    assert names.index("store-k64") < names.index("store_k64-s0")
    with pytest.raises(ValueError, match="unknown methods.*valid choices"):
        bench.grid_units(["labels", "rlhf"], 1)


def test_expected_budget_is_the_measured_costs_summed_by_hand() -> None:
    size = {**bench.SIZES["quick"], "steps": 10, "warm_steps": 4, "train_size": 16, "val_size": 16, "test_size": 8,
            "generation_prompts": 8, "new_tokens": 64}
    ratio = 134.5 / 63.7
    teacher, student, kd, sample = 5.6 - 3.5, 3.5, 5.6, 4.25  # the --quick sitting's steps, as the bench cites them
    validation = 2 * teacher * (1 + 1 / ratio)  # two validation batches: teacher and student forward
    evaluation = teacher * (1 + 1 / ratio) + (sample + teacher) + validation  # one test batch, one batch of prompts
    by_hand = {"store-k8": 2 * teacher, "generation": 2 * sample * ratio, "warm-s0": 4 * student + validation,
               "labels-s0": 10 * student + evaluation, "store_k8-s0": 10 * student + evaluation,
               "seq_kd-s0": 10 * student + evaluation, "backward_kl-s0": 6 * (sample + kd) + evaluation,
               "untrained-s0": evaluation - validation}
    methods = ["untrained", "labels", "store_k8", "seq_kd", "backward_kl"]
    for u in bench.grid_units(methods, 1):
        assert bench.unit_seconds(u, size) == pytest.approx(by_hand[u.name])
    budget = bench.expected_budget(size, methods, 1, jobs=2)
    assert budget["work_min"] == pytest.approx(sum(by_hand.values()) / 60)
    chain = max(by_hand["warm-s0"] + by_hand["backward_kl-s0"], by_hand["generation"] + by_hand["seq_kd-s0"],
                by_hand["store-k8"] + by_hand["store_k8-s0"])
    assert budget["critical_path_min"] == pytest.approx(chain / 60)
    side_by_side = 1.02  # two workers on the 2 cores: each step slower than one alone
    # two workers taking units in grid order: no faster than half the work or the longest chain, no slower than both
    low = side_by_side * max(sum(by_hand.values()) / 2, chain) / 60
    assert low - 1e-9 <= budget["wall_min"] <= side_by_side * (sum(by_hand.values()) / 2 + chain) / 60
    assert bench.expected_budget(size, methods, 1, jobs=1)["wall_min"] == pytest.approx(sum(by_hand.values()) / 60)
    # --full generates 64 prompts a call, 1.987 times faster per prompt than 8 (generation_batch.py); 16 prompts
    # make one call of 64 places
    generation = next(u for u in bench.grid_units(methods, 1) if u.name == "generation")
    assert bench.SIZES["full"]["generation_batch"] == 64
    assert bench.unit_seconds(generation, {**size, "generation_batch": 64}) == pytest.approx(
        64 * sample * ratio / 8 / 1.987)


def test_declared_sizes_fit_their_budgets() -> None:
    quick, full = bench.SIZES["quick"], bench.SIZES["full"]
    q = bench.expected_budget(quick, quick["methods"], 1, jobs=2)
    f = bench.expected_budget(full, full["methods"], 3, jobs=2)
    assert q["wall_min"] < 60  # about 55 min with --jobs 2, as --quick's help says: the hour
    assert f["wall_min"] < 9.5 * 60  # about 9 h with --jobs 2, across sittings
    # each example of the training split is seen once by a full-length run
    assert quick["train_size"] == quick["steps"] * quick["batch_size"]
    assert full["train_size"] == full["steps"] * full["batch_size"]


def test_sizes_default_to_their_seeds_and_methods_unless_given(tmp_path: Path) -> None:
    from harness.cli import parse

    study = bench.RealTeacher()
    for argv, seeds, methods in ((["--quick"], 1, bench.QUICK_METHODS), (["--full"], 3, bench.METHODS),
                                 (["--quick", "--seeds", "3"], 3, bench.QUICK_METHODS),
                                 (["--full", "--seeds", "1", "--methods", "labels"], 1, ["labels"])):
        args = parse(study, [*argv, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
        study.setup(args)
        assert (args.seeds, args.methods) == (seeds, methods), argv


# ------------------------------------------------------------------------------------------- generation scores
def test_repetition_rate_against_hand_counts() -> None:
    # 3-grams of a b c a b c a: abc bca cab abc bca -> 5, of which 2 repeat an earlier one
    assert metrics.repetition_rate(list("abcabca"), 3) == pytest.approx(2 / 5)
    assert metrics.repetition_rate([1, 2, 3, 4], 2) == 0.0
    assert metrics.repetition_rate([7, 7, 7, 7], 1) == pytest.approx(3 / 4)
    assert metrics.repetition_rate([1, 2], 3) == 0.0
    # pooled: (2 repeated of 5) and (0 of 2) -> 2 / 7, not the mean of the rates
    assert metrics.mean_repetition_rate([list("abcabca"), list("xyzw")], 3) == pytest.approx(2 / 7)
    with pytest.raises(ValueError, match="n must be at least 1"):
        metrics.repetition_rate([1], 0)


def test_chrf_of_identical_disjoint_and_partial_text() -> None:
    assert metrics.chrf(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert metrics.chrf(["qqq"], ["zzz"]) == pytest.approx(0.0)
    partial = metrics.chrf(["the cat sat on it"], ["the cat sat on the mat"])
    assert 0 < partial < 100
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        metrics.chrf(["a", "b"], ["a"])


def test_teacher_logprob_per_token_matches_a_float64_reference() -> None:
    torch.manual_seed(0)
    table = torch.randn(5, 5, dtype=torch.float64)  # next-token logits depend on the previous token only

    class Bigram(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> Any:
            return type("Out", (), {"logits": table[input_ids].float()})()

    prompts = torch.tensor([[1, 2], [0, 4]])
    cont = torch.tensor([[3, 3, 0], [2, 1, 1]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    logp = torch.log_softmax(table, dim=-1)
    by_hand = [logp[2, 3], logp[3, 3], logp[4, 2], logp[2, 1], logp[1, 1]]
    expected = float(sum(by_hand)) / 5
    assert metrics.teacher_logprob_per_token(Bigram(), prompts, cont, mask) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------- configs
def test_configs_pass_ktransfer_check_with_smollm2(tmp_path: Path) -> None:
    """Every config as the bench sets it passes `ktransfer check` (the store's aside: it reads a built store, run in
    the end-to-end test; the on-policy ones with the cut student's own weights in place of the warm start's)."""
    from ktransfer.config import ConfigError

    try:
        from ktransfer.pretrained import smollm2_dir

        teacher = str(smollm2_dir())
    except (ConfigError, FileNotFoundError, RuntimeError, ImportError) as e:
        pytest.skip(f"SmolLM2 not prepared ({e}): ktransfer data prepare smollm2 && ktransfer data prepare bbc-news")
    import yaml

    from ktransfer.cli import main as cli

    size = bench.SIZES["quick"]
    for method in ("labels", "word_kd", "seq_kd", "backward_kl", "jsd"):
        spec = bench.method_config(method, size, tmp_path, 0, teacher).to_dict()
        spec["student"].pop("weights", None)  # the warm start's weights, not built here
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(spec))
        assert cli(["check", str(path)]) == 0, method


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A word-level corpus of 40 documents of 30 words (100 distinct) and a random 3-layer Llama on its vocabulary, saved as a
    model folder with the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("real_teacher")
    words = [f"w{i}" for i in range(100)]  # a vocabulary above the largest k (64)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)]
    (folder / "docs.txt").write_text("\n".join(docs) + "\n")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file(folder, words)), eos_token="<eos>",
                                  pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=64, eos_token_id=0, pad_token_id=1,
                                         bos_token_id=None, tie_word_embeddings=True))
    model.save_pretrained(folder / "teacher")
    tok.save_pretrained(folder / "teacher")
    return {"corpus": folder / "docs.txt", "teacher": folder / "teacher"}


def test_every_method_runs_end_to_end_and_aggregates(tiny_teacher: dict[str, Path], tmp_path: Path) -> None:
    data = {"name": "text_corpus", "path": str(tiny_teacher["corpus"]), "tokenizer": str(tiny_teacher["teacher"]),
            "val_fraction": 0.2, "test_fraction": 0.2}
    sets = ["steps=4", "warm_steps=2", "batch_size=4", "train_size=16", "val_size=4", "test_size=8", "generation_prompts=6",
            "prompt_length=4", "max_length=16", "new_tokens=6", "lr=0.01", "on_policy_lr=0.01",
            f"data={json.dumps(data)}"]
    argv = ["--full", "--seeds", "1", "--teacher", str(tiny_teacher["teacher"]), "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")] + [a for s in sets for a in ("--set", s)]
    assert bench.main(argv) == 0
    results = tmp_path / "results"
    aggregate = json.loads((results / "real_teacher-full.json").read_text())
    rows = {r["method"]: r for r in aggregate["rows"]}
    assert set(rows) == set(bench.METHODS)
    for method, row in rows.items():
        assert math.isfinite(row["test_loss"][0]) and row["teacher_kl"][0] >= 0, method
        assert 0 <= row["chrf"][0] <= 100 and row["teacher_logprob"][0] <= 0
        assert 0 <= row["repetition_rate"][0] <= 1
        if method != "labels":  # one seed: the paired difference is the difference itself
            unit = json.loads((results / "real_teacher" / "full" / f"{method}-s0.json").read_text())
            base = json.loads((results / "real_teacher" / "full" / "labels-s0.json").read_text())
            expected = unit["test"]["teacher_kl"] - base["test"]["teacher_kl"]
            assert row["diff_teacher_kl"][0] == pytest.approx(expected)
    # training moved the student away from the cut: its held-out loss differs from the untrained one
    assert rows["labels"]["test_loss"][0] != pytest.approx(rows["untrained"]["test_loss"][0])
    stores = {s["k"]: s for s in aggregate["stores"]}
    assert len(list((tmp_path / "runs" / "full" / "generations").iterdir())) == 1  # seq_kd read the shared cache
    assert set(stores) == {8, 64} and stores[8]["bytes_per_token"] < stores[64]["bytes_per_token"]
    assert all(u["peak_rss_mb"] > 0 for u in aggregate["units"])
    assert all(u["step_s"] > 0 for u in aggregate["units"] if u["method"] != "untrained")
    table = (results / "real_teacher-full.md").read_text()
    assert "| on-policy JSD(0.5) |" in table and "| top-64 |" in table
    # started again, every unit is done: nothing runs and the aggregate is the same
    before = {p.name: p.stat().st_mtime_ns for p in (results / "real_teacher" / "full").glob("*-s0.json")}
    assert bench.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (results / "real_teacher" / "full").glob("*-s0.json")} == before


def test_each_needed_unit_keeps_the_files_its_units_read(tmp_path: Path) -> None:
    size = bench.SIZES["full"]
    units = {u.name: u for u in bench.grid_units(bench.METHODS, 2, tmp_path)}
    for u in units.values():
        if u.needs:
            config = json.dumps(bench.method_config(u.key["method"], size, tmp_path, u.key["seed"], "teacher").to_dict())
            for needed in u.needs:
                assert units[needed].keeps and all(json.dumps(k)[1:-1] in config for k in units[needed].keeps), u.name
    assert units["warm-s1"].keeps == (str(tmp_path / "warm-s1" / "final" / "model.safetensors"),)
    assert all(not u.keeps for u in bench.grid_units(bench.METHODS, 1))  # no runs folder, nothing to check


def test_the_generation_batch_measurement_times_each_batch_size_and_compares_the_continuations(
        tiny_teacher: dict[str, Path], tmp_path: Path) -> None:
    import generation_batch

    data = {"name": "text_corpus", "path": str(tiny_teacher["corpus"]), "tokenizer": str(tiny_teacher["teacher"]),
            "val_fraction": 0.2, "test_fraction": 0.2}
    sets = ["train_size=16", "val_size=4", "test_size=8", "prompt_length=4", "max_length=16", "new_tokens=5",
            f"data={json.dumps(data)}"]
    out = tmp_path / "generation_batch.json"
    argv = ["--teacher", str(tiny_teacher["teacher"]), "--prompts", "8", "--batches", "2", "8", "--repeats", "2",
            "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert generation_batch.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 8 and result["new_tokens"] == 5 and result["threads"] == 1
    assert set(result["seconds_per_prompt"]) == {"2", "8"} and all(v > 0 for v in result["seconds_per_prompt"].values())
    assert result["speedup_over_first"]["2"] == 1.0
    assert result["same_continuations_as_first"] == {"2": 8, "8": 8}  # greedy, prompts of one length: no padding
    assert result["provenance"]["command"]
    with pytest.raises(SystemExit, match="each must divide --prompts 8"):
        generation_batch.main([*argv[:4], "--batches", "3", "--out", str(out)])
