"""Multi-hop transfer: methods, probes, ladders, planner, chains, resume and input errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ktransfer.hops.chain import ChainInterrupted, ChainRunner, load_chain_data, one_hop, run_chain
from ktransfer.hops.config import ChainConfig
from ktransfer.hops.ladder import between, candidates, check_chain, truncations
from ktransfer.hops.methods import TRANSFER_METHODS, Member, TeacherDataError, build_method, confidences
from ktransfer.hops.models import SKLEARN_MODELS, TorchHopModel, complexity
from ktransfer.hops.planner import PlanConfig, exhaustive, greedy
from ktransfer.hops.probes import keep_probes, profweight_weights, sratio_weights, true_label_probs
from ktransfer.knowledge.base import KnowledgeTerm
from ktransfer.registry import ConfigError
from ktransfer.selection import SELECTORS, SelectionState

DIGITS = {"name": "digits", "split_seed": 0}
FAST = {"max_steps": 40, "batch_size": 64, "lr": 0.01}
INFO = {"num_features": 64, "num_classes": 10}


def _cfg(**kw: Any) -> ChainConfig:
    base: dict[str, Any] = {"data": DIGITS, "teacher": {"kind": "mlp", "hidden": [64]},
                            "student": {"kind": "tree", "max_depth": 3}, "train": FAST, "folds": 2}
    base.update(kw)
    return ChainConfig.from_dict(base)


# ----------------------------------------------------------------------------- a non-fixed selector
class RampSelector:
    """Test selector: the response term's weight grows with progress; records that it was asked."""

    calls = 0

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]:
        RampSelector.calls += 1
        return {t.name: (0.1 + 0.9 * state.progress) if t.requires_teacher else 1.0 for t in terms}

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


if "test_ramp" not in SELECTORS.names():
    SELECTORS.register("test_ramp")(RampSelector)


# ----------------------------------------------------------------------------- probes and weights
def test_profweight_weight_is_mean_of_kept_probes_true_label_probability() -> None:
    # three probes' class probabilities for 2 points, 3 classes; labels [2, 0]
    probe_outputs = [np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]),
                     np.array([[0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]),
                     np.array([[0.0, 0.1, 0.9], [0.9, 0.05, 0.05]])]
    y = np.array([2, 0])
    matrix = np.stack([true_label_probs(p, y) for p in probe_outputs], axis=1)
    keep = np.array([True, False, True])
    np.testing.assert_allclose(profweight_weights(matrix, keep), [(0.7 + 0.9) / 2, (0.6 + 0.9) / 2])
    with pytest.raises(ValueError, match="no probe is kept"):
        profweight_weights(matrix, np.zeros(3, dtype=bool))


def test_margin_filter_keeps_probes_beating_the_simple_model_by_the_margin() -> None:
    accs = [0.70, 0.75, 0.80, 0.90]
    assert keep_probes(accs, simple_accuracy=0.72, margin=0.0).tolist() == [False, True, True, True]
    assert keep_probes(accs, simple_accuracy=0.72, margin=0.05).tolist() == [False, False, True, True]
    assert keep_probes(accs, simple_accuracy=0.72, margin=0.2).tolist() == [False, False, False, False]


def test_sratio_drops_exactly_the_points_above_the_threshold() -> None:
    complex_p = np.array([0.9, 0.5, 0.8, 0.2, 0.6])
    simple_p = np.array([0.3, 0.5, 0.2, 0.4, 0.6])  # ratios 3, 1, 4, 0.5, 1
    w = sratio_weights(complex_p, simple_p, threshold=2.0)
    np.testing.assert_allclose(w, [0.0, 1.0, 0.0, 0.5, 1.0])
    assert (sratio_weights(complex_p, simple_p, threshold=3.0) == 0).tolist() == [False, False, True, False, False]


