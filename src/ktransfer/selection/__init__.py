"""Selectors: how the weights of the knowledge terms are chosen, step by step."""

from __future__ import annotations

from ktransfer.registry import Registry
from ktransfer.selection.base import SelectionState, Selector
from ktransfer.selection.fixed import FixedWeights

SELECTORS: Registry[Selector] = Registry("selector")
SELECTORS.register("fixed")(FixedWeights)

__all__ = ["SELECTORS", "FixedWeights", "SelectionState", "Selector"]
