"""The cross-tokenizer benchmark: its grid and budget, every unit's config, bits per byte against a hand
computation, and an end-to-end sitting of every method on a tiny random teacher with a word-level tokenizer of its
own (started again, it skips the finished units)."""

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
sys.path.insert(0, str(ROOT / "tests"))

from _benchmarks import load_benchmark  # noqa: E402
from test_causal import word_tokenizer_file  # noqa: E402

bench = load_benchmark("cross_tokenizer/bench.py")
import scores  # noqa: E402  (benchmarks/cross_tokenizer, put on sys.path by the bench)


# ------------------------------------------------------------------------------------------- grid and budget
def test_grid_is_the_teacher_the_stores_a_warm_start_per_seed_and_every_method_per_seed() -> None:
    units = {u.name: u for u in bench.grid_units(bench.METHODS, 3)}
    assert set(units) == {"teacher", "store-xtok", "store-own", "warm-s0", "warm-s1", "warm-s2",
                          *(f"{m}-s{s}" for m in bench.METHODS for s in range(3))}
    for s in range(3):
        for m in bench.ON_POLICY:
            assert units[f"{m}-s{s}"].needs == (f"warm-s{s}",)
        assert units[f"uld_store-s{s}"].needs == units[f"span_store-s{s}"].needs == ("store-xtok",)
        assert units[f"same_tokenizer_store-s{s}"].needs == ("store-own",)
        assert all(units[f"{m}-s{s}"].needs == () for m in bench.METHODS
                   if m not in bench.ON_POLICY and m not in bench.FROM_STORE)
    assert {u.name for u in bench.grid_units(["labels", "span"], 1)} == {"teacher", "labels-s0", "span-s0"}
    assert {u.name for u in bench.grid_units(["span_store"], 1)} == {"teacher", "store-xtok", "span_store-s0"}
    with pytest.raises(ValueError, match="unknown methods.*valid choices"):
        bench.grid_units(["labels", "minilm"], 1)


def test_expected_budget_is_the_measured_costs_summed_by_hand() -> None:
    size = {**bench.SIZES["quick"], "steps": 10, "warm_steps": 4, "bpb_articles": 3, "prompts": 5, "new_tokens": 8,
            "max_length": 64}
    windows = 3 * math.ceil(420 / 63)  # 21 windows: one batch of 32
    student_scoring = 0.5 + 5 * 8 * 0.01
    by_hand = {"teacher": 6.4 + 5 * 8 * 0.07, "warm-s0": 4 * 0.3, "labels-s0": 10 * 0.3 + student_scoring,
               "uld-s0": 10 * 3.1 + student_scoring, "span-s0": 10 * 2.0 + student_scoring,
               "span_on_policy-s0": 6 * 2.4 + student_scoring, "span_on_policy_refs-s0": 6 * 2.4 + student_scoring,
               "reinforce_on_policy-s0": 6 * 2.4 + student_scoring, "same_tokenizer-s0": 10 * 2.8 + student_scoring,
               "store-xtok": math.ceil(2400 / 8) * 2.4, "store-own": math.ceil(2400 / 8) * 2.4,
               "uld_store-s0": 10 * 0.4 + student_scoring, "span_store-s0": 10 * 0.4 + student_scoring,
               "same_tokenizer_store-s0": 10 * 1.3 + student_scoring}
    assert windows <= 32
    for u in bench.grid_units(bench.METHODS, 1):
        assert bench.unit_seconds(u, size) == pytest.approx(by_hand[u.name]), u.name
    budget = bench.expected_budget(size, bench.METHODS, 1, jobs=2)
    assert budget["work_min"] == pytest.approx(sum(by_hand.values()) / 60)
    chain = max(by_hand["warm-s0"] + by_hand["reinforce_on_policy-s0"], by_hand["uld-s0"],
                by_hand["store-xtok"] + by_hand["uld_store-s0"], by_hand["store-own"] + by_hand["same_tokenizer_store-s0"])
    assert budget["critical_path_min"] == pytest.approx(chain / 60)
    side_by_side = 1.02  # two workers on the 2 cores: each unit slower than one alone
    # two workers taking units in grid order: no faster than half the work or the longest chain, no slower than both
    low = side_by_side * max(sum(by_hand.values()) / 2, chain) / 60
    assert low - 1e-9 <= budget["wall_min"] <= side_by_side * (sum(by_hand.values()) / 2 + chain) / 60
    assert bench.expected_budget(size, bench.METHODS, 1, jobs=1)["wall_min"] == pytest.approx(sum(by_hand.values()) / 60)


