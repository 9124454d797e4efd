"""The training engine under its first name: every name it offered, now defined in `ktransfer.engine`.

`from ktransfer.train import Distiller, TrainConfig, ...` keeps working; new code may import
from `ktransfer.engine` (or its modules) directly.
"""

from __future__ import annotations

from ktransfer.engine import (
    HEALTH_MIN_STEPS,
    TEACHER_PREFIX,
    TRACKERS,
    Distiller,
    EpochShuffleSampler,
    Evaluator,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteMetricError,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainResult,
    TrainState,
    WorldSizeError,
    make_evaluator,
    run_health_warnings,
    shard_batches,
    split_batch,
    sum_over_processes,
)

__all__ = ["HEALTH_MIN_STEPS", "TEACHER_PREFIX", "TRACKERS", "Distiller", "EpochShuffleSampler", "Evaluator",
           "NonFiniteError", "NonFiniteLossError", "NonFiniteMetricError", "OptimConfig", "ScheduleConfig",
           "TrainConfig", "TrainResult", "TrainState", "WorldSizeError", "make_evaluator", "run_health_warnings",
           "shard_batches", "split_batch", "sum_over_processes"]
