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
    assert units[0].name == "teacher" and len(units) == 1 + 2 * 2 * 2  # --quick: direct and via4_3
    assert {u.key["chain"] for u in units[1:]} == {"direct", "via4_3"}
    assert len(bench.grid_units(bench.SIZES["full"], 1, list(bench.METHODS), ["minilm"])) == 1 + 2 * 2 * 4
    with pytest.raises(ValueError, match=r"chains \['via5'\].*valid: direct, via4, via3, via4_3"):
        bench.grid_units({**size, "chains": ["direct", "via5"]}, 1, ["learned"])
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
                            "threads": 1, "heldout_examples": 8, "students": [1], "intermediates": [3, 2], "chains": None, "data": data,
                            "teacher_model": {"builder": "minilm", "path": str(tiny_dir)}}
    argv = ["--quick", "--seeds", "1", "--methods", "learned", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
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
    assert "| 1L | learned | via3_2 | 1 |" in table


# ------------------------------------------------------------------------------------------- the SmolLM2 chain
def test_the_full_grid_adds_the_smollm2_chains_and_quick_does_not() -> None:
    full, quick = bench.SIZES["full"], bench.SIZES["quick"]
    names = [u.name for u in bench.grid_units(full, 3, list(bench.METHODS))]
    causal = [f"smollm2-8L-{c}-s{s}" for s in range(3) for c in ("direct", "via15")]
    assert names[-6:] == causal and len(names) == 1 + 3 * 2 * 2 * 4 + 6
    assert not any(n.startswith("smollm2") for n in (u.name for u in bench.grid_units(quick, 1, ["vanilla_kd"])))
    only = bench.grid_units(full, 3, list(bench.METHODS), ["smollm2"])
    assert [u.name for u in only] == causal and all(u.needs == () for u in only)
    with pytest.raises(ValueError, match="the smollm2 part has no settings at this size"):
        bench.grid_units(quick, 1, ["vanilla_kd"], ["smollm2"])
    with pytest.raises(ValueError, match="unknown parts.*valid: minilm, smollm2"):
        bench.grid_units(full, 1, ["vanilla_kd"], ["gpt5"])


def test_the_smollm2_cuts_exist_and_both_8_layer_students_start_from_the_same_teacher_layers() -> None:
    from ktransfer.models.cut import choose_layers

    part = bench.SIZES["full"]["smollm2"]
    assert bench.smollm2_chain.hop_depths(part, "direct") == [8]
    assert bench.smollm2_chain.hop_depths(part, "via15") == [15, 8]
    direct = choose_layers(30, every=4)
    fifteen = choose_layers(30, every=2)
    assert [fifteen[i] for i in choose_layers(15, every=2)] == direct == [1, 5, 9, 13, 17, 21, 25, 29]
    bad = {**part, "chains": {"direct": [{"first": 31}]}}
    with pytest.raises(ValueError, match="smollm2.chains.direct"):
        bench.smollm2_chain.hop_depths(bad, "direct")


def test_the_smollm2_chains_are_valid_chains_of_runs_from_the_pretrained_teacher_with_the_word_kd_recipe(
        tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    from ktransfer.hops.run_config import RunChainConfig

    part = bench.SIZES["full"]["smollm2"]
    rt = bench.smollm2_chain.RT
    word_kd = yaml.safe_load((ROOT / "configs" / "real_teacher" / "word_kd.yaml").read_text())
    teacher = str(tiny_llama["teacher"])
    for name, cuts in part["chains"].items():
        cfg = RunChainConfig.from_dict(bench.smollm2_chain.chain_config(part, name, 2, tmp_path, teacher))
        assert cfg.teacher == {**word_kd["teacher"], "model": teacher} and not cfg.teacher_is_trained
        hops = [f["student"] for f in [*cfg.plan.intermediates, cfg.student]]
        assert hops == [{"builder": "hf_cut", "teacher": "previous", **c} for c in cuts]
        assert cfg.defaults["knowledge"] == word_kd["knowledge"] and cfg.task == "causal_lm"
        assert cfg.defaults["train"]["seed"] == 2
        assert cfg.defaults["train"]["max_steps"] == rt.SIZES["full"]["steps"] == 600
        assert cfg.data["train_size"] == rt.SIZES["full"]["train_size"] and cfg.data["name"] == "bbc_news_text"


def test_the_smollm2_budget_is_the_real_teacher_step_times_scaled_by_parameters() -> None:
    chain = bench.smollm2_chain
    layer, base = (134.5e6 - 63.7e6) / 20, 134.5e6 - 30 * (134.5e6 - 63.7e6) / 20
    assert chain.parameters(10) == pytest.approx(63.7e6) and chain.parameters(30) == pytest.approx(134.5e6)
    assert chain.hop_step_s(30, 10) == pytest.approx(5.6)  # the measured KD step of the 10-layer cut
    assert chain.hop_step_s(15, 8) == pytest.approx(2.1 * (base + 15 * layer) / 134.5e6
                                                    + 3.5 * (base + 8 * layer) / 63.7e6)
    part = {**chain.FULL, "set": {"steps": 10, "val_size": 8, "test_size": 16, "generation_prompts": 8,
                                  "batch_size": 8, "new_tokens": 64}}
    fwd = {n: 2.1 * (base + n * layer) / 134.5e6 for n in (30, 15, 8)}
    sample8 = 4.25 * (base + 8 * layer) / 63.7e6
    scoring = 2 * (fwd[30] + fwd[8]) + (sample8 + 2.1)
    direct = 10 * chain.hop_step_s(30, 8) + fwd[30] + fwd[8] + scoring
    via = 10 * (chain.hop_step_s(30, 15) + chain.hop_step_s(15, 8)) + fwd[30] + 2 * fwd[15] + fwd[8] + scoring
    assert chain.unit_seconds(part, "direct") == pytest.approx(direct)
    assert chain.unit_seconds(part, "via15") == pytest.approx(via)
    assert chain.expected_minutes(part, 3) == pytest.approx(3 * (direct + via) / 60)
    budget = chain.expected_budget(part, 3, jobs=2)
    assert budget["work_min"] == pytest.approx(chain.expected_minutes(part, 3))
    assert budget["critical_path_min"] == pytest.approx(via / 60)  # the chains share no hop
    full = chain.expected_budget(chain.FULL, 3, jobs=2)
    assert 4.5 * 60 < full["wall_min"] < 5 * 60  # about 4.8 h with --jobs 2, as the benchmark's docstring says


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A word-level corpus of 40 documents of 30 words and a random 4-layer Llama on its vocabulary, saved as a
    model folder with its tokenizer (SmolLM2's stand-in)."""
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from test_causal import word_tokenizer_file

    folder = tmp_path_factory.mktemp("smollm2_chain")
    words = [f"w{i}" for i in range(60)]
    rng = random.Random(0)
    (folder / "docs.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file(folder, words)), eos_token="<eos>",
                                  pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=64, eos_token_id=0, pad_token_id=1,
                                         bos_token_id=None, tie_word_embeddings=True))
    model.save_pretrained(folder / "teacher")
    tok.save_pretrained(folder / "teacher")
    return {"corpus": folder / "docs.txt", "teacher": folder / "teacher"}


def test_the_smollm2_part_runs_end_to_end_on_a_tiny_llama_and_gets_its_own_table(
        tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    data = {"name": "text_corpus", "path": str(tiny_llama["corpus"]), "tokenizer": str(tiny_llama["teacher"]),
            "val_fraction": 0.2, "test_fraction": 0.2}
    part = {"size": "quick", "teacher": str(tiny_llama["teacher"]), "teacher_layers": 4, "student_layers": 2,
            "chains": {"direct": [{"every": 2}], "via3": [{"first": 3}, {"every": 2}]},
            "set": {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 4, "test_size": 8,
                    "generation_prompts": 4, "prompt_length": 4, "max_length": 16, "new_tokens": 4, "lr": 0.01,
                    "data": data}}
    argv = ["--full", "--seeds", "1", "--parts", "smollm2", "--set", f"smollm2={json.dumps(part)}", "--set",
            "threads=1", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "results" / "chains-full.json").read_text())
    assert result["rows"] == []  # the MiniLM part was not asked for
    rows = {r["chain"]: r for r in result["smollm2_rows"]}
    assert set(rows) == {"direct", "via3"} and rows["via3"]["layers"] == [3, 2]
    folder = tmp_path / "results" / "chains" / "full"
    via = json.loads((folder / "smollm2-2L-via3-s0.json").read_text())
    direct = json.loads((folder / "smollm2-2L-direct-s0.json").read_text())
    assert via["hops"] == ["hf_cut-first3", "hf_cut-every2"] and direct["hops"] == ["hf_cut-every2"]
    for unit in (via, direct):
        assert unit["test"]["teacher_kl"] >= 0 and 0 <= unit["generation"]["chrf"] <= 100
        assert unit["generation"]["teacher_logprob"] <= 0 and 0 <= unit["generation"]["repetition_rate"] <= 1
        assert all(s > 0 for s in unit["step_s"]) and len(unit["step_s"]) == len(unit["hops"])
        assert unit["threads"] == 1  # --set threads=1: the threads its step times were measured with
    assert rows["via3"]["diff_teacher_kl"][0] == pytest.approx(via["test"]["teacher_kl"] - direct["test"]["teacher_kl"])
    assert rows["direct"]["chrf"][0] == pytest.approx(direct["generation"]["chrf"])
    # the direct student was cut from the teacher's folder; the chain's last from its first hop's run
    import yaml

    last = yaml.safe_load((Path(via["run_dir"]) / "config.yaml").read_text())
    assert Path(last["student"]["teacher"]).parent == Path(via["run_dir"]).parent
    first = yaml.safe_load((Path(direct["run_dir"]) / "config.yaml").read_text())
    assert first["student"]["teacher"] == str(tiny_llama["teacher"])
    table = (tmp_path / "results" / "chains-full.md").read_text()
    assert "## teacher (4 layers) into 2 layers" in table and "| via3 | 4 -> 3 -> 2 |" in table
    assert "MiniLM" not in table


def test_workers_share_the_cores_out_between_them() -> None:
    """--full leaves torch its default threads, so each of --jobs workers gets the cores shared out (one each on
    2 cores with --jobs 2), never torch's default of every core in every worker."""
    import argparse
    import os

    env = bench.Chains().worker_env(argparse.Namespace(jobs=2))
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert bench.SIZES["full"]["threads"] == 0 and bench.SIZES["quick"]["threads"] == 1
