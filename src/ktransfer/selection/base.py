"""The selector interface: who decides each knowledge term's weight at each step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ktransfer.knowledge.base import KnowledgeTerm, StepView


@dataclass
class SelectionState:
    """What a selector may observe before choosing weights.

    `recent_losses` holds each term's unweighted loss over the last steps (newest last);
    `progress` is step / max_steps in [0, 1]. In `observe`, `view` is the step's last
    micro-batch as the terms saw it (student and teacher outputs, captures); read it, keep
    nothing of it with a graph (detach). It is None in `weights`.
    """

    step: int
    max_steps: int
    recent_losses: dict[str, list[float]] = field(default_factory=dict)
    view: StepView | None = None

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.max_steps))


@dataclass
class SelectorContext:
    """What the engine gives a selector that has a `bind(context)` method, once, before training.

    `heldout_loss(model=None)` is the student's task loss (mean cross-entropy) on a held-out
    batch that the engine carved from the training data because the selector's
    `heldout_examples` asked for it (those examples are not trained on); None when it asked for
    none. `seed` is the run's seed, `term_names` the knowledge terms in order. `all_mean(t)`
    averages a CPU tensor over processes (every process must call it at the same point), so
    that selectors observing per-process batches still choose the same weights everywhere.
    """

    heldout_loss: Callable[..., float] | None
    seed: int
    max_steps: int
    term_names: list[str]
    all_mean: Callable[[Tensor], Tensor] | None = None


@runtime_checkable
class Selector(Protocol):
    """Sets the weight of every knowledge term at every step.

    `observe` receives each term's unweighted loss after the step so that learned selectors
    can update; `state_dict`/`load_state_dict` put the selector's state into checkpoints.
    Optional, called by the engine only where present: `bind(SelectorContext)` before training
    (with `heldout_examples: int` set to get a held-out batch), `metrics()` for the log,
    `save_policy(path)` at the end (final/policy.pt). A selector that never reads
    `state.view` says so with `observes_view = False`: the engine then releases each step's
    outputs as soon as the losses are computed (with large logits, holding them through the
    backward pass and the optimizer step measurably slows the step).
    """

    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]: ...

    def observe(self, losses: dict[str, float], state: SelectionState) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
