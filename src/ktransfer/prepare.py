"""What `ktransfer data prepare NAME` obtains once into the cache: data sets, pretrained models and teachers.

Data sets and pretrained models come from `ktransfer.data`; a teacher is a run trained from a
config (`ktransfer.teachers`), so it is added here, above the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ktransfer.data import PREPARERS as DATA_PREPARERS
from ktransfer.data import find_preparer as find_data_preparer
from ktransfer.teachers import prepare_teacher as train_once


def prepare_teacher(config: str | Path | None) -> Path:
    """Train the teacher run `config` describes into the cache once (see ktransfer.teachers)."""
    if config is None:
        raise ValueError("teacher: name the teacher's run config: ktransfer data prepare teacher --config FILE")
    return train_once(config, progress=True)


PREPARERS: dict[str, Callable[[Any], Path]] = {**DATA_PREPARERS, "teacher": prepare_teacher}


def find_preparer(name: str) -> Callable[[Any], Path]:
    """The preparer of `ktransfer data prepare NAME`: a data set, a pretrained model, `teacher`, or `bible-SRC-TGT`."""
    if name == "teacher":
        return prepare_teacher
    try:
        return find_data_preparer(name)
    except ValueError as e:
        raise ValueError(str(e).replace("valid choices: ", "valid choices: teacher, ", 1)) from None


__all__ = ["PREPARERS", "find_preparer", "prepare_teacher"]
