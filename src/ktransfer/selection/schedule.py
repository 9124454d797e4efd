"""A schedule: each term's weight grows or decays linearly with training progress."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ktransfer.knowledge.base import KnowledgeTerm
from ktransfer.selection.base import SelectionState

RAMP_KEYS = ("start", "end", "begin", "finish")


class ScheduleWeights:
    """Linear ramps per term: w(p) = start + (end - start) * clip((p - begin) / (finish - begin), 0, 1).

    `p` is training progress (step / max_steps, in [0, 1]); `begin`/`finish` default to 0 and 1.
    `ramps` maps term names to {start, end, begin?, finish?}; terms not named keep their weight.
    Example: `{labels: {start: 0.0, end: 1.0}, response: {start: 1.0, end: 0.2}}`.
    """

    observes_view = False  # the engine need not keep the step's outputs for it

    def __init__(self, ramps: dict[str, dict[str, float]] | None = None) -> None:
        self.ramps: dict[str, dict[str, float]] = {}
        for name, ramp in (ramps or {}).items():
            unknown = sorted(set(ramp) - set(RAMP_KEYS))
            if unknown:
                raise ValueError(f"ramps.{name}.{unknown[0]}: unknown key; valid keys: {', '.join(RAMP_KEYS)}")
            if "start" not in ramp or "end" not in ramp:
                raise ValueError(f"ramps.{name}: needs 'start' and 'end'")
            full = {"begin": 0.0, "finish": 1.0, **{k: float(v) for k, v in ramp.items()}}
            if not 0.0 <= full["begin"] < full["finish"] <= 1.0:
                raise ValueError(f"ramps.{name}: needs 0 <= begin < finish <= 1, got {full['begin']}, {full['finish']}")
            if full["start"] < 0 or full["end"] < 0:
                raise ValueError(f"ramps.{name}: weights must be >= 0")
            self.ramps[name] = full

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]:
        names = {t.name for t in terms}
        unknown = sorted(set(self.ramps) - names)
        if unknown:
            raise ValueError(f"schedule selector ramps unknown term '{unknown[0]}'; terms are: {', '.join(sorted(names))}")
        out = {}
        for t in terms:
            ramp = self.ramps.get(t.name)
            if ramp is None:
                out[t.name] = float(t.weight)
                continue
            frac = (state.progress - ramp["begin"]) / (ramp["finish"] - ramp["begin"])
            frac = min(1.0, max(0.0, frac))
            out[t.name] = ramp["start"] + (ramp["end"] - ramp["start"]) * frac
        return out

    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"ramps": {k: dict(v) for k, v in self.ramps.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ramps = {k: dict(v) for k, v in state.get("ramps", {}).items()}
