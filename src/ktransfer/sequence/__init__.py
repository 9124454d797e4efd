"""Sequence distillation: where targets come from (dataset, teacher, student samples) and
sequence-level estimators (exact per-token divergences at sampled prefixes, REINFORCE)."""

from __future__ import annotations

from ktransfer.sequence.estimators import OnPolicyTerm, ReinforceTerm, reinforce_surrogate
from ktransfer.engine.stages import BatchStage, StageContext, StageStates
from ktransfer.sequence.targets import SOURCES, GenerationConfig, TargetsStage
from ktransfer.sequence.vocab import VocabularyError, check_same_tokenizer, check_vocabularies

__all__ = ["SOURCES", "BatchStage", "GenerationConfig", "OnPolicyTerm", "ReinforceTerm", "reinforce_surrogate", "StageContext", "StageStates", "TargetsStage",
           "VocabularyError", "check_same_tokenizer", "check_vocabularies"]
