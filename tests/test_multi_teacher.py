"""Several teachers: named teachers, combined targets (averaged, chosen per example), (teacher, term) pairs under
every selector, config errors, and an end-to-end CLI run with a live teacher and a store written by a script."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from ktransfer.config import RunConfig
from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import (
    CombineConfig,
    FeatureTerm,
    LabelsTerm,
    ResponseTerm,
    StepView,
    TeacherMix,
    arrange_terms,
    with_teacher,
)
from ktransfer.knowledge.teachers import average_target, choose_target, choose_teacher, view_for
from ktransfer.registry import ConfigError
from ktransfer.selection import ActorCriticSelector, RandomWeights, ScheduleWeights, SelectionState, Selector
from ktransfer.tasks import IGNORE_INDEX, ForwardResult
from ktransfer.train import Distiller, OptimConfig, TrainConfig


def blobs(n: int = 384, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[TensorDictDataset, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 3
    return TensorDictDataset(inputs=centers[labels] + torch.randn(n, dim, generator=g), labels=labels), centers


class NearestCenter(nn.Module):
    """A teacher that knows the classes (`shift` 0), or names each one after the next (`shift` 1): wrong everywhere."""

    def __init__(self, centers: Tensor, shift: int = 0) -> None:
        super().__init__()
        self.register_buffer("centers", centers)
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(-torch.cdist(x, self.centers) * 3.0, self.shift, dims=-1)


def record(selector: Any) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []
    choose = selector.weights

    def wrapped(terms: Any, state: SelectionState) -> dict[str, float]:
        w = choose(terms, state)
        history.append(dict(w))
        return w

    selector.weights = wrapped
    return history


def train(teachers: nn.Module | dict[str, nn.Module], terms: list[Any], selector: Selector | None = None,
          steps: int = 12, seed_model: int = 1) -> tuple[nn.Module, list[dict[str, float]], Distiller]:
    data, _ = blobs(n=192)
    torch.manual_seed(seed_model)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    losses: list[dict[str, float]] = []
    d = Distiller(student, teachers, terms, selector, train_data=data,
                  config=TrainConfig(max_steps=steps, batch_size=32, log_every=1, seed=0),
                  optim=OptimConfig(name="sgd", lr=0.05), progress=False)
    observe = d._observe

    def keep(step_losses: dict[str, float]) -> None:
        losses.append(dict(step_losses))
        observe(step_losses)

    d._observe = keep  # type: ignore[method-assign]
    d.fit()
    return student, losses, d


def close_models(a: nn.Module, b: nn.Module, exact: bool) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if exact:
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ two identical teachers = one teacher
@pytest.mark.parametrize("method", ["pairs", "average", "choose"])
def test_two_identical_teachers_train_as_one(method: str) -> None:
    _, centers = blobs(n=192)
    teacher = NearestCenter(centers)
    one, one_losses, _ = train(teacher, [ResponseTerm(temperature=2.0), LabelsTerm(weight=0.5)])
    combine = CombineConfig(method=method, weights={"a": 0.5, "b": 0.5} if method == "pairs" else {})
    terms = arrange_terms([ResponseTerm(temperature=2.0), LabelsTerm(weight=0.5)], ["a", "b"], combine)
    two, two_losses, _ = train({"a": teacher, "b": NearestCenter(centers)}, terms)
    close_models(one, two, exact=method == "choose")  # choosing copies one teacher's logits unchanged
    assert len(one_losses) == len(two_losses) == 12
    for x, y in zip(one_losses, two_losses, strict=True):
        if method == "pairs":
            assert set(y) == {"response@a", "response@b", "labels"}
            assert y["response@a"] == y["response@b"]
            assert y["response@a"] == pytest.approx(x["response"], rel=1e-5)
        else:
            assert set(y) == set(x) and y["response"] == pytest.approx(x["response"], rel=1e-5)
        assert y["labels"] == pytest.approx(x["labels"], rel=1e-5)


def test_two_identical_teachers_averaged_get_the_one_teacher_weights_from_the_actor_critic() -> None:
    _, centers = blobs(n=192)
    one_sel = ActorCriticSelector(heldout_examples=32, seed=3)
    one_history = record(one_sel)
    one, _, _ = train(NearestCenter(centers), [LabelsTerm(), ResponseTerm()], one_sel, steps=20)
    two_sel = ActorCriticSelector(heldout_examples=32, seed=3)
    two_history = record(two_sel)
    terms = arrange_terms([LabelsTerm(), ResponseTerm()], ["a", "b"], CombineConfig(method="average"))
    two, _, _ = train({"a": NearestCenter(centers), "b": NearestCenter(centers)}, terms, two_sel, steps=20)
    assert one_sel._dims == two_sel._dims  # the teacher summary is the mean over teachers: one teacher's size
    assert len(one_history) == len(two_history) == 20
    for x, y in zip(one_history, two_history, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], abs=1e-4)
    close_models(one, two, exact=False)


# ------------------------------------------------------------------ the averaged target
def test_average_target_is_the_mixture_of_tempered_probabilities_float64() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 7, generator=g) * 3 for _ in range(3)]
    logits[1][0, 2] = -math.inf  # a class one teacher rules out: the others' mass remains
    weights = [0.5, 0.3, 0.2]
    for temperature in (1.0, 2.5):
        mixed = average_target(logits, weights, temperature)
        assert torch.isfinite(mixed).all()
        reference = sum(w * torch.softmax(z.double() / temperature, -1) for w, z in zip(weights, logits, strict=True))
        torch.testing.assert_close(torch.softmax(mixed.double() / temperature, -1), reference, rtol=1e-6, atol=1e-7)
        # never the average of logits
        naive = torch.softmax(sum(w * z.clamp_min(-30) for w, z in zip(weights, logits, strict=True)) / temperature, -1)
        assert (naive.double() - reference).abs().max() > 1e-2

    # a response term reading the mix computes its divergence against exactly that mixture (float64 reference)
    student = torch.randn(5, 7, generator=g, requires_grad=True)
    targets = torch.randint(0, 7, (5,), generator=g)
    view = StepView(batch={}, student=ForwardResult(student, targets, None), teacher=None,
                    teachers={n: ForwardResult(z, targets, None) for n, z in zip("abc", logits, strict=True)})
    term = with_teacher(ResponseTerm(divergence="forward_kl", temperature=2.0), TeacherMix(("a", "b", "c"), "average",
                                                                                            tuple(weights)))
    loss = term.loss(view_for(term, view))
    p = sum(w * torch.softmax(z.double() / 2.0, -1) for w, z in zip(weights, logits, strict=True))
    q = torch.log_softmax(student.detach().double() / 2.0, -1)
    kl = torch.where(p > 0, p * (p.log() - q), torch.zeros_like(p)).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(kl), rel=1e-5)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


# ------------------------------------------------------------------ the per-example choice
def test_choice_picks_the_teacher_giving_the_true_label_the_highest_probability() -> None:
    a = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    c = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1, 1])
    # row 0: a (p(0) highest); row 1: b; row 2: a (c splits its mass over two classes); row 3: a tie -> first
    assert choose_teacher([a, b, c], labels, "label").tolist() == [0, 1, 0, 0]
    assert torch.equal(choose_target([a, b, c], labels, "label"), torch.stack([a[0], b[1], a[2], a[3]]))
    # confidence: the highest top probability whatever the label
    assert choose_teacher([a, b, c], labels, "confidence").tolist() == [0, 1, 0, 0]
    assert choose_teacher([a, b, c], torch.tensor([1, 2, 2, 0]), "label").tolist() == [1, 1, 2, 0]
    # sequences: per position; positions without a target go to the first teacher
    seq_a, seq_b = torch.stack([a, b]), torch.stack([b, a])  # (2, 4, 3)
    seq_labels = torch.tensor([[0, 2, IGNORE_INDEX, 1], [1, 0, 1, IGNORE_INDEX]])
    assert choose_teacher([seq_a, seq_b], seq_labels, "label").tolist() == [[0, 1, 0, 0], [0, 1, 1, 0]]
    with pytest.raises(ValueError, match="needs the batch's targets"):
        choose_teacher([a, b], None, "label")

    # through a term: the view's teacher holds the chosen teacher's logits, example by example
    view = StepView(batch={}, student=ForwardResult(torch.zeros(4, 3), labels, None), teacher=None,
                    teachers={"a": ForwardResult(a, labels, None), "b": ForwardResult(b, labels, None)})
    term = with_teacher(ResponseTerm(), TeacherMix(("a", "b"), "choose"))
    seen = view_for(term, view).teacher
    assert seen is not None and torch.equal(seen.logits, torch.stack([a[0], b[1], a[2], a[3]]))


# ------------------------------------------------------------------ selectors over (teacher, term) pairs
def test_the_actor_critic_weighs_down_a_teacher_that_names_every_class_wrongly() -> None:
    data, centers = blobs()
    selector = ActorCriticSelector(heldout_examples=64)
    history = record(selector)
    terms = arrange_terms([LabelsTerm(), ResponseTerm()], ["right", "wrong"], CombineConfig(method="pairs"))
    assert [t.name for t in terms] == ["labels", "response@right", "response@wrong"]
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    Distiller(student, {"right": NearestCenter(centers), "wrong": NearestCenter(centers, shift=1)}, terms, selector,
              train_data=data, config=TrainConfig(max_steps=180, batch_size=32, log_every=1, seed=0),
              optim=OptimConfig(name="sgd", lr=0.02), progress=False).fit()
    late = history[100:]
    mean = {k: sum(w[k] for w in late) / len(late) for k in late[0]}
    assert mean["response@wrong"] < 0.3 and mean["response@right"] > 0.6, mean
    assert mean["response@right"] - mean["response@wrong"] > 0.5, mean


def test_schedule_and_random_selectors_weigh_pairs_by_name() -> None:
    _, centers = blobs(n=192)
    teachers = {"a": NearestCenter(centers), "b": NearestCenter(centers, shift=1)}
    terms = arrange_terms([ResponseTerm(), LabelsTerm()], ["a", "b"], CombineConfig(weights={"b": 0.5}))
    assert [(t.name, t.weight) for t in terms] == [("response@a", 1.0), ("response@b", 0.5), ("labels", 1.0)]
    schedule = ScheduleWeights({"response@b": {"start": 1.0, "end": 0.0}})
    history = record(schedule)
    train(teachers, terms, schedule, steps=10)
    assert history[0]["response@b"] == 1.0 and history[-1]["response@b"] == pytest.approx(0.1)
    assert all(w["response@a"] == 1.0 for w in history)
    random = RandomWeights(mode="hard", seed=0)
    history = record(random)
    terms = arrange_terms([ResponseTerm(), LabelsTerm()], ["a", "b"], CombineConfig())
    train(teachers, terms, random, steps=10)
    assert {v for w in history for v in w.values()} <= {0.0, 1.0} and set(history[0]) == {"response@a", "response@b",
                                                                                           "labels"}


def test_a_feature_term_per_teacher_gets_its_own_projection() -> None:
    class Wide(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = nn.Linear(6, width)
            self.head = nn.Linear(width, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.tanh(self.body(x)))

    terms = arrange_terms([FeatureTerm(student_layers=["0"], teacher_layers=["body"]), LabelsTerm()], ["a", "b"])
    _, _, d = train({"a": Wide(8), "b": Wide(12)}, terms, steps=3)
    shapes = {t.name: tuple(t.projections[0].weight.shape) for t in d.terms if isinstance(t, FeatureTerm)}
    assert shapes == {"feature@a": (8, 16), "feature@b": (12, 16)}


def test_engine_errors_name_the_defined_teachers() -> None:
    data, centers = blobs(n=64)
    teachers = {"a": NearestCenter(centers), "b": NearestCenter(centers)}
    with pytest.raises(ValueError, match="reads a teacher but names none; teachers: a, b"):
        Distiller(nn.Linear(6, 3), teachers, [ResponseTerm()], train_data=data, progress=False)
    with pytest.raises(ValueError, match="names teacher 'c', which is not defined; teachers: a, b"):
        Distiller(nn.Linear(6, 3), teachers, [with_teacher(ResponseTerm(), "c")], train_data=data, progress=False)
    with pytest.raises(ValueError, match="names teacher 'c', which is not defined; teachers: a, b"):
        arrange_terms([with_teacher(ResponseTerm(), "c")], ["a", "b"])
    with pytest.raises(ValueError, match="combine method 'average' cannot merge the teachers for it"):
        arrange_terms([FeatureTerm()], ["a", "b"], CombineConfig(method="average"))


# ------------------------------------------------------------------ configs
BASE: dict[str, Any] = {"student": {"builder": "mlp", "hidden": [8]},
                        "teachers": {"big": {"builder": "mlp", "hidden": [16]}, "other": {"builder": "mlp"}},
                        "knowledge": [{"type": "response"}, {"type": "labels"}],
                        "combine": {"method": "average"}}


def test_config_maps_onto_the_python_api() -> None:
    cfg = RunConfig.from_dict(BASE)
    assert cfg.combine == CombineConfig(method="average")
    terms = cfg.arranged_terms()
    assert terms[0].teacher == TeacherMix(("big", "other"), "average", (0.5, 0.5))  # type: ignore[attr-defined]
    again = RunConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    named = RunConfig.from_dict({**BASE, "combine": None, "knowledge": [{"type": "response", "teacher": "other"},
                                                                        {"type": "labels"}]})
    assert named.arranged_terms()[0].teacher == "other"  # type: ignore[attr-defined]
    pairs = RunConfig.from_dict(BASE, ["combine.method=pairs", "combine.weights.other=0.25"])
    assert [(t.name, t.weight) for t in pairs.arranged_terms()] == [("response@big", 1.0), ("response@other", 0.25),
                                                                     ("labels", 1.0)]
    one = RunConfig.from_dict({**BASE, "combine": None, "teachers": {"only": {"builder": "mlp"}}})
    assert one.arranged_terms()[0].teacher == "only"  # type: ignore[attr-defined]
    assert not [w for w in cfg.warnings() + one.warnings() if w.startswith("teachers")]
    unread = RunConfig.from_dict({**BASE, "combine": None, "knowledge": [{"type": "response", "teacher": "big"}]})
    assert "teachers: other is read by no knowledge term (each names another teacher)" in unread.warnings()[0]


@pytest.mark.parametrize("change,message", [
    ({"knowledge": [{"type": "response", "teacher": "bgi"}]},
     r"knowledge\[0\]\.teacher: unknown teacher 'bgi' \(did you mean 'big'\?\); defined teachers: big, other"),
    ({"combine": None}, r"knowledge\[0\] \(response\): reads a teacher but names none, and the run has teachers big, "
                        r"other: give it `teacher: NAME`, or add a 'combine' section \(method: pairs, average, choose\)"),
    ({"combine": {"method": "vote"}}, r"combine\.method: invalid value 'vote'; valid choices: pairs, average, choose"),
    ({"combine": {"weights": {"small": 1}}}, r"combine\.weights names teacher 'small', which is not defined; teachers: "
                                             r"big, other"),
    ({"combine": {"weights": {"big": -1}}}, r"weights\.big: expected a finite number >= 0"),
    ({"teacher": {"builder": "mlp"}}, r"give either 'teacher' \(one\) or 'teachers' \(several, by name\), not both"),
    ({"teachers": {"big": {"builder": "mlp"}}}, r"combine: merges several teachers, but 'teachers' defines one \(big\)"),
    ({"teachers": {}}, r"teachers: expected a mapping of teacher names"),
    ({"teachers": {"a@b": {"builder": "mlp"}, "c": {"builder": "mlp"}}}, r"teachers: invalid teacher name 'a@b'"),
    ({"teachers": {"big": {"builder": "mlp"}, "other": {"store": "s", "hidden": 3}}},
     r"teachers\.other\.hidden: not allowed with 'store'"),
    ({"teachers": {"big": {"builder": "mlp"}, "other": {"store": "s"}}, "combine": None,
      "knowledge": [{"type": "feature", "teacher": "other"}]},
     r"term 'feature' needs the model of teacher 'other'.*teachers\.other\.store provides only its output distribution"),
    ({"knowledge": [{"type": "feature"}]}, r"combine: knowledge term 'feature' \(FeatureTerm\) reads more than the "
                                           r"teacher's output distribution"),
    ({"knowledge": [{"type": "labels", "teacher": "big"}]}, r"knowledge\[0\]\.teacher: term 'labels' \(labels\) reads "
                                                            r"no teacher"),
    ({"selector": {"type": "actor_critic", "teacher_representation": "net.0"}},
     r"selector\.teacher_representation: the run's teachers are several models"),
])
def test_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({**BASE, **change})


def test_one_teacher_configs_refuse_what_needs_several() -> None:
    one = {"student": {"builder": "mlp"}, "teacher": {"builder": "mlp"}, "knowledge": [{"type": "response"}]}
    with pytest.raises(ConfigError, match=r"combine: merges several teachers, but the run has one \('teacher'\)"):
        RunConfig.from_dict({**one, "combine": {"method": "average"}})
    with pytest.raises(ConfigError, match=r"knowledge\[0\]\.teacher: names teacher 'x', but the run has one unnamed "
                                          r"teacher"):
        RunConfig.from_dict({**one, "knowledge": [{"type": "response", "teacher": "x"}]})


# ------------------------------------------------------------------ stores, class orders, the CLI end to end
def write_logreg_store(cfg: RunConfig, out: Path, classes: list[str] | None = None, flip: bool = False) -> float:
    """A scikit-learn logistic regression's class log-probabilities on the run's training split, as a store."""
    from sklearn.linear_model import LogisticRegression

    from ktransfer.building import load_data
    from ktransfer.store import StoreWriter, examples_digest

    data = load_data(cfg)
    x = np.stack([data.train[i]["inputs"].numpy() for i in range(len(data.train))])
    y = np.array([int(data.train[i]["labels"]) for i in range(len(data.train))])
    model = LogisticRegression(max_iter=300).fit(x, y)
    log_probs = np.clip(model.predict_log_proba(x), -50.0, 0.0)
    if flip:
        log_probs = log_probs[:, ::-1].copy()
    writer = StoreWriter(out, kind="logits", task="classification", examples=len(data.train), teacher="sklearn-logreg",
                         data=examples_digest(data.train), num_classes=log_probs.shape[1],
                         settings={"classes": classes} if classes else None)
    for i, row in enumerate(log_probs):
        writer.add(i, logits=torch.from_numpy(row).float())
    writer.close()
    return float((model.predict(x) == y).mean())


DIGITS = {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0}


def test_teachers_that_order_or_count_classes_differently_are_refused(tmp_path: Path) -> None:
    from ktransfer.checks import preflight

    digits = [str(i) for i in range(10)]
    probe = RunConfig.from_dict({"data": DIGITS, "student": {"builder": "mlp"}})
    write_logreg_store(probe, tmp_path / "a", classes=digits)
    write_logreg_store(probe, tmp_path / "b", classes=digits[::-1], flip=True)
    config = {"data": DIGITS, "student": {"builder": "mlp", "hidden": [8]}, "combine": {"method": "average"},
              "knowledge": [{"type": "response"}, {"type": "labels"}],
              "teachers": {"a": {"store": str(tmp_path / "a")}, "b": {"store": str(tmp_path / "b")}}}
    with pytest.raises(ConfigError, match=r"teachers\.b: its classes \['9', '8'.*differ from those of teachers\.a "
                                          r"\['0', '1'.*the same classes in another order: position 0 is '9' in the "
                                          r"first, '0' in the second"):
        preflight(RunConfig.from_dict(config))
    config["teachers"] = {"a": {"store": str(tmp_path / "a")}, "small": {"builder": "mlp", "num_classes": 7}}
    with pytest.raises(ConfigError, match=r"teachers\.small: predicts 7 classes and the student 10 \(teachers: small: 7, "
                                          r"a: 10\); every teacher must predict the same classes in the same order"):
        preflight(RunConfig.from_dict(config))
    config["teachers"] = {"a": {"store": str(tmp_path / "a")}, "b": {"store": str(tmp_path / "nowhere")}}
    with pytest.raises(FileNotFoundError, match=r"teachers\.b\.store: no teacher output store at"):
        preflight(RunConfig.from_dict(config))


def test_cli_run_with_a_live_teacher_and_a_store_written_by_a_script(tmp_path: Path) -> None:
    from ktransfer.cli import main

    config = {"task": "classification", "data": DIGITS,
              "teachers": {"mlp": {"builder": "mlp", "hidden": [16]}, "logreg": {"store": "store"}},
              "student": {"builder": "mlp", "hidden": [8]},
              "knowledge": [{"type": "response", "divergence": "soft_target", "temperature": 2.0},
                            {"type": "labels"}],
              "combine": {"method": "average", "weights": {"logreg": 3}},
              "optim": {"lr": 0.01}, "train": {"max_steps": 8, "batch_size": 32, "eval_every": 4, "log_every": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    accuracy = write_logreg_store(RunConfig.from_yaml(path), tmp_path / "store", classes=[str(i) for i in range(10)])
    assert accuracy > 0.9
    assert main(["check", str(path)]) == 0
    for name, overrides in (("average", []), ("choose", ["combine.method=choose"]),
                            ("pairs", ["combine.method=pairs", "selector.type=actor_critic",
                                       "selector.heldout_examples=32", "selector.phase_steps=2"])):
        run_dir = tmp_path / name
        args = ["run", str(path), "--run-dir", str(run_dir), "--no-progress"]
        assert main(args + [a for o in overrides for a in ("--set", o)]) == 0, name
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        weights = [r["weights"] for r in records if r["split"] == "train"]
        expected = {"response@mlp", "response@logreg", "labels"} if name == "pairs" else {"response", "labels"}
        assert set(weights[-1]) == expected, name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["step"] == 8 and summary["teacher_parameters"] > 0
        saved = RunConfig.from_yaml(run_dir / "config.yaml")
        assert saved.teachers is not None and saved.teachers["logreg"]["store"] == str(tmp_path / "store")
    assert (tmp_path / "pairs" / "final" / "policy.pt").is_file()
    assert main(["resume", str(tmp_path / "average"), "--max-steps", "10", "--no-progress"]) == 0


def test_the_shipped_two_teacher_config_runs_as_its_comment_says(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy
    import shutil

    from ktransfer.cli import main

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    config = str(tmp_path / "configs" / "digits_two_teachers.yaml")
    assert main(["check", config]) != 0  # neither teacher exists yet
    assert main(["run", "configs/digits_teacher.yaml", "--run-dir", "runs/digits_teacher", "--no-progress",
                 "--set", "train.max_steps=6", "--set", "train.eval_every=6"]) == 0
    example = runpy.run_path(str(root / "examples" / "store_from_topk_api.py"))
    example["main"](["--steps", "4", "--out", "runs/store_from_topk_api"])
    assert main(["check", config]) == 0
    short = ["--no-progress", "--set", "train.max_steps=6", "--set", "train.eval_every=6"]
    for method in ("average", "choose", "pairs"):
        assert main(["run", config, "--run-dir", f"runs/{method}", "--set", f"combine.method={method}", *short]) == 0
    records = [json.loads(x) for x in (tmp_path / "runs" / "pairs" / "metrics.jsonl").read_text().splitlines()]
    assert set([r for r in records if r["split"] == "train"][-1]["weights"]) == {"response@cnn", "response@logreg",
                                                                               "labels"}


def test_two_processes_with_a_live_and_a_stored_teacher_train_as_one(tmp_path: Path) -> None:
    """Under torchrun, each process runs the live teacher and reads the store on its own slice of the batch; the
    (teacher, term) pairs, a feature projection towards one named teacher and the actor-critic learn what one
    process learns on the same global batch."""
    import os
    import subprocess

    import _launch

    from safetensors.torch import load_file

    from ktransfer.runner import run

    config = {"data": {"name": "digits"},
              "teachers": {"mlp": {"builder": "mlp", "hidden": [32]}, "logreg": {"store": str(tmp_path / "store")}},
              "combine": {"method": "pairs"},
              "student": {"builder": "mlp", "hidden": [16]},
              "knowledge": [{"type": "feature", "student_layers": ["0"], "teacher_layers": ["0"], "teacher": "mlp"},
                            {"type": "response", "temperature": 2.0}, {"type": "labels"}],
              "selector": {"type": "actor_critic", "phase_steps": 2, "heldout_examples": 32},
              "optim": {"name": "sgd", "lr": 0.05},
              "train": {"max_steps": 6, "batch_size": 16, "eval_every": 6, "log_every": 1}}
    write_logreg_store(RunConfig.from_dict(config), tmp_path / "store")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # the teachers' order is the order of the pairs
    proc = subprocess.run([*_launch.torchrun(), "-m", "ktransfer.cli", "run", str(path), "--run-dir",
                           str(tmp_path / "two"), "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run(RunConfig.from_dict(config), tmp_path / "one", progress=False)
    for name in ("model.safetensors", "terms.safetensors"):
        a, b = load_file(str(tmp_path / "one" / "final" / name)), load_file(str(tmp_path / "two" / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] - b[key]).abs().max() < 1e-4, (name, key)
    logs = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("one", "two")]
    weights = [[r["weights"] for r in log if r["split"] == "train"] for log in logs]
    assert len(weights[0]) == 6 and set(weights[0][0]) == {"feature", "response@mlp", "response@logreg", "labels"}
    for wa, wb in zip(*weights, strict=True):
        assert wa.keys() == wb.keys() and all(abs(wa[k] - wb[k]) < 1e-4 for k in wa)
