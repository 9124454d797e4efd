"""Metrics go to TensorBoard (or another local tracker of Accelerate) through train.report_to."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktransfer.config import RunConfig
from ktransfer.registry import ConfigError
from ktransfer.runner import run


def config(**train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"}, "student": {"builder": "mlp", "hidden": [8]}, "knowledge": [{"type": "labels"}],
        "train": {"max_steps": 6, "batch_size": 32, "eval_every": 3, "log_every": 2, **train},
    })


def test_tensorboard_receives_train_and_validation_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is installed by the [dev] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(config(report_to=["tensorboard"]), tmp_path / "r", progress=False)
    events = list((tmp_path / "r" / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/accuracy", "val/loss"} <= tags
    assert [e.step for e in acc.Scalars("val/accuracy")] == [3, 6]


def test_unknown_tracker_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"train.report_to: unknown tracker 'tensorbord'; valid choices: tensorboard"):
        config(report_to=["tensorbord"])
