"""The training engine's public names (`Distiller`, `TrainConfig`, `make_evaluator`, ...), defined in `ktransfer.engine`.

`from ktransfer.train import ...` and `from ktransfer.engine import ...` give the same objects.
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
