"""Fixed weights: each term keeps the weight it was configured with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ktransfer.knowledge.base import KnowledgeTerm
from ktransfer.selection.base import SelectionState


class FixedWeights:
    """Every term gets its own `weight` at every step; `overrides` replaces some by name."""

    observes_view = False  # the engine need not keep the step's outputs for it

    def __init__(self, overrides: dict[str, float] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]:
        names = {t.name for t in terms}
        unknown = sorted(set(self.overrides) - names)
        if unknown:
            raise ValueError(
                f"fixed selector overrides unknown term '{unknown[0]}'; terms are: {', '.join(sorted(names))}"
            )
        return {t.name: float(self.overrides.get(t.name, t.weight)) for t in terms}

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"overrides": dict(self.overrides)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.overrides = dict(state.get("overrides", {}))
