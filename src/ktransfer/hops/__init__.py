"""Multi-hop transfer: transfer methods (kd, confidence, ProfWeight, SRatio), ladders, the chain planner.

One chain driver (`hops.driver`) walks, reuses, stops and plans every chain; two kinds of hops are
its backends, behind `ktransfer hops`: fitted models on tables (`hops.chain`, `hops.config`) and
ordinary runs, one run directory per hop (`hops.run_chain`, `hops.run_config`).
"""

from __future__ import annotations

from ktransfer.hops.methods import TRANSFER_METHODS, HopContext, Member, TransferMethod, build_method
from ktransfer.hops.models import SKLEARN_MODELS, complexity

__all__ = ["SKLEARN_MODELS", "TRANSFER_METHODS", "HopContext", "Member", "TransferMethod", "build_method", "complexity"]