# ----------------------------------------------------------------------------- ladders and planner
def test_chains_strictly_decrease_in_complexity_and_candidates_lie_between() -> None:
    teacher, student = {"kind": "mlp", "hidden": [128, 128]}, {"kind": "tree", "max_depth": 3}
    sizes = check_chain([teacher, {"kind": "mlp", "hidden": [16]}, student], INFO)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    with pytest.raises(ConfigError, match="not simpler than its teacher"):
        check_chain([teacher, {"kind": "mlp", "hidden": [512]}, student], INFO)
    with pytest.raises(ConfigError, match="the student .* not simpler"):
        check_chain([{"kind": "tree", "max_depth": 2}, {"kind": "tree", "max_depth": 3}], INFO)
    rungs = [{"kind": "mlp", "hidden": [512, 512]}, {"kind": "mlp", "hidden": [32]}, {"kind": "tree", "max_depth": 2}]
    pool = candidates(teacher, student, rungs, INFO, construct=["between", "truncate"])
    sizes = [complexity(s, INFO) for s in pool]
    assert sizes == sorted(sizes, reverse=True)
    assert all(complexity(student, INFO) < c < complexity(teacher, INFO) for c in sizes)
    assert {"kind": "mlp", "hidden": [128], "init_from_teacher": True} in pool  # truncated teacher
    assert between({"kind": "mlp", "hidden": [64]}, {"kind": "mlp", "hidden": [16]}) == {"kind": "mlp", "hidden": [32]}
    assert between({"kind": "tree", "max_depth": 8}, {"kind": "tree", "max_depth": 2}) == {"kind": "tree", "max_depth": 5}
    assert truncations({"kind": "mlp", "hidden": [8]}) == []


def test_greedy_stops_when_no_candidate_gains_more_than_epsilon() -> None:
    a, b, c = ({"kind": "mlp", "hidden": [w]} for w in (64, 32, 16))
    gains = {(): 0.50, ("a",): 0.56, ("b",): 0.53, ("c",): 0.51, ("a", "b"): 0.575, ("a", "c"): 0.57, ("b", "c"): 0.52,
             ("a", "b", "c"): 0.9}
    names = {64: "a", 32: "b", 16: "c"}
    scored: list[tuple[str, ...]] = []

    def score(chain: list[dict[str, Any]]) -> float:
        key = tuple(names[s["hidden"][0]] for s in chain)
        scored.append(key)
        return gains[key]

    chain, trials = greedy([a, b, c], score, epsilon=0.02, max_hops=4)
    assert chain == [a]  # +0.06 accepted; the best second one gains only 0.015 <= epsilon
    assert ("a", "b", "c") not in scored  # stopped: never went on to a third intermediate
    chain, _ = greedy([a, b, c], score, epsilon=0.01, max_hops=4)
    assert chain == [a, b, c]
    chain, _ = greedy([a, b, c], score, epsilon=0.1, max_hops=4)
    assert chain == []
    chain, trials = exhaustive([a, b, c], lambda ch: gains[tuple(names[s["hidden"][0]] for s in ch)], 0.0, max_hops=3)
    assert chain == [a, b] and len(trials) == 7  # subsets of size <= 2


def test_plan_config_errors_name_the_keys() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        ChainConfig.from_dict({"teacher": {"kind": "mlp"}, "student": {"kind": "tree"}, "plan": {"strategy": "gredy"}})
    with pytest.raises(ConfigError, match="valid keys"):
        ChainConfig.from_dict({"teacher": {"kind": "mlp"}, "student": {"kind": "tree"}, "plan": {"epsilom": 0.1}})
    with pytest.raises(ConfigError, match="unknown transfer method 'profwieght'.*did you mean 'profweight'"):
        build_method({"name": "profwieght"})
    with pytest.raises(ConfigError, match="unknown model kind"):
        ChainConfig.from_dict({"teacher": {"kind": "resnet"}, "student": {"kind": "tree"}})
    assert set(TRANSFER_METHODS.names()) == {"labels", "kd", "confidence", "profweight", "sratio"}
    PlanConfig(strategy="greedy", ladder=[{"kind": "tree", "max_depth": 5}])


