"""The one chain driver: a fake backend shows the walk, reuse by key, the stop count and the planner's shared
prefixes; both kinds of chain (fitted models on tables, ordinary runs) are walked by that same driver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ktransfer.hops.driver import ChainDriver, ChainInterrupted, Done
from ktransfer.hops.planner import PlanConfig


@dataclass
class Fake:
    """A backend whose hop "trains" by recording itself; a hop's score is a fixed table of chains."""

    scores: dict[tuple[str, ...], float]
    disk: set[str]  # the keys of finished hops "on disk": reused, not trained
    trained: list[tuple[str, ...]]
    teacher_trained: bool = True

    def first_hop(self) -> Done[tuple[str, ...], tuple[str, ...]]:
        new = "T" not in self.disk and self.teacher_trained
        if new:
            self.trained.append(("T",))
            self.disk.add("T")
        return Done(("T",) if self.teacher_trained else None, ("T",), new)

    def check(self, hops: Sequence[str]) -> None:
        if len(set(hops)) != len(hops):
            raise ValueError(f"a model twice in {list(hops)}")

    def hop_key(self, index: int, hop: str, teacher: tuple[str, ...]) -> str:
        return "/".join([*teacher, hop])

    def hop_after(self, index: int, hop: str, teacher: tuple[str, ...], key: str) -> Done[tuple[str, ...], tuple[str, ...]]:
        assert len(teacher) == index  # hop i is taught by what hop i - 1 left
        chain = (*teacher, hop)
        new = key not in self.disk
        if new:
            self.trained.append(chain)
            self.disk.add(key)
        return Done(chain, chain, new)

    def score(self, result: tuple[str, ...]) -> float:
        return self.scores.get(result[1:], 0.0)


def test_the_walk_teaches_each_hop_by_the_one_before_and_reuses_hops_by_key() -> None:
    fake = Fake({}, set(), [])
    driver = ChainDriver(fake)
    assert driver.walk(["a", "s"]) == [("T",), ("T", "a"), ("T", "a", "s")]
    assert driver.walk(["a", "b", "s"])[-1] == ("T", "a", "b", "s")
    assert fake.trained == [("T",), ("T", "a"), ("T", "a", "s"), ("T", "a", "b"), ("T", "a", "b", "s")]
    assert driver.trained == 5 and driver.last_teacher == ("T", "a", "b", "s")
    with pytest.raises(ValueError, match="a model twice"):
        driver.walk(["a", "a", "s"])
    untrained = ChainDriver(Fake({}, set(), [], teacher_trained=False))
    assert untrained.walk(["s"]) == [("T", "s")]  # a teacher taken as given has no result of its own


def test_a_chain_stopped_after_n_new_hops_resumes_from_the_hops_on_disk() -> None:
    disk: set[str] = set()
    first = Fake({}, disk, [])
    with pytest.raises(ChainInterrupted, match="after 2 newly trained hops"):
        ChainDriver(first, stop_after_hops=2).walk(["a", "b", "s"])
    assert first.trained == [("T",), ("T", "a")]
    second = Fake({}, disk, [])
    driver = ChainDriver(second, stop_after_hops=3)
    assert driver.walk(["a", "b", "s"])[-1] == ("T", "a", "b", "s")  # teacher and hop 1 reused: they do not count
    assert second.trained == [("T", "a", "b"), ("T", "a", "b", "s")] and driver.trained == 2


@pytest.mark.parametrize("strategy", ["greedy", "exhaustive"])
def test_the_planner_scores_trials_by_their_final_student_and_shared_prefixes_train_once(strategy: str) -> None:
    scores = {("s",): 0.5, ("a", "s"): 0.7, ("b", "s"): 0.6, ("a", "b", "s"): 0.9}
    fake = Fake(scores, set(), [])
    driver = ChainDriver(fake)
    cfg = PlanConfig(strategy=strategy, ladder=[{"kind": "tree", "max_depth": 8}, {"kind": "tree", "max_depth": 6}],
                     max_hops=3)
    name = {8: "a", 6: "b"}
    chosen, trials = driver.plan(cfg, cfg.ladder, lambda chain: [*(name[c["max_depth"]] for c in chain), "s"])
    assert [name[c["max_depth"]] for c in chosen] == ["a", "b"]
    assert [t.val for t in trials] == [0.5, 0.7, 0.6, 0.9]
    assert sorted(fake.trained) == sorted([("T",), ("T", "s"), ("T", "a"), ("T", "a", "s"), ("T", "b"),
                                           ("T", "b", "s"), ("T", "a", "b"), ("T", "a", "b", "s")])  # each once


def test_both_kinds_of_chain_are_walked_by_the_one_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.hops.chain import ChainRunner, load_chain_data, run_chain_config
    from ktransfer.hops.config import ChainConfig
    from ktransfer.hops.run_chain import RunChain
    from ktransfer.hops.run_config import RunChainConfig

    walked: list[tuple[str, int]] = []
    walk = ChainDriver.walk

    def recorded(self: ChainDriver[Any, Any, Any], hops: Sequence[Any]) -> list[Any]:
        walked.append((type(self.backend).__name__, len(hops)))
        return walk(self, hops)

    monkeypatch.setattr(ChainDriver, "walk", recorded)
    tables = ChainConfig.from_dict({
        "data": {"name": "breast_cancer", "split_seed": 0}, "teacher": {"kind": "mlp", "hidden": [16]},
        "student": {"kind": "tree", "max_depth": 2}, "method": {"name": "kd"}, "compare_one_hop": False,
        "plan": {"strategy": "fixed", "intermediates": [{"kind": "tree", "max_depth": 4}]},
        "train": {"max_steps": 5, "batch_size": 64}})
    train = {"max_steps": 2, "batch_size": 32, "eval_every": 2, "seed": 0}
    runs = RunChainConfig.from_dict({
        "task": "classification", "data": {"name": "digits"}, "compare_one_hop": False,
        "teacher": {"student": {"builder": "mlp", "hidden": [16]}, "train": train},
        "defaults": {"knowledge": [{"type": "response"}, {"type": "labels"}], "train": train},
        "student": {"student": {"builder": "mlp", "hidden": [4]}}})
    table_report = run_chain_config(tables, tmp_path / "tables")
    run_report = run_chain_config(runs, tmp_path / "runs")
    assert walked == [("ChainRunner", 2), ("RunChain", 1)]
    assert [r.index for r in table_report.chain] == [0, 1, 2] and [h.index for h in run_report.hops] == [0, 1]
    assert isinstance(ChainRunner(tables, load_chain_data(tables)).driver, ChainDriver)
    assert isinstance(RunChain(runs, tmp_path / "runs").driver, ChainDriver)
    # `stop_after_hops` stops either kind after that many new hops; a rerun resumes from the ones on disk
    with pytest.raises(ChainInterrupted):
        run_chain_config(runs, tmp_path / "runs-stopped", stop_after_hops=1)
    resumed = run_chain_config(runs, tmp_path / "runs-stopped")
    assert [h.status for h in resumed.hops] == ["reused", "trained"]
    assert [h.key for h in resumed.hops] == [h.key for h in run_report.hops]
