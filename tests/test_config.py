"""Run configs: validation errors name the key and the valid choices; overrides; round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktransfer.config import RunConfig, apply_overrides
from ktransfer.registry import ConfigError
from ktransfer.train import TrainConfig

BASE = {
    "data": {"name": "digits"},
    "student": {"builder": "mlp", "hidden": [16]},
    "teacher": {"builder": "mlp", "hidden": [64]},
    "knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 0.5},
                  {"type": "labels", "weight": 0.5}],
    "train": {"max_steps": 10},
}


def build(**changes: object) -> RunConfig:
    return RunConfig.from_dict({**BASE, **changes})


def test_valid_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = build()
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.train.max_steps == 10 and again.knowledge[0]["temperature"] == 2.0


def test_unknown_section_names_valid_sections() -> None:
    with pytest.raises(ConfigError, match=r"trian: unknown section \(did you mean 'train'\?\).*valid sections: task, data"):
        RunConfig.from_dict({**BASE, "trian": {}})


def test_unknown_train_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"config\.train\.max_step: unknown key \(did you mean 'max_steps'\?\).*"
                                          r"valid keys: .*batch_size.*max_steps"):
        build(train={"max_step": 3})


def test_bad_literal_value_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: invalid value 'fp8'.*valid choices: no, bf16, fp16"):
        build(train={"mixed_precision": "fp8"})
    with pytest.raises(ConfigError, match=r"optim\.name: invalid value 'adan'.*adamw, adam, sgd"):
        build(optim={"name": "adan"})


def test_wrong_types_are_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer, got 'ten'"):
        build(train={"max_steps": "ten"})
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
        build(optim={"lr": "fast"})


def test_out_of_range_values() -> None:
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        build(train={"max_steps": 0})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        build(optim={"lr": -1.0})


def test_unknown_model_builder_and_key() -> None:
    with pytest.raises(ConfigError, match=r"student.*unknown model builder 'mpl' \(did you mean 'mlp'\?\); valid choices: (.*, )?cnn, "):
        build(student={"builder": "mpl"})
    with pytest.raises(ConfigError, match=r"student\.hiden: unknown key \(did you mean 'hidden'\?\); valid keys for "
                                          r"model builder 'mlp': dropout, hidden, in_features, num_classes"):
        build(student={"builder": "mlp", "hiden": [3]})
    with pytest.raises(ConfigError, match="needs 'builder'"):
        build(student={"hidden": [3]})


def test_from_run_rejects_other_keys() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.hidden: not allowed with 'from_run'"):
        build(teacher={"from_run": "runs/x", "hidden": [3]})
    with pytest.raises(ConfigError, match=r"teacher\.which: invalid value 'last'"):
        build(teacher={"from_run": "runs/x", "which": "last"})


def test_unknown_dataset_and_dataset_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'digit' \(did you mean 'digits'\?\)"):
        build(data={"name": "digit"})
    with pytest.raises(ConfigError, match=r"data\.test_frac: unknown key.*valid keys for dataset 'digits': split_seed, test_fraction, val_fraction"):
        build(data={"name": "digits", "test_frac": 0.1})


def test_knowledge_errors() -> None:
    with pytest.raises(ConfigError, match=r"knowledge\[0\]: unknown knowledge term 'respone' \(did you mean 'response'\?\)"):
        build(knowledge=[{"type": "respone"}])
    with pytest.raises(ConfigError, match=r"knowledge\[0\]\.temp: unknown key \(did you mean 'temperature'\?\); "
                                          r"valid keys for knowledge term 'response': chunk_size, divergence, fused_head, label_weight, name, "
                                          r"params, tail, temperature, vocab_size, weight$"):
        build(knowledge=[{"type": "response", "temp": 2}])
    with pytest.raises(ValueError, match="unknown divergence 'reverse_kl'.*backward_kl.*forward_kl"):
        build(knowledge=[{"type": "response", "divergence": "reverse_kl"}])
    with pytest.raises(ConfigError, match=r"params\.beta: divergence 'forward_kl' takes no params"):
        build(knowledge=[{"type": "response", "params": {"beta": 0.5}}])
    with pytest.raises(ConfigError, match=r"params\.alfa: divergence 'skew_forward_kl' takes alpha"):
        build(knowledge=[{"type": "response", "divergence": "skew_forward_kl", "params": {"alfa": 0.5}}])
    with pytest.raises(ConfigError, match="missing 'type'"):
        build(knowledge=[{"weight": 1.0}])
    with pytest.raises(ConfigError, match="'labels' is used twice"):
        build(knowledge=[{"type": "labels"}, {"type": "labels"}])


def test_response_term_needs_teacher() -> None:
    cfg = {k: v for k, v in BASE.items() if k != "teacher"}
    with pytest.raises(ConfigError, match=r"terms \['response'\] need a teacher"):
        RunConfig.from_dict(cfg)


def test_selector_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown selector 'fixd' \(did you mean 'fixed'\?\)"):
        build(selector={"type": "fixd"})
    with pytest.raises(ConfigError, match=r"selector\.weights: unknown key.*valid keys for selector 'fixed': overrides"):
        build(selector={"type": "fixed", "weights": {}})


def test_overrides_set_values_with_yaml_types() -> None:
    cfg = RunConfig.from_dict(BASE, ["train.max_steps=7", "optim.lr=3e-4", "student.hidden=[8, 4]",
                                     "knowledge.0.divergence=backward_kl", "train.patience=null"])
    assert cfg.train.max_steps == 7
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.student["hidden"] == [8, 4]
    assert cfg.knowledge[0]["divergence"] == "backward_kl"
    assert cfg.train.patience is None


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        RunConfig.from_dict(BASE, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"train\.max_stepz: unknown key"):
        RunConfig.from_dict(BASE, ["train.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"knowledge\.5: expected a list index in \[0, 1\]"):
        RunConfig.from_dict(BASE, ["knowledge.5.weight=1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        RunConfig.from_dict(BASE, ["train.max_steps.x=1"])


def test_overrides_do_not_mutate_input() -> None:
    data = {"train": {"max_steps": 1}}
    out = apply_overrides(data, ["train.max_steps=2"])
    assert data["train"]["max_steps"] == 1 and out["train"]["max_steps"] == 2


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(bad)


def test_python_dataclasses_validate_too() -> None:
    with pytest.raises(ConfigError, match=r"train\.mode: invalid value 'maximum'"):
        TrainConfig(mode="maximum")  # type: ignore[arg-type]


def test_shipped_configs_are_valid() -> None:
    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ should ship example runs"
    from ktransfer.hops.config import ChainConfig, is_chain_file

    for path in configs:
        ChainConfig.from_yaml(path) if is_chain_file(path) else RunConfig.from_yaml(path)


def test_a_bad_value_for_an_optional_field_is_a_config_error() -> None:
    # `float | None` and `Literal[...] | None` fields: the one failed alternative is the message
    with pytest.raises(ConfigError, match=r"optim\.max_grad_norm: expected a number, got 'x'"):
        build(optim={"max_grad_norm": "x"})
    with pytest.raises(ConfigError, match=r"train\.mode: invalid value 'maximum' \(did you mean 'max'\?\); valid choices: max, min"):
        build(train={"mode": "maximum"})
