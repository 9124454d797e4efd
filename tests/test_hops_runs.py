"""Chains whose hops are ordinary runs: tiny BERT and GPT-2 models, a few steps per hop.

Each hop is `ktransfer run` in its own directory; its teacher is the previous hop's student,
and `hf_cut` cuts its student from that same run. Checked here: hops that use the knowledge
terms, selectors and teacher sources of ordinary runs; the CLI equal to Python; a chain killed
in the middle of a hop equal to an uninterrupted one; reuse by content key; the planner over a
ladder of cuts; bad chains refused before anything trains, naming both hops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ktransfer.cli import main
from ktransfer.hops.run_chain import ChainInterrupted, run_run_chain
from ktransfer.hops.run_config import RunChainConfig
from ktransfer.registry import ConfigError

from test_causal import corpus  # noqa: F401  (fixture: a word-level text corpus and its tokenizer)
from test_text_data import tiny_dir  # noqa: F401  (fixture: a 4-layer tiny BERT and its WordPiece tokenizer)

CUT = {"builder": "hf_cut", "teacher": "previous"}
TRAIN = {"max_steps": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 1, "log_every": 1, "seed": 0}


@pytest.fixture(scope="module")
def news(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny three-class text CSV."""
    file = tmp_path_factory.mktemp("news") / "news.csv"
    file.write_text("text,label\n" + "".join(f"{w} {i} {w},{w}\n" for i in range(16) for w in ("good", "bad", "the")))
    return file


def bert_chain(tiny: Path, news: Path, **changes: Any) -> dict[str, Any]:
    """Teacher (tiny BERT, 4 layers) trained as hop 0 -> cut to 3 layers (response KD) -> cut to 2 (actor-critic
    over response, feature and attention terms) -> cut to 1, reading its teacher from a store of outputs."""
    cfg: dict[str, Any] = {
        "task": "classification",
        "data": {"name": "text_csv", "path": str(news), "tokenizer": str(tiny), "max_length": 12},
        "teacher": {"student": {"builder": "minilm", "path": str(tiny)}, "train": TRAIN},
        "defaults": {"knowledge": [{"type": "response", "temperature": 2.0, "weight": 0.5},
                                   {"type": "labels", "weight": 0.5}],
                     "optim": {"lr": 0.003}, "train": TRAIN},
        "plan": {"strategy": "fixed", "intermediates": [
            {"student": {**CUT, "first": 3}},
            {"student": {**CUT, "first": 2},
             "knowledge": [{"type": "response", "temperature": 2.0}, {"type": "feature"},
                           {"type": "attention", "path": "attention.self"}, {"type": "labels"}],
             "selector": {"type": "actor_critic", "mode": "soft", "phase_steps": 2, "heldout_examples": 8, "seed": 0}},
        ]},
        "student": {"student": {**CUT, "first": 1}, "teacher_store": {"shard_size": 16},
                    "knowledge": [{"type": "response", "temperature": 2.0, "weight": 0.5},
                                  {"type": "labels", "weight": 0.5}]},
        "compare_one_hop": False,
    }
    cfg.update(changes)
    return cfg


def weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def same_weights(a: str | Path, b: str | Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_chain_of_runs_cuts_each_student_from_the_previous_hop_and_distils_from_it(
        tiny_dir: Path, news: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = RunChainConfig.from_dict(bert_chain(tiny_dir, news))
    report = run_run_chain(cfg, tmp_path / "chain")
    hops = report.hops
    assert [h.index for h in hops] == [0, 1, 2, 3] and all(h.status == "trained" for h in hops)
    depths = []
    for h in hops:
        run_cfg = yaml.safe_load((Path(h.run_dir) / "config.yaml").read_text())
        summary = json.loads((Path(h.run_dir) / "summary.json").read_text())
        assert summary["finished"] and summary["step"] == 4
        depths.append(len({k.split(".")[3] for k in weights(h.run_dir) if ".encoder.layer." in k}))
        if h.index >= 1:  # its teacher is the previous hop's student, with its final weights
            previous = hops[h.index - 1].run_dir
            if h.index < 3:
                assert run_cfg["teacher"] == {"from_run": previous, "which": "final"}
            assert run_cfg["student"]["teacher"] == previous
    assert depths == [4, 3, 2, 1]
    # hop 2 learned term weights (the actor-critic's); hop 3 read its teacher from a store of hop 2's outputs
    second = yaml.safe_load((Path(hops[2].run_dir) / "config.yaml").read_text())
    assert second["selector"]["type"] == "actor_critic"
    assert [t["type"] for t in second["knowledge"]] == ["response", "feature", "attention", "labels"]
    assert (Path(hops[2].run_dir) / "final" / "policy.pt").is_file()
    third = yaml.safe_load((Path(hops[3].run_dir) / "config.yaml").read_text())
    store = Path(third["teacher"]["store"])
    assert store.parent == (tmp_path / "chain" / "stores").resolve() and (store / "manifest.json").is_file()
    assert all(h.test.get("accuracy") is not None and 0.0 <= h.test["macro_f1"] <= 1.0 for h in hops)
    assert (tmp_path / "chain" / "report.md").is_file()
    report_json = json.loads((tmp_path / "chain" / "report.json").read_text())
    assert [h["label"] for h in report_json["hops"]] == ["minilm", "hf_cut-first3", "hf_cut-first2", "hf_cut-first1"]


@pytest.fixture(scope="module")
def bert_run(tiny_dir: Path, news: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    """The uninterrupted BERT chain, run once from Python."""
    root = tmp_path_factory.mktemp("bert_chain") / "chain"
    return run_run_chain(RunChainConfig.from_dict(bert_chain(tiny_dir, news)), root), root


def test_the_cli_runs_the_same_chain_as_python(tiny_dir: Path, news: Path, bert_run: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    report, _ = bert_run
    file = tmp_path / "chain.yaml"
    file.write_text(yaml.safe_dump(bert_chain(tiny_dir, news)))
    assert main(["check", str(file)]) == 0
    checked = capsys.readouterr().out
    assert "# ok: student: the student reads its teacher's outputs" in checked
    assert main(["hops", str(file), "--run-dir", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "# Chain of runs" in out and "hf_cut-first1" in out
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())["hops"]
    assert [h["key"] for h in cli] == [h.key for h in report.hops]  # keys do not depend on where the chain lives
    for mine, theirs in zip(report.hops, cli):
        assert same_weights(mine.run_dir, theirs["run_dir"])
        assert theirs["val"] == mine.val and theirs["test"] == mine.test


def test_a_chain_killed_in_the_middle_of_hops_resumes_to_the_uninterrupted_result(
        tiny_dir: Path, news: Path, bert_run: Any, tmp_path: Path) -> None:  # noqa: F811
    report, _ = bert_run
    cfg = RunChainConfig.from_dict(bert_chain(tiny_dir, news))
    root = tmp_path / "killed"
    with pytest.raises(ChainInterrupted, match="plan.intermediates\\[0\\]"):
        run_run_chain(cfg, root, stop_after_steps=6)  # hop 0 (4 steps), then 2 steps into hop 1
    first = json.loads(next((root / "hops").glob("01-*/summary.json")).read_text())
    assert first["step"] == 2 and not first["finished"]
    with pytest.raises(ChainInterrupted, match="plan.intermediates\\[1\\]"):
        run_run_chain(cfg, root, stop_after_steps=5)  # hop 1 resumed (2 steps), 3 steps into hop 2 (actor-critic)
    # a hop is an ordinary run: `ktransfer resume` finishes it, and the chain then reuses it
    hop2 = next((root / "hops").glob("02-*"))
    assert main(["resume", str(hop2), "--no-progress"]) == 0
    resumed = run_run_chain(cfg, root)
    assert [h.status for h in resumed.hops] == ["reused", "reused", "reused", "trained"]
    for mine, theirs in zip(report.hops, resumed.hops):
        assert theirs.key == mine.key and same_weights(mine.run_dir, theirs.run_dir)
    assert (Path(resumed.hops[2].run_dir) / "final" / "policy.pt").is_file()


def test_finished_hops_are_reused_until_their_inputs_change(tiny_dir: Path, news: Path, bert_run: Any) -> None:  # noqa: F811
    report, root = bert_run
    again = run_run_chain(RunChainConfig.from_dict(bert_chain(tiny_dir, news)), root)
    assert [h.status for h in again.hops] == ["reused"] * 4
    assert [h.run_dir for h in again.hops] == [h.run_dir for h in report.hops]
    changed = bert_chain(tiny_dir, news)
    changed["student"]["knowledge"][0]["temperature"] = 4.0  # only the last hop changes
    third = run_run_chain(RunChainConfig.from_dict(changed), root)
    assert [h.status for h in third.hops] == ["reused", "reused", "reused", "trained"]
    assert third.hops[3].run_dir != report.hops[3].run_dir
    teacher = bert_chain(tiny_dir, news)
    teacher["teacher"]["train"] = {**TRAIN, "seed": 1}  # another teacher: every hop after it is new
    fourth = RunChainConfig.from_dict(teacher)
    from ktransfer.hops.run_chain import RunChain

    chain = RunChain(fourth, root, stop_after_steps=1)
    with pytest.raises(ChainInterrupted):
        chain.chain([])
    assert chain.steps == 1


# ------------------------------------------------------------------------------------------- GPT-2, on-policy
def gpt2_chain(corpus: dict[str, Path], **changes: Any) -> dict[str, Any]:  # noqa: F811
    from test_causal import corpus_data

    info = corpus_data(corpus).info
    gpt2 = {"builder": "hf_config", "model_type": "gpt2",
            "config": {"n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": info["vocab_size"], "n_positions": 32,
                       "bos_token_id": info["eos_token_id"], "eos_token_id": info["eos_token_id"],
                       "pad_token_id": info["pad_token_id"]}}
    cfg: dict[str, Any] = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 10, "prompt_length": 3, "val_fraction": 0.2, "test_fraction": 0.2},
        "teacher": {"student": gpt2, "knowledge": [{"type": "labels"}], "optim": {"lr": 0.01},
                    "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4, "metric": "perplexity", "seed": 0}},
        "student": {"student": {**CUT, "layers": [1]},
                    "targets": {"sources": {"dataset": 0.5, "student": 0.5}, "generation": {"max_new_tokens": 4}},
                    "knowledge": [{"type": "on_policy", "divergence": "backward_kl", "sources": None}],
                    "optim": {"lr": 0.003},
                    "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3, "metric": "teacher_kl", "seed": 0}},
    }
    cfg.update(changes)
    return cfg


def test_a_gpt2_chain_hop_trains_by_on_policy_backward_kl_on_a_student_cut_from_the_previous_hop(
        corpus: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    report = run_run_chain(RunChainConfig.from_dict(gpt2_chain(corpus)), tmp_path / "chain", evaluate_test=False)
    teacher, student = report.hops
    assert student.metric == "teacher_kl" and student.val > 0
    records = [json.loads(line) for line in (Path(student.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "train" and r["terms"]["on_policy"] > 0 for r in records)
    cut = load_file(str(Path(student.run_dir) / "final" / "model.safetensors"))
    assert {k.split(".")[2] for k in cut if k.startswith("transformer.h.")} == {"0"}  # one layer: the teacher's 1
    config = yaml.safe_load((Path(student.run_dir) / "config.yaml").read_text())
    assert config["teacher"] == {"from_run": teacher.run_dir, "which": "final"}


def test_a_pretrained_teacher_starts_a_chain_untrained_and_previous_cuts_from_its_model_folder(
        corpus: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """The chain's teacher is a model folder taken as it is (no hop 0): the first hop's student is cut from that
    folder, the next from the first hop's run, and the direct hop from the folder again."""
    import transformers

    from test_causal import corpus_data

    info = corpus_data(corpus).info
    torch.manual_seed(0)
    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=4, n_embd=16, n_head=2, vocab_size=info["vocab_size"], n_positions=32, bos_token_id=0,
        eos_token_id=info["eos_token_id"], pad_token_id=info["pad_token_id"])).save_pretrained(folder)
    train = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "metric": "perplexity", "seed": 0}
    cfg = gpt2_chain(corpus, teacher={"builder": "hf_pretrained", "model": str(folder), "dtype": "float32"},
                     defaults={"knowledge": [{"type": "response"}, {"type": "labels"}], "train": train},
                     student={"student": {**CUT, "every": 2}}, compare_one_hop=True,
                     plan={"strategy": "fixed", "intermediates": [{"student": {**CUT, "first": 3}}]})
    chain = RunChainConfig.from_dict(cfg)
    assert chain.run_config(chain.student, "student", {"from_run": "/x"}, previous={"teacher": str(folder),
                                                                                    "dtype": "float32"}
                            ).student == {"builder": "hf_cut", "teacher": str(folder), "every": 2, "dtype": "float32"}
    report = run_run_chain(chain, tmp_path / "chain", evaluate_test=False)
    assert [h.label for h in report.hops] == ["hf_cut-first3", "hf_cut-every2"]  # no hop 0: nothing trained it
    first, last = (yaml.safe_load((Path(h.run_dir) / "config.yaml").read_text()) for h in report.hops)
    assert first["teacher"] == {"builder": "hf_pretrained", "model": str(folder), "dtype": "float32"}
    assert first["student"] == {"builder": "hf_cut", "teacher": str(folder), "first": 3, "dtype": "float32"}
    assert last["student"]["teacher"] == report.hops[0].run_dir
    assert report.one_hop is not None
    direct = yaml.safe_load((Path(report.one_hop.run_dir) / "config.yaml").read_text())
    assert direct["student"]["teacher"] == str(folder)
    # the cut copies the teacher's layers: the first hop's student started as layers 0-2 of the folder's model
    source = load_file(str(folder / "model.safetensors"))
    hop1 = weights(report.hops[0].run_dir)
    assert {k.split(".")[2] for k in hop1 if k.startswith("transformer.h.")} == {"0", "1", "2"}
    assert set(hop1) <= set(source)
    direct_layers = {k.split(".")[2] for k in weights(report.one_hop.run_dir) if k.startswith("transformer.h.")}
    assert direct_layers == {"0", "1"}  # every 2nd of the folder's 4 layers


# ------------------------------------------------------------------------------------------- the planner
def test_the_planner_chooses_intermediates_from_a_ladder_of_cuts_on_validation(
        tiny_dir: Path, news: Path, tmp_path: Path) -> None:  # noqa: F811
    short = {**TRAIN, "max_steps": 2, "eval_every": 2}
    cfg = bert_chain(tiny_dir, news, compare_one_hop=True)
    cfg["teacher"]["train"] = short
    cfg["defaults"]["train"] = short
    cfg["student"] = {"student": {**CUT, "first": 1}}
    cfg["plan"] = {"strategy": "exhaustive", "max_hops": 3,
                   "ladder": [{"student": {**CUT, "first": 3}}, {"student": {**CUT, "first": 2}}]}
    report = run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain", evaluate_test=False)
    assert [t.intermediates for t in report.trials] == [
        [], ["hf_cut-first3"], ["hf_cut-first2"], ["hf_cut-first3", "hf_cut-first2"]]
    best = max(report.trials, key=lambda t: t.val)  # ties keep the first (the shortest) chain
    assert [h.label for h in report.hops[1:-1]] == best.intermediates
    assert report.hops[-1].val == best.val
    # every hop was trained once, shared prefixes reused: the teacher; T->1; T->3, 3->1; T->2, 2->1; 3->2, 2->1
    assert len(list((tmp_path / "chain" / "hops").glob("*/summary.json"))) == 8
    if best.intermediates:  # the direct hop is reported beside the chosen chain
        assert report.one_hop is not None and report.one_hop.val == report.trials[0].val
    else:
        assert report.one_hop is None


# ------------------------------------------------------------------------------------------- bad chains
def test_a_student_that_cannot_read_its_teachers_outputs_is_refused_before_anything_trains(
        tiny_dir: Path, news: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = bert_chain(tiny_dir, news)
    cfg["plan"]["intermediates"][1] = {"student": {"builder": "minilm", "path": str(tiny_dir), "num_classes": 5}}
    with pytest.raises(ConfigError, match=r"plan.intermediates\[1\]: its student plan.intermediates\[1\] \(minilm\) "
                                          r"predicts 5 classes, but its teacher plan.intermediates\[0\] "
                                          r"\(hf_cut-first3\) predicts 3"):
        run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain")
    assert not (tmp_path / "chain").exists()


def test_a_cut_of_more_layers_than_its_teacher_has_lists_the_teachers_layers(
        tiny_dir: Path, news: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = bert_chain(tiny_dir, news)
    cfg["plan"] = {"strategy": "greedy", "ladder": [{"student": {**CUT, "first": 3}}, {"student": {**CUT, "first": 5}}]}
    with pytest.raises(ConfigError, match=r"plan.ladder\[1\].student: cut from the teacher: first must be in \[0, 4\]; "
                                          r"its 4 layers \(bert.encoder.layer\) are 0 to 3"):
        run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain")
    cfg["plan"] = {"strategy": "fixed", "intermediates": [{"student": {**CUT, "first": 2}}]}
    cfg["student"] = {"student": {**CUT, "layers": [0, 2]}}
    with pytest.raises(ConfigError, match=r"student.student: cut from plan.intermediates\[0\] \(hf_cut-first2\): layers: the "
                                          r"teacher has no layer 2; its 2 layers \(bert.encoder.layer\) are 0 to 1"):
        run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain")


def test_a_hop_of_another_tokenizer_is_refused_naming_both(corpus: dict[str, Path], tiny_dir: Path,
                                                            tmp_path: Path) -> None:  # noqa: F811
    from transformers import GPT2Config, GPT2LMHeadModel
    from test_causal import corpus_data

    info = corpus_data(corpus).info
    folder = tmp_path / "other"  # a GPT-2 of the same vocabulary size saved with another (WordPiece) tokenizer
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=info["vocab_size"],
                               n_positions=32)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_dir / name).is_file():
            (folder / name).write_bytes((tiny_dir / name).read_bytes())
    cfg = gpt2_chain(corpus)
    cfg["student"]["student"] = {"builder": "hf_pretrained", "model": str(folder)}
    with pytest.raises(ConfigError, match=r"student: its student student \(hf_pretrained\) \(tokenizer .*other\) "
                                          r"cannot read the outputs of its teacher the teacher \(tokenizer .*tok\)"):
        run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain")


def test_bad_chain_files_are_refused_with_the_key_and_the_valid_choices(tiny_dir: Path, news: Path) -> None:  # noqa: F811
    cfg = bert_chain(tiny_dir, news)
    cfg["student"]["data"] = {"name": "digits"}
    with pytest.raises(ConfigError, match=r"student.data: not a key of a hop.*the chain's.*valid keys: student, "):
        RunChainConfig.from_dict(cfg)
    cfg = bert_chain(tiny_dir, news)
    cfg["plan"]["intermediates"][0]["knowledge"] = [{"type": "respons"}]
    with pytest.raises(ConfigError, match=r"plan.intermediates\[0\]: knowledge\[0\]: unknown knowledge term 'respons' "
                                          r"\(did you mean 'response'\?\); valid choices: "):
        RunChainConfig.from_dict(cfg)
    cfg = bert_chain(tiny_dir, news)
    cfg["student"]["teacher_store"] = {"k": 4, "shards": 2}
    with pytest.raises(ConfigError, match=r"student.teacher_store.shards: unknown option; valid: k, values"):
        RunChainConfig.from_dict(cfg)


def test_hf_cut_of_a_run_directory_keeps_the_chosen_layers_of_its_final_weights(bert_run: Any) -> None:
    from ktransfer.building import build_model

    report, _ = bert_run
    source = report.hops[1]  # 3 layers, trained
    cut = build_model({"builder": "hf_cut", "teacher": source.run_dir, "layers": [0, 2]}, {"num_classes": 3}, "student")
    trained, mine = weights(source.run_dir), cut.state_dict()
    for name, value in mine.items():
        if ".encoder.layer." in name:
            parts = name.split(".")
            parts[3] = {"0": "0", "1": "2"}[parts[3]]
            assert torch.equal(value, trained[".".join(parts)]), name
        else:
            assert torch.equal(value, trained[name]), name  # embeddings, pooler and the trained head
    assert cut.config.ktransfer_cut["teacher"] == source.run_dir


def test_previous_needs_a_run_to_cut_from_and_each_kind_of_chain_its_own_loader(tiny_dir: Path, news: Path) -> None:  # noqa: F811
    from ktransfer.hops.config import ChainConfig

    cfg = bert_chain(tiny_dir, news, teacher={"builder": "minilm", "path": str(tiny_dir)})
    with pytest.raises(ConfigError, match=r"plan.intermediates\[0\].student.teacher: 'previous' cuts the student from "
                                          r"its teacher, but it may follow the chain's teacher, which is neither a run "
                                          r"nor a pretrained model"):
        RunChainConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match=r"a chain of runs: load it with RunChainConfig"):
        ChainConfig.from_dict(bert_chain(tiny_dir, news))


def test_a_hops_knowledge_terms_are_checked_against_its_models_before_anything_trains(
        tiny_dir: Path, news: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = bert_chain(tiny_dir, news)
    cfg["plan"]["intermediates"][1]["knowledge"][2] = {"type": "attention", "path": "attention.nope"}
    with pytest.raises(ConfigError, match=r"plan.intermediates\[1\] \(taught by plan.intermediates\[0\] "
                                          r"\(hf_cut-first3\)\): knowledge\[2\] \(attention\)"):
        run_run_chain(RunChainConfig.from_dict(cfg), tmp_path / "chain")
    assert not (tmp_path / "chain").exists()


def test_a_hop_may_name_a_run_config_whose_sections_its_own_keys_override(tiny_dir: Path, news: Path,
                                                                           tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "hop.yaml").write_text(yaml.safe_dump({
        "task": "classification", "data": {"name": "digits"},  # the chain's task and data replace these
        "teacher": {"builder": "mlp"},
        "student": {"builder": "minilm", "path": "bert"},  # relative to hop.yaml's folder
        "knowledge": [{"type": "response", "temperature": 3.0}, {"type": "labels"}],
        "optim": {"lr": 0.01, "weight_decay": 0.1}, "train": {"max_steps": 9, "batch_size": 4}}))
    cfg = bert_chain(tiny_dir, news)
    cfg["plan"]["intermediates"][0] = {"config": "hop.yaml", "optim": {"lr": 0.002}, "student": {**CUT, "first": 3}}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(cfg))
    chain = RunChainConfig.from_yaml(tmp_path / "chain.yaml")
    sections = chain.sections(chain.plan.intermediates[0], "plan.intermediates[0]")
    assert sections["knowledge"] == [{"type": "response", "temperature": 3.0}, {"type": "labels"}]
    assert sections["optim"] == {"lr": 0.002, "weight_decay": 0.1}  # merged key by key over the file's
    assert sections["train"] == {**TRAIN, "max_steps": 9, "batch_size": 4}  # the file's over the defaults
    assert sections["student"] == {**CUT, "first": 3}
    run_cfg = chain.run_config(chain.plan.intermediates[0], "plan.intermediates[0]",
                               {"from_run": str(tmp_path / "hop0"), "which": "final"}, previous=str(tmp_path / "hop0"))
    assert run_cfg.data["name"] == "text_csv" and run_cfg.student["teacher"] == str(tmp_path / "hop0")
    del cfg["plan"]["intermediates"][0]["student"]
    (tmp_path / "bert").mkdir()  # a model source that exists is a path, taken against the referencing file's folder
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(cfg))
    chain = RunChainConfig.from_yaml(tmp_path / "chain.yaml")
    assert chain.sections(chain.plan.intermediates[0], "x")["student"] == {"builder": "minilm",
                                                                            "path": str(tmp_path / "bert")}
