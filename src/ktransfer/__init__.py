"""ktransfer: knowledge transfer (distillation) for PyTorch.

The public API mirrors a run config: `RunConfig` + `run` / `resume` / `evaluate_run` do what
the CLI does; `Distiller` with knowledge terms and a selector is the engine underneath (`ktransfer.engine`).

Names are imported on first use (module `__getattr__`), so `import ktransfer` and
`ktransfer --version` / `--help` do not pay for importing torch, transformers and accelerate.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ktransfer._version import __version__  # noqa: F401  (ktransfer.__version__)

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Capture": "ktransfer.capture", "capture_forward": "ktransfer.capture", "list_modules": "ktransfer.capture",
    "RunConfig": "ktransfer.config",
    **{name: "ktransfer.divergences" for name in (
        "DIVERGENCES", "backward_kl", "forward_kl", "get_divergence", "jsd", "kl", "skew_backward_kl",
        "skew_forward_kl", "soft_target_loss", "tvd")},
    **{name: "ktransfer.knowledge" for name in ("KnowledgeTerm", "LabelsTerm", "ResponseTerm", "StepView")},
    "ConfigError": "ktransfer.registry",
    **{name: "ktransfer.runner" for name in ("RunResult", "build_distiller", "evaluate_run", "preflight",
                                              "resume", "run")},
    **{name: "ktransfer.selection" for name in ("FixedWeights", "SelectionState", "Selector")},
    "Task": "ktransfer.tasks",
    **{name: "ktransfer.engine" for name in (
        "Distiller", "NonFiniteLossError", "OptimConfig", "ScheduleConfig", "TrainConfig", "TrainResult",
        "make_evaluator")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access, then cache it in this module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ktransfer' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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
    from ktransfer.runner import RunResult, build_distiller, evaluate_run, preflight, resume, run
    from ktransfer.selection import FixedWeights, SelectionState, Selector
    from ktransfer.tasks import Task
    from ktransfer.engine import (
        Distiller,
        NonFiniteLossError,
        OptimConfig,
        ScheduleConfig,
        TrainConfig,
        TrainResult,
        make_evaluator,
    )
