"""The training engine: resume equals an uninterrupted run, frozen teacher, NaN guard, accumulation, LMs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ktransfer.config import RunConfig
from ktransfer.data import TensorDictDataset
from ktransfer.knowledge import LabelsTerm, ResponseTerm, StepView
from ktransfer.registry import ConfigError
from ktransfer.runner import resume, run
from ktransfer.selection import FixedWeights
from ktransfer.train import (
    Distiller,
    NonFiniteLossError,
    OptimConfig,
    TrainConfig,
    make_evaluator,
    split_batch,
)


def tiny_config(**train: object) -> RunConfig:
    """Digits, a tiny teacher built in place (random, untrained: fine for engine tests)."""
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"builder": "mlp", "hidden": [32]},
        "student": {"builder": "mlp", "hidden": [16], "dropout": 0.1},
        "knowledge": [{"type": "response", "divergence": "jsd", "params": {"beta": 0.3}, "temperature": 2.0,
                       "weight": 0.5}, {"type": "labels", "weight": 0.5}],
        "optim": {"lr": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 3},
        "train": {"max_steps": 30, "batch_size": 32, "eval_every": 10, "log_every": 5, "checkpoint_every": 10,
                  **train},
    })


def weights(run_dir: Path, which: str = "final") -> dict[str, Tensor]:
    return load_file(str(run_dir / which / "model.safetensors"))


@pytest.mark.parametrize("grad_accum,group_by_length", [(1, False), (2, False), (2, True)])
def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tmp_path: Path, grad_accum: int,
                                                                 group_by_length: bool) -> None:
    cfg = tiny_config(grad_accum_steps=grad_accum, group_by_length=group_by_length)
    full = run(cfg, tmp_path / "full", progress=False)
    # "kill" after 20 steps (two checkpoints written), then a third step range that is lost
    part = run(cfg, tmp_path / "killed", progress=False, stop_after_steps=25)
    assert part.train.step == 25
    assert not (tmp_path / "killed" / "final").exists()
    resumed = resume(tmp_path / "killed", progress=False)
    assert resumed.train.step == full.train.step == 30
    assert resumed.train.final_metrics == full.train.final_metrics
    assert resumed.train.best_metrics == full.train.best_metrics
    a, b = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the metrics log has no duplicates from the lost steps 21-25
    steps = [r["step"] for r in map(json.loads, (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    killed_log = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in lines]  # noqa: E731
    assert strip(full_log) == strip(killed_log)


def test_run_directory_contents(tmp_path: Path) -> None:
    result = run(tiny_config(), tmp_path / "r", progress=False)
    d = tmp_path / "r"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json", "best/model.safetensors",
                 "final/model.safetensors"):
        assert (d / name).exists(), name
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["step-00000020", "step-00000030"]  # keep_checkpoints=2, no temporary leftovers
    # checkpoints hold the student only, never the frozen teacher
    assert sorted(p.name for p in (d / "checkpoints" / "step-00000030").glob("*.safetensors")) == ["model.safetensors"]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["finished"] and summary["seed"] == 0 and summary["environment"]["torch"] == torch.__version__
    assert result.student_parameters == 64 * 16 + 16 + 16 * 10 + 10
    records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert set(train[0]["terms"]) == {"response", "labels"} and train[0]["weights"] == {"response": 0.5, "labels": 0.5}
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20, 30]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        resume(tmp_path / "r", progress=False)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        resume(tmp_path / "missing", progress=False)


def test_missing_teacher_run_is_a_clear_error(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({**tiny_config().to_dict(), "teacher": {"from_run": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match=r"teacher\.from_run: no run found"):
        run(cfg, tmp_path / "r", progress=False)
    cfg = RunConfig.from_dict({**tiny_config().to_dict(), "teacher": {"builder": "mlp", "weights": str(tmp_path / "w.safetensors")}})
    with pytest.raises(FileNotFoundError, match=r"teacher\.weights: weights file not found"):
        run(cfg, tmp_path / "r", progress=False)


# ---------------------------------------------------------------------------------- engine with plain Python objects
def blobs(n: int = 96, dim: int = 6, classes: int = 3, seed: int = 0) -> TensorDictDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 3
    return TensorDictDataset(inputs=centers[labels] + torch.randn(n, dim, generator=g), labels=labels)


@dataclass
class ExplodingTerm:
    """Returns NaN from step `at` on (steps counted from 1)."""

    at: int
    name: str = "explodes"
    weight: float = 1.0
    requires_teacher: bool = False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def loss(self, view: StepView) -> Tensor:
        value = view.student.logits.float().pow(2).mean()
        return value * float("nan") if view.step + 1 >= self.at else value


def test_nan_loss_stops_with_the_step_number() -> None:
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm(), ExplodingTerm(at=4)], train_data=blobs(),
                  config=TrainConfig(max_steps=10, batch_size=16), progress=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4 \(labels=.*, explodes=nan\)") as info:
        d.fit()
    assert info.value.step == 4


def test_teacher_stays_frozen_and_in_eval_mode() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Linear(6, 3)
    seen_modes = []
    teacher.register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    d = Distiller(student, teacher, [ResponseTerm("forward_kl")], train_data=blobs(),
                  config=TrainConfig(max_steps=5, batch_size=16), progress=False)
    d.fit()
    assert seen_modes and not any(seen_modes)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_distillation_moves_the_student_towards_the_teacher() -> None:
    torch.manual_seed(1)
    teacher = nn.Linear(6, 3)
    student = nn.Linear(6, 3)
    data = blobs()
    x = data.tensors["inputs"]

    def gap() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.kl_div(student(x).log_softmax(-1), teacher(x).log_softmax(-1),
                                                    log_target=True, reduction="batchmean"))

    start = gap()
    Distiller(student, teacher, [ResponseTerm("forward_kl")], train_data=data, optim=OptimConfig(lr=0.05),
              config=TrainConfig(max_steps=60, batch_size=32), progress=False).fit()
    assert gap() < 0.1 * start


def test_gradient_accumulation_matches_a_bigger_batch() -> None:
    data = blobs()
    results = []
    for batch, accum in ((32, 1), (16, 2)):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        Distiller(model, None, [LabelsTerm()], train_data=data, optim=OptimConfig(name="sgd", lr=0.1, momentum=0.0),
                  config=TrainConfig(max_steps=3, batch_size=batch, grad_accum_steps=accum), progress=False).fit()
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_early_stopping_after_patience_evaluations() -> None:
    calls = []

    def flat(model: nn.Module) -> dict[str, float]:
        calls.append(1)
        return {"accuracy": 0.5}

    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], train_data=blobs(), evaluate=flat,
                  config=TrainConfig(max_steps=100, batch_size=16, eval_every=2, patience=3), progress=False)
    result = d.fit()
    assert result.stopped_early and result.step == 8 and len(calls) == 4
    assert result.best_step == 2


def test_unknown_metric_is_named() -> None:
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], train_data=blobs(), evaluate=lambda m: {"acc": 1.0},
                  config=TrainConfig(max_steps=2, batch_size=16, eval_every=1), progress=False)
    with pytest.raises(ConfigError, match=r"train\.metric: the evaluator returned no 'accuracy'; "
                                          r"it returned: acc; set train\.metric to one of these"):
        d.fit()


def test_bf16_mixed_precision_runs_on_cpu() -> None:
    data = blobs()
    teacher = nn.Linear(6, 3)
    d = Distiller(nn.Linear(6, 3), teacher, [ResponseTerm("backward_kl", chunk_size=8), LabelsTerm()], train_data=data,
                  evaluate=make_evaluator(data), config=TrainConfig(max_steps=4, batch_size=16, mixed_precision="bf16"),
                  progress=False)
    result = d.fit()
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"knowledge terms \['response'\] need a teacher"):
        Distiller(nn.Linear(6, 3), None, [ResponseTerm()], train_data=blobs())
    with pytest.raises(ValueError, match="at least one knowledge term"):
        Distiller(nn.Linear(6, 3), None, [], train_data=blobs())
    with pytest.raises(ValueError, match="names must be unique"):
        Distiller(nn.Linear(6, 3), None, [LabelsTerm(), LabelsTerm()], train_data=blobs())
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], FixedWeights({"label": 1.0}), train_data=blobs(),
                  config=TrainConfig(max_steps=1), progress=False)
    with pytest.raises(ValueError, match="overrides unknown term 'label'; terms are: labels"):
        d.fit()
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], FixedWeights({"labels": 0.0}), train_data=blobs(),
                  config=TrainConfig(max_steps=1), progress=False)
    with pytest.raises(ValueError, match="weight 0 at step 1"):
        d.fit()


def test_batch_keys_prefixed_teacher_go_to_the_teacher_only() -> None:
    x_s, x_t, y = torch.zeros(2, 3), torch.ones(2, 5), torch.tensor([0, 1])
    student, teacher = split_batch({"inputs": x_s, "teacher_inputs": x_t, "labels": y})
    assert student.keys() == {"inputs", "labels"} and student["inputs"] is x_s
    assert teacher["inputs"] is x_t and teacher["labels"] is y
    # and the engine uses them: a teacher with another input size trains a student
    data = TensorDictDataset(inputs=torch.randn(32, 4), teacher_inputs=torch.randn(32, 9),
                             labels=torch.randint(0, 3, (32,)))
    Distiller(nn.Linear(4, 3), nn.Linear(9, 3), [ResponseTerm(), LabelsTerm()], train_data=data,
              config=TrainConfig(max_steps=2, batch_size=8), progress=False).fit()


# ---------------------------------------------------------------------------------- causal LMs (Hugging Face)
def tiny_gpt2(vocab: int, layers: int = 2, width: int = 16, seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_layer=layers, n_embd=width, n_head=2, n_positions=32,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg)


def token_data(vocab: int = 50, n: int = 24, length: int = 12) -> TensorDictDataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # a prompt whose tokens are not predicted
    labels[::2, -2:] = -100  # padding
    return TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def test_causal_lm_distillation_with_hf_models() -> None:
    data = token_data()
    teacher, student = tiny_gpt2(50, layers=3, width=32, seed=1), tiny_gpt2(50, seed=2)
    d = Distiller(student, teacher, [ResponseTerm("backward_kl", chunk_size=16), LabelsTerm()], train_data=data,
                  task="causal_lm", evaluate=make_evaluator(data, "causal_lm"), optim=OptimConfig(lr=3e-3),
                  config=TrainConfig(max_steps=6, batch_size=8, eval_every=3), progress=False)
    result = d.fit()
    assert result.step == 6 and 0.0 <= result.final_metrics["accuracy"] <= 1.0


def test_vocabulary_mismatch_is_named_and_padded_rows_can_be_dropped() -> None:
    data = token_data(vocab=50)
    teacher, student = tiny_gpt2(56, seed=1), tiny_gpt2(50, seed=2)  # teacher embedding padded to 56 rows
    d = Distiller(student, teacher, [ResponseTerm("forward_kl")], train_data=data, task="causal_lm",
                  config=TrainConfig(max_steps=1, batch_size=8), progress=False)
    with pytest.raises(ValueError, match=r"student has vocabulary 50, teacher 56.*pass vocab_size="):
        d.fit()
    d = Distiller(student, teacher, [ResponseTerm("forward_kl", vocab_size=50)], train_data=data, task="causal_lm",
                  config=TrainConfig(max_steps=2, batch_size=8), progress=False)
    assert d.fit().step == 2


def test_label_shape_mismatch_is_named() -> None:
    data = TensorDictDataset(inputs=torch.randn(8, 6), labels=torch.zeros(8, 2, dtype=torch.long))
    d = Distiller(nn.Linear(6, 3), None, [LabelsTerm()], train_data=data, config=TrainConfig(max_steps=1, batch_size=4),
                  progress=False)
    with pytest.raises(ValueError, match=r"labels of shape \(4, 2\) do not match logits of shape \(4, 3\)"):
        d.fit()


@dataclass
class HiddenMatch:
    """A feature term written outside the library: MSE between captured hidden layers."""

    name: str = "hidden"
    weight: float = 1.0
    requires_teacher: bool = True
    student_modules: tuple[str, ...] = ("0",)
    teacher_modules: tuple[str, ...] = ("0",)

    def loss(self, view: StepView) -> Tensor:
        return torch.nn.functional.mse_loss(view.student_captured["0:output"], view.teacher_captured["0:output"])


def test_a_custom_term_reads_captured_features_and_trains_the_student() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = blobs()
    x = data.tensors["inputs"]

    def gap() -> float:
        with torch.no_grad():
            return float((student[0](x) - teacher[0](x)).pow(2).mean())

    start = gap()
    Distiller(student, teacher, [HiddenMatch(), LabelsTerm(weight=0.1)], train_data=data, optim=OptimConfig(lr=0.02),
              config=TrainConfig(max_steps=60, batch_size=32), progress=False).fit()
    assert gap() < 0.2 * start
    assert not any(h for m in (*student.modules(), *teacher.modules()) for h in m._forward_hooks.values())


def test_checkpoints_by_wall_time_make_a_killed_run_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import ktransfer.engine.checkpointing as checkpointing

    clock = [0.0]

    def tick() -> float:  # each reading is four minutes after the last: a checkpoint is due every third step
        clock[0] += 240.0
        return clock[0]

    monkeypatch.setattr(checkpointing, "_clock", tick)
    cfg = tiny_config(checkpoint_every=0, checkpoint_minutes=10.0)
    full = run(cfg, tmp_path / "full", progress=False)
    run(cfg, tmp_path / "killed", progress=False, stop_after_steps=25)
    steps = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert steps == ["step-00000021", "step-00000024"]  # by time alone: every third step, the newest two kept
    capsys.readouterr()
    resumed = resume(tmp_path / "killed", progress=False)
    assert f"resuming from checkpoint {tmp_path / 'killed' / 'checkpoints' / 'step-00000024'} (step 24 of 30)" \
        in capsys.readouterr().err
    assert resumed.train.step == 30
    for name, value in weights(tmp_path / "full").items():
        torch.testing.assert_close(weights(tmp_path / "killed")[name], value, rtol=0, atol=0)
    assert full.train.step == 30


def test_a_run_that_stopped_before_its_first_checkpoint_says_how_to_start_again(tmp_path: Path) -> None:
    cfg = tiny_config(checkpoint_every=0, checkpoint_minutes=0)
    run(cfg, tmp_path / "r", progress=False, stop_after_steps=5)
    assert not (tmp_path / "r" / "checkpoints").exists()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint to resume from .*stopped before its first one.*"
                                                r"ktransfer run .*config\.yaml --run-dir .* --overwrite"):
        resume(tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match=r"cannot be resumed .*no intact checkpoint.*--overwrite"):
        run(cfg, tmp_path / "r", progress=False)
    run(cfg, tmp_path / "r", progress=False, overwrite=True)
    with pytest.raises(FileExistsError, match=r"finished run: evaluate it .*--max-steps N.*--overwrite"):
        run(cfg, tmp_path / "r", progress=False)


def test_every_shipped_run_config_checkpoints_at_least_every_ten_minutes() -> None:
    from ktransfer.hops.config import is_chain_file

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = [p for p in sorted(root.rglob("*.yaml")) if not is_chain_file(p)]
    assert len(configs) >= 15
    for path in configs:
        train = RunConfig.from_yaml(path).train
        assert 0 < train.checkpoint_minutes <= 10, path


@dataclass
class ThreadsProbe:
    """A labels term that records torch's CPU thread count at every step it computes."""

    name: str = "labels"
    weight: float = 1.0
    requires_teacher: bool = False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.seen: list[int] = []

    def loss(self, view: StepView) -> Tensor:
        self.seen.append(torch.get_num_threads())
        return LabelsTerm().loss(view)


