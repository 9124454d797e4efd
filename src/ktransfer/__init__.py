"""ktransfer: knowledge transfer (distillation) for PyTorch.

The public API mirrors a run config: `RunConfig` + `run` / `resume` / `evaluate_run` do what
the CLI does; `Distiller` with knowledge terms and a selector is the engine underneath.
"""

from ktransfer.capture import Capture, capture_forward, list_modules
from ktransfer.config import RunConfig
from ktransfer.divergences import (
    DIVERGENCES,
    backward_kl,
    forward_kl,
    get_divergence,
    jsd,
    kl,
    skew_backward_kl,
    skew_forward_kl,
    soft_target_loss,
    tvd,
)
from ktransfer.knowledge import KnowledgeTerm, LabelsTerm, ResponseTerm, StepView
from ktransfer.registry import ConfigError
from ktransfer.runner import RunResult, build_distiller, evaluate_run, resume, run
from ktransfer.selection import FixedWeights, SelectionState, Selector
from ktransfer.tasks import Task
from ktransfer.train import (
    Distiller,
    NonFiniteLossError,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainResult,
    make_evaluator,
)

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES", "Capture", "ConfigError", "Distiller", "FixedWeights", "KnowledgeTerm", "LabelsTerm",
    "NonFiniteLossError", "OptimConfig", "ResponseTerm", "RunConfig", "RunResult", "ScheduleConfig",
    "SelectionState", "Selector", "StepView", "Task", "TrainConfig", "TrainResult", "backward_kl",
    "build_distiller", "capture_forward", "evaluate_run", "forward_kl", "get_divergence", "jsd", "kl",
    "list_modules", "make_evaluator", "resume", "run", "skew_backward_kl", "skew_forward_kl",
    "soft_target_loss", "tvd",
]