def test_declared_sizes_fit_their_budgets() -> None:
    quick, full = bench.SIZES["quick"], bench.SIZES["full"]
    q = bench.expected_budget(quick, quick["methods"], quick["seeds"], jobs=2)
    f = bench.expected_budget(full, full["methods"], full["seeds"], jobs=2)
    assert quick["seeds"] == full["seeds"] == 3
    assert set(full["methods"]) == set(bench.METHODS) - {"uld", "span", "same_tokenizer"}  # live: the store's cost x3
    # the methods the issue names, the off-policy ones from the store, and the same-tokenizer reference point
    assert set(quick["methods"]) == {"labels", "uld_store", "span_store", "span_on_policy", "same_tokenizer_store"}
    assert q["wall_min"] < 45  # under 60 min on 2 cores, as --quick's help says, with room for a busy machine
    assert f["wall_min"] < 4.5 * 60  # about 4.2 h with --jobs 2, across sittings
    # each training block is seen once by a full-length run
    assert quick["train_size"] == quick["steps"] * quick["batch_size"]
    assert full["train_size"] == full["steps"] * full["batch_size"]


@pytest.mark.parametrize("size", ["quick", "full"])
def test_every_units_config_is_valid(size: str, tmp_path: Path) -> None:
    """`RunConfig.from_dict` accepts the config of every method and of the warm start, each as the study means it."""
    sizes = bench.SIZES[size]
    for method in ["warm", *bench.METHODS]:
        cfg = bench.method_config(method, sizes, tmp_path, 2, None)
        if method in bench.FROM_STORE:  # the live method's run with the store as its teacher
            live, which = bench.FROM_STORE[method]
            live_cfg = bench.method_config(live, sizes, tmp_path, 2, None).to_dict()
            assert cfg.teacher == {"store": str(tmp_path / f"store-{which}-k64")}
            assert {**cfg.to_dict(), "teacher": None} == {**live_cfg, "teacher": None}
            continue
        data = cfg.data
        assert cfg.train.seed == 2 and data["name"] == "bbc_news_text", method
        kinds = [k["type"] for k in cfg.knowledge]
        for k in cfg.knowledge:  # the size says whether ends of sequence are aligned (--quick: not, --full: yes)
            if k["type"].startswith("cross_tokenizer"):
                assert k["end_of_sequence"] is (size == "full"), method
        if method in ("warm", "labels"):
            assert kinds == ["labels"] and cfg.teacher is None
            assert data["teacher_tokenizer"] == "smollm2" and data["train_tokenizer"] == 8000  # the same blocks
        elif method == "same_tokenizer":
            assert kinds == ["response", "labels"] and "teacher_tokenizer" not in data
            assert data["prepared_tokenizer"] == "smollm2" and "train_tokenizer" not in data
        elif method == "span_on_policy":
            assert kinds == ["cross_tokenizer"] and data["train_tokenizer"] == 8000
        elif method == "span_on_policy_refs":
            assert kinds == ["cross_tokenizer", "labels"] and cfg.knowledge[1]["sources"] == ["dataset"]
        elif method == "reinforce_on_policy":
            assert kinds == ["cross_tokenizer_reinforce", "labels"] and cfg.knowledge[1]["sources"] == ["dataset"]
        else:
            assert kinds == ["cross_tokenizer", "labels"] and data["train_tokenizer"] == 8000
            assert cfg.knowledge[0]["method"] == ("uld" if method == "uld" else "span")
        if method in bench.ON_POLICY:
            assert method == "reinforce_on_policy" or cfg.knowledge[0]["divergence"] == "backward_kl"
            assert cfg.targets["sources"] == {"dataset": 0.5, "student": 0.5}
            assert cfg.student["weights"] == str(tmp_path / "warm-s2" / "final" / "model.safetensors")
            assert cfg.train.max_steps == sizes["steps"] - sizes["warm_steps"]
        else:
            assert cfg.train.max_steps == (sizes["warm_steps"] if method == "warm" else sizes["steps"])
    with pytest.raises(ValueError, match="unknown method.*valid choices"):
        bench.method_config("minilm", sizes, tmp_path, 0, None)