@pytest.fixture
def restore_threads() -> object:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("restore_threads")
def test_train_num_threads_sets_torch_threads_inside_the_run() -> None:
    torch.set_num_threads(1)
    probe = ThreadsProbe()
    Distiller(nn.Linear(6, 3), None, [probe], train_data=blobs(), config=TrainConfig(max_steps=2, batch_size=32,
              num_threads=2), progress=False).fit()
    assert probe.seen == [2, 2]
    probe = ThreadsProbe()  # unset: torch's setting as it was
    Distiller(nn.Linear(6, 3), None, [probe], train_data=blobs(), config=TrainConfig(max_steps=1, batch_size=32),
              progress=False).fit()
    assert probe.seen == [2]
    with pytest.raises(ValueError, match="train.num_threads must be >= 1 or null, got 0"):
        TrainConfig(num_threads=0)


@pytest.mark.usefixtures("restore_threads")
def test_the_threads_option_reaches_the_run_and_its_recorded_config(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from ktransfer.cli import main

    torch.set_num_threads(1)
    seen: list[int] = []
    step = Distiller._optimizer_step

    def probe(self: Distiller, *args: object, **kwargs: object) -> None:
        seen.append(torch.get_num_threads())
        step(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Distiller, "_optimizer_step", probe)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [8]},
                                   "knowledge": [{"type": "labels"}], "train": {"max_steps": 2, "batch_size": 16}}))
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress", "--threads", "3"]) == 0
    assert seen == [3, 3]
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["num_threads"] == 3
    torch.set_num_threads(1)
    assert main(["eval", str(tmp_path / "r"), "--threads", "2"]) == 0 and torch.get_num_threads() == 2
    assert main(["eval", str(tmp_path / "r"), "--threads", "0"]) == 2
    from ktransfer.cli import _apply_threads, _parser

    chain = Path(__file__).resolve().parents[1] / "configs" / "hops" / "fixed_tree.yaml"
    args = _parser().parse_args(["run", str(chain), "--threads", "1"])
    _apply_threads(args)  # a chain config has no train.num_threads: torch's threads only
    assert args.overrides == [] and torch.get_num_threads() == 1