# ----------------------------------------------------------------------------- chains
def test_empty_chain_equals_one_hop_bit_for_bit() -> None:
    cfg = _cfg(student={"kind": "mlp", "hidden": [8]}, method={"name": "kd", "temperature": 3.0},
               compare_one_hop=False)
    chain_runner = ChainRunner(cfg, load_chain_data(cfg))
    chain_runner.run([], cfg.methods_for(1))
    chain_student = chain_runner.last_members[-1].model
    # a fresh runner (the teacher retrained from the same seed), the method called directly
    runner = ChainRunner(cfg, load_chain_data(cfg))
    direct = one_hop(runner, build_method({"name": "kd", "temperature": 3.0})).model
    assert isinstance(direct, TorchHopModel) and isinstance(chain_student, TorchHopModel)
    for a, b in zip(chain_student.module.state_dict().values(), direct.module.state_dict().values()):
        assert torch.equal(a, b)
    x = runner.data.x_test
    assert np.array_equal(chain_student.predict_proba(x), direct.predict_proba(x))
    assert run_chain(cfg).chain[-1].test == float((direct.predict_proba(x).argmax(1) == runner.data.y_test).mean())


def test_every_method_in_every_hop_with_tree_students_and_a_non_fixed_selector(tmp_path: Path) -> None:
    RampSelector.calls = 0
    cfg = _cfg(
        teacher={"kind": "mlp", "hidden": [64, 32]},
        student={"kind": "tree", "max_depth": 2},
        plan={"strategy": "fixed", "max_hops": 6, "intermediates": [
            {"kind": "mlp", "hidden": [16]}, {"kind": "mlp", "hidden": [8]}, {"kind": "tree", "max_depth": 6},
            {"kind": "tree", "max_depth": 4}, {"kind": "tree", "max_depth": 3}]},
        hop_methods=[{"name": "kd", "selector": {"type": "test_ramp"}}, {"name": "confidence"},
                     {"name": "profweight", "margin": 0.0}, {"name": "sratio", "quantiles": [0.8, 1.0]},
                     {"name": "kd", "temperature": 2.0}, {"name": "labels"}],
    )
    report = run_chain(cfg, tmp_path / "run")
    methods = [r.method for r in report.chain[1:]]
    assert methods == ["kd", "confidence", "profweight", "sratio", "kd", "labels"]
    # the distillation hop went through the engine's selector: its fit, and 2 out-of-fold refits
    # for the confidences the next hop reads
    assert RampSelector.calls == 3 * FAST["max_steps"]
    for r in report.chain:
        assert 0.0 <= r.test <= 1.0 and r.val > 0.1, r.as_dict()
    # the probe of an MLP intermediate (its one ReLU layer; not its output) was scored, out of fold
    prof = report.chain[3].details
    assert len(prof["probe_val_accuracy"]) == 1 and prof["confidences"].startswith("out-of-fold")
    assert report.chain[4].details["thresholds_tried"]
    run_dir = tmp_path / "run"
    assert (run_dir / "report.md").read_text().count("|") > 20 and (run_dir / "chain.png").stat().st_size > 1000
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["split"]["confidence_split"] == "holdout" and saved["split"]["teacher_points"] > 0
    assert len(list((run_dir / "hops").glob("*/record.json"))) >= 7