# ------------------------------------------------------------------------------------------- scores
class Bigram(torch.nn.Module):
    """Next-token logits that depend on the previous token only (a table)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        return type("Out", (), {"logits": self.table[input_ids].float()})()


def test_windows_predict_every_token_once() -> None:
    assert scores.windows([5, 6, 7, 8], 0, 3) == [[0, 5, 6], [6, 7, 8]]
    assert scores.windows([5, 6, 7], 0, 3) == [[0, 5, 6], [6, 7]]
    assert scores.windows([5], 0, 4) == [[0, 5]]
    for n, length in ((1, 2), (7, 2), (10, 4), (9, 5)):
        ids = list(range(1, n + 1))
        predicted = [t for w in scores.windows(ids, 0, length) for t in w[1:]]
        assert predicted == ids and all(len(w) <= length for w in scores.windows(ids, 0, length))
    with pytest.raises(ValueError, match="max_length"):
        scores.windows([1], 0, 1)


def test_bits_per_byte_against_a_hand_computation(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    words = ["aa", "b", "ccc", "é"]  # ids 2..5; "é" is two UTF-8 bytes
    tok = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file(tmp_path, words)), eos_token="<eos>",
                                  pad_token="<pad>")
    torch.manual_seed(0)
    table = torch.randn(6, 6, dtype=torch.float64)
    texts = ["aa b ccc é", "b aa"]  # 11 bytes (the é is two) and 4 bytes
    logp = torch.log_softmax(table.float().double(), dim=-1)
    # windows of 3: [eos aa b] [b ccc é] and [eos b aa]; every word predicted once, from the previous token
    nats = -(logp[0, 2] + logp[2, 3] + logp[3, 4] + logp[4, 5] + logp[0, 3] + logp[3, 2])
    expected = float(nats) / math.log(2) / (11 + 4)
    out = scores.bits_per_byte(Bigram(table), tok, texts, start_id=0, max_length=3, batch_size=2)
    assert out["bits_per_byte"] == pytest.approx(expected, rel=1e-6)
    assert (out["tokens"], out["bytes"], out["bytes_not_covered"], out["texts"]) == (6, 15, 0, 2)
    # a space the tokens do not spell back (two in a row) is counted, and left out of the bytes
    doubled = scores.bits_per_byte(Bigram(table), tok, ["aa  b ccc é", "b aa"], start_id=0, max_length=3)
    assert (doubled["bytes"], doubled["bytes_not_covered"]) == (15, 1)
    assert doubled["bits_per_byte"] == pytest.approx(expected, rel=1e-6)


def test_prompts_and_references_are_cut_from_the_text() -> None:
    texts = ["one two", "Alpha beta,  gamma delta epsilon", "a b c d e f g h i j"]
    pairs = scores.prompts_and_references(texts, 2, 8, 5)
    assert pairs == [("Alpha beta,", "  gamma "), ("a b", " c d e f")]
    assert scores.truncated_to(["abcdefghij", "ab"], ["1234", "123"]) == ["abcd", "ab"]
    with pytest.raises(ValueError, match="no text has more than 5 words"):
        scores.prompts_and_references(texts[:1], 5, 3, 1)


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 documents of 30 words (60 distinct) and a random 2-layer Llama on a byte-level BPE of 280 tokens of its own
    (the students train one of 300), saved as a model folder with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ktransfer.data.corpus import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("cross_tokenizer")
    words = [f"w{i}" for i in range(60)]
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)]
    (folder / "docs.txt").write_text("\n".join(docs) + "\n")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(train_bpe_tokenizer(docs, 280)), eos_token="<|endoftext|>",
                                  pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=64, eos_token_id=0, pad_token_id=1,
                                         bos_token_id=None, tie_word_embeddings=True))
    model.save_pretrained(folder / "teacher")
    tok.save_pretrained(folder / "teacher")
    return {"corpus": folder / "docs.txt", "teacher": folder / "teacher"}


def test_a_sitting_runs_every_method_writes_the_table_and_skips_finished_units(tiny_teacher: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    data = {"name": "text_corpus", "path": str(tiny_teacher["corpus"]), "train_tokenizer": 300,
            "val_fraction": 0.2, "test_fraction": 0.2}
    sets = ["steps=2", "warm_steps=1", "batch_size=4", "train_size=8", "val_size=4", "test_size=4",
            "max_length=16", "prompt_length=4", "new_tokens=4", "bpb_articles=2", "prompts=2", "prompt_words=3",
            "reference_chars=10", f"data={json.dumps(data)}",
            'student={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}']
    argv = ["--quick", "--seeds", "1", "--methods", *bench.METHODS, "--teacher", str(tiny_teacher["teacher"]),
            "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")] + [a for s in sets for a in ("--set", s)]
    assert bench.main(argv) == 0
    results = tmp_path / "results"
    aggregate = json.loads((results / "cross_tokenizer.json").read_text())
    rows = {r["method"]: r for r in aggregate["rows"]}
    assert set(rows) == {"teacher", *bench.METHODS}
    for method, row in rows.items():
        assert math.isfinite(row["bits_per_byte"][0]) and row["bits_per_byte"][0] > 0, method
        assert 0 <= row["chrf"][0] <= 100 and row["bytes_not_covered"] == 0
        if method not in ("labels", "teacher"):  # one seed: the paired difference is the difference itself
            unit = json.loads((results / "cross_tokenizer" / "quick" / f"{method}-s0.json").read_text())
            base = json.loads((results / "cross_tokenizer" / "quick" / "labels-s0.json").read_text())
            assert row["diff_bits_per_byte"][0] == pytest.approx(
                unit["bpb"]["bits_per_byte"] - base["bpb"]["bits_per_byte"])
    # every model scores the same characters: the test articles' bytes
    assert len({u["bpb"]["bytes"] for u in aggregate["units"]}) == 1
    assert rows["span"]["student_aligned_share"][0] > 0.5 and rows["labels"]["student_aligned_share"] is None
    # the stores: built once each, on the teacher's tokens of the students' blocks and on the teacher's own blocks
    assert {s["store"] for s in aggregate["stores"]} == {"xtok", "own"}
    assert all(s["k"] == 64 and s["positions"] > 0 and s["bytes_per_token"] > 0 for s in aggregate["stores"])
    assert "| store | target tokens |" in (results / "cross_tokenizer.md").read_text()
    table = (results / "cross_tokenizer.md").read_text()
    assert "| span alignment, backward KL, on-policy (from references alone) |" in table and "bits/byte" in table
    # started again, every unit is done: nothing runs and the unit results are the same files
    before = {p.name: p.stat().st_mtime_ns for p in (results / "cross_tokenizer" / "quick").glob("*.json")}
    assert len(before) == 1 + 2 + 1 + len(bench.METHODS)
    assert bench.main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (results / "cross_tokenizer" / "quick").glob("*.json")}
    assert after == before


def test_each_needed_unit_keeps_the_files_its_units_read(tmp_path: Path) -> None:
    size = bench.SIZES["full"]
    units = {u.name: u for u in bench.grid_units(bench.METHODS, 2, tmp_path, size)}
    for u in units.values():
        if u.needs:
            config = json.dumps(bench.method_config(u.key["method"], size, tmp_path, u.key["seed"], None).to_dict())
            for needed in u.needs:
                assert units[needed].keeps and all(json.dumps(k)[1:-1] in config for k in units[needed].keeps), u.name
    assert all(not u.keeps for u in bench.grid_units(bench.METHODS, 1))  # no runs folder, nothing to check
