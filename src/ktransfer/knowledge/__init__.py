"""Knowledge terms: one module per kind of knowledge a teacher offers.

`KNOWLEDGE` holds this package's own terms. The sequence wing's terms (on_policy, reinforce)
sit above this package and join these in the catalogue of every term a config may name,
`ktransfer.terms` (`TERMS`, `build_terms`), which run configs, the engine's callers and chains use.
"""

from __future__ import annotations

from typing import Any

from ktransfer.knowledge.attention import AttentionTerm
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.knowledge.feature import FeatureTerm
from ktransfer.knowledge.labels import LabelsTerm
from ktransfer.knowledge.layer_map import LayerMapError
from ktransfer.knowledge.relation import RelationTerm
from ktransfer.knowledge.response import ResponseTerm
from ktransfer.knowledge.teachers import CombineConfig, TeacherMix, arrange_terms, with_teacher
from ktransfer.registry import ConfigError, Registry

KNOWLEDGE: Registry[KnowledgeTerm] = Registry("knowledge term")
KNOWLEDGE.register("response")(ResponseTerm)
KNOWLEDGE.register("labels")(LabelsTerm)
KNOWLEDGE.register("feature")(FeatureTerm)
KNOWLEDGE.register("relation")(RelationTerm)
KNOWLEDGE.register("attention")(AttentionTerm)

# Terms of the sequence wing, which this package never imports: where to build them instead.
_WING_TERMS = {"on_policy": "OnPolicyTerm", "reinforce": "ReinforceTerm"}


def build_terms(specs: list[dict[str, Any]], where: str = "knowledge",
                registry: Registry[KnowledgeTerm] = KNOWLEDGE) -> list[KnowledgeTerm]:
    """Build knowledge terms from config dicts `{type: ..., **kwargs}` out of `registry`; names must be unique.
    A term's `teacher: NAME` (any type that reads a teacher) says which of the run's named teachers it reads.

    The default registry holds this package's terms; `ktransfer.terms.build_terms` passes the
    catalogue of every term (the sequence wing's too).
    """
    terms: list[KnowledgeTerm] = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        at = f"{where}[{i}]"
        kind = spec.pop("type", None)
        if kind is None:
            raise ConfigError(f"{at}: missing 'type'; valid choices: {', '.join(registry.names())}")
        if kind in _WING_TERMS and kind not in registry.names():
            raise ConfigError(f"{at}: '{kind}' is a term of the sequence wing, which ktransfer.knowledge.build_terms "
                              "does not build (deprecated for it); use ktransfer.terms.build_terms, which builds "
                              "every term a config may name")
        spec.setdefault("name", kind)
        teacher = spec.pop("teacher", None)  # which named teacher the term reads (ktransfer.knowledge.teachers)
        if teacher is not None and (not isinstance(teacher, str) or not teacher):
            raise ConfigError(f"{at}.teacher: expected the name of one of the run's teachers, got {teacher!r}")
        term = registry.build(kind, spec, at)
        if teacher is not None:
            if not term.requires_teacher:
                raise ConfigError(f"{at}.teacher: term '{term.name}' ({kind}) reads no teacher, so it cannot name one")
            with_teacher(term, teacher)
        terms.append(term)
    names = [t.name for t in terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"{where}: term names must be unique, '{duplicates[0]}' is used twice; give one a 'name'"
        )
    return terms




def __getattr__(name: str) -> Any:
    """The sequence wing's terms are imported from the wing: a clear error saying where, for any other name too."""
    if name in _WING_TERMS.values():
        raise AttributeError(f"ktransfer.knowledge.{name} moved to the sequence wing (deprecated here): "
                             f"use `from ktransfer.sequence import {name}`")
    raise AttributeError(f"module 'ktransfer.knowledge' has no attribute '{name}'")


__all__ = ["KNOWLEDGE", "AttentionTerm", "CombineConfig", "FeatureTerm", "KnowledgeTerm", "LabelsTerm", "LayerMapError",
           "RelationTerm", "ResponseTerm", "StepView", "TeacherMix", "arrange_terms", "build_terms", "with_teacher"]
