"""Selectors through the engine: schedule, random, actor-critic; terms with parameters; resume; policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ktransfer.checkpoint import load_weights
from ktransfer.config import RunConfig
from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import FeatureTerm, LabelsTerm, ResponseTerm
from ktransfer.registry import ConfigError
from ktransfer.selection import (
    SELECTORS,
    ActorCriticSelector,
    FixedWeights,
    RandomWeights,
    ScheduleWeights,
    SelectionState,
    Selector,
)
from ktransfer.train import Distiller, OptimConfig, TrainConfig


def blobs(n: int = 384, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[TensorDictDataset, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 3
    return TensorDictDataset(inputs=centers[labels] + torch.randn(n, dim, generator=g), labels=labels), centers


class WrongTeacher(nn.Module):
    """Knows the classes but names each one after the next: distilling from it hurts the task."""

    def __init__(self, centers: Tensor) -> None:
        super().__init__()
        self.register_buffer("centers", centers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(-torch.cdist(x, self.centers) * 3.0, 1, dims=-1)


class Stack(nn.Module):
    def __init__(self, width: int, depth: int, in_dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h)


class Labelled:
    name, weight, requires_teacher = "labels", 1.0, False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()


def names(*ws: float) -> list[Any]:
    terms = []
    for i, w in enumerate(ws):
        t = Labelled()
        t.name, t.weight = f"t{i}", w
        terms.append(t)
    return terms


# ------------------------------------------------------------------ each selector through the interface
def test_every_registered_selector_satisfies_the_interface() -> None:
    library = ["actor_critic", "fixed", "random", "schedule"]  # other tests may register their own
    assert set(library) <= set(SELECTORS.names())
    built = {name: SELECTORS.build(name, {"policy_path": None} if name == "actor_critic" else {}, "selector")
             for name in library}
    terms = names(1.0, 0.5)
    for name, selector in built.items():
        assert isinstance(selector, Selector), name
        w = selector.weights(terms, SelectionState(step=0, max_steps=10))
        assert set(w) == {"t0", "t1"} and all(0.0 <= v <= 1.0 for v in w.values()), name
        selector.load_state_dict(selector.state_dict())


def test_schedule_selector_grows_and_decays_linearly() -> None:
    sel = ScheduleWeights({"t0": {"start": 0.0, "end": 1.0}, "t1": {"start": 1.0, "end": 0.2, "begin": 0.5}})
    terms = names(1.0, 1.0, 0.3)
    at = lambda step: sel.weights(terms, SelectionState(step=step, max_steps=100))  # noqa: E731
    assert at(0) == {"t0": 0.0, "t1": 1.0, "t2": 0.3}
    assert at(25) == pytest.approx({"t0": 0.25, "t1": 1.0, "t2": 0.3})
    assert at(75) == pytest.approx({"t0": 0.75, "t1": 0.6, "t2": 0.3})
    assert at(100) == pytest.approx({"t0": 1.0, "t1": 0.2, "t2": 0.3})
    with pytest.raises(ValueError, match="ramps unknown term 'nope'"):
        ScheduleWeights({"nope": {"start": 0, "end": 1}}).weights(terms, SelectionState(0, 10))
    with pytest.raises(ConfigError, match=r"selector: ramps\.t0\.stop: unknown key; valid keys: start, end, begin, finish"):
        SELECTORS.build("schedule", {"ramps": {"t0": {"start": 0, "stop": 1}}}, "selector")


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_random_selector_is_seeded_and_resumes_its_draws(mode: str) -> None:
    terms = names(1.0, 0.5, 1.0)
    state = SelectionState(step=0, max_steps=10)
    a = RandomWeights(mode=mode, seed=3)
    first = [a.weights(terms, state) for _ in range(5)]
    saved = a.state_dict()
    rest = [a.weights(terms, state) for _ in range(5)]
    b = RandomWeights(mode=mode, seed=3)
    assert [b.weights(terms, state) for _ in range(5)] == first
    c = RandomWeights(mode=mode, seed=99)
    c.load_state_dict(saved)
    assert [c.weights(terms, state) for _ in range(5)] == rest
    values = [v for w in first + rest for v in w.values()]
    if mode == "hard":
        assert set(values) <= {0.0, 0.5, 1.0} and all(any(v > 0 for v in w.values()) for w in first + rest)
    else:
        assert len(set(values)) == len(values) and all(0.0 <= v <= 1.0 for v in values)


# ------------------------------------------------------------------ the actor-critic on a synthetic problem
def synthetic(selector: Selector, steps: int, run_dir: Path | None = None, **train: Any) -> Distiller:
    """Labels help; a response term towards a teacher that names every class wrongly hurts."""
    data, centers = blobs()
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return Distiller(student, WrongTeacher(centers), [LabelsTerm(), ResponseTerm()], selector, train_data=data,
                     config=TrainConfig(max_steps=steps, batch_size=32, log_every=1, seed=0, **train),
                     optim=OptimConfig(name="sgd", lr=0.02), run_dir=run_dir, progress=False)


def record_weights(selector: ActorCriticSelector) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []
    choose = selector.weights

    def wrapped(terms: Any, state: SelectionState) -> dict[str, float]:
        w = choose(terms, state)
        history.append(w)
        return w

    selector.weights = wrapped  # type: ignore[method-assign]
    return history


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_actor_critic_learns_to_weigh_the_helpful_term_above_the_harmful_one(mode: str) -> None:
    selector = ActorCriticSelector(mode=mode, heldout_examples=64)
    history = record_weights(selector)
    synthetic(selector, 120).fit()
    assert len(history) == 120
    late = history[60:]
    labels = sum(w["labels"] for w in late) / len(late)
    response = sum(w["response"] for w in late) / len(late)
    assert labels > 0.8 and response < 0.3 and labels - response > 0.6, (labels, response)
    if mode == "hard":
        assert {v for w in history for v in w.values()} <= {0.0, 1.0}


def test_multi_phase_measures_and_updates_once_per_phase(tmp_path: Path) -> None:
    every = ActorCriticSelector(heldout_examples=64, phase_steps=1)
    synthetic(every, 20).fit()
    phased = ActorCriticSelector(heldout_examples=64, phase_steps=5)
    history = record_weights(phased)
    synthetic(phased, 20, run_dir=tmp_path / "r").fit()
    # one held-out loss at the start, one per phase end; no transition for the first phase (nothing observed yet)
    assert phased.counts == {"decisions": 4, "heldout_evals": 5, "updates": 3}
    assert every.counts == {"decisions": 20, "heldout_evals": 21, "updates": 19}
    # weights are held through each phase
    assert all(history[p * 5 + i] == history[p * 5] for p in range(4) for i in range(5))
    # the cost is logged: counters and the selector's seconds
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["selector"]["updates"] == 3 and train[-1]["selector"]["seconds"] > 0
    assert every.seconds > 0 and phased.seconds > 0


# ------------------------------------------------------------------ terms with parameters, checkpoints, resume
def feature_run(run_dir: Path, selector: Selector, stop: int | None = None) -> Distiller:
    data, _ = blobs(n=160)
    torch.manual_seed(1)
    teacher, student = Stack(8, 4), Stack(4, 2)
    terms = [FeatureTerm(name="feature"), LabelsTerm(), ResponseTerm(temperature=2.0)]
    return Distiller(student, teacher, terms, selector, train_data=data,
                     config=TrainConfig(max_steps=12, batch_size=16, log_every=2, checkpoint_every=4, seed=5),
                     optim=OptimConfig(lr=0.01), run_dir=run_dir, progress=False, stop_after_steps=stop)


def test_feature_projections_train_with_the_student_and_are_saved_beside_it(tmp_path: Path) -> None:
    d = feature_run(tmp_path / "r", FixedWeights())
    before = d.terms[0].projections[0].weight.detach().clone()
    d.fit()
    after = d.terms[0].projections[0].weight.detach()
    assert not torch.equal(before, after)  # trained by the student's optimizer
    saved = load_file(str(tmp_path / "r" / "final" / "terms.safetensors"))
    assert sorted(saved) == ["feature.projections.0.bias", "feature.projections.0.weight",
                             "feature.projections.1.bias", "feature.projections.1.weight"]
    torch.testing.assert_close(saved["feature.projections.0.weight"], after)
    assert (tmp_path / "r" / "best" / "terms.safetensors").is_file()
    load_weights(Stack(4, 2), tmp_path / "r" / "final" / "model.safetensors")  # the bare student loads it
    assert (tmp_path / "r" / "weights.png").stat().st_size > 0


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_resume_with_the_actor_critic_and_a_feature_term_equals_the_uninterrupted_run(tmp_path: Path, mode: str) -> None:
    make = lambda: ActorCriticSelector(mode=mode, heldout_examples=32, phase_steps=3)  # noqa: E731
    full_sel = make()
    feature_run(tmp_path / "full", full_sel).fit()
    killed = feature_run(tmp_path / "killed", make(), stop=6)  # checkpoint at 4, steps 5-6 lost
    killed.fit()
    resumed_sel = make()
    feature_run(tmp_path / "killed", resumed_sel).fit(resume=True)
    for name in ("model.safetensors", "terms.safetensors"):
        a, b = load_file(str(tmp_path / "full" / "final" / name)), load_file(str(tmp_path / "killed" / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    sa, sb = full_sel.state_dict(), resumed_sel.state_dict()
    assert sa["counts"] == sb["counts"] and sa["weights"] == sb["weights"] and sa["phase_loss"] == sb["phase_loss"]
    for key in ("actor", "critic"):
        for name, value in sa["nets"][key].items():
            torch.testing.assert_close(value, sb["nets"][key][name], rtol=0, atol=0)
    torch.testing.assert_close(sa["generator"], sb["generator"], rtol=0, atol=0)

    def log(run: str) -> list[dict[str, Any]]:
        records = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for r in records:
            r.pop("elapsed_s", None)
            r.get("selector", {}).pop("seconds", None)
        return records

    assert log("full") == log("killed")


def test_a_saved_policy_reloads_frozen_or_still_learning(tmp_path: Path) -> None:
    learner = ActorCriticSelector(heldout_examples=64)
    synthetic(learner, 60, run_dir=tmp_path / "learn").fit()
    policy = tmp_path / "learn" / "final" / "policy.pt"
    assert policy.is_file()

    frozen = ActorCriticSelector(policy_path=str(policy), frozen=True)
    assert frozen.heldout_examples == 0  # a frozen policy needs no reward, so no data is set aside
    history = record_weights(frozen)
    synthetic(frozen, 10).fit()
    assert frozen.actor is not None and learner.actor is not None
    for (name, p), q in zip(learner.actor.state_dict().items(), frozen.actor.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # loaded, and never updated
    assert frozen.counts["updates"] == 0 and frozen.counts["heldout_evals"] == 0
    # it acts on what it learnt: the helpful term over the harmful one, from its first observation on
    assert all(w["labels"] > w["response"] for w in history[1:])

    still = ActorCriticSelector(policy_path=str(policy), heldout_examples=64)
    synthetic(still, 10).fit()
    assert still.counts["updates"] == 9
    assert not torch.equal(still.actor.body[0].weight, learner.actor.body[0].weight)  # type: ignore[union-attr]

    with pytest.raises(FileNotFoundError, match="policy_path: no policy file"):
        ActorCriticSelector(policy_path=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="frozen: true needs a policy_path"):
        ActorCriticSelector(frozen=True)
    other = ActorCriticSelector(policy_path=str(policy), frozen=True)
    data, centers = blobs()
    with pytest.raises(ValueError, match=r"was learnt for terms \['labels', 'response'\], this run has \['labels'\]"):
        Distiller(nn.Linear(6, 3), None, [LabelsTerm()], other, train_data=data,
                  config=TrainConfig(max_steps=2, batch_size=8), progress=False).fit()


def test_selectors_are_configured_from_yaml() -> None:
    base = {"teacher": {"builder": "mlp"}, "student": {"builder": "mlp"},
            "knowledge": [{"type": "response"}, {"type": "labels"}]}
    RunConfig.from_dict({**base, "selector": {"type": "actor_critic", "mode": "hard", "phase_steps": 10,
                                              "heldout_examples": 128}})
    RunConfig.from_dict({**base, "selector": {"type": "random", "mode": "hard", "p_on": 0.7}})
    RunConfig.from_dict({**base, "selector": {"type": "schedule", "ramps": {"labels": {"start": 0, "end": 1}}}})
    with pytest.raises(ConfigError, match=r"selector\.mode: invalid value 'medium'; valid choices: soft, hard"):
        RunConfig.from_dict({**base, "selector": {"type": "actor_critic", "mode": "medium"}})
    with pytest.raises(ConfigError, match=r"selector\.phase: unknown key \(did you mean 'phase_steps'\?\)"):
        RunConfig.from_dict({**base, "selector": {"type": "actor_critic", "phase": 3}})
    with pytest.raises(ConfigError, match="unknown selector 'actorcritic'.*valid choices: actor_critic, fixed, random, schedule"):
        RunConfig.from_dict({**base, "selector": {"type": "actorcritic"}})


def test_a_yaml_run_with_learned_selection_writes_weights_policy_and_projections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.cli import main

    import shutil

    root = tmp_path
    shutil.copytree(Path(__file__).parent.parent / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(root / "configs" / "digits_select.yaml")]) == 2  # its teacher is not trained yet
    assert main(["run", str(root / "configs" / "digits_teacher.yaml"), "--run-dir", "runs/digits_teacher",
                 "--no-progress", "--set", "train.max_steps=6", "--set", "train.eval_every=6"]) == 0
    assert main(["check", str(root / "configs" / "digits_select.yaml")]) == 0
    assert main(["run", str(root / "configs" / "digits_select.yaml"), "--run-dir", "runs/select", "--no-progress",
                 "--set", "train.max_steps=20", "--set", "train.eval_every=10", "--set", "selector.phase_steps=5"]) == 0
    run_dir = tmp_path / "runs" / "select"
    for name in ("weights.png", "final/policy.pt", "final/terms.safetensors", "best/terms.safetensors"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert set(train[-1]["weights"]) == {"response", "feature", "labels"}
    assert train[-1]["selector"]["updates"] == 3
    assert main(["run", str(root / "configs" / "digits_select.yaml"), "--run-dir", "runs/reuse", "--no-progress",
                 "--set", "train.max_steps=5", "--set", "selector.frozen=true",
                 "--set", f"selector.policy_path={run_dir / 'final' / 'policy.pt'}"]) == 0


def test_bert_student_with_feature_attention_relation_terms_and_pooled_representations(tmp_path: Path) -> None:
    """Hugging Face encoders of other depths, widths and head counts through the one engine, the actor-critic
    observing the pooler outputs it names (captured by the engine like a term's modules)."""
    from transformers import BertConfig, BertForSequenceClassification

    from ktransfer.knowledge import AttentionTerm, RelationTerm

    def bert(layers: int, heads: int, hidden: int) -> nn.Module:
        return BertForSequenceClassification(BertConfig(
            vocab_size=30, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=2 * hidden, max_position_embeddings=12, num_labels=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, attn_implementation="eager"))

    torch.manual_seed(0)
    teacher, student = bert(4, 4, 16), bert(2, 2, 8)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (48, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0
    data = TensorDictDataset(input_ids=ids, attention_mask=mask, labels=(ids[:, 0] > 15).long())
    selector = ActorCriticSelector(heldout_examples=8, phase_steps=2, student_representation="bert.pooler",
                                   teacher_representation="bert.pooler")
    terms = [FeatureTerm(), AttentionTerm(), RelationTerm(variant="token", path="attention.self.value"), LabelsTerm()]
    d = Distiller(student, teacher, terms, selector, train_data=data,
                  config=TrainConfig(max_steps=6, batch_size=8, log_every=2, seed=0), run_dir=tmp_path / "r",
                  progress=False)
    assert "bert.pooler" in d._student_specs and "bert.pooler" in d._teacher_specs
    d.fit()
    assert selector._dims == (16, 8, 5, 4)  # teacher width, student width, progress + 4 terms, 4 actions
    assert selector.counts["updates"] == 2
    saved = load_file(str(tmp_path / "r" / "final" / "terms.safetensors"))
    assert tuple(saved["feature.projections.0.weight"].shape) == (16, 8)

    lonely = ActorCriticSelector(heldout_examples=8, teacher_representation="bert.pooler")
    with pytest.raises(ValueError, match="teacher_representation 'bert.pooler' was not captured"):
        Distiller(bert(1, 2, 8), teacher, [LabelsTerm()], lonely, train_data=data,
                  config=TrainConfig(max_steps=2, batch_size=8), progress=False).fit()


class _Watcher(FixedWeights):
    """Fixed weights that record whether `observe` was given the step's outputs."""

    def __init__(self, observes: bool | None) -> None:
        super().__init__()
        if observes is not None:
            self.observes_view = observes
        self.seen: list[bool] = []

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        self.seen.append(state.view is not None)


@pytest.mark.parametrize("observes,expected", [(True, True), (None, False), (False, False)])
def test_the_step_outputs_are_kept_for_a_selector_only_when_it_observes_them(observes: bool | None,
                                                                           expected: bool) -> None:
    torch.manual_seed(0)
    data = TensorDictDataset(inputs=torch.randn(64, 4), labels=torch.randint(0, 2, (64,)))
    selector = _Watcher(observes)
    Distiller(nn.Linear(4, 2), None, [LabelsTerm()], selector, train_data=data, progress=False,
              config=TrainConfig(max_steps=3, batch_size=16, eval_every=3, log_every=3)).fit()
    assert selector.seen == [expected] * 3


class _OwnSelector:
    """A user's selector written before `observes_view` existed: it must still get the view."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def weights(self, terms: Any, state: SelectionState) -> dict[str, float]:
        return {t.name: t.weight for t in terms}

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        self.seen.append(state.view is not None)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_a_selector_that_does_not_say_is_given_the_view() -> None:
    data = TensorDictDataset(inputs=torch.randn(32, 4), labels=torch.randint(0, 2, (32,)))
    selector = _OwnSelector()
    Distiller(nn.Linear(4, 2), None, [LabelsTerm()], selector, train_data=data, progress=False,  # type: ignore[arg-type]
              config=TrainConfig(max_steps=2, batch_size=16, eval_every=2, log_every=2)).fit()
    assert selector.seen == [True, True]