def test_every_method_one_hop_from_a_boosted_teacher_with_stage_probes() -> None:
    for method in ({"name": "profweight"}, {"name": "sratio", "source": "probes", "quantiles": [0.9, 1.0]},
                   {"name": "confidence"}, {"name": "kd"}):
        cfg = _cfg(data={"name": "wine"}, teacher={"kind": "gbdt", "n_estimators": 12, "max_depth": 2},
                   student={"kind": "mlp", "hidden": [2]},
                   method=method, confidence_split="oof", compare_one_hop=False)
        report = run_chain(cfg)
        assert report.chain[-1].val > 0.3
        if method["name"] == "profweight":
            assert len(report.chain[-1].details["probe_val_accuracy"]) == 4  # 4 stages, not the output
            assert report.chain[-1].details["confidences"].startswith("out-of-fold")


def test_profweight_probes_the_layers_and_the_output_only_when_asked() -> None:
    cfg = _cfg(data={"name": "wine"}, teacher={"kind": "gbdt", "n_estimators": 12, "max_depth": 2},
               student={"kind": "tree", "max_depth": 1}, method={"name": "profweight"}, compare_one_hop=False)
    runner = ChainRunner(cfg, load_chain_data(cfg))
    idx = runner.data.student_idx
    # the reference: every column (4 boosting stages, then the output) and its validation accuracy
    probs, accs, _ = confidences(runner.teacher, idx, runner.ctx, probes=True)
    assert probs.shape == (len(idx), 5)
    _, simple_val = runner.ctx.simple(dict(cfg.student))
    keep = np.asarray(accs, dtype=np.float64) > simple_val
    assert keep[-1] and keep[:-1].any()  # the output is kept when offered, so the two weightings differ
    for method, columns in ((build_method({"name": "profweight"}), slice(0, 4)),
                            (build_method({"name": "profweight", "output_probe": True}), slice(0, 5))):
        out = method.transfer([runner.teacher], dict(cfg.student), runner.ctx)
        assert len(out.details["probe_val_accuracy"]) == columns.stop
        assert out.details["output_probe"] is (columns.stop == 5)
        assert out.details["probe_names"][-1].endswith("output" if columns.stop == 5 else "layer 4")
        expected = probs[:, columns][:, keep[columns]].astype(np.float64).mean(axis=1)
        assert out.recipe.weights is not None
        np.testing.assert_allclose(out.recipe.weights[idx], expected, rtol=0, atol=1e-12)
    # a teacher with no intermediate representations: nothing to probe unless the output is offered
    tree_cfg = _cfg(data={"name": "wine"}, teacher={"kind": "tree", "max_depth": 6},
                    student={"kind": "tree", "max_depth": 1}, method={"name": "profweight"})
    tree_runner = ChainRunner(tree_cfg, load_chain_data(tree_cfg))
    out = build_method({"name": "profweight"}).transfer([tree_runner.teacher], {"kind": "tree", "max_depth": 1},
                                                        tree_runner.ctx)
    assert "no intermediate representations" in out.details["fallback"] and out.recipe.weights is None
    out = build_method({"name": "profweight", "output_probe": True}).transfer(
        [tree_runner.teacher], {"kind": "tree", "max_depth": 1}, tree_runner.ctx)
    assert out.details["probe_names"] == ["teacher:tree(d=6) output"]


def test_greedy_and_dense_chains_run(tmp_path: Path) -> None:
    cfg = _cfg(method={"name": "confidence"},
               plan={"strategy": "greedy", "ladder": [{"kind": "tree", "max_depth": 8}, {"kind": "mlp", "hidden": [4]}],
                     "epsilon": 0.0, "max_hops": 2, "dense": True})
    report = run_chain(cfg, tmp_path)
    assert len(report.trials) == 3 and report.trials[0].intermediates == []
    # epsilon 0, one intermediate at most: the planner keeps the best chain it scored
    assert report.chain[-1].val == max(t.val for t in report.trials)
    assert [r.spec for r in report.chain[1:-1]] == next(t.intermediates for t in report.trials
                                                         if t.val == report.chain[-1].val)
    if len(report.chain) == 3:
        assert len(report.chain[-1].teachers) == 2  # dense: teacher and intermediate both teach
    # report.md lists every chain the planner scored, the chosen one marked
    md = (tmp_path / "report.md").read_text()
    chosen = [r.label for r in report.chain[1:-1]]
    for t in report.trials:
        names = t.as_dict()["intermediates"]
        mark = "chosen" if names == chosen else ""
        assert f"| {', '.join(names) or '(none: 1 hop)'} | {t.val:.4f} | {mark} |" in md
    assert md.count("| chosen |") == 1


