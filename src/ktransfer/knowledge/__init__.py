"""Knowledge terms: one module per kind of knowledge a teacher offers."""

from __future__ import annotations

from typing import Any

from ktransfer.knowledge.attention import AttentionTerm
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.knowledge.feature import FeatureTerm
from ktransfer.knowledge.labels import LabelsTerm
from ktransfer.knowledge.layer_map import LayerMapError
from ktransfer.knowledge.relation import RelationTerm
from ktransfer.knowledge.response import ResponseTerm
from ktransfer.registry import ConfigError, Registry
from ktransfer.sequence.estimators import OnPolicyTerm, ReinforceTerm

KNOWLEDGE: Registry[KnowledgeTerm] = Registry("knowledge term")
KNOWLEDGE.register("response")(ResponseTerm)
KNOWLEDGE.register("labels")(LabelsTerm)
KNOWLEDGE.register("feature")(FeatureTerm)
KNOWLEDGE.register("relation")(RelationTerm)
KNOWLEDGE.register("attention")(AttentionTerm)
KNOWLEDGE.register("on_policy")(OnPolicyTerm)
KNOWLEDGE.register("reinforce")(ReinforceTerm)


def build_terms(specs: list[dict[str, Any]], where: str = "knowledge") -> list[KnowledgeTerm]:
    """Build knowledge terms from config dicts `{type: ..., **kwargs}`; names must be unique."""
    terms: list[KnowledgeTerm] = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        at = f"{where}[{i}]"
        kind = spec.pop("type", None)
        if kind is None:
            raise ConfigError(f"{at}: missing 'type'; valid choices: {', '.join(KNOWLEDGE.names())}")
        spec.setdefault("name", kind)
        terms.append(KNOWLEDGE.build(kind, spec, at))
    names = [t.name for t in terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"{where}: term names must be unique, '{duplicates[0]}' is used twice; give one a 'name'"
        )
    return terms


__all__ = ["KNOWLEDGE", "AttentionTerm", "FeatureTerm", "KnowledgeTerm", "LabelsTerm", "LayerMapError", "OnPolicyTerm",
           "ReinforceTerm", "RelationTerm",
           "ResponseTerm", "StepView", "build_terms"]
