"""Batch stages, the engine's hook that sequence targets plug into: `ktransfer.engine.stages`, also importable from here."""

from __future__ import annotations

from ktransfer.engine.stages import BatchStage, StageContext, StageStates

__all__ = ["BatchStage", "StageContext", "StageStates"]
