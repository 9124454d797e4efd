"""The training engine: one loop (`Distiller`) apart from its settings, batches, process helpers,
evaluator, run-health checks, checkpoints and the wiring of terms, stages and selector.

`ktransfer.train` offers the same names.
"""

from __future__ import annotations

from ktransfer.engine.batches import TEACHER_PREFIX, EpochShuffleSampler, split_batch
from ktransfer.engine.configs import TRACKERS, OptimConfig, ScheduleConfig, TrainConfig
from ktransfer.engine.distributed import shard_batches, sum_over_processes
from ktransfer.engine.errors import NonFiniteError, NonFiniteLossError, NonFiniteMetricError, WorldSizeError
from ktransfer.engine.evaluation import Evaluator, make_evaluator
from ktransfer.engine.health import HEALTH_MIN_STEPS, run_health_warnings
from ktransfer.engine.loop import Distiller
from ktransfer.engine.stages import BatchStage, StageContext, StageStates
from ktransfer.engine.state import TrainResult, TrainState

__all__ = ["HEALTH_MIN_STEPS", "TEACHER_PREFIX", "TRACKERS", "BatchStage", "Distiller", "EpochShuffleSampler",
           "Evaluator", "NonFiniteError", "NonFiniteLossError", "NonFiniteMetricError", "OptimConfig",
           "ScheduleConfig", "StageContext", "StageStates", "TrainConfig", "TrainResult", "TrainState",
           "WorldSizeError", "make_evaluator", "run_health_warnings", "shard_batches", "split_batch",
           "sum_over_processes"]
