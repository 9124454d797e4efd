"""The selector interface: who decides each knowledge term's weight at each step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ktransfer.knowledge.base import KnowledgeTerm


@dataclass
class SelectionState:
    """What a selector may observe before choosing weights.

    `recent_losses` holds each term's unweighted loss over the last steps (newest last);
    `progress` is step / max_steps in [0, 1].
    """

    step: int
    max_steps: int
    recent_losses: dict[str, list[float]] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.max_steps))


@runtime_checkable
class Selector(Protocol):
    """Sets the weight of every knowledge term at every step.

    `observe` receives each term's unweighted loss after the step so that learned selectors
    can update; `state_dict`/`load_state_dict` put the selector's state into checkpoints.
    """

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]: ...

    def observe(self, losses: dict[str, float], state: SelectionState) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
