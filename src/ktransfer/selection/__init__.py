"""Selectors: how the weights of the knowledge terms are chosen, step by step."""

from __future__ import annotations

from ktransfer.registry import Registry
from ktransfer.selection.actor_critic import ActorCriticSelector, load_policy
from ktransfer.selection.base import SelectionState, Selector, SelectorContext
from ktransfer.selection.fixed import FixedWeights
from ktransfer.selection.random import RandomWeights
from ktransfer.selection.schedule import ScheduleWeights

SELECTORS: Registry[Selector] = Registry("selector")
SELECTORS.register("fixed")(FixedWeights)
SELECTORS.register("schedule")(ScheduleWeights)
SELECTORS.register("random")(RandomWeights)
SELECTORS.register("actor_critic")(ActorCriticSelector)

__all__ = ["SELECTORS", "ActorCriticSelector", "FixedWeights", "RandomWeights", "ScheduleWeights", "SelectionState",
           "Selector", "SelectorContext", "load_policy"]
