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