def test_a_killed_chain_resumes_from_its_last_finished_hop(tmp_path: Path) -> None:
    kw = dict(plan={"strategy": "fixed", "intermediates": [{"kind": "mlp", "hidden": [16]}]},
              student={"kind": "mlp", "hidden": [4]}, method={"name": "profweight"}, compare_one_hop=False)
    full = run_chain(_cfg(**kw), tmp_path / "full")
    with pytest.raises(ChainInterrupted):
        run_chain(_cfg(**kw), tmp_path / "killed", stop_after_hops=2)  # teacher and hop 1 finished
    records = sorted((tmp_path / "killed" / "hops").glob("*/record.json"))
    assert len(records) == 2
    before = {p: p.stat().st_mtime_ns for p in records}
    cfg = _cfg(**kw)
    runner = ChainRunner(cfg, load_chain_data(cfg), tmp_path / "killed")
    assert runner.trained == 0  # the teacher was loaded, not retrained
    resumed = run_chain(cfg, tmp_path / "killed")
    assert [r.test for r in resumed.chain] == [r.test for r in full.chain]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished hops were not rewritten
    # a corrupted model file fails verification and its hop is trained again
    hop1 = next(p.parent for p in records if p.parent.name.startswith("01-"))
    (hop1 / "model.safetensors").write_bytes(b"garbage")
    runner = ChainRunner(cfg, load_chain_data(cfg), tmp_path / "killed")
    runner.run([{"kind": "mlp", "hidden": [16]}], cfg.methods_for(2))
    assert runner.trained == 1


# ----------------------------------------------------------------------------- bad input
def test_student_more_complex_than_its_teacher_is_an_error() -> None:
    cfg = _cfg(teacher={"kind": "mlp", "hidden": [8]}, student={"kind": "mlp", "hidden": [64]})
    with pytest.raises(ConfigError, match=r"student mlp\[64\].*not simpler than its teacher mlp\[8\]"):
        run_chain(cfg)


def test_estimator_without_sample_weight_for_a_reweighting_method_is_an_error() -> None:
    if "test_knn" not in SKLEARN_MODELS.names():
        def build_knn(n_neighbors: int = 5, random_state: int = 0) -> Any:
            """k nearest neighbours (test kind: an estimator without sample_weight)."""
            from sklearn.neighbors import KNeighborsClassifier

            return KNeighborsClassifier(n_neighbors=n_neighbors)

        SKLEARN_MODELS.register("test_knn")(build_knn)
    with pytest.raises(ConfigError, match="'test_knn' does not accept sample_weight"):
        _cfg(student={"kind": "test_knn"}, method={"name": "profweight"})
    _cfg(student={"kind": "test_knn"}, method={"name": "labels"})  # fine without reweighting


def test_teacher_confidences_on_its_own_training_data_are_refused() -> None:
    with pytest.raises(ConfigError, match="teacher's own training data"):
        _cfg(confidence_split="train", method={"name": "confidence"})
    cfg = _cfg(confidence_split="oof", method={"name": "confidence"})
    runner = ChainRunner(cfg, load_chain_data(cfg))
    external = Member(runner.teacher.model, runner.teacher.trained_on, recipe=None, name="pretrained")
    with pytest.raises(TeacherDataError, match="trained on"):
        confidences(external, runner.data.student_idx, runner.ctx)


