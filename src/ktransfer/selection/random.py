"""Random selection: a baseline that learned selectors must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ktransfer.knowledge.base import KnowledgeTerm
from ktransfer.selection.base import SelectionState, SelectorContext


class RandomWeights:
    """Each step, each term's weight is drawn at random and multiplied by the term's own `weight`.

    `mode: hard`: on (1) with probability `p_on`, else off (0); when all would be off, one term
    drawn uniformly is switched on (a step needs some loss). `mode: soft`: uniform in [0, 1].
    The draws come from a private generator seeded by `seed` (default: the run's seed), saved in
    checkpoints, so a resumed run draws the same weights.
    """

    observes_view = False  # the engine need not keep the step's outputs for it

    def __init__(self, mode: Literal["hard", "soft"] = "soft", p_on: float = 0.5, seed: int | None = None) -> None:
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode: unknown value '{mode}'; valid choices: hard, soft")
        if not 0.0 < p_on <= 1.0:
            raise ValueError(f"p_on must be in (0, 1], got {p_on}")
        self.mode = mode
        self.p_on = p_on
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def bind(self, context: SelectorContext) -> None:
        """Seed from the run unless a seed was given (a resumed run then loads the saved state)."""
        if self.seed is None:
            self._generator.manual_seed(context.seed * 7_919 + 17)

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]:
        n = len(terms)
        draws = torch.rand(n, generator=self._generator, dtype=torch.float64)
        if self.mode == "hard":
            on = draws < self.p_on
            if not bool(on.any()):
                on[int(torch.randint(n, (1,), generator=self._generator))] = True
            draws = on.double()
        return {t.name: float(d) * float(t.weight) for t, d in zip(terms, draws.tolist(), strict=True)}

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])
