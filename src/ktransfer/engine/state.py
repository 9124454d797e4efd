"""What a run has done so far (checkpointed with it) and what `Distiller.fit` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """Progress that a checkpoint must restore beyond model/optimizer/RNG (Accelerate keeps those)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    log_sums: dict[str, float] = field(default_factory=dict)
    log_count: int = 0
    recent_losses: dict[str, list[float]] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    first_loss: float | None = None
    last_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What `Distiller.fit` returns: the final and best validation metrics and where things are."""

    step: int
    stopped_early: bool
    best_step: int
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    wall_time_s: float
    run_dir: Path | None
    already_finished: bool = False
    warnings: list[str] = field(default_factory=list)
    world_size: int = 1