def test_csv_dataset_and_a_missing_label_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.csv"
    rows = ["a,b,kind"] + [f"{x:.3f},{z:.3f},{'yes' if x + z > 0 else 'no'}" for x, z in rng.normal(size=(200, 2))]
    path.write_text("\n".join(rows) + "\n")
    cfg = _cfg(data={"name": "csv", "path": str(path), "label": "kind", "features": ["a", "b"]},
               teacher={"kind": "mlp", "hidden": [16]}, student={"kind": "tree", "max_depth": 1},
               method={"name": "confidence"}, compare_one_hop=False)
    report = run_chain(cfg)
    assert report.chain[0].val > 0.8
    bad = _cfg(data={"name": "csv", "path": str(path), "label": "label"})
    with pytest.raises(ConfigError, match=r"data.label: column 'label' not found in .*data.csv; columns are: a, b, kind"):
        run_chain(bad)
    with pytest.raises(ConfigError, match=r"data.features\[1\]: column 'c' not found in .*data.csv"):
        run_chain(_cfg(data={"name": "csv", "path": str(path), "label": "kind", "features": ["a", "c"]}))


def test_torch_representations_are_the_relu_outputs() -> None:
    torch.manual_seed(0)
    from ktransfer.models import MLP

    model = TorchHopModel({"kind": "mlp", "hidden": [5, 3]}, MLP(4, 2, hidden=(5, 3)), 2)
    reps = model.representations(np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32))
    assert [r.shape for r in reps] == [(7, 5), (7, 3)] and all((r >= 0).all() for r in reps)


def test_truncated_teacher_starts_from_the_teachers_first_layers() -> None:
    from ktransfer.hops.fitting import _copy_prefix
    from ktransfer.models import MLP

    torch.manual_seed(0)
    teacher, student = MLP(64, 10, hidden=(16, 8)), MLP(64, 10, hidden=(16,))
    _copy_prefix(student, teacher)
    assert torch.equal(student[0].weight, teacher[0].weight) and torch.equal(student[0].bias, teacher[0].bias)
    assert student[2].weight.shape == (10, 16)  # the new output layer keeps its own initialisation
    truncated = truncations({"kind": "mlp", "hidden": [32, 16]})[0]
    cfg = _cfg(teacher={"kind": "mlp", "hidden": [32, 16]}, student={"kind": "mlp", "hidden": [2]},
               method={"name": "confidence"}, compare_one_hop=False,
               plan={"strategy": "fixed", "intermediates": [truncated]})
    report = run_chain(cfg)
    assert report.chain[1].spec == {"kind": "mlp", "hidden": [32], "init_from_teacher": True}
    assert report.chain[1].val > 0.5


def test_a_changed_data_file_at_the_same_path_trains_a_new_teacher(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "data.csv"
    rows = ["a,b,kind"] + [f"{x:.3f},{z:.3f},{'yes' if x + z > 0 else 'no'}" for x, z in rng.normal(size=(120, 2))]
    path.write_text("\n".join(rows) + "\n")
    kw = dict(data={"name": "csv", "path": str(path), "label": "kind"}, teacher={"kind": "mlp", "hidden": [8]},
              student={"kind": "tree", "max_depth": 1}, method={"name": "labels"}, compare_one_hop=False)
    cfg = _cfg(**kw)
    first = ChainRunner(cfg, load_chain_data(cfg), tmp_path / "run")
    assert first.trained == 1
    same = ChainRunner(cfg, load_chain_data(cfg), tmp_path / "run")
    assert same.trained == 0 and same.teacher_record.key == first.teacher_record.key
    x, z, _ = rows[7].split(",")
    path.write_text("\n".join([*rows[:7], f"{x},{z},{'no' if rows[7].endswith('yes') else 'yes'}", *rows[8:]]) + "\n")
    changed = ChainRunner(cfg, load_chain_data(cfg), tmp_path / "run")  # one label edited in place
    assert changed.trained == 1 and changed.teacher_record.key != first.teacher_record.key
